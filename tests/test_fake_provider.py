from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from chainwatch.fake_provider import FakeOpenAI, Reply

MODEL = "gpt-4o-mini"


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def client(server: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key="sk-fake", max_retries=0) as oai:
        yield oai


def _usage_metadata(usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "input_tokens": usage["prompt_tokens"],
        "output_tokens": usage["completion_tokens"],
        "total_tokens": usage["total_tokens"],
        "input_token_details": {"cache_read": usage["prompt_tokens_details"]["cached_tokens"]},
        "output_token_details": {
            "reasoning": usage["completion_tokens_details"]["reasoning_tokens"]
        },
    }


def test_base_url_is_loopback_and_start_is_idempotent(server: FakeOpenAI) -> None:
    assert server.base_url.startswith("http://127.0.0.1:")
    assert server.base_url.endswith("/v1")
    url = server.base_url
    assert server.start() is server
    assert server.base_url == url


def test_chat_non_stream(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.queue(
        Reply(content="Hello from the fake provider.", cached_tokens=2, reasoning_tokens=1)
    )
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello please"}]
    )
    assert resp.choices[0].message.content == "Hello from the fake provider."
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model == MODEL
    assert resp.id.startswith("chatcmpl-")
    assert resp.to_dict() == server.responses[-1]
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == 3 + 4
    assert resp.usage.completion_tokens == 5
    assert resp.usage.total_tokens == 12
    assert resp.usage.prompt_tokens_details.cached_tokens == 2
    assert resp.usage.completion_tokens_details.reasoning_tokens == 1
    assert server.requests[-1]["path"] == "/v1/chat/completions"
    assert server.requests[-1]["messages"][0]["content"] == "Say hello please"


def test_chat_stream_with_usage(server: FakeOpenAI, client: openai.OpenAI) -> None:
    content = "  Streaming works,\nword by word.  "
    server.queue(Reply(content=content, prompt_tokens=11, completion_tokens=7, cached_tokens=3))
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    usage = None
    finish = None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == content
    assert len([p for p in pieces if p]) > 2
    assert finish == "stop"
    assert usage is not None
    record = server.responses[-1]
    assert record == {"stream": True, "usage": usage.to_dict(), "content": content}
    assert usage.prompt_tokens == 11 and usage.completion_tokens == 7 and usage.total_tokens == 18


def test_tool_call_reply(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.queue(Reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]))
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "weather in Paris?"}]
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.id == "call_1"
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_error_replies(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.queue(
        Reply(status=500, error_message="boom"),
        Reply(status=429, error_message="slow down", retry_after=2),
    )
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.InternalServerError) as exc_info:
        client.chat.completions.create(model=MODEL, messages=messages)
    assert exc_info.value.status_code == 500
    assert "boom" in str(exc_info.value)
    with pytest.raises(openai.RateLimitError) as rate_info:
        client.chat.completions.create(model=MODEL, messages=messages)
    assert rate_info.value.response.headers["retry-after"] == "2"
    assert rate_info.value.code == "rate_limit_exceeded"
    assert server.responses == []
    with pytest.raises(openai.NotFoundError):
        client.models.list()
    resp = client.chat.completions.create(model=MODEL, messages=messages)
    assert resp.choices[0].message.content


def test_embeddings(server: FakeOpenAI, client: openai.OpenAI) -> None:
    first = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta gamma"])
    assert [d.index for d in first.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in first.data)
    assert first.data[0].embedding != first.data[1].embedding
    assert first.usage.prompt_tokens == 3 and first.usage.total_tokens == 3
    floats = client.embeddings.create(
        model="text-embedding-3-small", input="alpha", encoding_format="float"
    )
    assert floats.data[0].embedding == pytest.approx(first.data[0].embedding, abs=1e-6)
    wide = client.embeddings.create(model="text-embedding-3-small", input="alpha", dimensions=16)
    assert len(wide.data[0].embedding) == 16
    assert server.requests[-1]["path"] == "/v1/embeddings"


