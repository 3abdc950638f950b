"""Overhead of chainwatch's LangChain handler, measured against LangChain's own callbacks.

Four figures, each printed with its target (the script reports, it does not assert):

1. Per-span overhead on a 13-run RAG chain with a fake chat model: no handler, an empty
   `BaseCallbackHandler`, LangChain's `RunCollectorCallbackHandler` and `ChainWatchHandler`
   (default, and with ``hooks=[]`` for comparison), interleaved round-robin in one process;
   the median per configuration is compared. Wall time is the figure; the process's CPU time
   is printed beside it, since it is steadier on a shared machine.
2. Streamed call overhead: a fake chat model streaming 20 chunks through `.stream()`.
3. Retained memory: allocated blocks and RSS between invocation 1k and 10k, then bytes
   (tracemalloc) over a shorter window.
4. Writer throughput on pre-built spans, and `flush()` latency after a batch of invocations.

Usage::

    python benchmarks/bench_langchain.py [--quick] [--json PATH] [--profile]
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import langchain_core
from _harness import (
    AllThreadsProfile,
    Figure,
    _describe,
    _rss_kb,
    at_most,
    base_parser,
    checkpoint_chainwatch,
    checkpoint_ms,
    cpu_ns,
    environment,
    finish_chainwatch,
    print_profiles,
    run_phases,
)
from langchain_core.callbacks import (
    BaseCallbackHandler,
    CallbackManagerForLLMRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableParallel, RunnablePassthrough
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler

from chainwatch import ChainWatchHandler
from chainwatch.spans import SpanRecord, Usage
from chainwatch.store import database, rows
from chainwatch.store import writer as cw_writer
from chainwatch.store.rows import RowSettings

STREAM_CHUNKS = 20
ANSWER = (
    "Chainwatch records every LangChain run as a span in a local SQLite file, "
    "with latency, tokens and cost per call."
)
# `chainwatch` is the default handler; `chainwatch_nohooks` (hooks=[]) shows the share of
# the post-run hooks (quality analysis), which run by default.
CONFIGS = ("none", "empty", "run_collector", "chainwatch", "chainwatch_nohooks")
# Bounded churn that is not retention: each sqlite3 connection (chainwatch has one on the
# writer thread and one on the hook thread) keeps a weakref per cursor and prunes the list
# every 200 cursors, so a reading can catch up to ~200 blocks per connection; thread pools
# and caches settle within a few KB. A leak of one block per invocation over 9,000
# invocations is far above this; --quick runs too few invocations to tell.
MEMORY_NOISE_KB = 32.0
MEMORY_NOISE_BLOCKS = 1_000
TRACE_FRAMES = 8


@dataclass(frozen=True)
class Sizes:
    """How much work each phase does."""

    rounds: int
    invocations: int
    stream_calls: int
    warmup: int
    mem_warmup: int
    mem_total: int
    mem_baseline_total: int
    mem_traced: int
    writer_spans: int
    flush_batch: int
    flush_repeats: int
    profile_invocations: int


FULL = Sizes(
    rounds=11,
    invocations=120,
    stream_calls=1_000,
    warmup=100,
    mem_warmup=1_000,
    mem_total=10_000,
    mem_baseline_total=4_000,
    mem_traced=100,
    writer_spans=200_000,
    flush_batch=100,
    flush_repeats=9,
    profile_invocations=1_000,
)
QUICK = Sizes(
    rounds=5,
    invocations=30,
    stream_calls=200,
    warmup=20,
    mem_warmup=100,
    mem_total=250,
    mem_baseline_total=250,
    mem_traced=25,
    writer_spans=20_000,
    flush_batch=100,
    flush_repeats=3,
    profile_invocations=200,
)


# -- the chain under test ------------------------------------------------------------------------


def _usage() -> UsageMetadata:
    return {"input_tokens": 180, "output_tokens": STREAM_CHUNKS, "total_tokens": 200}


class FakeRetriever(BaseRetriever):
    """Returns three short passages for any query."""

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return [
            Document(
                page_content=f"Passage {i} on {query}: spans, traces and costs are kept locally.",
                metadata={"source": f"docs/page-{i}.md", "score": 0.9 - i / 10},
            )
            for i in range(3)
        ]


class FakeChatModel(BaseChatModel):
    """Answers `ANSWER` with usage metadata; streams it as one chunk per word."""

    model_name: str = "gpt-4o-mini"

    @property
    def _llm_type(self) -> str:
        return "fake-chat"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "openai"
        return params

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        message = AIMessage(
            content=ANSWER,
            usage_metadata=_usage(),
            response_metadata={"model_name": self.model_name, "finish_reason": "stop"},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        words = ANSWER.split(" ")
        for i, word in enumerate(words):
            last = i == len(words) - 1
            message = (
                AIMessageChunk(
                    content=word,
                    usage_metadata=_usage(),
                    response_metadata={"model_name": self.model_name, "finish_reason": "stop"},
                    chunk_position="last",
                )
                if last
                else AIMessageChunk(content=word + " ")
            )
            chunk = ChatGenerationChunk(message=message)
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


def _format_docs(inputs: dict[str, Any]) -> str:
    return "\n\n".join(doc.page_content for doc in inputs["context"])


def build_rag_chain(model: BaseChatModel) -> Runnable[str, dict[str, Any]]:
    """LangChain's "RAG with sources" chain: 13 runs per invocation."""
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer from this context only.\n\n{context}"), ("human", "{question}")]
    )
    answer = RunnablePassthrough.assign(context=_format_docs) | prompt | model | StrOutputParser()
    retrieve = RunnableParallel({"context": FakeRetriever(), "question": RunnablePassthrough()})
    return retrieve.assign(answer=answer)


