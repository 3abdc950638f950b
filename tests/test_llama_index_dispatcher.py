"""LlamaIndex's instrumentation path (dispatcher spans and events), alone and with the legacy one.

Real indexes, engines, workflows and the real OpenAI client against the fake server on
127.0.0.1; spans are read back through plain SQL.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.callbacks import CallbackManager
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.llms import (
    ChatMessage,
    CompletionResponse,
    CustomLLM,
    LLMMetadata,
)
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.postprocessor import SimilarityPostprocessor
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai import OpenAI
from pydantic import BaseModel, PrivateAttr

import chainwatch
from chainwatch import ChainWatchHandler
from chainwatch.fake_provider import FakeOpenAI, Reply
from conftest import pop_span, read_events, read_spans
from llama_support import llama_settings

Row = dict[str, Any]
DOCS = {
    "paris": "Paris is the capital of France.",
    "berlin": "Berlin is the capital of Germany.",
}
# LlamaIndex's workflows run inspect.getmembers() over pydantic models when an agent is built,
# which trips pydantic's deprecation warnings (not chainwatch's).
IGNORE_WORKFLOW_FIELDS = "ignore::pydantic.warnings.PydanticDeprecatedSince20:inspect"
IGNORE_WORKFLOW_MODEL_FIELDS = "ignore::pydantic.warnings.PydanticDeprecatedSince211:inspect"
dispatcher = get_dispatcher("chainwatch_tests")


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(autouse=True)
def li_settings(handler: ChainWatchHandler) -> Iterator[None]:
    """Mock models in LlamaIndex's global Settings for the test; everything restored after."""
    with llama_settings(handler):
        yield
    root = get_dispatcher()
    leftovers = [
        type(h).__name__
        for h in [*root.span_handlers, *root.event_handlers]
        if type(h).__name__.startswith("ChainWatch")
    ]
    assert leftovers == [], "a test left chainwatch handlers on the root dispatcher"


@pytest.fixture
def index() -> VectorStoreIndex:
    """An index built before chainwatch is attached, so its construction is not recorded."""
    return build_index()


@pytest.fixture
def instrumented(handler: ChainWatchHandler, index: VectorStoreIndex) -> ChainWatchHandler:
    """The handler on LlamaIndex's root dispatcher (removed again by `li_settings`)."""
    chainwatch.instrument_llama_index(handler)
    return handler


@pytest.fixture
def both(handler: ChainWatchHandler) -> ChainWatchHandler:
    """The handler on both paths at once, as a user who enables everything would have it."""
    Settings.callback_manager = CallbackManager([handler])
    chainwatch.instrument_llama_index(handler)
    return handler


@pytest.fixture
def openai_llm(fake_openai: FakeOpenAI) -> OpenAI:
    return OpenAI(
        model="gpt-4o-mini",
        api_base=fake_openai.base_url,
        api_key="sk-fake",
        max_retries=0,
        additional_kwargs={"stream_options": {"include_usage": True}},
    )


def build_index() -> VectorStoreIndex:
    return VectorStoreIndex.from_documents([Document(text=t, id_=k) for k, t in DOCS.items()])


def spans_of(handler: ChainWatchHandler, db_path: Path) -> list[Row]:
    assert handler.flush()
    return read_spans(db_path)


def child(spans: list[Row], name: str, parent: Row, **expected: Any) -> Row:
    return pop_span(
        spans, name, parent_id=parent["span_id"], trace_id=parent["trace_id"], **expected
    )


def by_trace(spans: list[Row]) -> dict[str, list[Row]]:
    traces: dict[str, list[Row]] = {}
    for span in spans:
        traces.setdefault(span["trace_id"], []).append(span)
    return traces


def ancestors(span: Row, spans: list[Row]) -> list[str]:
    """Names of the span's ancestors, nearest first."""
    index = {s["span_id"]: s for s in spans}
    names = []
    parent = span["parent_id"]
    while parent is not None:
        names.append(index[parent]["name"])
        parent = index[parent]["parent_id"]
    return names


def usage_of(span: Row) -> tuple[int | None, int | None, int | None]:
    return span["prompt_tokens"], span["completion_tokens"], span["total_tokens"]


def sent_usage(response: dict[str, Any]) -> tuple[int, int, int]:
    usage = response["usage"]
    return usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]