def test_legacy_completions(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.queue(Reply(content="one two three"), Reply(content="four five six"))
    resp = client.completions.create(model=MODEL, prompt="count for me")
    assert resp.choices[0].text == "one two three"
    assert resp.to_dict() == server.responses[-1]
    assert resp.usage is not None and resp.usage.prompt_tokens == 3
    stream = client.completions.create(
        model=MODEL, prompt="more", stream=True, stream_options={"include_usage": True}
    )
    text = ""
    usage = None
    for chunk in stream:
        text += "".join(c.text for c in chunk.choices)
        usage = chunk.usage or usage
    assert text == "four five six"
    assert usage is not None and usage.to_dict() == server.responses[-1]["usage"]


def test_responder_and_keep_alive_under_concurrency() -> None:
    def responder(body: dict[str, Any]) -> Reply:
        return Reply(content=f"echo: {body['messages'][-1]['content']}")

    with FakeOpenAI(responder) as fake:
        with openai.OpenAI(base_url=fake.base_url, api_key="sk-fake", max_retries=0) as oai:
            for i in range(15):
                stream = i % 2 == 1
                result = oai.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"m{i}"}], stream=stream
                )
                if stream:
                    text = "".join(c.choices[0].delta.content or "" for c in result if c.choices)
                else:
                    text = result.choices[0].message.content or ""
                assert text == f"echo: m{i}"

            errors: list[BaseException] = []

            def worker(n: int) -> None:
                try:
                    for j in range(4):
                        msg = f"t{n}-{j}"
                        resp = oai.chat.completions.create(
                            model=MODEL, messages=[{"role": "user", "content": msg}]
                        )
                        assert resp.choices[0].message.content == f"echo: {msg}"
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []
        assert len(fake.requests) == 15 + 32
        unknown = httpx.post(f"{fake.base_url}/nope", json={})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["type"] == "not_found_error"


def test_demo_responder_is_default(server: FakeOpenAI, client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages)
    second = client.chat.completions.create(model=MODEL, messages=messages)
    assert "Paris" in (first.choices[0].message.content or "")
    assert first.choices[0].message.content == second.choices[0].message.content


def test_langchain_invoke_and_stream(server: FakeOpenAI) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(
        base_url=server.base_url, api_key="sk-fake", model=MODEL, max_retries=0
    )
    server.queue(Reply(content="LangChain says hi.", cached_tokens=1, reasoning_tokens=2))
    msg = llm.invoke("hello there")
    assert msg.content == "LangChain says hi."
    assert msg.usage_metadata == _usage_metadata(server.responses[-1]["usage"])

    streaming = langchain_openai.ChatOpenAI(
        base_url=server.base_url, api_key="sk-fake", model=MODEL, max_retries=0, stream_usage=True
    )
    server.queue(Reply(content="Streaming from LangChain works fine.", prompt_tokens=20))
    chunks = list(streaming.stream("stream it"))
    assert len(chunks) > 3
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert total.content == "Streaming from LangChain works fine."
    record = server.responses[-1]
    assert record["stream"] is True and record["content"] == total.content
    assert total.usage_metadata == _usage_metadata(record["usage"])
    assert server.requests[-1]["stream_options"] == {"include_usage": True}


def test_langchain_streamed_tool_call(server: FakeOpenAI) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(
        base_url=server.base_url, api_key="sk-fake", model=MODEL, max_retries=0, stream_usage=True
    )

    def get_weather(city: str) -> str:
        """Get the weather for a city."""
        return f"sunny in {city}"

    server.queue(Reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}]))
    chunks = list(llm.bind_tools([get_weather]).stream("weather in Oslo?"))
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [("get_weather", {"city": "Oslo"})]
    assert total.tool_calls[0]["id"] == "call_1"
    assert server.requests[-1]["tools"][0]["function"]["name"] == "get_weather"
