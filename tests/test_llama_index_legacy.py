"""LlamaIndex's legacy CallbackManager path: real indexes, engines and models, read back by SQL."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.callbacks.schema import LEAF_EVENTS
from llama_index.core.llms import (
    ChatMessage,
    CompletionResponse,
    CustomLLM,
    LLMMetadata,
)
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.query_engine import CustomQueryEngine, RetrieverQueryEngine
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.llms.openai import OpenAI
from pydantic import PrivateAttr

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
TRUNCATION_MARK = "…[truncated "


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(autouse=True)
def li_settings(handler: ChainWatchHandler) -> Iterator[None]:
    """Mock models in LlamaIndex's global Settings for the test; everything restored after."""
    with llama_settings(handler):
        yield


@pytest.fixture
def legacy(handler: ChainWatchHandler) -> ChainWatchHandler:
    """The handler attached the legacy way: `Settings.callback_manager`."""
    Settings.callback_manager = CallbackManager([handler])
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


def trace_named(spans: list[Row], name: str) -> list[Row]:
    """The spans of the one trace whose root is called `name`."""
    roots = [s for s in spans if s["parent_id"] is None and s["name"] == name]
    assert len(roots) == 1, [(s["name"], s["parent_id"]) for s in spans]
    return [s for s in spans if s["trace_id"] == roots[0]["span_id"]]


def child(spans: list[Row], name: str, parent: Row, **expected: Any) -> Row:
    return pop_span(
        spans, name, parent_id=parent["span_id"], trace_id=parent["trace_id"], **expected
    )


def loads(value: str | None) -> Any:
    assert value is not None
    return json.loads(value)


def retrieved(outputs: Any) -> list[dict[str, Any]]:
    """The list of retrieved documents inside a legacy retrieve span's outputs."""
    assert isinstance(outputs, dict), outputs
    lists = [v for v in outputs.values() if isinstance(v, list)]
    assert len(lists) == 1, outputs
    return lists[0]


def sources(response: Any) -> list[tuple[str, float | None]]:
    """A response's source texts and scores (ties between equal scores come in any order)."""
    return sorted((n.node.get_content(), n.score) for n in response.source_nodes)


def assert_text_or_prefix(stored: Any, full: str) -> None:
    """`stored` is `full`, or a visibly truncated non-empty prefix of it."""
    assert isinstance(stored, str), stored
    if stored == full:
        return
    assert TRUNCATION_MARK in stored, stored[:200]
    prefix = stored.split(TRUNCATION_MARK, 1)[0]
    assert prefix and full.startswith(prefix)


def openai_price(usage: dict[str, Any]) -> float:
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


class Boom(RuntimeError):
    """The user's own failure."""


class FailingLLM(CustomLLM):
    """A completion model that raises the exception it was given."""

    _error: BaseException = PrivateAttr()

    @classmethod
    def class_name(cls) -> str:
        return "FailingLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="failing")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        raise self._error

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise self._error


class FailingRetriever(BaseRetriever):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        raise self.error


class FailingEngine(CustomQueryEngine):
    """A query engine whose own code raises outside any LlamaIndex event."""

    _error: BaseException = PrivateAttr()

    def custom_query(self, query_str: str) -> str:
        raise self._error


# -- trees ------------------------------------------------------------------------------------