def count_runs(chain: Runnable[str, Any], question: str) -> int:
    """Runs one invocation produces, child runs included."""
    collector = RunCollectorCallbackHandler()
    chain.invoke(question, config={"callbacks": [collector]})

    def size(run: Any) -> int:
        return 1 + sum(size(child) for child in run.child_runs)

    return sum(size(run) for run in collector.traced_runs)


# -- handlers ------------------------------------------------------------------------------------


class EmptyHandler(BaseCallbackHandler):
    """LangChain's cost of dispatching to one handler that does nothing."""


def make_handlers(tmp: Path, name: str) -> dict[str, Any]:
    """One handler of each configuration; `none` is no handler at all."""
    return {
        "none": None,
        "empty": EmptyHandler(),
        "run_collector": RunCollectorCallbackHandler(),
        "chainwatch": ChainWatchHandler(db=tmp / f"{name}.db"),
        "chainwatch_nohooks": ChainWatchHandler(db=tmp / f"{name}-nohooks.db", hooks=[]),
    }


def finish(handler: Any) -> None:
    """What a timed block ends with: chainwatch's flush; the others have nothing to flush."""
    if isinstance(handler, ChainWatchHandler):
        finish_chainwatch(handler)


def reset(handler: Any) -> None:
    """Between rounds (untimed): drop what RunCollector kept, checkpoint chainwatch's WAL."""
    if isinstance(handler, RunCollectorCallbackHandler):
        handler.traced_runs.clear()
    elif isinstance(handler, ChainWatchHandler):
        checkpoint_chainwatch(handler, handler.db_path.stem)


def config_for(handler: Any) -> dict[str, Any]:
    return {"callbacks": [handler]} if handler is not None else {}


@dataclass
class Samples:
    """Per-call µs of each configuration, one sample per round."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    flush: dict[str, list[float]]

    def median(self, which: str) -> dict[str, float]:
        return {name: statistics.median(v) for name, v in getattr(self, which).items()}


def interleaved(
    handlers: dict[str, Any],
    work: Callable[[dict[str, Any]], None],
    calls: int,
    rounds: int,
    warmup: int,
) -> Samples:
    """Time `calls` calls of `work` plus the handler's flush, configurations round-robin.

    Wall time is the figure; the process's CPU time (all threads: pool, writer, hooks) is
    kept too, as it hardly moves when other processes load the machine. The starting
    configuration rotates every round, so that no configuration always runs first after a
    collection.
    """
    names = list(handlers)
    for name in names:
        config = config_for(handlers[name])
        for _ in range(warmup):
            work(config)
        finish(handlers[name])
        reset(handlers[name])
    out = Samples({n: [] for n in names}, {n: [] for n in names}, {n: [] for n in names})
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            handler = handlers[name]
            config = config_for(handler)
            gc.collect()
            cpu = cpu_ns()
            start = time.perf_counter_ns()
            for _ in range(calls):
                work(config)
            called = time.perf_counter_ns()
            finish(handler)
            end = time.perf_counter_ns()
            cpu = cpu_ns() - cpu
            out.wall[name].append((end - start) / calls / 1_000)
            out.cpu[name].append(cpu / calls / 1_000)
            out.flush[name].append((end - called) / calls / 1_000)
            reset(handler)
    return out


def check_stats(label: str, handler: Any, details: dict[str, Any]) -> None:
    """Record a chainwatch handler's counters; warn when spans were lost or left open."""
    if not isinstance(handler, ChainWatchHandler):
        return
    stats = handler.stats
    details[f"{label}_stats"] = stats
    lost = ("spans_dropped", "writer_dropped", "writer_errors", "internal_errors", "open_spans")
    if any(stats.get(key) for key in lost):
        print(f"warning: {label}: chainwatch stats {stats}", file=sys.stderr)


