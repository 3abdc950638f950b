"""Span trees of real LangChain and LangGraph runs, read back through plain SQL."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import threading
import uuid
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, TypedDict

import httpx
import pytest
from langchain_core.agents import AgentAction, AgentFinish
from langchain_core.callbacks import (
    BaseCallbackHandler,
    CallbackManagerForChainRun,
    CallbackManagerForRetrieverRun,
    dispatch_custom_event,
)
from langchain_core.documents import Document
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
    RunnableLambda,
    RunnableParallel,
    RunnablePassthrough,
)
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from chainwatch import ChainWatchHandler
from chainwatch.fake_provider import FakeOpenAI, Reply
from conftest import pop_span, read_events, read_spans

Row = dict[str, Any]
ISO_UTC_MICROS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00$")
BARRIER_TIMEOUT_S = 10


# -- helpers ----------------------------------------------------------------------------------


def spans_of(handler: ChainWatchHandler, db_path: Path) -> list[Row]:
    assert handler.flush()
    return read_spans(db_path)


def events_of(db_path: Path, span_id: str | None = None, name: str | None = None) -> list[Row]:
    return [
        e
        for e in read_events(db_path)
        if (span_id is None or e["span_id"] == span_id) and (name is None or e["name"] == name)
    ]


def parse_time(value: str) -> datetime.datetime:
    assert ISO_UTC_MICROS.match(value), value
    parsed = datetime.datetime.fromisoformat(value)
    assert parsed.utcoffset() == datetime.timedelta(0)
    return parsed


def by_trace(spans: list[Row]) -> dict[str, list[Row]]:
    traces: dict[str, list[Row]] = defaultdict(list)
    for span in spans:
        traces[span["trace_id"]].append(span)
    return dict(traces)


def assert_consistent_tree(spans: list[Row]) -> Row:
    """One root; every span's parent is in the trace; trace_id is the root's span_id."""
    roots = [s for s in spans if s["parent_id"] is None]
    assert len(roots) == 1, roots
    root = roots[0]
    ids = {s["span_id"] for s in spans}
    assert len(ids) == len(spans)
    for span in spans:
        assert span["trace_id"] == root["span_id"]
        assert span["parent_id"] is None or span["parent_id"] in ids
    return root


def ancestors(span: Row, spans: list[Row]) -> list[str]:
    """Names of the span's ancestors, nearest first."""
    index = {s["span_id"]: s for s in spans}
    names = []
    parent = span["parent_id"]
    while parent is not None:
        names.append(index[parent]["name"])
        parent = index[parent]["parent_id"]
    return names


class RunIds(BaseCallbackHandler):
    """A plain LangChain handler: the run id of each named run, and each run's parent."""

    def __init__(self) -> None:
        self.ids: dict[str, list[str]] = defaultdict(list)
        self.parents: dict[str, str | None] = {}

    def _note(self, serialized: Any, kwargs: dict[str, Any]) -> None:
        name = kwargs.get("name") or (serialized or {}).get("name")
        run_id = str(kwargs["run_id"])
        self.ids[str(name)].append(run_id)
        parent = kwargs.get("parent_run_id")
        self.parents[run_id] = str(parent) if parent is not None else None

    def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        self._note(serialized, kwargs)

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self._note(serialized, kwargs)


@pytest.fixture
def chat(fake_openai: FakeOpenAI) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=fake_openai.base_url, api_key="sk-fake", max_retries=0, model="gpt-4o-mini"
    )


def _add_one(x: int) -> int:
    return x + 1


def _double(x: int) -> int:
    return x * 2


def small_chain() -> Runnable[int, int]:
    return (RunnableLambda(_add_one) | RunnableLambda(_double)).with_config(run_name="small")


def assert_small_trace(spans: list[Row], x: int) -> None:
    """The three spans of one `small_chain()` run on input `x`, and nothing else."""
    spans = list(spans)
    root = pop_span(spans, "small", kind="chain", parent_id=None, status="ok")
    assert root["trace_id"] == root["span_id"]
    assert json.loads(root["inputs"]) == x
    assert json.loads(root["outputs"]) == (x + 1) * 2
    child = {"parent_id": root["span_id"], "trace_id": root["span_id"], "status": "ok"}
    add = pop_span(spans, "_add_one", kind="chain", **child)
    assert (json.loads(add["inputs"]), json.loads(add["outputs"])) == (x, x + 1)
    dbl = pop_span(spans, "_double", kind="chain", **child)
    assert (json.loads(dbl["inputs"]), json.loads(dbl["outputs"])) == (x + 1, (x + 1) * 2)
    assert spans == []


def assert_small_traces(all_spans: list[Row], inputs: list[int]) -> None:
    traces = by_trace(all_spans)
    assert len(traces) == len(inputs)
    seen = []
    for spans in traces.values():
        root = assert_consistent_tree(spans)
        x = json.loads(root["inputs"])
        seen.append(x)
        assert_small_trace(spans, x)
    assert sorted(seen) == sorted(inputs)


