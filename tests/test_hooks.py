"""Post-run hooks: order, isolation of failing and slow hooks, flush(), and analyze() later.

Every test drives real LangChain runnables with fake chat models and reads the real SQLite file
back with plain SQL. Slowness is shown structurally (a hook blocked on an Event the test holds),
never by comparing wall-clock times.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda

import chainwatch
from chainwatch import ChainWatchHandler, Trace
from chainwatch.hooks import Store
from chainwatch.quality import QualityHook
from conftest import read_spans, rows

Row = dict[str, Any]


# -- helpers ----------------------------------------------------------------------------------


def hook_runs(db_path: Path) -> list[Row]:
    return rows(db_path, "SELECT * FROM hook_runs ORDER BY id")


def quality_span_ids(db_path: Path) -> set[str]:
    return {r["span_id"] for r in rows(db_path, "SELECT span_id FROM quality")}


def trace_ids_in_order(db_path: Path) -> list[str]:
    """Root span ids (= trace ids) in start order."""
    return [
        r["span_id"]
        for r in rows(db_path, "SELECT span_id FROM spans WHERE parent_id IS NULL "
                               "ORDER BY start_time, rowid")
    ]


def chain(answers: list[str]) -> Runnable[str, str]:
    """Five spans per run: the sequence, a lambda, the prompt, the model (llm) and the parser."""
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    return (
        RunnableLambda(lambda q: {"question": q}, name="prepare")
        | prompt
        | FakeListChatModel(responses=answers)
        | StrOutputParser()
    )


def run(handler: ChainWatchHandler, answers: list[str], questions: list[str]) -> None:
    c = chain(answers)
    for question in questions:
        c.invoke(question, config={"callbacks": [handler]})


class Recording:
    """A hook (a class instance with a name) that remembers what it was given."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.name = name
        self.log = log
        self.seen: list[tuple[Trace, Store, list[str], set[str]]] = []

    def __call__(self, trace: Trace, store: Store) -> None:
        self.log.append((self.name, trace.trace_id))
        stored = {
            r[0]
            for r in store.conn.execute(
                "SELECT span_id FROM spans WHERE trace_id = ?", [trace.trace_id]
            )
        }
        self.seen.append((trace, store, [s.span_id for s in trace.spans], stored))


def boom(trace: Trace, store: Store) -> None:
    raise ValueError(f"bad trace {len(trace.spans)} spans")


class WritesResults:
    """A hook that stores its own results through the Store."""

    name = "span_counter"

    def __call__(self, trace: Trace, store: Store) -> None:
        store.conn.execute(
            "CREATE TABLE IF NOT EXISTS span_counts (trace_id TEXT PRIMARY KEY, n INTEGER)"
        )
        store.write(
            "INSERT OR REPLACE INTO span_counts VALUES (?, ?)", [(trace.trace_id, len(trace))]
        )


# -- hooks on a live handler ------------------------------------------------------------------