def test_query_trace_tree_kinds_and_parents(legacy: ChainWatchHandler, db_path: Path) -> None:
    index = build_index()
    response = index.as_query_engine(similarity_top_k=2).query("What is the capital of France?")

    spans = trace_named(spans_of(legacy, db_path), "query")
    root = pop_span(spans, "query", parent_id=None, kind="chain", status="ok")
    assert root["trace_id"] == root["span_id"]
    assert root["framework"] == "llama_index"
    query = child(spans, "query", root, kind="chain", status="ok")
    retrieve = child(spans, "retrieve", query, kind="retriever", status="ok")
    child(spans, "MockEmbedding", retrieve, kind="embedding", status="ok")
    synthesize = child(spans, "synthesize", query, kind="chain", status="ok")
    child(spans, "chunking", synthesize, kind="chain", status="ok")
    child(spans, "chunking", synthesize, kind="chain", status="ok")
    templating = child(spans, "templating", synthesize, kind="prompt", status="ok")
    llm = child(spans, "MockLLM", synthesize, kind="llm", status="ok")
    assert spans == []

    assert "What is the capital of France?" in query["inputs"]
    assert "What is the capital of France?" in llm["inputs"]
    assert str(response) in llm["outputs"]
    assert "Context information is below" in templating["inputs"]
    for span in (root, query, retrieve, synthesize, llm):
        assert span["framework"] == "llama_index"
        assert span["end_time"] >= span["start_time"]
        assert span["duration_ms"] >= 0


def test_index_construction_trace(legacy: ChainWatchHandler, db_path: Path) -> None:
    build_index()

    spans = spans_of(legacy, db_path)
    root = pop_span(spans, "index_construction", parent_id=None, kind="chain", status="ok")
    assert root["trace_id"] == root["span_id"]
    parsing = child(spans, "node_parsing", root, kind="chain", status="ok")
    first = child(spans, "chunking", parsing, kind="chain", status="ok")
    second = child(spans, "chunking", parsing, kind="chain", status="ok")
    child(spans, "MockEmbedding", root, kind="embedding", status="ok")
    assert spans == []
    chunked = first["inputs"] + second["inputs"]
    assert DOCS["paris"] in chunked and DOCS["berlin"] in chunked


@pytest.mark.parametrize(
    ("event_type", "kind"),
    [
        (CBEventType.QUERY, "chain"),
        (CBEventType.RETRIEVE, "retriever"),
        (CBEventType.SYNTHESIZE, "chain"),
        (CBEventType.LLM, "llm"),
        (CBEventType.EMBEDDING, "embedding"),
        (CBEventType.CHUNKING, "chain"),
        (CBEventType.NODE_PARSING, "chain"),
        (CBEventType.TEMPLATING, "prompt"),
        (CBEventType.RERANKING, "reranker"),
        (CBEventType.FUNCTION_CALL, "tool"),
        (CBEventType.AGENT_STEP, "agent"),
        (CBEventType.SUB_QUESTION, "chain"),
        (CBEventType.TREE, "chain"),
    ],
)
def test_every_event_type_is_a_span_of_its_kind(
    legacy: ChainWatchHandler, db_path: Path, event_type: CBEventType, kind: str
) -> None:
    manager = Settings.callback_manager
    with (
        manager.as_trace("custom"),
        manager.event(event_type, payload={EventPayload.QUERY_STR: "q"}),
    ):
        with manager.event(CBEventType.CHUNKING, payload={EventPayload.CHUNKS: ["c"]}):
            pass

    spans = spans_of(legacy, db_path)
    root = pop_span(spans, "custom", parent_id=None, kind="chain", status="ok")
    event = child(spans, event_type.value, root, kind=kind, status="ok")
    # LlamaIndex never nests events under its leaf events (llm, embedding, chunking).
    child(spans, "chunking", root if event_type in LEAF_EVENTS else event, kind="chain")
    assert spans == []


def test_event_outside_a_trace_is_a_root_with_null_parent(
    legacy: ChainWatchHandler, db_path: Path
) -> None:
    manager = Settings.callback_manager
    with manager.event(CBEventType.RETRIEVE, payload={EventPayload.QUERY_STR: "q"}):
        with manager.event(CBEventType.EMBEDDING, payload={EventPayload.CHUNKS: ["q"]}):
            pass

    spans = spans_of(legacy, db_path)
    retrieve = pop_span(spans, "retrieve", parent_id=None, kind="retriever")
    assert retrieve["trace_id"] == retrieve["span_id"]
    child(spans, "embedding", retrieve, kind="embedding")
    assert spans == []


# -- retrieval documents ----------------------------------------------------------------------


