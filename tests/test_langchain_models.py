"""Model spans of real LangChain OpenAI clients talking to the fake provider."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price
from langchain_core.language_models import BaseChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAI

from chainwatch import ChainWatchHandler
from chainwatch.fake_provider import FakeOpenAI, Reply
from conftest import pop_span, read_events, read_spans

Row = dict[str, Any]
MODEL = "gpt-4o-mini"


def chat_model(server: FakeOpenAI, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=server.base_url, api_key="sk-fake", max_retries=0, model=MODEL, **kwargs
    )


def only_span(
    handler: ChainWatchHandler, db_path: Path, name: str | None = None, **expected: Any
) -> Row:
    """The one span of a single model call, checked to be a root llm span."""
    assert handler.flush()
    spans = read_spans(db_path)
    assert len(spans) == 1, [s["name"] for s in spans]
    span = pop_span(spans, name or spans[0]["name"], kind="llm", parent_id=None, **expected)
    assert span["trace_id"] == span["span_id"]
    assert span["framework"] == "langchain"
    assert spans == []
    return span


def sent_since(server: FakeOpenAI, before: int) -> dict[str, Any]:
    """The one response body the server sent since `before` responses."""
    new = server.responses[before:]
    assert len(new) == 1, new
    return new[0]


def assert_tokens(span: Row, usage: dict[str, Any]) -> None:
    assert span["prompt_tokens"] == usage["prompt_tokens"]
    assert span["completion_tokens"] == usage["completion_tokens"]
    assert span["total_tokens"] == usage["total_tokens"]
    assert span["cached_tokens"] == usage["prompt_tokens_details"]["cached_tokens"]
    assert span["reasoning_tokens"] == usage["completion_tokens_details"]["reasoning_tokens"]


def expected_cost(usage: dict[str, Any], model: str) -> float:
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    price = calc_price(
        PriceUsage(
            input_tokens=usage["prompt_tokens"],
            output_tokens=usage["completion_tokens"],
            cache_read_tokens=cached or None,
        ),
        model,
        provider_id="openai",
    )
    return float(price.total_price)


def first_token_events(db_path: Path, span_id: str) -> list[Row]:
    events = read_events(db_path)
    return [e for e in events if e["span_id"] == span_id and e["name"] == "first_token"]


# -- invoke -----------------------------------------------------------------------------------


def test_invoke_records_usage_model_and_cost(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.queue(
        Reply(
            content="Paris is the capital of France.",
            prompt_tokens=1200,
            completion_tokens=300,
            cached_tokens=400,
            reasoning_tokens=120,
        )
    )
    before = len(fake_openai.responses)

    message = chat_model(fake_openai).invoke("Capital?", config={"callbacks": [handler]})

    assert message.content == "Paris is the capital of France."
    sent = sent_since(fake_openai, before)
    usage = sent["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (1200, 300)
    span = only_span(handler, db_path, name="ChatOpenAI", status="ok")
    assert_tokens(span, usage)
    assert (span["cached_tokens"], span["reasoning_tokens"]) == (400, 120)
    assert span["model"] == sent["model"] == MODEL
    assert span["provider"] == "openai"
    assert span["finish_reason"] == "stop"
    assert span["ttft_ms"] is None
    assert span["usage_note"] is None
    assert span["cost_note"] is None
    assert span["cost_usd"] == pytest.approx(expected_cost(usage, MODEL), rel=1e-9, abs=1e-12)
    assert span["cost_usd"] > 0


def test_model_echoed_by_the_server_wins(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.queue(Reply(content="ok", model="gpt-4o-2024-08-06"))
    before = len(fake_openai.responses)

    chat_model(fake_openai).invoke("hi", config={"callbacks": [handler]})

    sent = sent_since(fake_openai, before)
    span = only_span(handler, db_path, status="ok")
    assert span["model"] == "gpt-4o-2024-08-06"
    assert span["cost_usd"] == pytest.approx(
        expected_cost(sent["usage"], "gpt-4o-2024-08-06"), rel=1e-9, abs=1e-12
    )


def test_ainvoke_is_recorded(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.queue(Reply(content="async answer", prompt_tokens=40, completion_tokens=2))
    before = len(fake_openai.responses)

    async def call() -> AIMessage:
        # a client per event loop: langchain-openai's shared one is bound to the first loop
        async with httpx.AsyncClient() as client:
            model = chat_model(fake_openai, http_async_client=client)
            return await model.ainvoke("hi", config={"callbacks": [handler]})

    message = asyncio.run(call())

    assert message.content == "async answer"
    sent = sent_since(fake_openai, before)
    span = only_span(handler, db_path, name="ChatOpenAI", status="ok")
    assert_tokens(span, sent["usage"])
    assert span["model"] == MODEL
    assert span["finish_reason"] == "stop"
    assert json.loads(span["outputs"]) == {"role": "assistant", "content": "async answer"}
    assert span["cost_usd"] == pytest.approx(expected_cost(sent["usage"], MODEL), rel=1e-9)


# -- streaming --------------------------------------------------------------------------------


def test_stream_usage_and_time_to_first_token(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.queue(
        Reply(content="one two three four", prompt_tokens=50, completion_tokens=7, cached_tokens=8)
    )
    before = len(fake_openai.responses)

    chunks = list(
        chat_model(fake_openai, stream_usage=True).stream("count", config={"callbacks": [handler]})
    )

    assert "".join(str(c.content) for c in chunks) == "one two three four"
    sent = sent_since(fake_openai, before)
    assert sent["stream"] is True
    span = only_span(handler, db_path, name="ChatOpenAI", status="ok")
    assert_tokens(span, sent["usage"])
    assert span["model"] == MODEL
    assert span["finish_reason"] == "stop"
    assert span["ttft_ms"] is not None
    assert 0 < span["ttft_ms"] <= span["duration_ms"]
    assert span["cost_usd"] == pytest.approx(expected_cost(sent["usage"], MODEL), rel=1e-9)
    (event,) = first_token_events(db_path, span["span_id"])
    assert span["start_time"] <= event["time"] <= span["end_time"]


def test_streamed_reply_is_stored_as_an_assistant_message(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.queue(Reply(content="streamed words"))

    chunks = list(chat_model(fake_openai).stream("hi", config={"callbacks": [handler]}))

    assert "".join(str(c.content) for c in chunks) == "streamed words"
    span = only_span(handler, db_path, status="ok")
    assert json.loads(span["inputs"]) == [{"role": "user", "content": "hi"}]
    assert json.loads(span["outputs"]) == {"role": "assistant", "content": "streamed words"}


def test_only_the_first_token_sets_ttft(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI
) -> None:
    # one chunk delay comes before the first word, six after it: four words, finish, usage
    fake_openai.queue(Reply(content="alpha beta gamma delta epsilon", chunk_delay_s=0.05))

    pieces = [
        c.content
        for c in chat_model(fake_openai, stream_usage=True).stream(
            "go", config={"callbacks": [handler]}
        )
    ]

    assert len([p for p in pieces if p]) == 5
    span = only_span(handler, db_path, status="ok")
    assert span["ttft_ms"] is not None
    assert 0 < span["ttft_ms"] < span["duration_ms"] / 2
    assert len(first_token_events(db_path, span["span_id"])) == 1


def test_two_interleaved_streams_keep_their_own_usage_and_ttft(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.queue(Reply(content="a1 a2 a3", prompt_tokens=11, completion_tokens=3))
    fake_openai.queue(Reply(content="b1 b2 b3 b4", prompt_tokens=22, completion_tokens=4))
    model = chat_model(fake_openai, stream_usage=True)
    first = model.stream("a", config={"callbacks": [handler]})
    a_text = str(next(first).content)  # the first request is answered and streaming
    second = model.stream("b", config={"callbacks": [handler]})
    # Alternate between the two streams until both are done.
    b_text = ""
    pending = {"a": first, "b": second}
    while pending:
        for key, stream in list(pending.items()):
            try:
                piece = str(next(stream).content)
            except StopIteration:
                del pending[key]
                continue
            if key == "a":
                a_text += piece
            else:
                b_text += piece

    assert (a_text, b_text) == ("a1 a2 a3", "b1 b2 b3 b4")
    handler.flush()
    spans = {json.loads(s["outputs"])["content"]: s for s in read_spans(db_path)}
    assert spans["a1 a2 a3"]["prompt_tokens"] == 11
    assert spans["a1 a2 a3"]["completion_tokens"] == 3
    assert spans["b1 b2 b3 b4"]["prompt_tokens"] == 22
    assert spans["b1 b2 b3 b4"]["completion_tokens"] == 4
    for span in spans.values():
        assert 0 < span["ttft_ms"] <= span["duration_ms"]
        assert len(first_token_events(db_path, span["span_id"])) == 1


def test_astream_is_recorded(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.queue(Reply(content="streamed async words", prompt_tokens=9, completion_tokens=3))
    before = len(fake_openai.responses)

    async def collect() -> list[str]:
        async with httpx.AsyncClient() as client:
            model = chat_model(fake_openai, stream_usage=True, http_async_client=client)
            stream = model.astream("hi", config={"callbacks": [handler]})
            return [str(c.content) async for c in stream]

    assert "".join(asyncio.run(collect())) == "streamed async words"
    sent = sent_since(fake_openai, before)
    span = only_span(handler, db_path, name="ChatOpenAI", status="ok")
    assert_tokens(span, sent["usage"])
    assert span["ttft_ms"] is not None
    assert 0 < span["ttft_ms"] <= span["duration_ms"]
    assert len(first_token_events(db_path, span["span_id"])) == 1


def test_streamed_tool_call_sets_ttft(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.queue(Reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}]))
    model = chat_model(fake_openai, stream_usage=True).bind_tools([get_weather])

    chunks = list(model.stream("weather?", config={"callbacks": [handler]}))

    assert any(c.tool_call_chunks for c in chunks)
    span = only_span(handler, db_path, status="ok")
    assert span["finish_reason"] == "tool_calls"
    assert span["ttft_ms"] is not None
    assert 0 < span["ttft_ms"] <= span["duration_ms"]
    (call,) = json.loads(span["outputs"])["tool_calls"]
    assert (call["name"], call["args"]) == ("get_weather", {"city": "Oslo"})


# -- prices -----------------------------------------------------------------------------------


def test_unknown_model_has_tokens_but_no_cost(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.queue(Reply(content="private answer", model="my-private-llm"))
    before = len(fake_openai.responses)

    chat_model(fake_openai).invoke("hi", config={"callbacks": [handler]})

    sent = sent_since(fake_openai, before)
    span = only_span(handler, db_path, status="ok")
    assert span["model"] == "my-private-llm"
    assert_tokens(span, sent["usage"])
    assert span["cost_usd"] is None
    assert span["cost_note"] is not None
    assert "unknown model" in span["cost_note"]
    assert "my-private-llm" in span["cost_note"]


def test_more_cached_tokens_than_prompt_tokens_still_records_the_call(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI
) -> None:
    """genai-prices refuses such counts; the span (and its tokens) must still be written."""
    fake_openai.queue(
        Reply(content="cached", prompt_tokens=100, completion_tokens=10, cached_tokens=800)
    )
    chat_model(fake_openai).invoke("hi", config={"callbacks": [handler]})
    span = only_span(handler, db_path, status="ok")
    assert (span["prompt_tokens"], span["cached_tokens"]) == (100, 800)
    # priced as if the whole prompt came from the cache
    whole_prompt_cached = {"prompt_tokens": 100, "completion_tokens": 10,
                           "prompt_tokens_details": {"cached_tokens": 100}}
    assert span["cost_usd"] == pytest.approx(expected_cost(whole_prompt_cached, MODEL))


def test_a_self_hosted_model_is_not_priced_as_a_hosted_one() -> None:
    from chainwatch.pricing import cost_of
    from chainwatch.spans import Usage

    usage = Usage(prompt_tokens=1000, completion_tokens=500)
    hosted, _ = cost_of(usage, "deepseek-r1", None)
    assert hosted is not None and hosted > 0, "genai-prices knows the name from a hosted API"
    cost, note = cost_of(usage, "deepseek-r1", "ollama")
    assert cost is None and note is not None and "self-hosted" in note


def test_user_price_for_a_private_model(db_path: Path, fake_openai: FakeOpenAI) -> None:
    handler = ChainWatchHandler(
        db_path, prices={"my-private-llm": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}
    )
    try:
        fake_openai.queue(
            Reply(
                content="private",
                model="my-private-llm",
                prompt_tokens=1000,
                completion_tokens=500,
            )
        )
        chat_model(fake_openai).invoke("hi", config={"callbacks": [handler]})
        span = only_span(handler, db_path, status="ok")
    finally:
        handler.shutdown()

    assert (span["prompt_tokens"], span["completion_tokens"]) == (1000, 500)
    assert span["cost_usd"] == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1_000_000, rel=1e-12)
    assert span["cost_note"] is None


def test_model_without_usage_leaves_tokens_null(handler: ChainWatchHandler, db_path: Path) -> None:
    model = GenericFakeChatModel(messages=iter([AIMessage(content="no usage here")]))

    assert model.invoke("hi", config={"callbacks": [handler]}).content == "no usage here"

    span = only_span(handler, db_path, name="GenericFakeChatModel", status="ok")
    for column in (
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "cost_usd",
    ):
        assert span[column] is None, column
    assert span["usage_note"]
    assert span["cost_note"]
    assert json.loads(span["outputs"]) == {"role": "assistant", "content": "no usage here"}


# -- errors -----------------------------------------------------------------------------------


def test_provider_error_is_an_error_span(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.queue(Reply(status=500, error_message="the fake provider fell over"))
    asked = len(fake_openai.requests)

    with pytest.raises(openai.InternalServerError) as caught:
        chat_model(fake_openai).invoke("hi", config={"callbacks": [handler]})

    assert len(fake_openai.requests) == asked + 1
    span = only_span(handler, db_path, name="ChatOpenAI", status="error")
    assert span["error"].startswith(f"{type(caught.value).__name__}: ")
    assert "InternalServerError" in [c.__name__ for c in type(caught.value).__mro__]
    assert "the fake provider fell over" in span["error"]
    assert span["outputs"] is None
    assert span["prompt_tokens"] is None
    assert span["cost_usd"] is None
    assert span["cost_note"]
    exceptions = [e for e in read_events(db_path) if e["name"] == "exception"]
    assert [e["span_id"] for e in exceptions] == [span["span_id"]]


# -- message shapes ---------------------------------------------------------------------------


@tool
def get_weather(city: str) -> str:
    """Current weather of a city."""
    return f"sunny in {city}"


def test_tool_call_reply(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.queue(Reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]))
    before = len(fake_openai.responses)
    model = chat_model(fake_openai).bind_tools([get_weather])

    message = model.invoke("Weather in Paris?", config={"callbacks": [handler]})

    assert message.tool_calls[0]["args"] == {"city": "Paris"}
    sent = sent_since(fake_openai, before)
    (sent_call,) = sent["choices"][0]["message"]["tool_calls"]
    span = only_span(handler, db_path, name="ChatOpenAI", status="ok")
    assert span["finish_reason"] == "tool_calls"
    assert_tokens(span, sent["usage"])
    outputs = json.loads(span["outputs"])
    assert outputs["role"] == "assistant"
    (call,) = outputs["tool_calls"]
    assert call["name"] == "get_weather"
    assert call["args"] == {"city": "Paris"}
    assert call["id"] == sent_call["id"]


def test_messages_in_inputs_and_outputs(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.queue(Reply(content="Bonjour!"))

    chat_model(fake_openai).invoke(
        [SystemMessage(content="Reply in French."), HumanMessage(content="Hello")],
        config={"callbacks": [handler]},
    )

    span = only_span(handler, db_path, status="ok")
    assert json.loads(span["inputs"]) == [
        {"role": "system", "content": "Reply in French."},
        {"role": "user", "content": "Hello"},
    ]
    assert json.loads(span["outputs"]) == {"role": "assistant", "content": "Bonjour!"}
    metadata = json.loads(span["metadata"])
    assert metadata["ls_model_name"] == MODEL
    assert metadata["invocation_params"]["model"] == MODEL


def test_legacy_completions_model(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI
) -> None:
    model_name = "gpt-3.5-turbo-instruct"
    fake_openai.queue(Reply(content="legacy answer here", prompt_tokens=30, completion_tokens=3))
    before = len(fake_openai.responses)
    llm = OpenAI(base_url=fake_openai.base_url, api_key="sk-fake", max_retries=0, model=model_name)

    assert llm.invoke("Say something", config={"callbacks": [handler]}) == "legacy answer here"

    sent = sent_since(fake_openai, before)
    assert sent["object"] == "text_completion"
    span = only_span(handler, db_path, name="OpenAI", status="ok")
    assert span["prompt_tokens"] == sent["usage"]["prompt_tokens"] == 30
    assert span["completion_tokens"] == sent["usage"]["completion_tokens"] == 3
    assert span["total_tokens"] == sent["usage"]["total_tokens"] == 33
    assert span["model"] == model_name
    assert span["provider"] == "openai"
    assert span["finish_reason"] == "stop"
    assert json.loads(span["inputs"]) == "Say something"
    assert json.loads(span["outputs"]) == "legacy answer here"
    assert span["cost_usd"] == pytest.approx(expected_cost(sent["usage"], model_name), rel=1e-9)


# -- usage the way other providers' clients report it -----------------------------------------


class TwoChoiceModel(BaseChatModel):
    """Answers with two choices, each message carrying the request's usage (as ChatOpenAI
    does with ``n=2``)."""

    @property
    def _llm_type(self) -> str:
        return "two-choice"

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        usage = {"input_tokens": 100, "output_tokens": 40, "total_tokens": 140}
        return ChatResult(generations=[
            ChatGeneration(message=AIMessage(content=text, usage_metadata=usage))
            for text in ("first", "second")
        ])


class SplitUsageModel(BaseChatModel):
    """Streams the way Anthropic's client does: input tokens on the first chunk, output tokens
    on the last; LangChain adds chunk usage up when it merges the chunks."""

    @property
    def _llm_type(self) -> str:
        return "split-usage"

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        raise NotImplementedError

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        parts = [
            ("", {"input_tokens": 1000, "output_tokens": 1, "total_tokens": 1001}),
            ("Hello", None),
            (" there", None),
            ("", {"input_tokens": 0, "output_tokens": 50, "total_tokens": 50}),
        ]
        for text, usage in parts:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=text, usage_metadata=usage))
            if run_manager is not None:
                run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk


def test_two_choices_of_one_request_count_its_usage_once(
    handler: ChainWatchHandler, db_path: Path
) -> None:
    TwoChoiceModel().invoke("hi", config={"callbacks": [handler]})
    span = only_span(handler, db_path, name="TwoChoiceModel", status="ok")
    assert (span["prompt_tokens"], span["completion_tokens"], span["total_tokens"]) == (
        100, 40, 140
    )


def test_usage_split_over_stream_chunks_is_what_langchain_adds_up(
    handler: ChainWatchHandler, db_path: Path
) -> None:
    chunks = list(SplitUsageModel().stream("hi", config={"callbacks": [handler]}))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    assert merged.usage_metadata is not None
    expected = merged.usage_metadata
    span = only_span(handler, db_path, name="SplitUsageModel", status="ok")
    assert (span["prompt_tokens"], span["completion_tokens"], span["total_tokens"]) == (
        expected["input_tokens"], expected["output_tokens"], expected["total_tokens"]
    ) == (1000, 51, 1051)


def test_a_streamed_chain_records_its_real_input(
    handler: ChainWatchHandler, db_path: Path
) -> None:
    """A streamed run starts as ``{"input": ""}``; LangChain gives the real input at its end."""
    chain = RunnableLambda(lambda d: d["q"].upper(), name="upper") | RunnableLambda(
        lambda s: s + "!", name="shout"
    )
    assert "".join(chain.stream({"q": "hello"}, config={"callbacks": [handler]})) == "HELLO!"
    assert handler.flush()
    spans = read_spans(db_path)
    root = pop_span(spans, "RunnableSequence", parent_id=None)
    assert json.loads(root["inputs"]) == {"q": "hello"}
    assert json.loads(pop_span(spans, "upper")["inputs"]) == {"q": "hello"}
    assert json.loads(pop_span(spans, "shout")["inputs"]) == "HELLO"
    assert spans == []


class RawAnthropicUsageModel(BaseChatModel):
    """Reports only the provider's raw usage (in `llm_output`), Anthropic style."""

    usage: dict[str, int]

    @property
    def _llm_type(self) -> str:
        return "raw-usage"

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="ok"))],
                          llm_output={"usage": dict(self.usage)})


@pytest.mark.parametrize(
    ("cache_read", "cache_write", "prompt", "cached"),
    [(0, 0, 100, None), (0, 5000, 5100, None), (800, 0, 900, 800), (800, 5000, 5900, 800)],
)
def test_anthropic_cache_reads_and_writes_are_part_of_the_prompt(
    handler: ChainWatchHandler,
    db_path: Path,
    cache_read: int,
    cache_write: int,
    prompt: int,
    cached: int | None,
) -> None:
    usage = {"input_tokens": 100, "output_tokens": 10}
    if cache_read:
        usage["cache_read_input_tokens"] = cache_read
    if cache_write:
        usage["cache_creation_input_tokens"] = cache_write
    RawAnthropicUsageModel(usage=usage).invoke("hi", config={"callbacks": [handler]})
    span = only_span(handler, db_path, name="RawAnthropicUsageModel", status="ok")
    assert (span["prompt_tokens"], span["completion_tokens"], span["cached_tokens"]) == (
        prompt, 10, cached
    )