# -- 1. per-span overhead ------------------------------------------------------------------------


def bench_per_span(sizes: Sizes, tmp: Path, figures: list[Figure], details: dict[str, Any]) -> None:
    chain = build_rag_chain(FakeChatModel())
    runs = count_runs(chain, "warm-up question")
    details["runs_per_invocation"] = runs
    handlers = make_handlers(tmp, "per_span")

    def invoke(config: dict[str, Any]) -> None:
        chain.invoke("How does chainwatch store spans?", config=config)

    samples = interleaved(handlers, invoke, sizes.invocations, sizes.rounds, sizes.warmup)
    for name, handler in handlers.items():
        check_stats(f"per_span_{name}", handler, details)
    wall, cpu = samples.median("wall"), samples.median("cpu")
    per_span = {name: (wall[name] - wall["none"]) / runs for name in CONFIGS[1:]}
    cpu_span = {name: (cpu[name] - cpu["none"]) / runs for name in CONFIGS[1:]}
    flush_share = samples.median("flush")["chainwatch"] / runs
    details["per_span"] = {
        "wall_us_per_invocation": samples.wall,
        "cpu_us_per_invocation": samples.cpu,
        "overhead_us_per_span": per_span,
        "cpu_overhead_us_per_span": cpu_span,
        "chainwatch_flush_us_per_span": flush_share,
    }
    print(
        f"  runs/invocation {runs}; µs/invocation (median of {sizes.rounds}): "
        + ", ".join(f"{name} {wall[name]:.0f}" for name in CONFIGS)
    )
    none = samples.wall["none"]
    print(f"  noise: no-handler rounds ranged {min(none):.0f}-{max(none):.0f} µs/invocation")
    print(
        "  CPU µs/span over no handler (all threads): "
        + ", ".join(f"{name} {cpu_span[name]:.0f}" for name in CONFIGS[1:])
    )
    print(
        f"  chainwatch: {per_span['chainwatch'] - flush_share:.0f} µs/span during the "
        f"invocations + {flush_share:.0f} µs/span waiting in the final flush"
    )
    blocks = checkpoint_ms.get("per_span", [])
    if blocks:
        median_ms = statistics.median(blocks)
        details["checkpoint_ms_per_block"] = blocks
        print(
            f"  WAL checkpoint after each chainwatch block (untimed, background I/O): "
            f"{median_ms:.1f} ms, {median_ms * 1000 / (sizes.invocations * runs):.0f} µs/span"
        )
    figures.append(at_most("span overhead: chainwatch", per_span["chainwatch"], "µs/span", 60))
    figures.append(
        Figure("span overhead: chainwatch hooks=[]", per_span["chainwatch_nohooks"], "µs/span")
    )
    figures.append(Figure("span overhead: empty handler", per_span["empty"], "µs/span"))
    figures.append(Figure("span overhead: RunCollector", per_span["run_collector"], "µs/span"))
    if per_span["run_collector"] > 0:
        ratio = per_span["chainwatch"] / per_span["run_collector"]
        figures.append(Figure("ratio chainwatch / RunCollector", ratio, "x"))
    figures.append(Figure("span CPU: chainwatch", cpu_span["chainwatch"], "µs/span"))
    figures.append(
        Figure("span CPU: chainwatch hooks=[]", cpu_span["chainwatch_nohooks"], "µs/span")
    )
    figures.append(Figure("span CPU: RunCollector", cpu_span["run_collector"], "µs/span"))