def test_retrieve_span_outputs_hold_node_id_score_and_text(
    legacy: ChainWatchHandler, db_path: Path
) -> None:
    response = build_index().as_query_engine(similarity_top_k=2).query("Which capital?")

    spans = trace_named(spans_of(legacy, db_path), "query")
    retrieve = pop_span(spans, "retrieve", kind="retriever")
    docs = retrieved(loads(retrieve["outputs"]))
    expected = {n.node.node_id: n for n in response.source_nodes}
    assert len(docs) == len(expected) == 2
    for doc in docs:
        node = expected.pop(doc["id"])
        assert doc["score"] == pytest.approx(node.score)
        assert doc["text"] == node.node.get_content()
    assert expected == {}


def test_many_long_retrieved_documents_keep_id_and_score(
    legacy: ChainWatchHandler, db_path: Path
) -> None:
    """Retrieval outputs larger than max_chars still hold each document's id and score."""
    texts = {f"doc{i}": f"Document {i} holds " + "information " * 350 for i in range(12)}
    index = VectorStoreIndex.from_documents([Document(text=t, id_=k) for k, t in texts.items()])
    response = index.as_query_engine(similarity_top_k=12).query("What do the documents say?")
    assert len(response.source_nodes) == 12
    retrieved_chars = sum(len(n.node.get_content()) for n in response.source_nodes)
    assert retrieved_chars > legacy.config.max_chars

    spans = trace_named(spans_of(legacy, db_path), "query")
    retrieve = pop_span(spans, "retrieve", kind="retriever")
    docs = retrieved(loads(retrieve["outputs"]))
    expected = {n.node.node_id: n for n in response.source_nodes}
    assert len(docs) == 12
    for doc in docs:
        node = expected.pop(doc["id"])
        assert doc["score"] == pytest.approx(node.score)
        assert_text_or_prefix(doc["text"], node.node.get_content())
    assert expected == {}


# -- failures ---------------------------------------------------------------------------------


def test_failing_llm_in_a_query_marks_the_trace_failed(
    legacy: ChainWatchHandler, db_path: Path
) -> None:
    index = build_index()
    llm = FailingLLM()
    llm._error = Boom("model exploded")
    engine = index.as_query_engine(llm=llm, similarity_top_k=2)

    with pytest.raises(Boom) as excinfo:
        engine.query("What is the capital of France?")
    assert excinfo.value is llm._error
    assert str(excinfo.value) == "model exploded"

    spans = trace_named(spans_of(legacy, db_path), "query")
    root = pop_span(spans, "query", parent_id=None, kind="chain")
    query = child(spans, "query", root, kind="chain")
    retrieve = child(spans, "retrieve", query, kind="retriever", status="ok")
    child(spans, "MockEmbedding", retrieve, kind="embedding", status="ok")
    synthesize = child(spans, "synthesize", query, kind="chain")
    child(spans, "chunking", synthesize, kind="chain")
    child(spans, "chunking", synthesize, kind="chain")
    child(spans, "templating", synthesize, kind="prompt")
    failed = child(spans, "FailingLLM", synthesize, kind="llm", status="error")
    exception = child(spans, "exception", synthesize, kind="other", status="error")
    assert spans == []
    assert failed["error"] == exception["error"] == "Boom: model exploded"
    assert failed["cost_usd"] is None
    assert root["status"] == "error", "the query raised, so its trace failed"
    assert root["error"] == "Boom: model exploded"


def test_a_query_inside_the_apps_except_block_is_not_its_error(
    legacy: ChainWatchHandler, db_path: Path
) -> None:
    """A fallback query run while the app handles its own exception succeeds: status ok."""
    engine = build_index().as_query_engine(similarity_top_k=1)
    try:
        raise KeyError("the app's own, already handled")
    except KeyError:
        answer = engine.query("What is the capital of France?")
    assert str(answer)
    spans = trace_named(spans_of(legacy, db_path), "query")
    assert [(s["name"], s["status"]) for s in spans if s["status"] != "ok"] == []
    [row] = [t for t in chainwatch.traces(db=db_path) if t["name"] == "query"]
    assert row["status"] == "ok" and row["error"] is None


