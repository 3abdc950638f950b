"""Overhead of chainwatch's LlamaIndex integration, on both paths, next to LlamaIndex's own.

Two figures, each printed with its target (the script reports, it does not assert):

1. Per-span overhead on a `VectorStoreIndex` query (20 short documents, `MockEmbedding`,
   `MockLLM`, top-2 retrieval). Configurations, interleaved round-robin in one process, the
   median per configuration compared: no handler; an empty legacy callback handler;
   LlamaIndex's `LlamaDebugHandler`; chainwatch on the legacy `CallbackManager` path; an empty
   dispatcher span and event handler; chainwatch on the instrumentation (dispatcher) path;
   chainwatch on both; each chainwatch configuration also with ``hooks=[]``. Per span:
   ((time of N queries + ``flush()``) / N - no handler) / spans per query, the spans counted
   in chainwatch's database for that path (legacy events for the handlers that keep none).
   Wall time is the figure (difference of the medians); beside it, for a noisy machine, the
   median of each round's difference to the no-handler block of the same round ("paired"),
   the fastest round against the fastest ("fastest"), and the process's CPU time.
2. Retained memory: allocated blocks and RSS between query 1k and 10k on the dispatcher path
   (default hooks), flushed and collected before each reading; then bytes (tracemalloc) over
   a shorter window. --quick reads from query 200 to 1k and gives no verdict: chainwatch
   remembers the first 1,000 trace ids per database for `report()`, which is still filling.

Every configuration gets its own query engine: LlamaIndex objects capture their callback
manager when they are built, so the manager is passed to each part explicitly, and it is
also `Settings.callback_manager` while that configuration runs (the text splitter the
synthesizer builds per query reads it). The dispatcher is global: chainwatch's (or the empty)
dispatcher handlers are registered only around their own configuration's blocks.

Usage::

    python benchmarks/bench_llama_index.py [--quick] [--json PATH] [--profile]
"""

from __future__ import annotations

import dataclasses
import gc
import sqlite3
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import llama_index.core
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
from llama_index.core import Document, Settings, VectorStoreIndex, get_response_synthesizer
from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.callbacks import CallbackManager, LlamaDebugHandler
from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.indices.vector_store.retrievers import VectorIndexRetriever
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine

import chainwatch
from chainwatch import ChainWatchHandler

DOCUMENTS = 20
EMBED_DIM = 8
MAX_TOKENS = 16
TOP_K = 2
QUESTION = "How does chainwatch store spans?"
PROBE_QUERIES = 3
SPAN_TARGET_US = 60.0
# (key, label, path the per-span figure divides by). `legacy_events` is the number of legacy
# event pairs per query; the chainwatch paths are counted in chainwatch's own database.
CONFIGS: tuple[tuple[str, str, str], ...] = (
    ("none", "no handler", ""),
    ("empty_legacy", "empty legacy handler", "legacy_events"),
    ("llama_debug", "LlamaDebugHandler", "legacy_events"),
    ("legacy", "chainwatch legacy", "legacy"),
    ("legacy_nohooks", "chainwatch legacy hooks=[]", "legacy"),
    ("empty_dispatcher", "empty dispatcher handlers", "dispatcher"),
    ("dispatcher", "chainwatch dispatcher", "dispatcher"),
    ("dispatcher_nohooks", "chainwatch dispatcher hooks=[]", "dispatcher"),
    ("both", "chainwatch both paths", "both"),
    ("both_nohooks", "chainwatch both paths hooks=[]", "both"),
)
LABELS = {key: label for key, label, _ in CONFIGS}
DIVISOR = {key: path for key, _, path in CONFIGS}
# Bounded churn that is not retention (as in bench_langchain.py): sqlite3's cursor weakrefs on
# the writer and hook connections, caches and thread pools settling. A leak of one block per
# query over 9,000 queries is far above this; --quick runs too few queries to tell. RSS also
# takes in SQLite's page cache of the growing database (bounded by its cache_size).
MEMORY_NOISE_KB = 32.0
MEMORY_NOISE_BLOCKS = 1_000
TRACE_FRAMES = 8