# -- 2. streamed calls ---------------------------------------------------------------------------


def bench_stream(sizes: Sizes, tmp: Path, figures: list[Figure], details: dict[str, Any]) -> None:
    model = FakeChatModel()
    chunks = sum(1 for _ in model.stream("Describe chainwatch."))
    details["stream_chunks"] = chunks
    handlers = make_handlers(tmp, "stream")

    def stream(config: dict[str, Any]) -> None:
        for _ in model.stream("Describe chainwatch.", config=config):
            pass

    rounds = sizes.rounds
    samples = interleaved(handlers, stream, sizes.stream_calls // rounds, rounds, sizes.warmup)
    for name, handler in handlers.items():
        check_stats(f"stream_{name}", handler, details)
    wall, cpu = samples.median("wall"), samples.median("cpu")
    overhead = {name: wall[name] - wall["none"] for name in CONFIGS[1:]}
    cpu_over = {name: cpu[name] - cpu["none"] for name in CONFIGS[1:]}
    details["stream"] = {
        "wall_us_per_call": samples.wall,
        "cpu_us_per_call": samples.cpu,
        "overhead_us_per_call": overhead,
        "cpu_overhead_us_per_call": cpu_over,
    }
    print(
        f"  {chunks} chunks/call; µs/call (median of {rounds}): "
        + ", ".join(f"{name} {wall[name]:.0f}" for name in CONFIGS)
    )
    print(
        "  CPU µs/call over no handler (all threads): "
        + ", ".join(f"{name} {cpu_over[name]:.0f}" for name in CONFIGS[1:])
    )
    figures.append(at_most("stream overhead: chainwatch", overhead["chainwatch"], "µs/call", 200))
    figures.append(
        Figure("stream overhead: chainwatch hooks=[]", overhead["chainwatch_nohooks"], "µs/call")
    )
    figures.append(Figure("stream overhead: empty handler", overhead["empty"], "µs/call"))
    figures.append(Figure("stream overhead: RunCollector", overhead["run_collector"], "µs/call"))
    figures.append(Figure("stream CPU: chainwatch", cpu_over["chainwatch"], "µs/call"))


# -- 3. memory -----------------------------------------------------------------------------------


def _settle(handler: ChainWatchHandler | None) -> None:
    if handler is not None:
        finish(handler)
    gc.collect()
    gc.collect()


@dataclass
class Growth:
    """What one configuration kept between two readings."""

    blocks: int
    rss_kb: float | None
    traced_kb: float
    traced_top: list[str]


def retained_growth(
    handler: ChainWatchHandler | None, warmup: int, total: int, traced: int
) -> Growth:
    """Growth between invocation `warmup` and `total`, then over `traced` traced invocations.

    tracemalloc slows this chain four- to six-fold, so the long stretch is read untraced
    (allocated blocks and RSS) and bytes are traced over a shorter window after it. The window
    starts after as many traced invocations again: bounded structures that churn (sqlite3's
    cursor weakrefs, caches) would otherwise show their untraced old entries being replaced
    by traced new ones as growth.
    """
    chain = build_rag_chain(FakeChatModel())
    config = config_for(handler)
    questions = [f"Question {i} about chainwatch?" for i in range(64)]

    def invoke(first: int, last: int) -> None:
        for i in range(first, last):
            chain.invoke(questions[i % 64], config=config)

    invoke(0, warmup)
    _settle(handler)
    blocks, rss = sys.getallocatedblocks(), _rss_kb()
    invoke(warmup, total)
    _settle(handler)
    blocks, rss_after = sys.getallocatedblocks() - blocks, _rss_kb()
    rss = rss_after - rss if rss is not None and rss_after is not None else None

    tracemalloc.start(TRACE_FRAMES)
    try:
        invoke(total, total + traced)
        _settle(handler)
        before, snap_before = tracemalloc.get_traced_memory()[0], tracemalloc.take_snapshot()
        invoke(total + traced, total + 2 * traced)
        _settle(handler)
        after, snap_after = tracemalloc.get_traced_memory()[0], tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    top = [
        _describe(stat)
        for stat in snap_after.compare_to(snap_before, "traceback")[:5]
        if stat.size_diff > 0
    ]
    return Growth(blocks, rss, (after - before) / 1024, top)


def bench_memory(sizes: Sizes, tmp: Path, figures: list[Figure], details: dict[str, Any]) -> None:
    window = f"{sizes.mem_traced:,} traced inv"
    totals = {"none": sizes.mem_baseline_total, "chainwatch": sizes.mem_total}
    spans = {name: f"inv {sizes.mem_warmup:,}->{total:,}" for name, total in totals.items()}
    results: dict[str, Growth] = {}
    for name, total in totals.items():
        handler = ChainWatchHandler(db=tmp / "memory.db") if name == "chainwatch" else None
        gc.collect()
        growth = results[name] = retained_growth(handler, sizes.mem_warmup, total, sizes.mem_traced)
        check_stats("memory", handler, details)
        rss = f"{growth.rss_kb:+,.0f} KB" if growth.rss_kb is not None else "n/a"
        print(
            f"  {name}: {spans[name]}: {growth.blocks:+,} allocated blocks, RSS {rss}; "
            f"then {window}: {growth.traced_kb:+.1f} KB traced"
        )
        noisy = growth.blocks > MEMORY_NOISE_BLOCKS or growth.traced_kb > MEMORY_NOISE_KB
        for line in growth.traced_top if noisy else ():
            print(f"    {line}")
    details["memory"] = {name: asdict(growth) for name, growth in results.items()}
    cw, base = results["chainwatch"], results["none"]
    figures.append(
        at_most(
            f"retained blocks, {spans['chainwatch']}: chainwatch",
            cw.blocks,
            "blocks",
            MEMORY_NOISE_BLOCKS,
        )
    )
    kept = sizes.mem_total - sizes.mem_warmup
    figures.append(Figure("  per invocation: chainwatch", cw.blocks / kept, "blocks"))
    figures.append(Figure(f"retained blocks, {spans['none']}: none", base.blocks, "blocks"))
    if cw.rss_kb is not None:
        figures.append(Figure(f"RSS growth, {spans['chainwatch']}: chainwatch", cw.rss_kb, "KB"))
    # Two connections' cursor-weakref sawtooth alone can reach MEMORY_NOISE_KB, so a short
    # traced window cannot tell a small steady leak from noise: it is a diagnostic, and the
    # 9,000-invocation block count above is the check.
    figures.append(Figure(f"retained bytes, {window}: chainwatch", cw.traced_kb, "KB"))
    figures.append(
        Figure("  per invocation: chainwatch", cw.traced_kb * 1024 / sizes.mem_traced, "B")
    )
    figures.append(Figure(f"retained bytes, {window}: none", base.traced_kb, "KB"))


# -- 4. writer -----------------------------------------------------------------------------------

# The RAG chain's span shape: (name, kind, index of parent).
_SHAPE = (
    ("RunnableSequence", "chain", None),
    ("RunnableParallel<context,question>", "chain", 0),
    ("FakeRetriever", "retriever", 1),
    ("RunnablePassthrough", "chain", 1),
    ("RunnableAssign<answer>", "chain", 0),
    ("RunnableParallel<answer>", "chain", 4),
    ("RunnableSequence", "chain", 5),
    ("RunnableAssign<context>", "chain", 6),
    ("RunnableParallel<context>", "chain", 7),
    ("_format_docs", "chain", 8),
    ("ChatPromptTemplate", "prompt", 6),
    ("FakeChatModel", "llm", 6),
    ("StrOutputParser", "parser", 6),
)


def make_spans(n: int) -> list[SpanRecord]:
    """`n` finished spans shaped like the RAG chain's, as the recorder would hand them over."""
    spans: list[SpanRecord] = []
    start = time.time_ns()
    usage = Usage(prompt_tokens=180, completion_tokens=20, total_tokens=200, source="bench")
    while len(spans) < n:
        ids = [str(uuid.uuid4()) for _ in _SHAPE]
        for i, (name, kind, parent) in enumerate(_SHAPE):
            rec = SpanRecord(
                ids[i],
                ids[0],
                ids[parent] if parent is not None else None,
                name,
                kind,
                "langchain",
                start + i * 1_000,
                inputs={"question": "How does chainwatch store spans?", "k": 3},
                tags=["bench"],
                metadata={"user_id": "u-1"},
            )
            rec.end_ns = start + 50_000 + i * 1_000
            rec.outputs = {"answer": "In a local SQLite file.", "sources": ["docs/page-0.md"]}
            if kind == "llm":
                rec.model, rec.provider, rec.usage = "gpt-4o-mini", "openai", usage
                rec.finish_reason = "stop"
            spans.append(rec)
        start += 100_000
    return spans[:n]


def bench_writer(sizes: Sizes, tmp: Path, figures: list[Figure], details: dict[str, Any]) -> None:
    n = sizes.writer_spans
    spans = make_spans(n)
    settings = RowSettings()
    # A queue as large as the burst: 200k spans at once is not an app's pace, and a smaller
    # queue would (by design) drop what the writer cannot keep up with.
    writer = cw_writer.writer_for(tmp / "writer.db", queue_size=max(n, 100_000))
    gc.collect()
    start = time.perf_counter_ns()
    for rec in spans:
        writer.put(rec, settings)
    queued = time.perf_counter_ns()
    ok = writer.flush(120.0)
    done = time.perf_counter_ns()
    writer.shutdown()
    if not ok or writer.written != n or writer.dropped:
        print(
            f"warning: writer wrote {writer.written:,} of {n:,}, dropped {writer.dropped:,}",
            file=sys.stderr,
        )
    put_s, total_s = (queued - start) / 1e9, (done - start) / 1e9
    rate = n / total_s
    put_us = (queued - start) / n / 1_000
    details["writer"] = {
        "spans": n,
        "written": writer.written,
        "dropped": writer.dropped,
        "put_s": put_s,
        "total_s": total_s,
    }
    print(f"  {n:,} spans: put {put_s:.2f} s, put + flush {total_s:.2f} s")
    figures.append(
        Figure("writer throughput (put + flush)", rate, "spans/s", ">= 40,000", rate >= 40_000)
    )
    figures.append(Figure("writer put, caller side", put_us, "µs/span"))
    floor = sqlite_floor(spans, tmp / "floor.db")
    details["writer"]["sqlite_floor_spans_per_s"] = floor
    print(f"  the same rows, pre-built, inserted with executemany in 5,000-row transactions: "
          f"{floor:,.0f} spans/s (SQLite's floor for this schema here)")
    figures.append(Figure("  SQLite floor (rows pre-built, no JSON)", floor, "spans/s"))
    del spans
    bench_writer_busy(sizes, tmp, figures, details)

    chain = build_rag_chain(FakeChatModel())
    handler = ChainWatchHandler(db=tmp / "flush.db")
    config = config_for(handler)
    for _ in range(sizes.warmup):
        chain.invoke("How does chainwatch store spans?", config=config)
    flush_ms: list[float] = []
    for _ in range(sizes.flush_repeats):
        handler.flush()
        gc.collect()
        for _ in range(sizes.flush_batch):
            chain.invoke("How does chainwatch store spans?", config=config)
        start = time.perf_counter_ns()
        handler.flush(60.0)  # the figure is flush() itself, not the WAL checkpoint after it
        flush_ms.append((time.perf_counter_ns() - start) / 1e6)
    check_stats("flush", handler, details)
    handler.shutdown()
    median = statistics.median(flush_ms)
    details["flush_ms"] = flush_ms
    print(
        f"  flush after {sizes.flush_batch} invocations, ms: "
        + ", ".join(f"{v:.1f}" for v in flush_ms)
    )
    figures.append(
        at_most(f"flush() after {sizes.flush_batch} invocations", median, "ms", 20, strict=True)
    )


def sqlite_floor(spans: list[SpanRecord], path: Path) -> float:
    """Spans/s of SQLite alone: the writer's rows built beforehand, then only inserted."""
    built = [rows.span_row(rec, RowSettings()) for rec in spans]
    conn = database.connect(path).conn
    start = time.perf_counter()
    for i in range(0, len(built), 5_000):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(rows.SPAN_INSERT, built[i : i + 5_000])
        conn.execute("COMMIT")
    rate = len(built) / (time.perf_counter() - start)
    conn.close()
    return rate


def bench_writer_busy(
    sizes: Sizes, tmp: Path, figures: list[Figure], details: dict[str, Any]
) -> None:
    """The writer while an app thread keeps the interpreter busy (pure Python, no waits).

    Every time the writer lets go of the interpreter lock (SQLite's work runs without it), it
    must wait for the busy thread to give it back. Printed: spans/s written, and how much of
    its pace the busy thread kept, against the same thread alone.
    """
    n = sizes.writer_spans // 10
    spans = make_spans(n)
    settings = RowSettings()

    def spin(seconds: float, stop: threading.Event | None = None) -> float:
        loops, start = 0, time.perf_counter()
        while (stop is None or not stop.is_set()) and time.perf_counter() - start < seconds:
            sum(range(1000))
            loops += 1
        return loops / (time.perf_counter() - start)

    alone = spin(1.0)
    writer = cw_writer.writer_for(tmp / "writer-busy.db", queue_size=max(n, 100_000))
    stop = threading.Event()
    pace: list[float] = []
    app = threading.Thread(target=lambda: pace.append(spin(600.0, stop)))
    app.start()
    start = time.perf_counter()
    for rec in spans:
        writer.put(rec, settings)
    writer.flush(600.0)
    total_s = time.perf_counter() - start
    stop.set()
    app.join()
    writer.shutdown()
    rate, kept = n / total_s, pace[0] / alone
    details["writer_busy"] = {"spans": n, "total_s": total_s, "app_pace_kept": kept}
    print(f"  {n:,} spans beside a busy app thread: {total_s:.2f} s; the app kept {kept:.0%}")
    figures.append(Figure("writer throughput, busy app thread", rate, "spans/s"))
    figures.append(Figure("  app pace kept meanwhile", kept * 100, "%"))


# -- profile -------------------------------------------------------------------------------------


TOP = 15
_THREAD_GROUPS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("caller threads", lambda name: not name.startswith("chainwatch-")),
    ("writer thread", lambda name: name.startswith("chainwatch-writer")),
    ("hook thread", lambda name: name.startswith("chainwatch-hooks")),
)