def test_failing_retriever_marks_the_trace_failed(legacy: ChainWatchHandler, db_path: Path) -> None:
    error = Boom("retriever exploded")
    engine = RetrieverQueryEngine.from_args(FailingRetriever(error))

    with pytest.raises(Boom) as excinfo:
        engine.query("anything?")
    assert excinfo.value is error

    spans = trace_named(spans_of(legacy, db_path), "query")
    root = pop_span(spans, "query", parent_id=None, kind="chain")
    query = child(spans, "query", root, kind="chain")
    retrieve = child(spans, "retrieve", query, kind="retriever", status="error")
    assert spans == []
    assert retrieve["error"] == "Boom: retriever exploded"
    assert root["status"] == "error", "the query raised, so its trace failed"
    assert root["error"] == "Boom: retriever exploded"


def test_exception_event_becomes_an_error_span_and_fails_the_trace(
    legacy: ChainWatchHandler, db_path: Path
) -> None:
    engine = FailingEngine()
    engine._error = Boom("engine exploded")

    with pytest.raises(Boom) as excinfo:
        engine.query("anything?")
    assert excinfo.value is engine._error

    spans = spans_of(legacy, db_path)
    root = pop_span(spans, "query", parent_id=None, kind="chain", status="error")
    exception = child(spans, "exception", root, kind="other", status="error")
    assert spans == []
    assert exception["error"] == "Boom: engine exploded"
    assert root["error"] == "Boom: engine exploded"
    events = [e for e in read_events(db_path) if e["span_id"] == exception["span_id"]]
    assert [e["name"] for e in events] == ["exception"]
    assert json.loads(events[0]["attributes"])["type"] == "Boom"


# -- model calls ------------------------------------------------------------------------------


def test_openai_chat_usage_model_finish_reason_and_cost(
    legacy: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI, openai_llm: OpenAI
) -> None:
    openai_llm.callback_manager = Settings.callback_manager
    fake_openai.queue(Reply(content="Hello there friend", prompt_tokens=11, completion_tokens=3))
    answer = openai_llm.chat([ChatMessage(role="user", content="hi")])
    assert answer.message.content == "Hello there friend"
    sent = fake_openai.responses[-1]

    spans = spans_of(legacy, db_path)
    root = pop_span(spans, "chat", parent_id=None, kind="chain", status="ok")
    llm = child(spans, "openai_llm", root, kind="llm", status="ok")
    assert spans == []
    assert (llm["prompt_tokens"], llm["completion_tokens"], llm["total_tokens"]) == (
        sent["usage"]["prompt_tokens"],
        sent["usage"]["completion_tokens"],
        sent["usage"]["total_tokens"],
    )
    assert llm["model"] == sent["model"] == "gpt-4o-mini"
    assert llm["finish_reason"] == "stop"
    assert llm["cost_usd"] == pytest.approx(openai_price(sent["usage"]), rel=1e-9)
    assert "Hello there friend" in llm["outputs"]


def test_openai_stream_chat_usage_reaches_the_llm_span(
    legacy: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI, openai_llm: OpenAI
) -> None:
    """The legacy LLM event of a stream ends when the stream is consumed, after end_trace."""
    openai_llm.callback_manager = Settings.callback_manager
    fake_openai.queue(Reply(content="one two three four", prompt_tokens=7, completion_tokens=4))
    chunks = list(openai_llm.stream_chat([ChatMessage(role="user", content="hi")]))
    assert "".join(c.delta or "" for c in chunks) == "one two three four"
    sent = fake_openai.responses[-1]

    spans = spans_of(legacy, db_path)
    root = pop_span(spans, "chat", parent_id=None, kind="chain")
    llm = child(spans, "openai_llm", root, kind="llm")
    assert spans == []
    assert llm["status"] == "ok", llm["error"]
    assert (llm["prompt_tokens"], llm["completion_tokens"], llm["total_tokens"]) == (
        sent["usage"]["prompt_tokens"],
        sent["usage"]["completion_tokens"],
        sent["usage"]["total_tokens"],
    )
    assert llm["cost_usd"] == pytest.approx(openai_price(sent["usage"]), rel=1e-9)
    summary = chainwatch.summary(None, db=db_path)
    assert summary["errors"] == 0
    assert summary["total_tokens"] == sent["usage"]["total_tokens"]