# -- a prompt | model | parser chain ----------------------------------------------------------


def test_prompt_model_parser_chain(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI, chat: ChatOpenAI
) -> None:
    fake_openai.queue(Reply(content="Paris is the capital."))
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer in one sentence."), ("human", "{question}")]
    )
    chain = prompt | chat | StrOutputParser()
    run_id = uuid.uuid4()
    ids = RunIds()

    answer = chain.invoke(
        {"question": "Capital of France?"},
        config={"callbacks": [handler, ids], "run_id": run_id},
    )

    assert answer == "Paris is the capital."
    spans = spans_of(handler, db_path)
    root_id = str(run_id)
    root = pop_span(spans, "RunnableSequence", kind="chain", parent_id=None)
    assert root["span_id"] == root_id
    assert root["trace_id"] == root_id
    assert json.loads(root["inputs"]) == {"question": "Capital of France?"}
    assert json.loads(root["outputs"]) == "Paris is the capital."
    child = {"parent_id": root_id, "trace_id": root_id, "status": "ok"}
    prompt_span = pop_span(spans, "ChatPromptTemplate", kind="prompt", **child)
    llm = pop_span(spans, "ChatOpenAI", kind="llm", **child)
    parser = pop_span(spans, "StrOutputParser", kind="parser", **child)
    assert spans == []

    assert prompt_span["span_id"] == ids.ids["ChatPromptTemplate"][0]
    assert llm["span_id"] == ids.ids["ChatOpenAI"][0]
    assert parser["span_id"] == ids.ids["StrOutputParser"][0]
    assert json.loads(parser["outputs"]) == "Paris is the capital."

    ordered = [root, prompt_span, llm, parser]
    for span in ordered:
        assert span["framework"] == "langchain"
        assert span["status"] == "ok"
        assert span["error"] is None
        start, end = parse_time(span["start_time"]), parse_time(span["end_time"])
        assert start <= end
        elapsed_ms = (end - start) / datetime.timedelta(milliseconds=1)
        assert span["duration_ms"] == pytest.approx(elapsed_ms, abs=0.002)
        assert span["duration_ms"] >= 0
    starts = [parse_time(s["start_time"]) for s in ordered]
    assert starts == sorted(starts)
    for span in ordered[1:]:
        assert parse_time(span["end_time"]) <= parse_time(root["end_time"])


# -- retrievers and tools ---------------------------------------------------------------------


class KeywordRetriever(BaseRetriever):
    """Returns the stored documents that share a word with the query."""

    docs: list[Document]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        words = set(query.lower().split())
        return [d for d in self.docs if words & set(d.page_content.lower().split())]


@tool
def word_count(text: str) -> int:
    """Count the words of a text."""
    return len(text.split())


def format_docs(docs: list[Document]) -> str:
    return "\n".join(d.page_content for d in docs)


def test_rag_chain_with_retriever_and_tool(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI, chat: ChatOpenAI
) -> None:
    retriever = KeywordRetriever(
        docs=[
            Document(page_content="paris is in france", metadata={"source": "geo.txt", "n": 1}),
            Document(page_content="berlin is in germany", metadata={"source": "geo.txt", "n": 2}),
            Document(page_content="tokyo has sushi", metadata={"source": "food.txt", "n": 3}),
        ]
    )
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Context:\n{context}"), ("human", "{question}")]
    )
    rag = (
        RunnableParallel(context=retriever | format_docs, question=RunnablePassthrough())
        | prompt
        | chat
        | StrOutputParser()
        | word_count
    )
    fake_openai.queue(Reply(content="Paris is in France indeed"))

    assert rag.invoke("where paris", config={"callbacks": [handler]}) == 5

    spans = spans_of(handler, db_path)
    root = pop_span(spans, "RunnableSequence", kind="chain", parent_id=None)
    rid = root["span_id"]
    parallel = pop_span(spans, "RunnableParallel<context,question>", kind="chain", parent_id=rid)
    branch = pop_span(spans, "RunnableSequence", kind="chain", parent_id=parallel["span_id"])
    retr = pop_span(spans, "KeywordRetriever", kind="retriever", parent_id=branch["span_id"])
    fmt = pop_span(spans, "format_docs", kind="chain", parent_id=branch["span_id"])
    pop_span(spans, "RunnablePassthrough", kind="chain", parent_id=parallel["span_id"])
    pop_span(spans, "ChatPromptTemplate", kind="prompt", parent_id=rid)
    pop_span(spans, "ChatOpenAI", kind="llm", parent_id=rid)
    pop_span(spans, "StrOutputParser", kind="parser", parent_id=rid)
    tool_span = pop_span(spans, "word_count", kind="tool", parent_id=rid)
    assert spans == []

    assert json.loads(retr["inputs"]) == {"query": "where paris"}
    assert json.loads(retr["outputs"]) == [
        {"content": "paris is in france", "metadata": {"source": "geo.txt", "n": 1}}
    ]
    assert retr["status"] == "ok"
    assert retr["trace_id"] == rid
    assert json.loads(fmt["outputs"]) == "paris is in france"
    assert "Paris is in France indeed" in tool_span["inputs"]
    assert json.loads(tool_span["outputs"]) == 5
    assert tool_span["status"] == "ok"
    assert tool_span["trace_id"] == rid