@dataclass(frozen=True)
class Sizes:
    """How much work each phase does."""

    rounds: int
    queries: int
    warmup: int
    mem_warmup: int
    mem_total: int
    mem_baseline_total: int
    mem_traced: int
    profile_queries: int


FULL = Sizes(
    rounds=21,
    queries=40,
    warmup=30,
    mem_warmup=1_000,
    mem_total=10_000,
    mem_baseline_total=3_000,
    mem_traced=100,
    profile_queries=1_000,
)
QUICK = Sizes(
    rounds=7,
    queries=15,
    warmup=10,
    mem_warmup=200,
    mem_total=1_000,
    mem_baseline_total=500,
    mem_traced=25,
    profile_queries=200,
)


# -- the index and its engines -------------------------------------------------------------------


def documents() -> list[Document]:
    return [
        Document(
            text=(
                f"Note {i}: chainwatch records each run as a span in a local SQLite file, "
                f"with latency, tokens and cost; topic {i % 5} of the handbook."
            ),
            id_=f"doc-{i}",
        )
        for i in range(DOCUMENTS)
    ]


def build_engine(index: VectorStoreIndex, manager: CallbackManager) -> BaseQueryEngine:
    """A top-2 query engine whose every part reports to `manager`.

    ``index.as_query_engine(callback_manager=...)`` cannot do this: the retriever gets the
    index's own manager as well (a duplicate keyword), and `from_args` builds the synthesizer
    with `Settings.callback_manager`. So the parts are built here, each with `manager`.
    """
    llm = MockLLM(max_tokens=MAX_TOKENS, callback_manager=manager)
    embed = MockEmbedding(embed_dim=EMBED_DIM, callback_manager=manager)
    retriever = VectorIndexRetriever(
        index, similarity_top_k=TOP_K, embed_model=embed, callback_manager=manager
    )
    synthesizer = get_response_synthesizer(llm=llm, callback_manager=manager)
    return RetrieverQueryEngine.from_args(
        retriever, llm=llm, response_synthesizer=synthesizer, callback_manager=manager
    )


@contextmanager
def llama_index_settings() -> Iterator[None]:
    """Mock models in LlamaIndex's global Settings; every field restored afterwards."""
    saved = {f.name: getattr(Settings, f.name) for f in dataclasses.fields(Settings)}
    parser = saved.get("_node_parser")
    parser_manager = getattr(parser, "callback_manager", None)
    Settings.llm = MockLLM(max_tokens=MAX_TOKENS)
    Settings.embed_model = MockEmbedding(embed_dim=EMBED_DIM)
    # No global manager while engines are built: an empty CallbackManager() copies the
    # global manager's handler list, so building one under a handler would share it.
    Settings._callback_manager = None
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(Settings, name, value)
        if parser is not None:
            parser.callback_manager = parser_manager


# -- handlers ------------------------------------------------------------------------------------


class EmptyCallbackHandler(BaseCallbackHandler):
    """LlamaIndex's cost of calling one legacy handler that does nothing."""

    def __init__(self) -> None:
        super().__init__(event_starts_to_ignore=[], event_ends_to_ignore=[])

    def on_event_start(
        self,
        event_type: Any,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        parent_id: str = "",
        **kwargs: Any,
    ) -> str:
        return event_id

    def on_event_end(
        self,
        event_type: Any,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        **kwargs: Any,
    ) -> None:
        return None

    def start_trace(self, trace_id: str | None = None) -> None:
        return None

    def end_trace(
        self, trace_id: str | None = None, trace_map: dict[str, list[str]] | None = None
    ) -> None:
        return None


class EmptySpanHandler(BaseSpanHandler[Any]):
    """A dispatcher span handler that keeps nothing."""

    @classmethod
    def class_name(cls) -> str:
        return "EmptySpanHandler"

    def new_span(self, *args: Any, **kwargs: Any) -> None:
        return None

    def prepare_to_exit_span(self, *args: Any, **kwargs: Any) -> None:
        return None

    def prepare_to_drop_span(self, *args: Any, **kwargs: Any) -> None:
        return None