def openai_price(response: dict[str, Any]) -> float:
    usage = response["usage"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        price = calc_price(
            PriceUsage(
                input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"]
            ),
            "gpt-4o-mini",
            provider_id="openai",
        )
    return float(price.total_price)


def micros(iso: str) -> int:
    parsed = datetime.datetime.fromisoformat(iso)
    assert parsed.utcoffset() == datetime.timedelta(0)
    return int(parsed.timestamp()) * 1_000_000 + parsed.microsecond


def chunk_view(chunks: list[Any]) -> list[tuple[Any, ...]]:
    """What the user sees of each streamed chunk (ids and timestamps aside)."""
    return [(c.delta, c.message.content, c.message.role, c.additional_kwargs) for c in chunks]


def sources(response: Any) -> list[tuple[str, float | None]]:
    """A response's source texts and scores (ties between equal scores come in any order)."""
    return sorted((n.node.get_content(), n.score) for n in response.source_nodes)


class Boom(RuntimeError):
    """The user's own failure."""


class BrokenStreamLLM(CustomLLM):
    """A model whose stream yields one chunk and then fails."""

    _error: BaseException = PrivateAttr()

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="broken-stream")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text="unused")

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        def chunks() -> Iterator[CompletionResponse]:
            yield CompletionResponse(text="par", delta="par")
            raise self._error

        return chunks()


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


# -- query engine trees -----------------------------------------------------------------------


def test_query_tree_every_span_with_parents_and_kinds(
    instrumented: ChainWatchHandler, index: VectorStoreIndex, db_path: Path
) -> None:
    response = index.as_query_engine(similarity_top_k=2).query("What is the capital of France?")

    spans = spans_of(instrumented, db_path)
    root = pop_span(spans, "RetrieverQueryEngine.query", parent_id=None, kind="chain")
    assert root["trace_id"] == root["span_id"]
    query = child(spans, "RetrieverQueryEngine._query", root, kind="chain")
    retrieve = child(spans, "VectorIndexRetriever.retrieve", query, kind="retriever")
    inner_retrieve = child(spans, "VectorIndexRetriever._retrieve", retrieve, kind="retriever")
    embed = child(spans, "MockEmbedding.get_query_embedding", inner_retrieve, kind="embedding")
    child(spans, "MockEmbedding._get_query_embedding", embed, kind="embedding")
    synthesize = child(spans, "CompactAndRefine.synthesize", query, kind="chain")
    outer = child(spans, "CompactAndRefine.get_response", synthesize, kind="chain")
    child(spans, "TokenTextSplitter.split_text", outer, kind="chain")
    refine = child(spans, "CompactAndRefine.get_response", outer, kind="chain")
    child(spans, "TokenTextSplitter.split_text", refine, kind="chain")
    program = child(spans, "DefaultRefineProgram.__call__", refine, kind="chain")
    predict = child(spans, "MockLLM.predict", program, kind="llm")
    complete = child(spans, "MockLLM.complete", predict, kind="llm")
    assert spans == []

    assert all(s["status"] == "ok" for s in (root, query, retrieve, synthesize, predict))
    assert "What is the capital of France?" in root["inputs"]
    assert str(response) in root["outputs"]
    assert str(response) in complete["outputs"]
    # The inner model span is the same call: only the outer one counts.
    assert (predict["counts_usage"], complete["counts_usage"]) == (1, 0)
    assert chainwatch.summary(None, db=db_path)["count"] == 1


def test_retriever_span_outputs_hold_node_id_score_and_text(
    instrumented: ChainWatchHandler, index: VectorStoreIndex, db_path: Path
) -> None:
    response = index.as_query_engine(similarity_top_k=2).query("Which capital?")

    spans = spans_of(instrumented, db_path)
    retrieve = pop_span(spans, "VectorIndexRetriever.retrieve", kind="retriever")
    docs = json.loads(retrieve["outputs"])
    expected = {n.node.node_id: n for n in response.source_nodes}
    assert isinstance(docs, list) and len(docs) == len(expected) == 2
    for doc in docs:
        node = expected.pop(doc["id"])
        assert doc["score"] == pytest.approx(node.score)
        assert doc["text"] == node.node.get_content()
    assert expected == {}