# -- nesting and parallel branches ------------------------------------------------------------


def test_nested_invocation_with_config_is_a_subtree(
    handler: ChainWatchHandler, db_path: Path
) -> None:
    inner = small_chain()

    def outer_fn(x: int, config: RunnableConfig) -> int:
        return inner.invoke(x, config) + inner.invoke(x + 10, config)

    outer = RunnableLambda(outer_fn).with_config(run_name="outer")
    assert outer.invoke(1, config={"callbacks": [handler]}) == 4 + 24
    assert outer.invoke(2, config={"callbacks": [handler]}) == 6 + 26

    traces = by_trace(spans_of(handler, db_path))
    assert len(traces) == 2
    for spans in traces.values():
        assert_consistent_tree(spans)
        root = pop_span(spans, "outer", kind="chain", parent_id=None, status="ok")
        x = json.loads(root["inputs"])
        assert json.loads(root["outputs"]) == (x + 1) * 2 + (x + 11) * 2
        for value in (x, x + 10):
            small = pop_span(spans, "small", parent_id=root["span_id"], inputs=str(value))
            assert json.loads(small["outputs"]) == (value + 1) * 2
            child = {"parent_id": small["span_id"], "trace_id": root["span_id"]}
            pop_span(spans, "_add_one", inputs=str(value), outputs=str(value + 1), **child)
            pop_span(spans, "_double", inputs=str(value + 1), **child)
        assert spans == []


def test_parallel_branches_in_threads_are_separate_subtrees(
    handler: ChainWatchHandler, db_path: Path
) -> None:
    barrier = threading.Barrier(2, timeout=BARRIER_TIMEOUT_S)

    def a_first(x: int) -> int:
        barrier.wait()  # both branches are running at once
        return x + 1

    def a_second(x: int) -> int:
        return x * 10

    def b_first(x: int) -> int:
        barrier.wait()
        return x - 1

    def b_second(x: int) -> int:
        return x * 100

    parallel = RunnableParallel(
        a=(RunnableLambda(a_first) | RunnableLambda(a_second)).with_config(run_name="branch_a"),
        b=(RunnableLambda(b_first) | RunnableLambda(b_second)).with_config(run_name="branch_b"),
    ).with_config(run_name="fan_out")

    assert parallel.invoke(5, config={"callbacks": [handler]}) == {"a": 60, "b": 400}

    spans = spans_of(handler, db_path)
    root = pop_span(spans, "fan_out", kind="chain", parent_id=None)
    rid = root["span_id"]
    assert json.loads(root["outputs"]) == {"a": 60, "b": 400}
    for branch, first, second, mid, out in (
        ("branch_a", "a_first", "a_second", 6, 60),
        ("branch_b", "b_first", "b_second", 4, 400),
    ):
        node = pop_span(spans, branch, parent_id=rid, trace_id=rid)
        assert json.loads(node["outputs"]) == out
        f = pop_span(spans, first, parent_id=node["span_id"], trace_id=rid)
        s = pop_span(spans, second, parent_id=node["span_id"], trace_id=rid)
        assert json.loads(f["outputs"]) == mid
        assert json.loads(s["inputs"]) == mid
        assert json.loads(s["outputs"]) == out
    assert spans == []


# -- batches, concurrency and streaming -------------------------------------------------------


def test_batch_of_five_makes_five_traces(handler: ChainWatchHandler, db_path: Path) -> None:
    inputs = [1, 2, 3, 4, 5]
    assert small_chain().batch(inputs, config={"callbacks": [handler]}) == [4, 6, 8, 10, 12]
    assert_small_traces(spans_of(handler, db_path), inputs)


def test_abatch_of_five_makes_five_traces(handler: ChainWatchHandler, db_path: Path) -> None:
    inputs = [11, 12, 13, 14, 15]
    result = asyncio.run(small_chain().abatch(inputs, config={"callbacks": [handler]}))
    assert result == [(x + 1) * 2 for x in inputs]
    assert_small_traces(spans_of(handler, db_path), inputs)