class EmptyEventHandler(BaseEventHandler):
    """A dispatcher event handler that does nothing."""

    @classmethod
    def class_name(cls) -> str:
        return "EmptyEventHandler"

    def handle(self, event: Any, **kwargs: Any) -> None:
        return None


class EmptyDispatcherHandlers:
    """The empty span and event handler, added to and removed from the root dispatcher."""

    def __init__(self) -> None:
        self.span = EmptySpanHandler()
        self.event = EmptyEventHandler()

    def attach(self) -> None:
        root = get_dispatcher()
        root.add_span_handler(self.span)
        root.add_event_handler(self.event)

    def detach(self) -> None:
        root = get_dispatcher()
        root.span_handlers = [h for h in root.span_handlers if h is not self.span]
        root.event_handlers = [h for h in root.event_handlers if h is not self.event]


@dataclass
class Config:
    """One configuration: its engine, its callback manager and what it attaches globally."""

    name: str
    engine: BaseQueryEngine
    manager: CallbackManager
    legacy: Any = None
    dispatcher: Any = None
    chainwatch: ChainWatchHandler | None = None
    queries: int = 0

    def query(self, question: str = QUESTION) -> None:
        self.engine.query(question)
        self.queries += 1

    def activate(self) -> None:
        """Untimed: make this configuration's manager global and attach its dispatcher side."""
        Settings.callback_manager = self.manager
        if isinstance(self.dispatcher, ChainWatchHandler):
            chainwatch.instrument_llama_index(self.dispatcher)
        elif self.dispatcher is not None:
            self.dispatcher.attach()

    def deactivate(self) -> None:
        if isinstance(self.dispatcher, ChainWatchHandler):
            chainwatch.uninstrument_llama_index(self.dispatcher)
        elif self.dispatcher is not None:
            self.dispatcher.detach()
        Settings._callback_manager = None

    @contextmanager
    def active(self) -> Iterator[None]:
        """This configuration attached for the block, detached after it."""
        self.activate()
        try:
            yield
        finally:
            self.deactivate()

    def run(self, queries: int) -> None:
        """Untimed: `queries` queries, then what a timed block ends with."""
        with self.active():
            for _ in range(queries):
                self.query()
            self.finish()

    def finish(self) -> None:
        """What a timed block ends with: chainwatch's flush; the others have nothing to flush."""
        if self.chainwatch is not None:
            finish_chainwatch(self.chainwatch, self.name)

    def reset(self) -> None:
        """Between rounds (untimed): drop what LlamaDebugHandler kept, checkpoint chainwatch."""
        if isinstance(self.legacy, LlamaDebugHandler):
            self.legacy.flush_event_logs()
        if self.chainwatch is not None:
            checkpoint_chainwatch(self.chainwatch, self.name)


def make_config(name: str, index: VectorStoreIndex, db: Path | None) -> Config:
    """The configuration `name`; chainwatch's database (if any) at `db`."""
    handler: ChainWatchHandler | None = None
    if db is not None and name not in ("none", "empty_legacy", "llama_debug", "empty_dispatcher"):
        handler = ChainWatchHandler(db=db, hooks=[] if name.endswith("_nohooks") else None)
    path = DIVISOR[name]
    legacy: Any = None
    dispatcher: Any = None
    if name == "empty_legacy":
        legacy = EmptyCallbackHandler()
    elif name == "llama_debug":
        legacy = LlamaDebugHandler(print_trace_on_end=False)
    elif path in ("legacy", "both"):
        legacy = handler
    if name == "empty_dispatcher":
        dispatcher = EmptyDispatcherHandlers()
    elif path in ("dispatcher", "both"):
        dispatcher = handler
    manager = CallbackManager([legacy] if legacy is not None else [])
    return Config(name, build_engine(index, manager), manager, legacy, dispatcher, handler)


def make_configs(index: VectorStoreIndex, tmp: Path) -> dict[str, Config]:
    return {name: make_config(name, index, tmp / f"{name}.db") for name, _, _ in CONFIGS}


