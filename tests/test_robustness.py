"""chainwatch never breaks the app: injected faults, malformed inputs, bad configuration, memory."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import json
import logging
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun, dispatch_custom_event
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.tools import tool

import chainwatch
from chainwatch import ChainWatchHandler, _errors, usage
from conftest import read_events, read_spans

MS = 1_000_000
DOCS = [
    Document(page_content="Paris is the capital of France.", metadata={"id": 1}),
    Document(page_content="Berlin is the capital of Germany.", metadata={"id": 2}),
]
PROMPT = ChatPromptTemplate.from_messages(
    [("system", "Answer from: {context}"), ("human", "{question}")]
)


class KeywordRetriever(BaseRetriever):
    """Documents that contain the query, or the user's own failure."""

    docs: list[Document]
    failure: Exception | None = None

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        if self.failure is not None:
            raise self.failure
        return [d for d in self.docs if query.lower() in d.page_content.lower()]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _answer(text: str, model: str = "gpt-4o-mini") -> AIMessage:
    return AIMessage(
        content=text,
        usage_metadata={"input_tokens": 12, "output_tokens": 5, "total_tokens": 17},
        response_metadata={"model_name": model, "finish_reason": "stop"},
    )


def _join(docs: list[Document]) -> str:
    return "\n".join(d.page_content for d in docs)


def scenarios(err: Exception) -> dict[str, Callable[[dict[str, Any]], Any]]:
    """Each builds fresh components (fake models are stateful) and runs them once."""

    def rag(config: dict[str, Any]) -> Any:
        model = GenericFakeChatModel(messages=iter([_answer("Paris.")]))
        chain = (
            {"context": KeywordRetriever(docs=DOCS) | _join, "question": RunnablePassthrough()}
            | PROMPT
            | model
            | StrOutputParser()
        )
        return chain.invoke("paris", config=config)

    def stream(config: dict[str, Any]) -> Any:
        model = GenericFakeChatModel(messages=iter(["one two three"]))
        chain = PROMPT | model | StrOutputParser()
        return list(chain.stream({"context": "c", "question": "count"}, config=config))

    def batch(config: dict[str, Any]) -> Any:
        model = FakeListChatModel(responses=["a", "b", "c", "d"])
        chain = PROMPT | model | StrOutputParser()
        inputs = [{"context": "c", "question": str(i)} for i in range(4)]
        return sorted(chain.batch(inputs, config={**config, "max_concurrency": 4}))

    def asynchronous(config: dict[str, Any]) -> Any:
        model = GenericFakeChatModel(messages=iter([_answer("async answer")]))
        chain = PROMPT | model | StrOutputParser()
        return asyncio.run(chain.ainvoke({"context": "c", "question": "q"}, config=config))

    def tool_call(config: dict[str, Any]) -> Any:
        return add.invoke({"a": 2, "b": 3}, config=config)

    def events_and_retry(config: dict[str, Any]) -> Any:
        attempts = []

        def flaky(x: int) -> int:
            dispatch_custom_event("progress", {"attempt": len(attempts)})
            attempts.append(x)
            if len(attempts) == 1:
                raise ConnectionError("transient")
            return x * 10

        step = RunnableLambda(flaky).with_retry(
            stop_after_attempt=2, wait_exponential_jitter=False,
            retry_if_exception_type=(ConnectionError,),
        )
        return (RunnableLambda(lambda x: x + 1) | step).invoke(1, config=config)

    def chain_error(config: dict[str, Any]) -> Any:
        def fail(_: Any) -> Any:
            raise err

        model = GenericFakeChatModel(messages=iter([_answer("never parsed")]))
        return (PROMPT | model | RunnableLambda(fail)).invoke(
            {"context": "c", "question": "q"}, config=config
        )

    def tool_error(config: dict[str, Any]) -> Any:
        @tool
        def explode(x: str) -> str:
            """Fail with the user's own exception."""
            raise err

        return explode.invoke({"x": "boom"}, config=config)

    def retriever_error(config: dict[str, Any]) -> Any:
        return KeywordRetriever(docs=DOCS, failure=err).invoke("paris", config=config)

    def model_error(config: dict[str, Any]) -> Any:
        model = FakeListChatModel(responses=["x"], error_on_chunk_number=0)
        return list((PROMPT | model).stream({"context": "c", "question": "q"}, config=config))

    return {
        "rag": rag,
        "stream": stream,
        "batch": batch,
        "async": asynchronous,
        "tool": tool_call,
        "events_and_retry": events_and_retry,
        "chain_error": chain_error,
        "tool_error": tool_error,
        "retriever_error": retriever_error,
        "model_error": model_error,
    }