def test_node_postprocessor_is_a_reranker_span(
    instrumented: ChainWatchHandler, index: VectorStoreIndex, db_path: Path
) -> None:
    engine = index.as_query_engine(
        similarity_top_k=2, node_postprocessors=[SimilarityPostprocessor(similarity_cutoff=0.0)]
    )
    engine.query("Which capital?")

    spans = spans_of(instrumented, db_path)
    query = pop_span(spans, "RetrieverQueryEngine._query")
    rerank = child(spans, "SimilarityPostprocessor._postprocess_nodes", query, kind="reranker")
    assert rerank["status"] == "ok"


def test_aquery_tree_every_span(
    instrumented: ChainWatchHandler, index: VectorStoreIndex, db_path: Path
) -> None:
    engine = index.as_query_engine(similarity_top_k=2)
    response = asyncio.run(engine.aquery("What is the capital of Germany?"))

    spans = spans_of(instrumented, db_path)
    root = pop_span(spans, "RetrieverQueryEngine.aquery", parent_id=None, kind="chain")
    query = child(spans, "RetrieverQueryEngine._aquery", root, kind="chain")
    retrieve = child(spans, "VectorIndexRetriever.aretrieve", query, kind="retriever")
    inner_retrieve = child(spans, "VectorIndexRetriever._aretrieve", retrieve, kind="retriever")
    embed = child(spans, "MockEmbedding.aget_query_embedding", inner_retrieve, kind="embedding")
    child(spans, "MockEmbedding._aget_query_embedding", embed, kind="embedding")
    synthesize = child(spans, "CompactAndRefine.asynthesize", query, kind="chain")
    outer = child(spans, "CompactAndRefine.aget_response", synthesize, kind="chain")
    child(spans, "TokenTextSplitter.split_text", outer, kind="chain")
    refine = child(spans, "CompactAndRefine.aget_response", outer, kind="chain")
    child(spans, "TokenTextSplitter.split_text", refine, kind="chain")
    predict = child(spans, "MockLLM.apredict", refine, kind="llm")
    acomplete = child(spans, "MockLLM.acomplete", predict, kind="llm")
    child(spans, "MockLLM.complete", acomplete, kind="llm")
    assert spans == []
    assert str(response) in root["outputs"]


def test_parallel_aqueries_give_separate_correct_trees(
    instrumented: ChainWatchHandler, index: VectorStoreIndex, db_path: Path
) -> None:
    engine = index.as_query_engine(similarity_top_k=2)
    questions = [f"question number {i}" for i in range(5)]

    async def run_all() -> list[Any]:
        return await asyncio.gather(*(engine.aquery(q) for q in questions))

    assert len(asyncio.run(run_all())) == len(questions)

    traces = by_trace(spans_of(instrumented, db_path))
    assert len(traces) == len(questions)
    seen = set()
    for spans in traces.values():
        root = pop_span(spans, "RetrieverQueryEngine.aquery", parent_id=None)
        question = json.loads(root["inputs"])["str_or_query_bundle"]
        seen.add(question)
        others = [q for q in questions if q != question]
        ids = {s["span_id"] for s in spans} | {root["span_id"]}
        for span in spans:
            assert span["parent_id"] in ids
            assert not any(q in (span["inputs"] or "") for q in others), span["name"]
        query = child(spans, "RetrieverQueryEngine._aquery", root)
        retrieve = child(spans, "VectorIndexRetriever.aretrieve", query, kind="retriever")
        assert question in retrieve["inputs"]
        synthesize = child(spans, "CompactAndRefine.asynthesize", query)
        predict = pop_span(spans, "MockLLM.apredict", kind="llm")
        assert ancestors(predict, [root, query, synthesize, predict, *spans])[-3:] == [
            "CompactAndRefine.asynthesize",
            "RetrieverQueryEngine._aquery",
            "RetrieverQueryEngine.aquery",
        ]
        assert question in predict["inputs"]
        assert len(spans) == 14 - 5
    assert seen == set(questions)


def test_create_task_inside_a_span_nests_under_it(
    instrumented: ChainWatchHandler, index: VectorStoreIndex, db_path: Path
) -> None:
    engine = index.as_query_engine(similarity_top_k=2)

    @dispatcher.span
    async def research(question: str) -> list[str]:
        tasks = [asyncio.create_task(engine.aquery(f"{question} {i}")) for i in range(2)]
        return [str(r) for r in await asyncio.gather(*tasks)]

    answers = asyncio.run(research("which capital"))
    assert len(answers) == 2

    spans = spans_of(instrumented, db_path)
    root = pop_span(spans, "test_create_task_inside_a_span_nests_under_it.<locals>.research")
    assert root["parent_id"] is None
    first = child(spans, "RetrieverQueryEngine.aquery", root)
    second = child(spans, "RetrieverQueryEngine.aquery", root)
    assert {json.loads(s["inputs"])["str_or_query_bundle"] for s in (first, second)} == {
        "which capital 0",
        "which capital 1",
    }
    assert all(s["trace_id"] == root["span_id"] for s in spans)
    assert len(spans) == 2 * 14 - 2