def span_rows(db: Path) -> list[tuple[str, str]]:
    """(name, kind) of every span in a chainwatch database, through plain SQL."""
    conn = sqlite3.connect(db)
    try:
        return list(conn.execute("SELECT name, kind FROM spans ORDER BY start_time, rowid"))
    finally:
        conn.close()


def spans_per_query(index: VectorStoreIndex, tmp: Path, details: dict[str, Any]) -> dict[str, int]:
    """Spans one query records on each chainwatch path, and legacy events per query."""
    counts: dict[str, int] = {}
    for path in ("legacy", "dispatcher", "both"):
        db = tmp / f"probe-{path}.db"
        config = make_config(f"{path}_nohooks", index, db)
        config.run(PROBE_QUERIES)
        assert config.chainwatch is not None
        config.chainwatch.shutdown()
        rows = span_rows(db)
        if len(rows) % PROBE_QUERIES:
            print(f"warning: {path}: {len(rows)} spans in {PROBE_QUERIES} queries", file=sys.stderr)
        counts[path] = len(rows) // PROBE_QUERIES
        details[f"spans_{path}"] = [f"{name} ({kind})" for name, kind in rows[: counts[path]]]
    debug = make_config("llama_debug", index, None)
    debug.run(PROBE_QUERIES)
    pairs = debug.legacy.get_event_pairs()
    counts["legacy_events"] = len(pairs) // PROBE_QUERIES
    details["legacy_events"] = [p[0].event_type.value for p in pairs[: counts["legacy_events"]]]
    return counts


def check_stats(label: str, handler: ChainWatchHandler | None, details: dict[str, Any]) -> None:
    """Record a chainwatch handler's counters; warn when spans were lost or left open."""
    if handler is None:
        return
    stats = handler.stats
    details[f"{label}_stats"] = stats
    lost = ("spans_dropped", "writer_dropped", "writer_errors", "internal_errors", "open_spans")
    if any(stats.get(key) for key in lost):
        print(f"warning: {label}: chainwatch stats {stats}", file=sys.stderr)


# -- 1. per-span overhead ------------------------------------------------------------------------


@dataclass
class Samples:
    """Per-query µs of each configuration, one sample per round."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    flush: dict[str, list[float]]

    def median(self, which: str) -> dict[str, float]:
        return {name: statistics.median(v) for name, v in getattr(self, which).items()}

    def paired(self, name: str) -> float:
        """Median over rounds of this configuration's wall time minus no handler's."""
        return statistics.median(
            a - b for a, b in zip(self.wall[name], self.wall["none"], strict=True)
        )


def interleaved(configs: dict[str, Config], calls: int, rounds: int, warmup: int) -> Samples:
    """Time `calls` queries plus the handler's flush, configurations round-robin.

    Wall time is the figure; the process's CPU time (all threads: writer, hooks) is kept too,
    as it moves less when other processes only compete for cores (in a VM, time stolen by the
    host may still count as CPU time). The starting configuration rotates every round, so
    that no configuration always runs first after a collection.
    """
    names = list(configs)
    for name in names:
        config = configs[name]
        config.run(warmup)
        config.reset()
    out = Samples({n: [] for n in names}, {n: [] for n in names}, {n: [] for n in names})
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            config = configs[name]
            with config.active():
                gc.collect()
                cpu = cpu_ns()
                start = time.perf_counter_ns()
                for _ in range(calls):
                    config.query()
                called = time.perf_counter_ns()
                config.finish()
                end = time.perf_counter_ns()
                cpu = cpu_ns() - cpu
            out.wall[name].append((end - start) / calls / 1_000)
            out.cpu[name].append(cpu / calls / 1_000)
            out.flush[name].append((end - called) / calls / 1_000)
            config.reset()
    return out


def verify_recorded(
    configs: dict[str, Config], counts: dict[str, int], details: dict[str, Any]
) -> None:
    """Every chainwatch configuration's database holds spans-per-query x queries it ran."""
    found: dict[str, str] = {}
    for name, config in configs.items():
        if config.chainwatch is None:
            continue
        check_stats(f"per_span_{name}", config.chainwatch, details)
        config.chainwatch.shutdown()
        rows = len(span_rows(config.chainwatch.db_path))
        expected = counts[DIVISOR[name]] * config.queries
        found[name] = f"{rows:,}/{expected:,}"
        if rows != expected:
            print(
                f"warning: {name}: {rows:,} spans recorded, expected {expected:,}",
                file=sys.stderr,
            )
    details["recorded_vs_expected"] = found
    print("  spans in each database / expected: " + ", ".join(f"{k} {v}" for k, v in found.items()))