def test_concurrent_ainvoke_makes_separate_traces(
    handler: ChainWatchHandler, db_path: Path
) -> None:
    inputs = [21, 22, 23, 24, 25]
    chain = small_chain()

    async def main() -> list[int]:
        return await asyncio.gather(
            *(chain.ainvoke(x, config={"callbacks": [handler]}) for x in inputs)
        )

    assert asyncio.run(main()) == [(x + 1) * 2 for x in inputs]
    assert_small_traces(spans_of(handler, db_path), inputs)


def _assert_streamed_chain(spans: list[Row], text: str) -> None:
    root = pop_span(spans, "RunnableSequence", kind="chain", parent_id=None, status="ok")
    rid = root["span_id"]
    assert root["trace_id"] == rid
    assert json.loads(root["outputs"]) == text
    child = {"parent_id": rid, "trace_id": rid, "status": "ok"}
    pop_span(spans, "ChatPromptTemplate", kind="prompt", **child)
    llm = pop_span(spans, "ChatOpenAI", kind="llm", **child)
    parser = pop_span(spans, "StrOutputParser", kind="parser", **child)
    assert json.loads(parser["outputs"]) == text
    assert llm["ttft_ms"] is not None
    assert spans == []


def test_stream_and_astream_of_a_chain(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI, chat: ChatOpenAI
) -> None:
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | chat | StrOutputParser()
    fake_openai.queue(Reply(content="one two three"))
    pieces = list(chain.stream({"q": "count"}, config={"callbacks": [handler]}))
    assert "".join(pieces) == "one two three"
    assert len([p for p in pieces if p]) == 3
    _assert_streamed_chain(spans_of(handler, db_path), "one two three")

    async def collect() -> list[str]:
        # a client per event loop: langchain-openai's shared one is bound to the first loop
        async with httpx.AsyncClient() as client:
            model = ChatOpenAI(
                base_url=fake_openai.base_url,
                api_key="sk-fake",
                max_retries=0,
                model="gpt-4o-mini",
                http_async_client=client,
            )
            achain = (
                ChatPromptTemplate.from_messages([("human", "{q}")]) | model | StrOutputParser()
            )
            stream = achain.astream({"q": "count"}, config={"callbacks": [handler]})
            return [p async for p in stream]

    fake_openai.queue(Reply(content="four five six"))
    assert "".join(asyncio.run(collect())) == "four five six"
    traces = by_trace(spans_of(handler, db_path))
    assert len(traces) == 2
    second = [t for t in traces.values() if "four" in str([s["outputs"] for s in t])]
    assert len(second) == 1
    _assert_streamed_chain(second[0], "four five six")


def test_a_stream_the_caller_stops_reading_is_not_an_error(db_path: Path) -> None:
    """`break` out of `chain.stream()`: LangChain ends the root first, then the runs inside it.

    Those late ends are the real ones (ok, with the model's output); the trace is complete,
    and its hooks run, only after them.
    """
    seen: list[list[tuple[str, str]]] = []

    def hook(trace: Any, store: Any) -> None:
        seen.append(sorted((s.name, s.status) for s in trace.spans))

    handler = ChainWatchHandler(db_path, hooks=[hook])
    chain = (
        ChatPromptTemplate.from_messages([("human", "{q}")])
        | GenericFakeChatModel(messages=iter([AIMessage(content="one two three four")]))
        | StrOutputParser()
    )
    for piece in chain.stream({"q": "count"}, config={"callbacks": [handler]}):
        assert piece == "one"
        break
    spans = spans_of(handler, db_path)
    assert {s["name"]: s["status"] for s in spans} == {
        "RunnableSequence": "ok",
        "ChatPromptTemplate": "ok",
        "GenericFakeChatModel": "ok",
        "StrOutputParser": "ok",
    }
    model = pop_span(spans, "GenericFakeChatModel", kind="llm")
    assert json.loads(model["outputs"])["content"].startswith("one")
    assert seen == [sorted((s["name"], "ok") for s in [*spans, model])]
    assert handler.stats["open_spans"] == 0
    handler.shutdown()


def test_a_branch_still_running_after_its_root_failed_stays_in_the_trace(
    handler: ChainWatchHandler, db_path: Path
) -> None:
    """An async parallel branch fails fast; the other branch ends after the root (cancelled)."""
    started = asyncio.Event()

    async def fail(x: str) -> str:
        await started.wait()
        raise ValueError("fast failure")

    async def slow(x: str) -> str:
        started.set()
        await asyncio.sleep(0.2)
        return x

    parallel = RunnableParallel(bad=RunnableLambda(fail), good=RunnableLambda(slow))

    async def run() -> None:
        with pytest.raises(ValueError, match="fast failure"):
            await parallel.ainvoke("x", config={"callbacks": [handler]})

    asyncio.run(run())
    spans = spans_of(handler, db_path)
    assert len({s["trace_id"] for s in spans}) == 1
    assert [s["name"] for s in spans if s["parent_id"] is None] == ["RunnableParallel<bad,good>"]
    root = pop_span(spans, "RunnableParallel<bad,good>", status="error")
    assert pop_span(spans, "fail", parent_id=root["span_id"], status="error")["error"] == (
        "ValueError: fast failure"
    )
    slow_span = pop_span(spans, "slow", parent_id=root["span_id"])
    assert "did not end" not in (slow_span["error"] or "")
    assert spans == []