def profile_chainwatch(sizes: Sizes, tmp: Path) -> dict[str, str]:
    """cProfile the default chainwatch configuration over the RAG chain, all threads."""
    chain = build_rag_chain(FakeChatModel())
    for _ in range(sizes.warmup):
        chain.invoke("How does chainwatch store spans?")
    runs = count_runs(chain, "warm-up question")
    gc.collect()
    with AllThreadsProfile() as prof:
        handler = ChainWatchHandler(db=tmp / "profile.db")
        config = config_for(handler)
        for _ in range(sizes.profile_invocations):
            chain.invoke("How does chainwatch store spans?", config=config)
        finish(handler)
        # Stop the writer thread so its profiler is no longer being written to.
        handler.shutdown()
    spans = sizes.profile_invocations * runs
    return print_profiles(
        prof, _THREAD_GROUPS,
        lambda title, top: (
            f"cProfile, {title}, {sizes.profile_invocations:,} invocations ({spans:,} spans), "
            f"top {top} cumulative inside chainwatch:"
        ),
        TOP,
    )


# -- report --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(
        __doc__ or "", "smaller N, well under a minute",
        "instead of measuring, cProfile the chainwatch configuration on all threads",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    mode = "quick" if args.quick else "full"
    # A LangSmith tracer enabled from the environment would be timed with every configuration.
    for var in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING"):
        os.environ.pop(var, None)

    env = environment(langchain_core=langchain_core.__version__)
    print(
        f"chainwatch benchmark ({mode}): Python {env['python']}, "
        f"langchain-core {env['langchain_core']}, {env['cpus']} CPUs, "
        f"sum(range(1000)) {env['calibration_sum_range_1000_us']:.1f} µs, "
        f"load average {env['load_average_at_start']}"
    )
    return run_phases(
        args, env=env, sizes=sizes, tmp_prefix="chainwatch-bench-", phases=PHASES,
        profile=profile_chainwatch,
    )


PHASES: tuple[tuple[str, Callable[[Sizes, Path, list[Figure], dict[str, Any]], None]], ...] = (
    ("1. per-span overhead, RAG chain", bench_per_span),
    ("2. streamed call overhead", bench_stream),
    ("3. retained memory", bench_memory),
    ("4. writer", bench_writer),
)


if __name__ == "__main__":
    sys.exit(main())