# -- OpenAI through the dispatcher ------------------------------------------------------------


def test_openai_chat_usage_model_finish_reason_and_cost(
    instrumented: ChainWatchHandler,
    db_path: Path,
    fake_openai: FakeOpenAI,
    openai_llm: OpenAI,
) -> None:
    fake_openai.queue(Reply(content="Hello there friend", prompt_tokens=11, completion_tokens=3))
    answer = openai_llm.chat([ChatMessage(role="user", content="hi")])
    assert answer.message.content == "Hello there friend"
    sent = fake_openai.responses[-1]

    spans = spans_of(instrumented, db_path)
    llm = pop_span(spans, "OpenAI.chat", parent_id=None, kind="llm", status="ok")
    assert spans == []
    assert usage_of(llm) == sent_usage(sent) == (11, 3, 14)
    assert llm["model"] == sent["model"] == "gpt-4o-mini"
    assert llm["provider"] == "openai"
    assert llm["finish_reason"] == "stop"
    assert llm["cost_usd"] == pytest.approx(openai_price(sent), rel=1e-9)
    assert llm["ttft_ms"] is None
    assert llm["framework"] == "llama_index"
    assert "Hello there friend" in llm["outputs"]


def test_openai_stream_chat_ttft_usage_and_duration_cover_the_stream(
    handler: ChainWatchHandler,
    db_path: Path,
    fake_openai: FakeOpenAI,
    openai_llm: OpenAI,
) -> None:
    messages = [ChatMessage(role="user", content="count to four")]
    reply = Reply(content="one two three four", prompt_tokens=7, completion_tokens=4)
    fake_openai.queue(reply)
    baseline = list(openai_llm.stream_chat(messages))

    chainwatch.instrument_llama_index(handler)
    fake_openai.queue(reply)
    called_us = time.time_ns() // 1000
    stream = openai_llm.stream_chat(messages)
    chunks = []
    received_us = []
    for chunk in stream:
        received_us.append(time.time_ns() // 1000)
        chunks.append(chunk)
    sent = fake_openai.responses[-1]

    assert chunk_view(chunks) == chunk_view(baseline)
    assert chunks[-1].message.content == "one two three four"
    spans = spans_of(handler, db_path)
    llm = pop_span(spans, "OpenAI.stream_chat", parent_id=None, kind="llm", status="ok")
    assert spans == []
    assert usage_of(llm) == sent_usage(sent) == (7, 4, 11)
    assert llm["model"] == "gpt-4o-mini"
    assert llm["finish_reason"] == "stop"
    assert llm["cost_usd"] == pytest.approx(openai_price(sent), rel=1e-9)
    assert llm["ttft_ms"] is not None
    assert 0 < llm["ttft_ms"] < llm["duration_ms"]
    start, end = micros(llm["start_time"]), micros(llm["end_time"])
    assert called_us <= start <= received_us[0]
    assert end >= received_us[-1], "the span stays open until the stream has been consumed"
    first = [e for e in read_events(db_path) if e["name"] == "first_token"]
    assert [e["span_id"] for e in first] == [llm["span_id"]]
    assert start <= micros(first[0]["time"]) <= end


def test_openai_stream_complete_ttft_and_usage(
    instrumented: ChainWatchHandler,
    db_path: Path,
    fake_openai: FakeOpenAI,
    openai_llm: OpenAI,
) -> None:
    fake_openai.queue(Reply(content="alpha beta gamma", prompt_tokens=5, completion_tokens=3))
    chunks = list(openai_llm.stream_complete("say three words"))
    assert "".join(c.delta or "" for c in chunks) == "alpha beta gamma"
    assert chunks[-1].text == "alpha beta gamma"
    sent = fake_openai.responses[-1]

    spans = spans_of(instrumented, db_path)
    llm = pop_span(spans, "OpenAI.stream_complete", parent_id=None, kind="llm", status="ok")
    assert spans == []
    assert usage_of(llm) == sent_usage(sent) == (5, 3, 8)
    assert llm["cost_usd"] == pytest.approx(openai_price(sent), rel=1e-9)
    assert llm["ttft_ms"] is not None and 0 < llm["ttft_ms"] < llm["duration_ms"]


def test_openai_async_chat_and_stream(
    instrumented: ChainWatchHandler,
    db_path: Path,
    fake_openai: FakeOpenAI,
    openai_llm: OpenAI,
) -> None:
    fake_openai.queue(
        Reply(content="first answer", prompt_tokens=9, completion_tokens=2),
        Reply(content="second streamed answer", prompt_tokens=13, completion_tokens=3),
    )
    messages = [ChatMessage(role="user", content="hi")]

    async def run() -> tuple[Any, list[Any]]:
        answer = await openai_llm.achat(messages)
        stream = await openai_llm.astream_chat(messages)
        return answer, [chunk async for chunk in stream]

    answer, chunks = asyncio.run(run())
    assert answer.message.content == "first answer"
    assert chunks[-1].message.content == "second streamed answer"
    achat_sent, stream_sent = fake_openai.responses[-2:]

    spans = spans_of(instrumented, db_path)
    achat = pop_span(spans, "OpenAI.achat", parent_id=None, kind="llm", status="ok")
    astream = pop_span(spans, "OpenAI.astream_chat", parent_id=None, kind="llm", status="ok")
    assert spans == []
    assert usage_of(achat) == sent_usage(achat_sent)
    assert usage_of(astream) == sent_usage(stream_sent)
    assert astream["ttft_ms"] is not None and 0 < astream["ttft_ms"] < astream["duration_ms"]


def test_stream_that_fails_midway_ends_its_span_with_the_error(
    instrumented: ChainWatchHandler, db_path: Path
) -> None:
    llm = BrokenStreamLLM()
    llm._error = Boom("stream broke")
    received = []
    with pytest.raises(Boom) as excinfo:
        for chunk in llm.stream_complete("hi"):
            received.append(chunk.delta)
    assert excinfo.value is llm._error
    assert received == ["par"]

    assert instrumented.stats["open_spans"] == 0, "the failed stream's span is still open"
    spans = spans_of(instrumented, db_path)
    broken = pop_span(spans, "BrokenStreamLLM.stream_complete", parent_id=None, kind="llm")
    assert spans == []
    assert broken["status"] == "error"
    assert broken["error"] == "Boom: stream broke"


# -- both paths enabled -----------------------------------------------------------------------


def run_openai_workload(
    fake_openai: FakeOpenAI, openai_llm: OpenAI
) -> tuple[list[dict[str, Any]], str]:
    """A query, a chat, a stream and an async stream: four model calls on the fake server."""
    engine = build_index().as_query_engine(llm=openai_llm, similarity_top_k=2)
    start = len(fake_openai.responses)
    fake_openai.queue(
        Reply(content="Paris it is", prompt_tokens=40, completion_tokens=3),
        Reply(content="Hello there friend", prompt_tokens=11, completion_tokens=3),
        Reply(content="one two three four", prompt_tokens=7, completion_tokens=4),
        Reply(content="five six", prompt_tokens=6, completion_tokens=2),
    )
    answer = str(engine.query("What is the capital of France?"))
    messages = [ChatMessage(role="user", content="hi")]
    openai_llm.chat(messages)
    list(openai_llm.stream_chat(messages))

    async def astream() -> list[Any]:
        return [chunk async for chunk in await openai_llm.astream_chat(messages)]

    asyncio.run(astream())
    sent = fake_openai.responses[start:]
    assert len(sent) == 4
    return sent, answer


def test_both_paths_count_each_call_once_in_summary_and_traces(
    both: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI, openai_llm: OpenAI
) -> None:
    openai_llm.callback_manager = Settings.callback_manager
    sent, answer = run_openai_workload(fake_openai, openai_llm)
    assert answer == "Paris it is"

    spans = spans_of(both, db_path)
    legacy_llm = [s for s in spans if s["name"] == "openai_llm"]
    assert len(legacy_llm) == 4, "the legacy path saw every call too"
    summary = chainwatch.summary(None, db=db_path)
    assert summary["count"] == 4
    assert summary["total_tokens"] == sum(r["usage"]["total_tokens"] for r in sent)
    assert summary["total_cost_usd"] == pytest.approx(sum(openai_price(r) for r in sent))
    assert summary["unpriced_calls"] == 0
    assert summary["errors"] == 0

    rows = [r for r in chainwatch.traces(db=db_path) if r["llm_calls"]]
    assert sorted(r["total_tokens"] for r in rows) == sorted(
        r["usage"]["total_tokens"] for r in sent
    )
    assert sum(r["prompt_tokens"] for r in rows) == sum(r["usage"]["prompt_tokens"] for r in sent)
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(sum(openai_price(r) for r in sent))


def test_both_paths_trace_view_totals_count_each_call_once(
    both: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI, openai_llm: OpenAI
) -> None:
    openai_llm.callback_manager = Settings.callback_manager
    sent, _ = run_openai_workload(fake_openai, openai_llm)

    rows = [r for r in chainwatch.traces(db=db_path) if r["llm_calls"]]
    totals = [chainwatch.trace(r["trace_id"], db=db_path).totals() for r in rows]
    assert sum(t["prompt_tokens"] for t in totals) == sum(r["usage"]["prompt_tokens"] for r in sent)
    assert sum(t["completion_tokens"] for t in totals) == sum(
        r["usage"]["completion_tokens"] for r in sent
    )
    assert sum(t["cost_usd"] for t in totals) == pytest.approx(sum(openai_price(r) for r in sent))


def test_both_paths_nest_legacy_events_inside_the_dispatcher_trace(
    both: ChainWatchHandler, db_path: Path
) -> None:
    build_index().as_query_engine(similarity_top_k=2).query("Which capital?")

    spans = spans_of(both, db_path)
    spans = [s for s in spans if s["trace_id"].startswith("RetrieverQueryEngine.query-")]
    root = pop_span(spans, "RetrieverQueryEngine.query", parent_id=None)
    legacy_root = child(spans, "query", root, kind="chain")
    legacy_query = child(spans, "query", legacy_root, kind="chain")
    child(spans, "retrieve", legacy_query, kind="retriever")
    legacy_llm = pop_span(spans, "MockLLM", kind="llm")
    dispatcher_llm = pop_span(spans, "MockLLM.complete", kind="llm")
    assert legacy_llm["trace_id"] == root["span_id"]
    assert legacy_llm["counts_usage"] == 0
    assert json.loads(legacy_llm["metadata"])["duplicate_of"] == dispatcher_llm["span_id"]
    assert all(s["trace_id"] == root["span_id"] for s in spans)


# -- streaming query engine -------------------------------------------------------------------


@pytest.mark.parametrize("paths", ["dispatcher", "both", "legacy"])
def test_streaming_query_engine_response_reaches_the_user_whole(
    handler: ChainWatchHandler,
    db_path: Path,
    fake_openai: FakeOpenAI,
    openai_llm: OpenAI,
    paths: str,
) -> None:
    """The model call starts lazily, when the user reads the stream (so in a trace of its own)."""
    if paths != "legacy":
        chainwatch.instrument_llama_index(handler)
    if paths != "dispatcher":
        Settings.callback_manager = CallbackManager([handler])
        openai_llm.callback_manager = Settings.callback_manager
    engine = build_index().as_query_engine(llm=openai_llm, streaming=True, similarity_top_k=2)
    fake_openai.queue(Reply(content="Paris is the capital city", completion_tokens=5))

    response = engine.query("What is the capital of France?")
    assert type(response).__name__ == "StreamingResponse"
    assert str(response) == "Paris is the capital city"
    sent = fake_openai.responses[-1]

    spans = spans_of(handler, db_path)
    counted = [s for s in spans if s["kind"] == "llm" and s["counts_usage"]]
    assert len(counted) == 1
    assert usage_of(counted[0]) == sent_usage(sent)
    assert counted[0]["status"] == "ok"
    if paths == "legacy":
        # LlamaIndex's legacy callbacks have no per-chunk event: no time to first token there.
        assert counted[0]["ttft_ms"] is None
    else:
        assert counted[0]["ttft_ms"] is not None
    assert chainwatch.summary(None, db=db_path)["total_tokens"] == sent["usage"]["total_tokens"]


# -- agents -----------------------------------------------------------------------------------


def run_agent(fake_openai: FakeOpenAI, openai_llm: OpenAI) -> tuple[str, list[dict[str, Any]]]:
    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(multiply)],
        llm=openai_llm,
        system_prompt="You multiply numbers with the tool.",
    )
    start = len(fake_openai.responses)
    fake_openai.queue(
        Reply(tool_calls=[{"name": "multiply", "arguments": {"a": 6, "b": 7}}]),
        Reply(content="The answer is 42"),
    )

    async def run() -> Any:
        return await agent.run("What is 6 times 7?")

    result = asyncio.run(run())
    return str(result), fake_openai.responses[start:]