def test_threads_sharing_one_handler(handler: ChainWatchHandler, db_path: Path) -> None:
    chain = small_chain()
    barrier = threading.Barrier(8, timeout=BARRIER_TIMEOUT_S)
    results: dict[int, int] = {}
    failures: list[BaseException] = []

    def work(thread_no: int) -> None:
        try:
            barrier.wait()
            for i in range(20):
                x = thread_no * 1000 + i
                results[x] = chain.invoke(x, config={"callbacks": [handler]})
        except BaseException as exc:  # surfaced in the main thread below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert failures == []
    inputs = [n * 1000 + i for n in range(8) for i in range(20)]
    assert results == {x: (x + 1) * 2 for x in inputs}
    spans = spans_of(handler, db_path)
    assert len(spans) == 160 * 3
    assert_small_traces(spans, inputs)
    assert handler.stats["open_spans"] == 0
    assert handler.stats["open_traces"] == 0


# -- errors -----------------------------------------------------------------------------------


def test_error_marks_failing_span_and_ancestors(handler: ChainWatchHandler, db_path: Path) -> None:
    raised: list[ValueError] = []

    def prepare(x: int) -> int:
        return x + 1

    def fine(x: int) -> int:
        return x * 2

    def explode(x: int) -> int:
        exc = ValueError("boom")
        raised.append(exc)
        raise exc

    inner = (RunnableLambda(fine) | RunnableLambda(explode)).with_config(run_name="inner")
    outer = (RunnableLambda(prepare) | inner).with_config(run_name="outer")

    with pytest.raises(ValueError, match="boom") as caught:
        outer.invoke(1, config={"callbacks": [handler]})
    assert len(raised) == 1
    assert caught.value is raised[0]

    spans = spans_of(handler, db_path)
    failed = {"status": "error", "error": "ValueError: boom"}
    root = pop_span(spans, "outer", parent_id=None, **failed)
    rid = root["span_id"]
    ok = {"status": "ok", "error": None, "trace_id": rid}
    pop_span(spans, "prepare", parent_id=rid, **ok)
    inner_span = pop_span(spans, "inner", parent_id=rid, trace_id=rid, **failed)
    pop_span(spans, "fine", parent_id=inner_span["span_id"], **ok)
    boom = pop_span(spans, "explode", parent_id=inner_span["span_id"], trace_id=rid, **failed)
    assert spans == []
    assert boom["outputs"] is None

    exceptions = events_of(db_path, span_id=boom["span_id"], name="exception")
    assert len(exceptions) == 1
    attributes = json.loads(exceptions[0]["attributes"])
    assert attributes["type"] == "ValueError"
    assert "boom" in attributes["message"]
    assert "explode" in attributes["stacktrace"]


def _explode(x: Any) -> Any:
    raise ValueError("boom")


def test_fallback_that_recovers_stays_ok(handler: ChainWatchHandler, db_path: Path) -> None:
    def rescue(x: int) -> int:
        return -x

    guarded = RunnableLambda(_explode).with_fallbacks([RunnableLambda(rescue)])
    chain = (RunnableLambda(_add_one) | guarded).with_config(run_name="with_fallback")
    ids = RunIds()

    assert chain.invoke(1, config={"callbacks": [handler, ids]}) == -2

    spans = spans_of(handler, db_path)
    root = pop_span(spans, "with_fallback", parent_id=None, status="ok", error=None)
    rid = root["span_id"]
    pop_span(spans, "_add_one", parent_id=rid, trace_id=rid, status="ok")
    pop_span(spans, "RunnableWithFallbacks", parent_id=rid, trace_id=rid, status="ok", error=None)
    # langchain-core 1.8 runs the attempts with the fallbacks' own config, so LangChain
    # reports them as siblings of RunnableWithFallbacks; the spans follow LangChain.
    (explode_id,) = ids.ids["_explode"]
    (rescue_id,) = ids.ids["rescue"]
    failed = pop_span(spans, "_explode", span_id=explode_id, trace_id=rid)
    assert (failed["status"], failed["error"]) == ("error", "ValueError: boom")
    assert failed["parent_id"] == ids.parents[explode_id]
    rescued = pop_span(spans, "rescue", span_id=rescue_id, trace_id=rid, status="ok")
    assert rescued["parent_id"] == ids.parents[rescue_id]
    assert json.loads(rescued["outputs"]) == -2
    assert spans == []