def bench_per_span(sizes: Sizes, tmp: Path, figures: list[Figure], details: dict[str, Any]) -> None:
    index = VectorStoreIndex.from_documents(documents())
    counts = spans_per_query(index, tmp, details)
    details["spans_per_query"] = counts
    print(
        f"  per query: {counts['legacy_events']} legacy events "
        f"({', '.join(details['legacy_events'])}); chainwatch spans: legacy {counts['legacy']}, "
        f"dispatcher {counts['dispatcher']}, both {counts['both']}"
    )
    configs = make_configs(index, tmp)
    samples = interleaved(configs, sizes.queries, sizes.rounds, sizes.warmup)
    verify_recorded(configs, counts, details)
    wall, cpu, flush = samples.median("wall"), samples.median("cpu"), samples.median("flush")
    others = [name for name in configs if name != "none"]
    div = {n: counts[DIVISOR[n]] for n in others}
    per_span = {n: (wall[n] - wall["none"]) / div[n] for n in others}
    cpu_span = {n: (cpu[n] - cpu["none"]) / div[n] for n in others}
    # Two checks on the median, for a noisy machine: the median of each round's difference to
    # the no-handler block of the same round, and the fastest round against the fastest.
    paired = {n: samples.paired(n) / div[n] for n in others}
    fastest = {n: (min(samples.wall[n]) - min(samples.wall["none"])) / div[n] for n in others}
    details["per_span"] = {
        "wall_us_per_query": samples.wall,
        "cpu_us_per_query": samples.cpu,
        "flush_us_per_query": samples.flush,
        "overhead_us_per_span": per_span,
        "cpu_overhead_us_per_span": cpu_span,
        "paired_overhead_us_per_span": paired,
        "fastest_overhead_us_per_span": fastest,
    }
    print(
        f"  median of {sizes.rounds} rounds of {sizes.queries} queries; overhead in µs per span "
        "(per legacy event for the two handlers that keep no spans):"
    )
    print(
        f"    {'configuration':<31} {'µs/query':>8} {'÷':>3} {'median':>7} {'paired':>7} "
        f"{'fastest':>7} {'CPU':>7} {'flush':>7}"
    )
    for name in configs:
        row = f"    {LABELS[name]:<31} {wall[name]:8.0f}"
        if name != "none":
            values = (per_span[name], paired[name], fastest[name], cpu_span[name])
            row += f" {div[name]:>3}" + "".join(f" {v:7.1f}" for v in values)
            if configs[name].chainwatch is not None:
                row += f" {flush[name] / div[name]:7.1f}"
        print(row)
    none = samples.wall["none"]
    print(
        f"  noise: no-handler rounds ranged {min(none):.0f}-{max(none):.0f} µs/query; "
        "flush: the median's share spent waiting in the final flush (writer and hooks)"
    )
    blocks = [ms for name in configs for ms in checkpoint_ms.get(name, [])]
    if blocks:
        print(
            "  WAL checkpoint after each chainwatch block (untimed, background I/O): median "
            f"{statistics.median(blocks):.1f} ms"
        )
    for name in ("legacy", "dispatcher", "both"):
        label, nohooks = LABELS[name], f"{name}_nohooks"
        figures.append(
            at_most(f"span overhead: {label}", per_span[name], "µs/span", SPAN_TARGET_US)
        )
        figures.append(Figure(f"  paired rounds: {label}", paired[name], "µs/span"))
        figures.append(Figure(f"span overhead: {LABELS[nohooks]}", per_span[nohooks], "µs/span"))
    figures.append(Figure("event overhead: LlamaDebugHandler", per_span["llama_debug"], "µs/event"))
    figures.append(
        Figure("event overhead: empty legacy handler", per_span["empty_legacy"], "µs/event")
    )
    figures.append(
        Figure("span overhead: empty dispatcher handlers", per_span["empty_dispatcher"], "µs/span")
    )
    for name in ("legacy", "dispatcher", "both"):
        figures.append(Figure(f"span CPU: {LABELS[name]}", cpu_span[name], "µs/span"))
    figures.append(Figure("event CPU: LlamaDebugHandler", cpu_span["llama_debug"], "µs/event"))