@pytest.mark.filterwarnings(IGNORE_WORKFLOW_FIELDS)
@pytest.mark.filterwarnings(IGNORE_WORKFLOW_MODEL_FIELDS)
def test_function_agent_tool_span_nests_in_the_agent_trace(
    instrumented: ChainWatchHandler,
    db_path: Path,
    fake_openai: FakeOpenAI,
    openai_llm: OpenAI,
) -> None:
    answer, sent = run_agent(fake_openai, openai_llm)
    assert answer == "The answer is 42"
    assert len(sent) == 2

    spans = spans_of(instrumented, db_path)
    assert len(by_trace(spans)) == 1
    everything = list(spans)
    root = pop_span(spans, "FunctionAgent.run", parent_id=None, kind="agent", status="ok")
    tool = pop_span(spans, "FunctionTool.acall", kind="tool", status="ok")
    assert tool["trace_id"] == root["span_id"]
    assert ancestors(tool, everything)[-1] == "FunctionAgent.run"
    assert json.loads(tool["inputs"])["kwargs"] == {"a": 6, "b": 7}
    assert "42" in tool["outputs"]
    steps = [s for s in spans if s["name"] == "OpenAI.astream_chat"]
    assert [usage_of(s) for s in steps] == [sent_usage(r) for r in sent]
    assert all(s["kind"] == "llm" and s["trace_id"] == root["span_id"] for s in steps)
    assert "What is 6 times 7?" in root["inputs"]
    assert "The answer is 42" in root["outputs"]