def test_exception_caught_inside_a_lambda_leaves_it_ok(
    handler: ChainWatchHandler, db_path: Path
) -> None:
    risky = RunnableLambda(_explode).with_config(run_name="risky")

    def careful(x: int, config: RunnableConfig) -> str:
        try:
            return risky.invoke(x, config)
        except ValueError:
            return "recovered"

    assert RunnableLambda(careful).invoke(1, config={"callbacks": [handler]}) == "recovered"

    spans = spans_of(handler, db_path)
    root = pop_span(spans, "careful", parent_id=None, status="ok", error=None)
    assert json.loads(root["outputs"]) == "recovered"
    pop_span(spans, "risky", parent_id=root["span_id"], status="error", error="ValueError: boom")
    assert spans == []


def test_with_retry_records_retry_events(handler: ChainWatchHandler, db_path: Path) -> None:
    calls = {"n": 0}

    def flaky(x: int) -> int:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ValueError(f"fail {calls['n']}")
        return x

    retrying = RunnableLambda(flaky).with_retry(stop_after_attempt=3, wait_exponential_jitter=False)
    assert retrying.invoke(7, config={"callbacks": [handler]}) == 7
    assert calls["n"] == 3

    spans = spans_of(handler, db_path)
    root = pop_span(spans, "flaky", parent_id=None, status="ok")
    rid = root["span_id"]
    pop_span(spans, "flaky", parent_id=rid, status="error", error="ValueError: fail 1")
    pop_span(spans, "flaky", parent_id=rid, status="error", error="ValueError: fail 2")
    pop_span(spans, "flaky", parent_id=rid, status="ok")
    assert spans == []

    retries = events_of(db_path, name="retry")
    assert [e["span_id"] for e in retries] == [rid, rid]
    assert [json.loads(e["attributes"])["attempt"] for e in retries] == [1, 2]


# -- events inside runs -----------------------------------------------------------------------


def test_custom_events_become_span_events(handler: ChainWatchHandler, db_path: Path) -> None:
    def step(x: int, config: RunnableConfig) -> int:
        dispatch_custom_event("progress", {"done": 1, "label": "halfway"}, config=config)
        dispatch_custom_event("progress", {"done": 2, "label": "finished"}, config=config)
        return x

    chain = (RunnableLambda(_add_one) | RunnableLambda(step)).with_config(run_name="evented")
    assert chain.invoke(1, config={"callbacks": [handler]}) == 2

    spans = spans_of(handler, db_path)
    root = pop_span(spans, "evented", parent_id=None)
    pop_span(spans, "_add_one", parent_id=root["span_id"])
    step_span = pop_span(spans, "step", parent_id=root["span_id"])
    assert spans == []

    events = events_of(db_path)
    assert [(e["span_id"], e["trace_id"], e["name"]) for e in events] == [
        (step_span["span_id"], root["span_id"], "progress"),
        (step_span["span_id"], root["span_id"], "progress"),
    ]
    assert [json.loads(e["attributes"]) for e in events] == [
        {"done": 1, "label": "halfway"},
        {"done": 2, "label": "finished"},
    ]
    for event in events:
        when = parse_time(event["time"])
        assert parse_time(step_span["start_time"]) <= when <= parse_time(step_span["end_time"])


def test_text_and_agent_actions_become_span_events(
    handler: ChainWatchHandler, db_path: Path
) -> None:
    def narrate(x: str, run_manager: CallbackManagerForChainRun) -> str:
        run_manager.on_text("thinking about " + x)
        run_manager.on_agent_action(
            AgentAction(tool="search", tool_input={"q": x}, log="I should search")
        )
        run_manager.on_agent_finish(AgentFinish(return_values={"output": "done"}, log="done!"))
        return "done"

    assert RunnableLambda(narrate).invoke("cats", config={"callbacks": [handler]}) == "done"

    spans = spans_of(handler, db_path)
    root = pop_span(spans, "narrate", parent_id=None, status="ok")
    assert spans == []
    events = events_of(db_path)
    assert [(e["span_id"], e["name"]) for e in events] == [
        (root["span_id"], "text"),
        (root["span_id"], "agent_action"),
        (root["span_id"], "agent_finish"),
    ]
    text, action, finish = (json.loads(e["attributes"]) for e in events)
    assert text == "thinking about cats"
    assert action == {"tool": "search", "tool_input": {"q": "cats"}, "log": "I should search"}
    assert finish == {"return_values": {"output": "done"}, "log": "done!"}


# -- users, sessions, tags --------------------------------------------------------------------