# -- 2. memory -----------------------------------------------------------------------------------


def _settle(config: Config) -> None:
    config.finish()
    gc.collect()
    gc.collect()


@dataclass
class Growth:
    """What one configuration kept between two readings."""

    blocks: int
    rss_kb: float | None
    traced_kb: float
    traced_top: list[str] = field(default_factory=list)


def retained_growth(config: Config, warmup: int, total: int, traced: int) -> Growth:
    """Growth between query `warmup` and `total`, then over `traced` traced queries.

    tracemalloc slows the query several-fold, so the long stretch is read untraced (allocated
    blocks and RSS) and bytes are traced over a shorter window after it, which starts after as
    many traced queries again (bounded churn would otherwise show as growth).
    """
    questions = [f"Question {i} about chainwatch spans?" for i in range(64)]

    def run(first: int, last: int) -> None:
        for i in range(first, last):
            config.query(questions[i % 64])

    with config.active():
        run(0, warmup)
        _settle(config)
        blocks, rss = sys.getallocatedblocks(), _rss_kb()
        run(warmup, total)
        _settle(config)
        blocks, rss_after = sys.getallocatedblocks() - blocks, _rss_kb()
        rss = rss_after - rss if rss is not None and rss_after is not None else None
        tracemalloc.start(TRACE_FRAMES)
        try:
            run(total, total + traced)
            _settle(config)
            before, snap_before = tracemalloc.get_traced_memory()[0], tracemalloc.take_snapshot()
            run(total + traced, total + 2 * traced)
            _settle(config)
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
    index = VectorStoreIndex.from_documents(documents())
    window = f"{sizes.mem_traced:,} traced q"
    totals = {"none": sizes.mem_baseline_total, "dispatcher": sizes.mem_total}
    spans = {name: f"q {sizes.mem_warmup:,}->{total:,}" for name, total in totals.items()}
    results: dict[str, Growth] = {}
    for name, total in totals.items():
        config = make_config(name, index, tmp / "memory.db")
        gc.collect()
        started = time.perf_counter()
        growth = results[name] = retained_growth(config, sizes.mem_warmup, total, sizes.mem_traced)
        elapsed = time.perf_counter() - started
        check_stats("memory", config.chainwatch, details)
        rss = f"{growth.rss_kb:+,.0f} KB" if growth.rss_kb is not None else "n/a"
        kept = total - sizes.mem_warmup
        print(
            f"  {LABELS[name]}: {spans[name]}: {growth.blocks:+,} allocated blocks "
            f"({growth.blocks / kept:+.3f}/query), RSS {rss}; then {window}: "
            f"{growth.traced_kb:+.1f} KB traced  ({elapsed:.0f} s)"
        )
        noisy = growth.blocks > MEMORY_NOISE_BLOCKS or growth.traced_kb > MEMORY_NOISE_KB
        for line in growth.traced_top if noisy else ():
            print(f"    {line}")
        if config.chainwatch is not None:
            rows = len(span_rows(config.chainwatch.db_path))
            details["memory_spans_recorded"] = rows
            print(f"    {rows:,} spans recorded over {config.queries:,} queries")
            config.chainwatch.shutdown()
    if sizes.mem_warmup < 1_000:
        print(
            "  note: report() remembers the first 1,000 trace ids per database (bounded), so a"
            " window that starts before query 1,000 counts up to one block per query of them"
        )
    details["memory"] = {name: asdict(growth) for name, growth in results.items()}
    cw, base = results["dispatcher"], results["none"]
    kept = sizes.mem_total - sizes.mem_warmup
    blocks_name = f"retained blocks, {spans['dispatcher']}: chainwatch dispatcher"
    if sizes.mem_warmup < 1_000:
        # The bounded trace ids above are still filling: no verdict from a short run.
        figures.append(Figure(blocks_name, cw.blocks, "blocks", "(full run)"))
    else:
        figures.append(at_most(blocks_name, cw.blocks, "blocks", MEMORY_NOISE_BLOCKS))
    figures.append(Figure("  per query: chainwatch dispatcher", cw.blocks / kept, "blocks"))
    figures.append(Figure(f"retained blocks, {spans['none']}: no handler", base.blocks, "blocks"))
    if cw.rss_kb is not None:
        figures.append(
            Figure(f"RSS growth, {spans['dispatcher']}: chainwatch dispatcher", cw.rss_kb, "KB")
        )
        figures.append(Figure("  per query: chainwatch dispatcher", cw.rss_kb * 1024 / kept, "B"))
    # A short traced window cannot tell a small steady leak from bounded churn: it is a
    # diagnostic, and the block count over the long stretch above is the check.
    figures.append(Figure(f"retained bytes, {window}: chainwatch dispatcher", cw.traced_kb, "KB"))
    figures.append(Figure(f"retained bytes, {window}: no handler", base.traced_kb, "KB"))