def test_no_hooks_writes_no_quality_and_no_hook_runs(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    h = make_handler(hooks=[])
    run(h, ["I'm sorry, but I can't help with that."], ["Write malware."])
    assert h.flush()
    assert len(read_spans(db_path)) == 5
    assert rows(db_path, "SELECT * FROM quality") == []
    assert hook_runs(db_path) == []


def test_default_hooks_include_quality(handler: ChainWatchHandler, db_path: Path) -> None:
    run(handler, ["Paris."], ["Capital of France?"])
    assert handler.flush()
    llm = [s for s in read_spans(db_path) if s["kind"] == "llm"]
    assert quality_span_ids(db_path) == {llm[0]["span_id"]}
    quality_runs = [r for r in hook_runs(db_path) if r["hook"] == "quality"]
    assert len(quality_runs) == 1
    assert quality_runs[0]["trace_id"] == llm[0]["trace_id"]
    assert quality_runs[0]["status"] == "ok"
    assert quality_runs[0]["error"] is None
    assert quality_runs[0]["duration_ms"] >= 0
    assert quality_runs[0]["started_at"].endswith("+00:00")


def test_custom_hook_gets_the_whole_committed_trace_and_a_store(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    log: list[tuple[str, str]] = []
    hook = Recording("recorder", log)
    h = make_handler(hooks=[hook])
    run(h, ["One.", "Two."], ["First?", "Second?"])
    assert h.flush()

    spans = read_spans(db_path)
    by_trace: dict[str, set[str]] = {}
    for s in spans:
        by_trace.setdefault(s["trace_id"], set()).add(s["span_id"])
    assert len(by_trace) == 2
    assert [trace.trace_id for trace, *_ in hook.seen] == trace_ids_in_order(db_path)
    for trace, store, span_ids, stored in hook.seen:
        assert isinstance(trace, Trace)
        assert isinstance(store, Store)
        assert store.path == db_path.absolute()
        assert set(span_ids) == by_trace[trace.trace_id]
        # committed before the hook ran: the hook's own connection already sees every span
        assert stored == by_trace[trace.trace_id]
        assert trace.root.span_id == trace.trace_id
        assert trace.root.name == "RunnableSequence"
        assert sorted(s.kind for s in trace.spans) == ["chain", "chain", "llm", "parser", "prompt"]
    assert {r["hook"] for r in hook_runs(db_path)} == {"recorder"}


def test_hooks_run_in_order_for_each_trace(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    log: list[tuple[str, str]] = []
    h = make_handler(hooks=[Recording("first", log), Recording("second", log),
                            Recording("third", log)])
    run(h, ["A.", "B."], ["a?", "b?"])
    assert h.flush()
    first, second = trace_ids_in_order(db_path)
    # Per trace, the hooks run in the order given; each hook sees traces in completion order
    # (traces committed together run as a batch, hook by hook).
    for trace_id in (first, second):
        assert [name for name, t in log if t == trace_id] == ["first", "second", "third"]
    for name in ("first", "second", "third"):
        assert [t for n, t in log if n == name] == [first, second]
    runs = [(r["hook"], r["trace_id"]) for r in hook_runs(db_path)]
    assert sorted(runs) == sorted(log)
    for trace_id in (first, second):
        assert [h for h, t in runs if t == trace_id] == ["first", "second", "third"]


def test_raising_hook_is_recorded_and_the_next_hook_still_runs(
    make_handler: Callable[..., ChainWatchHandler],
    db_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="chainwatch")
    h = make_handler(hooks=[boom, QualityHook(), WritesResults()])
    answer = "I'm sorry, but I can't help with that."
    run(h, [answer], ["Write malware."])
    assert h.flush()

    trace_id = trace_ids_in_order(db_path)[0]
    runs = hook_runs(db_path)
    assert [(r["hook"], r["status"]) for r in runs] == [
        ("boom", "error"), ("quality", "ok"), ("span_counter", "ok"),
    ]
    assert runs[0]["trace_id"] == trace_id
    assert runs[0]["error"] == "ValueError: bad trace 5 spans"
    assert runs[0]["duration_ms"] is not None
    assert runs[1]["error"] is None and runs[2]["error"] is None

    quality = rows(db_path, "SELECT has_refusal, response_length FROM quality")
    assert quality == [{"has_refusal": 1, "response_length": len(answer)}]
    assert rows(db_path, "SELECT * FROM span_counts") == [{"trace_id": trace_id, "n": 5}]
    assert any(
        "boom" in r.getMessage() and "ValueError: bad trace 5 spans" in r.getMessage()
        for r in caplog.records
    )


def test_raising_hook_does_not_reach_the_app(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    h = make_handler(hooks=[boom])
    result = chain(["Fine."]).invoke("ok?", config={"callbacks": [h]})
    assert result == "Fine."
    assert h.flush()
    assert [r["status"] for r in hook_runs(db_path)] == ["error"]


def test_slow_hook_blocks_neither_the_app_nor_the_writer_and_flush_waits(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    entered = threading.Event()
    release = threading.Event()
    finished: list[str] = []

    def slow(trace: Trace, store: Store) -> None:
        entered.set()
        release.wait(60)  # bounded, so a broken test cannot hang the session
        finished.append(trace.trace_id)

    h = make_handler(hooks=[slow, QualityHook()])
    c = chain(["First answer.", "Second answer."])
    try:
        assert c.invoke("one?", config={"callbacks": [h]}) == "First answer."
        assert h._writer.flush()
        assert entered.wait(30), "the hook never started"

        # The hook is now blocked. The app still runs, and the writer still commits.
        assert c.invoke("two?", config={"callbacks": [h]}) == "Second answer."
        assert h._writer.flush()
        assert finished == []
        spans = read_spans(db_path)
        assert len(spans) == 10
        assert len({s["trace_id"] for s in spans}) == 2
        assert rows(db_path, "SELECT * FROM quality") == []
        assert hook_runs(db_path) == []

        # flush() waits for the hooks, so it cannot return while the hook is blocked.
        flushed: list[bool] = []
        flusher = threading.Thread(target=lambda: flushed.append(h.flush(timeout=60)))
        flusher.start()
        flusher.join(0.3)
        assert flusher.is_alive() and flushed == []
        assert finished == []

        release.set()
        flusher.join(60)
        assert not flusher.is_alive()
        assert flushed == [True]
    finally:
        release.set()

    first, second = trace_ids_in_order(db_path)
    assert finished == [first, second]
    assert [(r["hook"], r["trace_id"], r["status"]) for r in hook_runs(db_path)] == [
        (slow.__qualname__, first, "ok"), ("quality", first, "ok"),
        (slow.__qualname__, second, "ok"), ("quality", second, "ok"),
    ]
    llm = {s["span_id"] for s in read_spans(db_path) if s["kind"] == "llm"}
    assert quality_span_ids(db_path) == llm


def test_hooks_must_be_callable(db_path: Path) -> None:
    with pytest.raises(ValueError, match="hooks must be callables"):
        ChainWatchHandler(db_path, hooks=[QualityHook(), "quality"])  # type: ignore[list-item]


# -- analyze(): hooks over stored traces ------------------------------------------------------


@pytest.fixture
def recorded_without_hooks(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> list[str]:
    """Three traces recorded with hooks=[]; returns their trace ids in start order."""
    h = make_handler(hooks=[])
    run(
        h,
        ["I'm sorry, but I can't help with that.", "Paris is lovely.", "Maybe, perhaps."],
        ["Write malware.", "Capital of France?", "Will it rain?"],
    )
    assert h.flush()
    assert rows(db_path, "SELECT * FROM quality") == []
    ids = trace_ids_in_order(db_path)
    assert len(ids) == 3
    return ids


def llm_span_of(db_path: Path, trace_id: str) -> str:
    found = rows(
        db_path, "SELECT span_id FROM spans WHERE kind = 'llm' AND trace_id = ?", (trace_id,)
    )
    assert len(found) == 1
    return str(found[0]["span_id"])


def test_analyze_fills_quality_for_a_database_recorded_without_hooks(
    recorded_without_hooks: list[str], db_path: Path
) -> None:
    assert chainwatch.analyze(db=db_path, since="1h") == 3
    quality = {r["span_id"]: r for r in rows(db_path, "SELECT * FROM quality")}
    assert set(quality) == {llm_span_of(db_path, t) for t in recorded_without_hooks}
    refusal = quality[llm_span_of(db_path, recorded_without_hooks[0])]
    assert refusal["has_refusal"] == 1
    assert refusal["refusal_evidence"] == "I'm sorry, but I can't"
    hedge = quality[llm_span_of(db_path, recorded_without_hooks[2])]
    assert hedge["has_hedging"] == 1
    runs = hook_runs(db_path)
    assert [(r["hook"], r["trace_id"], r["status"]) for r in runs] == [
        ("quality", t, "ok") for t in recorded_without_hooks
    ]


def test_analyze_again_replaces_rather_than_duplicates(
    recorded_without_hooks: list[str], db_path: Path
) -> None:
    assert chainwatch.analyze(db=db_path, since="1h") == 3
    first = {r["span_id"]: r for r in rows(db_path, "SELECT * FROM quality")}
    assert chainwatch.analyze(db=db_path, since="1h") == 3
    second = {r["span_id"]: r for r in rows(db_path, "SELECT * FROM quality")}
    assert set(second) == set(first) and len(second) == 3
    assert rows(db_path, "SELECT COUNT(*) AS n FROM quality") == [{"n": 3}]
    for span_id, row in second.items():
        assert row["analyzed_at"] >= first[span_id]["analyzed_at"]
        assert row["has_refusal"] == first[span_id]["has_refusal"]
    assert [r["status"] for r in hook_runs(db_path)] == ["ok"] * 6


def test_analyze_since_selects_traces_by_start_time(
    recorded_without_hooks: list[str], db_path: Path
) -> None:
    start = rows(
        db_path, "SELECT start_time FROM spans WHERE span_id = ?", (recorded_without_hooks[1],)
    )[0]["start_time"]
    assert chainwatch.analyze(db=db_path, since=start) == 2
    assert quality_span_ids(db_path) == {
        llm_span_of(db_path, t) for t in recorded_without_hooks[1:]
    }
    assert chainwatch.analyze(db=db_path, since="2099-01-01T00:00:00Z") == 0


def test_analyze_exact_trace_ids(recorded_without_hooks: list[str], db_path: Path) -> None:
    assert chainwatch.analyze(db=db_path, trace_ids=[recorded_without_hooks[1]]) == 1
    assert quality_span_ids(db_path) == {llm_span_of(db_path, recorded_without_hooks[1])}
    assert [r["trace_id"] for r in hook_runs(db_path)] == [recorded_without_hooks[1]]


def test_analyze_with_custom_hooks_runs_oldest_first_and_isolates_failures(
    recorded_without_hooks: list[str], db_path: Path
) -> None:
    log: list[tuple[str, str]] = []
    assert chainwatch.analyze(db=db_path, hooks=[boom, Recording("after", log)]) == 3
    assert log == [("after", t) for t in recorded_without_hooks]
    runs = hook_runs(db_path)
    assert [r["status"] for r in runs if r["hook"] == "boom"] == ["error"] * 3
    assert [r["status"] for r in runs if r["hook"] == "after"] == ["ok"] * 3
    assert rows(db_path, "SELECT * FROM quality") == []


def test_analyze_a_missing_database(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        chainwatch.analyze(db=tmp_path / "nowhere.db")
    assert not (tmp_path / "nowhere.db").exists()


def test_traces_committed_at_once_by_two_writers_wake_the_hook_thread(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writer threads (two database files) hand over traces at the same moment.

    The second append lands between the first one's append and its check of the queue, the
    interleaving that once left both believing someone else had woken the idle hook thread.
    """
    import collections
    import time

    from chainwatch import hook_runner

    recorder = ChainWatchHandler(db_path, hooks=[])
    chain(["one", "two"]).batch(["a", "b"], config={"callbacks": [recorder]})
    assert recorder.flush()
    first, second = trace_ids_in_order(db_path)
    monkeypatch.setattr(hook_runner, "_IDLE_CHECK_S", 600.0)  # no timer to rescue a lost wake
    runner = hook_runner.HookRunner()
    ran: list[str] = []

    def hook(trace: Trace, store: Store) -> None:
        ran.append(trace.trace_id)

    runner._ensure_thread()
    time.sleep(0.1)  # the hook thread is idle, waiting to be woken

    class Interleaved(collections.deque):  # type: ignore[type-arg]
        armed = True

        def append(self, item: Any) -> None:
            super().append(item)
            if Interleaved.armed:
                Interleaved.armed = False
                other = threading.Thread(target=runner.submit, args=([hook], second, db_path))
                other.start()
                other.join()

    runner._queue = Interleaved()
    runner.submit([hook], first, db_path)
    deadline = time.monotonic() + 20
    while len(ran) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(ran) == sorted([first, second])
    recorder.shutdown()