def outcome(run: Callable[[dict[str, Any]], Any], config: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "returned", run(config)
    except Exception as exc:  # the scenario's own exception, compared by identity below
        return "raised", exc


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("injected chainwatch fault")


RECORDER_FAULTS = [("start",), ("end",), ("event",), ("get",), ("start", "end", "event", "get")]
USAGE_FAULTS = [
    ("llm_result_usage",),
    ("llm_result_model",),
    ("llm_result_finish_reason",),
    ("from_usage_metadata",),
    ("requested_model",),
]


def _check_unchanged(handler: ChainWatchHandler, caplog: pytest.LogCaptureFixture) -> None:
    err = ValueError("the user's own failure")
    before = _errors.total_errors()
    caplog.set_level(logging.WARNING)
    for name, run in scenarios(err).items():
        expected = outcome(run, {})
        got = outcome(run, {"callbacks": [handler]})
        assert got[0] == expected[0], name
        if expected[0] == "raised":
            assert type(got[1]) is type(expected[1]), name
            if expected[1] is err:
                assert got[1] is err, name
            else:
                assert got[1].args == expected[1].args, name
        else:
            assert got[1] == expected[1], name
    assert _errors.total_errors() > before
    # chainwatch's own guards caught every fault: LangChain never had to swallow one for us
    escaped = [r.getMessage() for r in caplog.records if r.name.startswith("langchain")]
    assert escaped == []


@pytest.mark.allow_internal_errors
@pytest.mark.parametrize("methods", RECORDER_FAULTS, ids="+".join)
def test_recorder_faults_never_reach_the_app(
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    methods: tuple[str, ...],
) -> None:
    monkeypatch.setattr(_errors.state, "raise_internal", False)
    handler = ChainWatchHandler(db_path)
    for method in methods:
        monkeypatch.setattr(handler.recorder, method, _boom)
    _check_unchanged(handler, caplog)

    # the fault gone, the same handler records normally again
    for method in methods:
        monkeypatch.delattr(handler.recorder, method)
    assert RunnableLambda(lambda x: x * 2).invoke(21, config={"callbacks": [handler]}) == 42
    assert handler.flush()
    assert any(s["outputs"] == "42" for s in read_spans(db_path))
    handler.shutdown()


@pytest.mark.allow_internal_errors
@pytest.mark.parametrize("functions", USAGE_FAULTS, ids="+".join)
def test_usage_extraction_faults_never_reach_the_app(
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    functions: tuple[str, ...],
) -> None:
    monkeypatch.setattr(_errors.state, "raise_internal", False)
    handler = ChainWatchHandler(db_path)
    for function in functions:
        monkeypatch.setattr(usage, function, _boom)
    _check_unchanged(handler, caplog)
    assert handler.flush()
    assert handler.stats["open_spans"] == 0  # spans left open by the fault close with their root
    handler.shutdown()


# -- malformed inputs ---------------------------------------------------------------------------


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


def test_unserialisable_inputs_keep_the_span(handler: ChainWatchHandler, db_path: Path) -> None:
    looped: dict[str, Any] = {"name": "loop"}
    looped["self"] = looped
    chain_list: list[Any] = [1]
    chain_list.append(chain_list)
    lock = threading.Lock()

    def numbers() -> Any:
        yield 1

    inputs = {
        "bad_repr": BadRepr(),
        "recursive_dict": looped,
        "recursive_list": chain_list,
        "generator": numbers(),
        "lock": lock,
        "bytes": b"\x00\xffraw",
    }
    step = RunnableLambda(lambda x: {"echo": x["bytes"], "lock": x["lock"]}, name="odd-inputs")
    result = step.invoke(inputs, config={"callbacks": [handler]})
    assert result == {"echo": b"\x00\xffraw", "lock": lock}
    assert handler.flush()

    [span] = read_spans(db_path)
    assert span["name"] == "odd-inputs"
    assert span["status"] == "ok"
    stored = _strict_json(span["inputs"])
    assert set(stored) == set(inputs)
    assert all(isinstance(v, (str, dict, list)) for v in stored.values())
    assert "BadRepr" in stored["bad_repr"]
    assert stored["recursive_dict"]["name"] == "loop"
    assert stored["recursive_list"][0] == 1
    assert "generator" in stored["generator"]
    assert "lock" in stored["lock"]
    assert "5 bytes" in stored["bytes"]
    assert _strict_json(span["outputs"])["echo"] == stored["bytes"]


def _truncated_size(text: str) -> int:
    """How long the stored value says the original was (marker or wrapper)."""
    marker = re.search(r"…\[truncated ([\d,]+) chars\]", text)
    if marker:
        return int(marker.group(1).replace(",", ""))
    parsed = _strict_json(text)
    if isinstance(parsed, dict) and parsed.get("_truncated"):
        return int(parsed["original_chars"])
    return 0


def test_ten_megabyte_prompt_is_truncated_not_lost(
    handler: ChainWatchHandler, db_path: Path
) -> None:
    big = "x" * 10_000_000
    model = GenericFakeChatModel(messages=iter([_answer("short answer")]))
    chain = PROMPT | model | StrOutputParser()
    result = chain.invoke({"context": "c", "question": big}, config={"callbacks": [handler]})
    assert result == "short answer"
    assert handler.flush()

    spans = read_spans(db_path)
    assert sorted(s["name"] for s in spans) == [
        "ChatPromptTemplate", "GenericFakeChatModel", "RunnableSequence", "StrOutputParser"
    ]
    limit = handler.config.max_chars
    for span in spans:
        for column in ("inputs", "outputs"):
            text = span[column]
            assert text is not None, (span["name"], column)
            _strict_json(text)
            assert len(text) <= 2 * limit + 1_000, (span["name"], column)
        if span["name"] != "StrOutputParser":
            # the stored value says it was cut, and how much of a 10 MB prompt is missing
            assert "truncated" in span["inputs"], span["name"]
            assert _truncated_size(span["inputs"]) >= 10_000_000 - limit, span["name"]
    llm = next(s for s in spans if s["kind"] == "llm")
    assert (llm["model"], llm["prompt_tokens"], llm["completion_tokens"]) == ("gpt-4o-mini", 12, 5)
    assert llm["finish_reason"] == "stop"
    assert llm["cost_usd"] is not None and llm["cost_usd"] > 0
    assert _strict_json(llm["outputs"]) == {"role": "assistant", "content": "short answer"}
    root = next(s for s in spans if s["name"] == "RunnableSequence")
    assert _strict_json(root["outputs"]) == "short answer"
    assert root["status"] == "ok" and root["end_time"] is not None


def test_nan_and_infinity_are_stored_as_valid_json(
    handler: ChainWatchHandler, db_path: Path
) -> None:
    def step(x: dict[str, Any]) -> dict[str, Any]:
        dispatch_custom_event("metric", {"value": float("nan"), "limit": float("inf")})
        return {"ratio": float("-inf"), "same": x["nan"]}

    result = RunnableLambda(step, name="non-finite").invoke(
        {"nan": float("nan"), "inf": float("inf"), "nested": [float("-inf"), 1.5]},
        config={"callbacks": [handler], "metadata": {"score": float("nan"), "cap": float("inf")}},
    )
    assert result["ratio"] == float("-inf")
    assert handler.flush()

    [span] = read_spans(db_path)
    inputs = _strict_json(span["inputs"])
    assert inputs["nested"][1] == 1.5
    assert set(inputs) == {"nan", "inf", "nested"}
    outputs = _strict_json(span["outputs"])
    assert set(outputs) == {"ratio", "same"}
    metadata = _strict_json(span["metadata"])
    assert set(metadata) >= {"score", "cap"}
    [event] = read_events(db_path)
    assert event["name"] == "metric"
    assert set(_strict_json(event["attributes"])) == {"value", "limit"}


def test_an_integer_too_long_for_text_keeps_the_span(
    handler: ChainWatchHandler, db_path: Path
) -> None:
    """Python will not turn a 5,000-digit integer into text; the span is kept with a note."""
    huge = 10**5000
    result = RunnableLambda(lambda n: {"factorial": huge, "n": n}, name="big").invoke(
        7, config={"callbacks": [handler]}
    )
    assert result["factorial"] is huge
    assert handler.flush()
    [span] = read_spans(db_path)
    outputs = _strict_json(span["outputs"])
    assert outputs["n"] == 7
    assert outputs["factorial"] == f"<int of {huge.bit_length():,} bits>"


def test_a_matrix_of_embeddings_is_cut_to_its_first_rows(
    handler: ChainWatchHandler, db_path: Path
) -> None:
    """2,000 embeddings of 1,536 floats: the stored value keeps whole leading rows and says
    how many more there were (without encoding millions of floats only to cut them)."""
    matrix = [[i + j / 1536 for j in range(1536)] for i in range(2000)]
    RunnableLambda(lambda q: {"embeddings": matrix}, name="embed").invoke(
        "q", config={"callbacks": [handler]}
    )
    assert handler.flush()
    [span] = read_spans(db_path)
    kept = _strict_json(span["outputs"])["embeddings"]
    assert len(span["outputs"]) <= 32_000 + 100
    rows = [row for row in kept if isinstance(row, list)]
    assert rows and rows[0][:3] == matrix[0][:3]
    assert kept[-1] == f"…{2000 - len(rows)} more items"


def test_a_value_cut_to_a_preview_stays_within_max_chars(db_path: Path) -> None:
    """Quotes in the preview are escaped a second time; the stored text still fits."""
    handler = ChainWatchHandler(db_path, max_chars=1000, hooks=[])
    keys = {f'say "{i}" \\ ' * 20: i for i in range(200)}
    RunnableLambda(lambda q: keys, name="quoted").invoke("q", config={"callbacks": [handler]})
    assert handler.flush()
    [span] = read_spans(db_path)
    stored = _strict_json(span["outputs"])
    assert len(span["outputs"]) <= 1000
    assert stored["_truncated"] is True and stored["original_chars"] > 1000
    handler.shutdown()


def _assert_valid_utf8(path: Path) -> list[dict[str, Any]]:
    """Every stored text decodes as strict UTF-8 (sqlite3 raises on invalid bytes)."""
    conn = sqlite3.connect(path)
    conn.text_factory = bytes
    try:
        for table in ("spans", "span_events"):
            for row in conn.execute(f"SELECT * FROM {table}"):
                for value in row:
                    if isinstance(value, bytes):
                        value.decode("utf-8", "strict")
    finally:
        conn.close()
    return read_spans(path)


def test_lone_surrogates_are_repaired(handler: ChainWatchHandler, db_path: Path) -> None:
    err = ValueError("bad byte \ud800 in message")

    def fail(x: Any) -> Any:
        raise err

    config = {
        "callbacks": [handler],
        "tags": ["tag-\udc80"],
        "metadata": {"key-\ud800": "value-\udfff", "session_id": "sess-\ud800"},
    }
    step = RunnableLambda(lambda x: x["text"] + "!", name="name-\ud800")
    assert step.invoke({"text": "in \ud800 put"}, config=config) == "in \ud800 put!"
    with pytest.raises(ValueError) as info:
        RunnableLambda(fail, name="fails-\udbff").invoke("x", config=config)
    assert info.value is err
    assert handler.flush()

    spans = _assert_valid_utf8(db_path)
    ok, failed = spans
    assert ok["name"] == "name-\ufffd"
    assert failed["name"] == "fails-\ufffd"
    assert _strict_json(ok["inputs"]) == {"text": "in \ufffd put"}
    assert _strict_json(ok["outputs"]) == "in \ufffd put!"
    assert _strict_json(ok["tags"]) == ["tag-\ufffd"]
    assert _strict_json(ok["metadata"])["key-\ufffd"] == "value-\ufffd"
    assert ok["session_id"] == "sess-\ufffd"
    assert failed["status"] == "error"
    assert failed["error"] == "ValueError: bad byte \ufffd in message"
    [exception] = read_events(db_path)
    message = _strict_json(exception["attributes"])["message"]
    assert message == "ValueError: bad byte \ufffd in message"


def test_lone_surrogate_in_a_custom_event_name_loses_nothing(
    handler: ChainWatchHandler, db_path: Path
) -> None:
    def step(x: str) -> str:
        dispatch_custom_event("progress-\ud800", {"at": "half-\ud800"})
        return x

    config = {"callbacks": [handler]}
    assert RunnableLambda(step, name="with-event").invoke("a", config=config) == "a"
    assert RunnableLambda(str.upper, name="plain").invoke("b", config=config) == "B"
    assert handler.flush()
    spans = _assert_valid_utf8(db_path)
    assert sorted(s["name"] for s in spans) == ["plain", "with-event"]
    [event] = read_events(db_path)
    assert event["name"] == "progress-\ufffd"
    assert _strict_json(event["attributes"]) == {"at": "half-\ufffd"}
    assert handler.stats["writer_errors"] == 0


def test_lone_surrogate_in_a_model_name_loses_nothing(
    handler: ChainWatchHandler, db_path: Path
) -> None:
    model = GenericFakeChatModel(messages=iter([_answer("hi", model="model-\ud800")]))
    assert model.invoke("hello", config={"callbacks": [handler]}).content == "hi"
    assert handler.flush()
    [span] = _assert_valid_utf8(db_path)
    assert span["model"] == "model-\ufffd"
    assert span["prompt_tokens"] == 12
    assert span["cost_usd"] is None
    assert "model-\ufffd" in span["cost_note"]
    assert handler.stats["writer_errors"] == 0


def test_unknown_model_has_no_cost_and_says_why(handler: ChainWatchHandler, db_path: Path) -> None:
    model = GenericFakeChatModel(messages=iter([_answer("hi", model="no-such-model-xyz")]))
    chain = PROMPT | model | StrOutputParser()
    assert chain.invoke({"context": "c", "question": "q"}, config={"callbacks": [handler]}) == "hi"
    assert handler.flush()
    [llm] = [s for s in read_spans(db_path) if s["kind"] == "llm"]
    assert llm["model"] == "no-such-model-xyz"
    assert (llm["prompt_tokens"], llm["completion_tokens"], llm["total_tokens"]) == (12, 5, 17)
    assert llm["cost_usd"] is None
    assert llm["cost_note"].startswith("unknown model: no-such-model-xyz")
    [row] = chainwatch.traces(db=db_path)
    assert row["cost_usd"] is None
    assert row["unpriced_calls"] == 1
    assert row["total_tokens"] == 17


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_chars": 0},
        {"max_chars": -5},
        {"queue_size": 0},
        {"queue_size": -1},
        {"max_open_s": 0},
        {"prices": {"m": {"input_per_mtok": -1, "output_per_mtok": 1}}},
        {"prices": {"m": {"input_per_mtok": 1, "output_per_mtok": -0.5}}},
        {"prices": {"m": {"input_per_mtok": 1}}},
        {"prices": {"m": {"input_per_mtok": float("nan"), "output_per_mtok": 1}}},
        {"prices": {"m": {"input_per_mtok": float("inf"), "output_per_mtok": 1}}},
        {"prices": {"": {"input_per_mtok": 1, "output_per_mtok": 1}}},
        {"hooks": ["not callable"]},
    ],
    ids=lambda kw: next(iter(kw)) + "=" + repr(next(iter(kw.values()))),
)
def test_bad_configuration_fails_at_construction(db_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ChainWatchHandler(db_path, **kwargs)


def test_bad_database_locations_fail_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        ChainWatchHandler(tmp_path / "missing-folder" / "runs.db")
    assert not (tmp_path / "missing-folder").exists()
    with pytest.raises(ValueError, match="memory"):
        ChainWatchHandler(":memory:")
    monkeypatch.setenv("CHAINWATCH_DB", ":memory:")
    with pytest.raises(ValueError, match="memory"):
        ChainWatchHandler()


def test_a_single_tag_string_is_not_split_into_letters(db_path: Path) -> None:
    try:
        handler = ChainWatchHandler(db_path, tags="prod")  # type: ignore[arg-type]
    except ValueError:
        return  # rejected at construction: also correct
    RunnableLambda(lambda x: x, name="tagged").invoke(1, config={"callbacks": [handler]})
    assert handler.flush()
    [span] = read_spans(db_path)
    assert json.loads(span["tags"]) == ["prod"]
    handler.shutdown()


# -- memory -------------------------------------------------------------------------------------


def test_state_is_dropped_when_traces_end(handler: ChainWatchHandler, db_path: Path) -> None:
    model = FakeListChatModel(responses=["alpha beta", "gamma"])
    retriever = KeywordRetriever(docs=DOCS)
    chain = (
        {"context": retriever | _join, "question": RunnablePassthrough()}
        | PROMPT
        | model
        | StrOutputParser()
    )
    err = KeyError("user bug")

    def fail(_: Any) -> Any:
        raise err

    failing = chain | RunnableLambda(fail)
    config = {"callbacks": [handler]}
    for i in range(200):
        if i % 4 == 0:
            with pytest.raises(KeyError):
                failing.invoke("paris", config=config)
        elif i % 4 == 1:
            assert "".join(chain.stream("berlin", config=config))
        elif i % 4 == 2:
            assert add.invoke({"a": i, "b": 1}, config=config) == i + 1
        else:
            assert chain.invoke("paris", config=config)
    stats = handler.stats
    assert stats["open_spans"] == 0
    assert stats["open_traces"] == 0
    assert stats["spans_started"] == stats["spans_finished"]
    assert handler.flush()
    assert len(chainwatch.traces(db=db_path, limit=None)) == 200
    assert len(chainwatch.traces(db=db_path, status="error", limit=None)) == 50


def test_a_stream_nobody_reads_ends_ok_after_a_quarter_hour(db_path: Path) -> None:
    """A stream handed back to the app and never read: its span ends, without an error."""
    clock_ns = [time.time_ns() - 3_600 * 1_000 * MS]
    handler = ChainWatchHandler(db_path, clock=lambda: clock_ns[0], hooks=[])
    rec = handler.recorder
    t0 = clock_ns[0]
    for sid in ("read", "unread"):
        span = rec.start(sid, None, sid, "llm", "manual")
        span.extra = {"stream_pending": True}
    rec.sweep(now_ns=t0 + 14 * 60_000 * MS)
    assert handler.stats["open_spans"] == 2, "not yet: a slow reader is still reading"
    clock_ns[0] = t0 + 15 * 60_000 * MS
    rec.end("read", "all of it")
    rec.sweep(now_ns=t0 + 16 * 60_000 * MS)
    assert handler.stats["open_spans"] == 0 and handler.stats["open_traces"] == 0
    assert handler.flush()
    spans = {s["span_id"]: s for s in read_spans(db_path)}
    assert spans["unread"]["status"] == "ok" and spans["unread"]["error"] is None
    assert json.loads(spans["unread"]["metadata"]) == {"stream_unread": True}
    assert "stream_unread" not in json.loads(spans["read"]["metadata"])
    handler.shutdown()


def test_sweep_closes_spans_that_never_end(db_path: Path) -> None:
    clock_ns = [time.time_ns() - 3_600 * 1_000 * MS]
    handler = ChainWatchHandler(db_path, clock=lambda: clock_ns[0], max_open_s=60)
    rec = handler.recorder
    t0 = clock_ns[0]
    rec.start("stuck", None, "stuck-agent", "agent", "manual")
    clock_ns[0] += MS
    rec.start("stuck.tool", "stuck", "stuck-tool", "tool", "manual")
    clock_ns[0] = t0 + 50_000 * MS
    rec.start("young", None, "young-chain", "chain", "manual")
    assert handler.stats["open_spans"] == 3

    now = t0 + 61_000 * MS
    assert rec.sweep(now_ns=now) >= 1
    assert handler.stats["open_spans"] == 1
    assert handler.stats["open_traces"] == 1
    assert rec.get("young") is not None

    clock_ns[0] = now + MS
    rec.end("young", "done")
    assert handler.stats["open_spans"] == 0
    assert handler.stats["open_traces"] == 0
    assert handler.flush()
    spans = {s["span_id"]: s for s in read_spans(db_path)}
    assert set(spans) == {"stuck", "stuck.tool", "young"}
    for sid in ("stuck", "stuck.tool"):
        assert spans[sid]["status"] == "error"
        assert "never ended" in spans[sid]["error"] or "did not end" in spans[sid]["error"]
        assert spans[sid]["end_time"] == spans["stuck"]["end_time"]
    assert "never ended" in spans["stuck"]["error"]
    assert spans["stuck"]["duration_ms"] == pytest.approx(61_000.0)
    assert spans["young"]["status"] == "ok"
    [row] = chainwatch.traces(db=db_path, name="stuck-agent")
    assert row["status"] == "error" and row["span_count"] == 2
    handler.shutdown()


class _Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class _Point:
    x: int
    label: str


class _Hostile:
    """An object whose every attribute access fails with an unusual exception."""

    def __getattribute__(self, name: str) -> Any:
        raise RuntimeError(f"no {name} here")


def test_quick_and_careful_json_paths_store_the_same_document() -> None:
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_core.prompt_values import ChatPromptValue
    from llama_index.core.prompts import PromptTemplate, SelectorPromptTemplate
    from llama_index.core.schema import NodeWithScore, TextNode

    from chainwatch._serialize import to_json, to_jsonable

    message = AIMessage(
        content="Paris.",
        tool_calls=[{"name": "lookup", "args": {"city": "Paris"}, "id": "call-1"}],
    )
    node = NodeWithScore(node=TextNode(text="Paris is in France.", id_="n1"), score=0.5)
    prompt = PromptTemplate("Context: {context}\nQ: {question}").partial_format(context="Paris")
    selector = SelectorPromptTemplate(default_template=prompt)
    values: list[Any] = [
        {"context": DOCS, "question": "What is the capital?"},
        ChatPromptValue(messages=[SystemMessage(content="Be brief."), HumanMessage(content="Hi")]),
        message,
        [node],
        {"prompt": prompt, "selector": selector},
        {
            "when": datetime.datetime(2026, 11, 27, 12, 0, tzinfo=datetime.timezone.utc),
            "raw": b"\x00\x01",
            "tags": {"a"},
        },
        {"colour": _Colour.RED, "point": _Point(1, "p"), "id": uuid.UUID(int=7)},
    ]
    for value in values:
        quick = to_json(value)
        assert quick is not None
        assert json.loads(quick) == to_jsonable(value), value
    shaped = json.loads(to_json(values[0]) or "")
    assert shaped["context"][0] == {"content": DOCS[0].page_content, "metadata": {"id": 1}}
    assert json.loads(to_json(message) or "")["role"] == "assistant"
    assert json.loads(to_json([node]) or "")[0]["text"] == "Paris is in France."
    # A LlamaIndex prompt template is its text and its variables, not the whole model.
    assert json.loads(to_json(selector) or "") == {
        "template": "Context: {context}\nQ: {question}", "kwargs": {"context": "Paris"},
    }
    # What the quick path cannot keep exact goes the careful way: NaN, cycles, long strings.
    looped: dict[str, Any] = {"n": float("nan")}
    looped["self"] = looped
    assert json.loads(to_json(looped) or "") == {"n": "nan", "self": "<cycle>"}
    hostile = {"ok": 1, "bad": _Hostile()}
    assert json.loads(to_json(hostile) or "")["ok"] == 1
    long = {"doc": Document(page_content="x" * 1500)}

    assert "[truncated" in json.loads(to_json(long, limit=1000) or "")["doc"]["content"]