def test_user_session_and_tags_from_the_handler(db_path: Path) -> None:
    handler = ChainWatchHandler(
        db_path, tags=["batch-7"], user_id="u-default", session_id="s-default"
    )
    try:
        small_chain().invoke(1, config={"callbacks": [handler]})
        spans = spans_of(handler, db_path)
    finally:
        handler.shutdown()

    assert len(spans) == 3
    for span in spans:
        assert span["user_id"] == "u-default"
        assert span["session_id"] == "s-default"
    root = pop_span(spans, "small", parent_id=None)
    assert json.loads(root["tags"]) == ["batch-7"]
    for name in ("_add_one", "_double"):
        child = pop_span(spans, name, parent_id=root["span_id"])
        tags = json.loads(child["tags"])
        assert tags[0] == "batch-7"
        assert tags[1].startswith("seq:step:")
        assert len(tags) == 2
    assert spans == []


def test_user_session_and_tags_from_the_run_config(db_path: Path) -> None:
    handler = ChainWatchHandler(
        db_path,
        tags=["batch-7"],
        user_id="u-default",
        session_id="s-default",
        metadata={"app": "demo"},
    )
    try:
        small_chain().invoke(
            1,
            config={
                "callbacks": [handler],
                "metadata": {"user_id": "alice", "session_id": "sess-42"},
                "tags": ["exp-a"],
            },
        )
        spans = spans_of(handler, db_path)
    finally:
        handler.shutdown()

    assert len(spans) == 3
    for span in spans:
        assert span["user_id"] == "alice"
        assert span["session_id"] == "sess-42"
        metadata = json.loads(span["metadata"])
        assert metadata["app"] == "demo"
        assert metadata["user_id"] == "alice"
    root = pop_span(spans, "small", parent_id=None)
    assert json.loads(root["tags"]) == ["batch-7", "exp-a"]
    child_step = {"_add_one": "seq:step:1", "_double": "seq:step:2"}
    for name in ("_add_one", "_double"):
        child = pop_span(spans, name, parent_id=root["span_id"])
        tags = json.loads(child["tags"])
        assert tags[0] == "batch-7"
        assert sorted(tags[1:]) == ["exp-a", child_step[name]]
    assert spans == []


# -- LangGraph --------------------------------------------------------------------------------


class Counter(TypedDict):
    x: int
    path: list[str]


def _graph_a(state: Counter) -> dict[str, Any]:
    return {"x": state["x"] + 1, "path": [*state["path"], "a"]}


def _graph_b(state: Counter) -> dict[str, Any]:
    return {"x": state["x"] * 10, "path": [*state["path"], "b"]}


def _route(state: Counter) -> str:
    return "b" if state["x"] > 1 else END


def test_state_graph_with_conditional_edge(handler: ChainWatchHandler, db_path: Path) -> None:
    graph = StateGraph(Counter)
    graph.add_node("a", _graph_a)
    graph.add_node("b", _graph_b)
    graph.add_edge(START, "a")
    graph.add_conditional_edges("a", _route, ["b", END])
    graph.add_edge("b", END)
    app = graph.compile()

    assert app.invoke({"x": 1, "path": []}, config={"callbacks": [handler]}) == {
        "x": 20,
        "path": ["a", "b"],
    }
    assert app.invoke({"x": 0, "path": []}, config={"callbacks": [handler]}) == {
        "x": 1,
        "path": ["a"],
    }

    traces = by_trace(spans_of(handler, db_path))
    assert len(traces) == 2
    for spans in traces.values():
        root = pop_span(spans, "LangGraph", kind="chain", parent_id=None, status="ok")
        rid = root["span_id"]
        assert root["trace_id"] == rid
        went_to_b = json.loads(root["inputs"])["x"] == 1
        a = pop_span(spans, "a", kind="chain", parent_id=rid, trace_id=rid, status="ok")
        route = pop_span(spans, "_route", parent_id=a["span_id"], trace_id=rid, status="ok")
        assert json.loads(route["outputs"]) == ("b" if went_to_b else END)
        if went_to_b:
            b = pop_span(spans, "b", kind="chain", parent_id=rid, trace_id=rid, status="ok")
            assert json.loads(b["outputs"]) == {"x": 20, "path": ["a", "b"]}
        assert spans == []


@tool
def get_weather(city: str) -> str:
    """Current weather of a city."""
    return f"sunny in {city}"