# -- concurrency ------------------------------------------------------------------------------


def test_parallel_aqueries_give_separate_correct_trees(
    legacy: ChainWatchHandler, db_path: Path
) -> None:
    engine = build_index().as_query_engine(similarity_top_k=2)
    questions = [f"question number {i}" for i in range(4)]

    async def run_all() -> list[Any]:
        return await asyncio.gather(*(engine.aquery(q) for q in questions))

    responses = asyncio.run(run_all())
    assert len(responses) == len(questions)

    spans = spans_of(legacy, db_path)
    construction = {s["span_id"] for s in trace_named(spans, "index_construction")}
    spans = [s for s in spans if s["span_id"] not in construction]
    by_trace: dict[str, list[Row]] = {}
    for span in spans:
        by_trace.setdefault(span["trace_id"], []).append(span)
    assert len(by_trace) == len(questions)

    seen = set()
    for trace in by_trace.values():
        root = pop_span(trace, "query", parent_id=None, kind="chain", status="ok")
        query = child(trace, "query", root, kind="chain", status="ok")
        question = next(q for q in questions if q in query["inputs"])
        seen.add(question)
        retrieve = child(trace, "retrieve", query, kind="retriever", status="ok")
        assert question in retrieve["inputs"]
        child(trace, "MockEmbedding", retrieve, kind="embedding", status="ok")
        synthesize = child(trace, "synthesize", query, kind="chain", status="ok")
        child(trace, "chunking", synthesize, kind="chain")
        child(trace, "chunking", synthesize, kind="chain")
        child(trace, "templating", synthesize, kind="prompt")
        # MockLLM.acomplete calls its own complete: LlamaIndex reports two LLM events.
        for _ in range(2):
            llm = child(trace, "MockLLM", synthesize, kind="llm", status="ok")
            assert question in llm["inputs"]
            assert not any(q in llm["inputs"] for q in questions if q != question)
        assert trace == []
    assert seen == set(questions)


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
def test_faults_in_every_handler_method_leave_the_query_unchanged(
    handler: ChainWatchHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    question = "What is the capital of France?"
    baseline = build_index().as_query_engine(similarity_top_k=2).query(question)

    Settings.callback_manager = CallbackManager([handler])
    engine = build_index().as_query_engine(similarity_top_k=2)
    break_recorder(handler, monkeypatch)
    before = chainwatch._errors.total_errors()
    response = engine.query(question)

    assert chainwatch._errors.total_errors() > before, "the faults were hit"
    assert str(response) == str(baseline)
    assert sources(response) == sources(baseline)


@pytest.mark.allow_internal_errors
def test_faults_leave_the_users_exception_and_stream_unchanged(
    handler: ChainWatchHandler,
    monkeypatch: pytest.MonkeyPatch,
    fake_openai: FakeOpenAI,
    openai_llm: OpenAI,
) -> None:
    Settings.callback_manager = CallbackManager([handler])
    openai_llm.callback_manager = Settings.callback_manager
    break_recorder(handler, monkeypatch)
    error = Boom("retriever exploded")
    with pytest.raises(Boom) as excinfo:
        RetrieverQueryEngine.from_args(FailingRetriever(error)).query("anything?")
    assert excinfo.value is error

    fake_openai.queue(Reply(content="one two three four"))
    chunks = list(openai_llm.stream_chat([ChatMessage(role="user", content="hi")]))
    assert [c.delta for c in chunks if c.delta] == ["one ", "two ", "three ", "four"]
    assert chunks[-1].message.content == "one two three four"