# -- profile -------------------------------------------------------------------------------------


TOP = 20
_THREAD_GROUPS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("caller threads", lambda name: not name.startswith("chainwatch-")),
    ("writer thread", lambda name: name.startswith("chainwatch-writer")),
    ("hook thread", lambda name: name.startswith("chainwatch-hooks")),
)


def profile_chainwatch(sizes: Sizes, tmp: Path) -> dict[str, str]:
    """cProfile chainwatch on both paths (default hooks) over the query, all threads."""
    index = VectorStoreIndex.from_documents(documents())
    counts = spans_per_query(index, tmp, {})
    quiet = make_config("none", index, None)
    for _ in range(sizes.warmup):
        quiet.query()
    gc.collect()
    with AllThreadsProfile() as prof:
        config = make_config("both", index, tmp / "profile.db")
        config.run(sizes.profile_queries)
        assert config.chainwatch is not None
        # Stop the writer thread so its profiler is no longer being written to.
        config.chainwatch.shutdown()
    spans = sizes.profile_queries * counts["both"]
    return print_profiles(
        prof, _THREAD_GROUPS,
        lambda title, top: (
            f"cProfile, {title}, {sizes.profile_queries:,} queries on both paths "
            f"({spans:,} spans), top {top} cumulative inside chainwatch:"
        ),
        TOP,
    )


# -- report --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(
        __doc__ or "", "smaller N, about a minute",
        "instead of measuring, cProfile chainwatch on both paths on all threads",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    mode = "quick" if args.quick else "full"

    env = environment(llama_index_core=llama_index.core.__version__)
    print(
        f"chainwatch LlamaIndex benchmark ({mode}): Python {env['python']}, "
        f"llama-index-core {env['llama_index_core']}, {env['cpus']} CPUs, "
        f"sum(range(1000)) {env['calibration_sum_range_1000_us']:.1f} µs, "
        f"load average {env['load_average_at_start']}"
    )
    return run_phases(
        args, env=env, sizes=sizes, tmp_prefix="chainwatch-bench-li-", phases=PHASES,
        profile=profile_chainwatch,
        around=llama_index_settings,
    )


PHASES: tuple[tuple[str, Callable[[Sizes, Path, list[Figure], dict[str, Any]], None]], ...] = (
    ("1. per-span overhead, VectorStoreIndex query", bench_per_span),
    ("2. retained memory, dispatcher path", bench_memory),
)


if __name__ == "__main__":
    sys.exit(main())