@pytest.mark.filterwarnings(IGNORE_WORKFLOW_FIELDS)
@pytest.mark.filterwarnings(IGNORE_WORKFLOW_MODEL_FIELDS)
def test_function_agent_counts_each_model_call_once(
    instrumented: ChainWatchHandler,
    db_path: Path,
    fake_openai: FakeOpenAI,
    openai_llm: OpenAI,
) -> None:
    """Two requests reached the provider: two priced LLM calls, nothing unpriced."""
    _, sent = run_agent(fake_openai, openai_llm)

    summary = chainwatch.summary(None, db=db_path)
    assert summary["total_tokens"] == sum(r["usage"]["total_tokens"] for r in sent)
    assert summary["count"] == len(sent) == 2
    assert summary["unpriced_calls"] == 0
    (row,) = chainwatch.traces(db=db_path)
    assert row["llm_calls"] == 2
    assert row["unpriced_calls"] == 0


@pytest.mark.filterwarnings(IGNORE_WORKFLOW_FIELDS)
@pytest.mark.filterwarnings(IGNORE_WORKFLOW_MODEL_FIELDS)
def test_function_agent_tool_call_stream_has_time_to_first_token(
    instrumented: ChainWatchHandler,
    db_path: Path,
    fake_openai: FakeOpenAI,
    openai_llm: OpenAI,
) -> None:
    """A streamed reply made only of a tool call still has a first token (as in LangChain)."""
    run_agent(fake_openai, openai_llm)

    spans = spans_of(instrumented, db_path)
    steps = [s for s in spans if s["name"] == "OpenAI.astream_chat"]
    assert len(steps) == 2
    assert [s["finish_reason"] for s in steps] == ["tool_calls", "stop"]
    for step in steps:
        assert step["ttft_ms"] is not None, step["finish_reason"]
        assert 0 < step["ttft_ms"] < step["duration_ms"]