def test_prebuilt_react_agent(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI, chat: ChatOpenAI
) -> None:
    from langgraph.prebuilt import create_react_agent
    from langgraph.warnings import LangGraphDeprecatedSinceV10

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LangGraphDeprecatedSinceV10)
        agent = create_react_agent(chat, [get_weather])
    fake_openai.queue(
        Reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]),
        Reply(content="It is sunny in Paris."),
    )
    sent = len(fake_openai.responses)

    out = agent.invoke(
        {"messages": [("user", "Weather in Paris?")]}, config={"callbacks": [handler]}
    )

    assert out["messages"][-1].content == "It is sunny in Paris."
    usages = [r["usage"] for r in fake_openai.responses[sent:]]
    assert len(usages) == 2
    all_spans = spans_of(handler, db_path)
    spans = list(all_spans)
    root = pop_span(spans, "LangGraph", parent_id=None, status="ok")
    rid = root["span_id"]
    assert all(s["trace_id"] == rid and s["status"] == "ok" for s in all_spans)

    tool_span = pop_span(spans, "get_weather", kind="tool")
    assert ancestors(tool_span, all_spans) == ["tools", "LangGraph"]
    assert json.loads(tool_span["inputs"]) == {"city": "Paris"}
    assert "sunny in Paris" in tool_span["outputs"]
    pop_span(spans, "tools", kind="chain", parent_id=rid)

    first, second = (pop_span(spans, "ChatOpenAI", kind="llm") for _ in range(2))
    assert first["start_time"] < second["start_time"]
    for llm, usage, reason in ((first, usages[0], "tool_calls"), (second, usages[1], "stop")):
        assert "agent" in ancestors(llm, all_spans)
        assert ancestors(llm, all_spans)[-1] == "LangGraph"
        assert llm["prompt_tokens"] == usage["prompt_tokens"]
        assert llm["completion_tokens"] == usage["completion_tokens"]
        assert llm["total_tokens"] == usage["total_tokens"]
        assert llm["finish_reason"] == reason
        assert llm["cost_usd"] is not None and llm["cost_usd"] > 0
    assert json.loads(first["outputs"])["tool_calls"][0]["args"] == {"city": "Paris"}

    for _ in range(2):
        pop_span(spans, "agent", kind="chain", parent_id=rid)
    # the agent node's internals: call_model, its model sequence and prompt, the router
    for name in ("call_model", "RunnableSequence", "Prompt", "should_continue"):
        for _ in range(2):
            inner = pop_span(spans, name, kind="chain")
            assert "agent" in ancestors(inner, all_spans)
    assert spans == []
    assert not events_of(db_path, name="exception")


def _ask(state: Counter) -> dict[str, Any]:
    answer = interrupt({"question": "add how much?"})
    return {"x": state["x"] + int(answer), "path": [*state["path"], "ask"]}


def test_interrupt_is_not_an_error(handler: ChainWatchHandler, db_path: Path) -> None:
    inner = StateGraph(Counter)
    inner.add_node("ask", _ask)
    inner.add_edge(START, "ask")
    inner.add_edge("ask", END)
    outer = StateGraph(Counter)
    outer.add_node("a", _graph_a)
    outer.add_node("review", inner.compile())
    outer.add_edge(START, "a")
    outer.add_edge("a", "review")
    outer.add_edge("review", END)
    app = outer.compile(checkpointer=InMemorySaver())
    config: RunnableConfig = {"callbacks": [handler], "configurable": {"thread_id": "t-1"}}

    paused = app.invoke({"x": 1, "path": []}, config=config)
    assert paused["__interrupt__"][0].value == {"question": "add how much?"}

    spans = spans_of(handler, db_path)
    assert {(s["status"], s["error"], s["session_id"]) for s in spans} == {("ok", None, "t-1")}
    root = pop_span(spans, "LangGraph", parent_id=None)
    rid = root["span_id"]
    assert json.loads(root["outputs"]) == {"x": 2, "path": ["a"]}
    pop_span(spans, "a", parent_id=rid, trace_id=rid)
    review = pop_span(spans, "review", parent_id=rid, trace_id=rid)
    subgraph = pop_span(spans, "LangGraph", parent_id=review["span_id"], trace_id=rid)
    ask = pop_span(spans, "ask", parent_id=subgraph["span_id"], trace_id=rid)
    assert spans == []
    interrupts = events_of(db_path, name="interrupt")
    assert {e["span_id"] for e in interrupts} == {
        ask["span_id"],
        subgraph["span_id"],
        review["span_id"],
    }
    assert all("add how much?" in e["attributes"] for e in interrupts)
    assert all(e["trace_id"] == rid for e in interrupts)
    assert not events_of(db_path, name="exception")

    resumed = app.invoke(Command(resume=5), config=config)
    assert resumed == {"x": 7, "path": ["a", "ask"]}
    spans = [s for s in spans_of(handler, db_path) if s["trace_id"] != rid]
    assert {(s["status"], s["error"], s["session_id"]) for s in spans} == {("ok", None, "t-1")}
    root = pop_span(spans, "LangGraph", parent_id=None)
    review = pop_span(spans, "review", parent_id=root["span_id"], trace_id=root["span_id"])
    subgraph = pop_span(spans, "LangGraph", parent_id=review["span_id"])
    done = pop_span(spans, "ask", parent_id=subgraph["span_id"], trace_id=root["span_id"])
    assert json.loads(done["outputs"]) == {"x": 7, "path": ["a", "ask"]}
    assert spans == []
    assert len(events_of(db_path, name="interrupt")) == 3