# -- faults inside chainwatch -----------------------------------------------------------------


RECORDER_METHODS = ("start", "end", "event", "get", "trace_of")


def break_recorder(handler: ChainWatchHandler, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every recorder method the integrations call raises; internal errors are swallowed."""
    monkeypatch.setattr(chainwatch._errors.state, "raise_internal", False)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected chainwatch fault")

    for name in RECORDER_METHODS:
        monkeypatch.setattr(handler.recorder, name, broken)


@pytest.mark.allow_internal_errors
@pytest.mark.parametrize("paths", ["dispatcher", "both"])
def test_faults_in_every_handler_method_leave_results_unchanged(
    handler: ChainWatchHandler,
    monkeypatch: pytest.MonkeyPatch,
    fake_openai: FakeOpenAI,
    openai_llm: OpenAI,
    paths: str,
) -> None:
    question = "What is the capital of France?"
    messages = [ChatMessage(role="user", content="count to four")]
    reply = Reply(content="one two three four")
    baseline = build_index().as_query_engine(similarity_top_k=2).query(question)
    fake_openai.queue(reply)
    baseline_chunks = list(openai_llm.stream_chat(messages))

    chainwatch.instrument_llama_index(handler)
    if paths == "both":
        Settings.callback_manager = CallbackManager([handler])
        openai_llm.callback_manager = Settings.callback_manager
    engine = build_index().as_query_engine(similarity_top_k=2)
    break_recorder(handler, monkeypatch)
    before = chainwatch._errors.total_errors()

    response = engine.query(question)
    async_response = asyncio.run(engine.aquery(question))
    fake_openai.queue(reply)
    chunks = list(openai_llm.stream_chat(messages))
    llm = BrokenStreamLLM()
    llm._error = Boom("stream broke")
    with pytest.raises(Boom) as excinfo:
        list(llm.stream_complete("hi"))

    assert chainwatch._errors.total_errors() > before, "the faults were hit"
    assert str(response) == str(async_response) == str(baseline)
    assert sources(response) == sources(async_response) == sources(baseline)
    assert chunk_view(chunks) == chunk_view(baseline_chunks)
    assert excinfo.value is llm._error


class City(BaseModel):
    name: str


@pytest.mark.parametrize("paths", ["dispatcher", "both"])
def test_structured_predict_counts_its_call_and_ends(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI, paths: str
) -> None:
    """`structured_predict` goes through `predict_and_call` (for a model without JSON-schema
    output), whose `AgentChatResponse` has a `response_gen` property: it is not a stream, and
    its model call counts once."""
    openai_llm = OpenAI(model="gpt-3.5-turbo", api_base=fake_openai.base_url,
                        api_key="sk-fake", max_retries=0)
    if paths == "both":
        Settings.callback_manager = CallbackManager([handler])
        openai_llm.callback_manager = Settings.callback_manager
    chainwatch.instrument_llama_index(handler)
    fake_openai.queue(
        Reply(tool_calls=[{"name": "City", "arguments": {"name": "Paris"}}],
              prompt_tokens=30, completion_tokens=10)
    )
    before = len(fake_openai.responses)
    city = openai_llm.structured_predict(City, PromptTemplate("capital of {c}?"), c="France")
    assert city == City(name="Paris")
    spans = spans_of(handler, db_path)
    assert handler.stats["open_spans"] == 0
    assert [s["name"] for s in spans if s["status"] != "ok"] == []
    [sent] = fake_openai.responses[before:]
    counted = [s for s in spans if s["kind"] == "llm" and s["counts_usage"]]
    assert sum(s["total_tokens"] or 0 for s in counted) == sent["usage"]["total_tokens"]
    [trace] = chainwatch.traces(db=db_path)
    assert trace["total_tokens"] == sent["usage"]["total_tokens"]
    price = calc_price(PriceUsage(input_tokens=30, output_tokens=10), "gpt-3.5-turbo",
                       provider_id="openai")
    assert trace["cost_usd"] == pytest.approx(float(price.total_price))


def test_a_stream_the_reader_abandons_is_not_a_failed_call(
    instrumented: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI, openai_llm: OpenAI
) -> None:
    fake_openai.queue(Reply(content="one two three four"))
    stream = openai_llm.stream_chat([ChatMessage(role="user", content="count")])
    next(stream)  # the role chunk
    assert next(stream).delta
    stream.close()  # what a `break` out of the loop, or a client that went away, comes to
    spans = [s for s in spans_of(instrumented, db_path) if s["kind"] == "llm"]
    assert spans and instrumented.stats["open_spans"] == 0
    assert [(s["status"], s["error"]) for s in spans] == [("ok", None)] * len(spans)
    assert all(json.loads(s["metadata"]).get("stream_abandoned") for s in spans)
