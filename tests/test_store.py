"""The SQLite store: schema, file setup, the read API, the writer thread and multi-process use."""

from __future__ import annotations

import datetime
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.runnables import RunnableLambda
from sqlite_utils import Database

import chainwatch
from chainwatch import ChainWatchHandler, Usage
from chainwatch.store import database, migrations
from conftest import read_events, read_spans

MS = 1_000_000
MINUTE = 60_000 * MS
PRICES = {"priced-model": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}


class Clock:
    """An injectable clock: nanoseconds since the epoch, moved by the test."""

    def __init__(self, now_ns: int) -> None:
        self.now = now_ns

    def __call__(self) -> int:
        return self.now

    def at(self, ns: int) -> Clock:
        self.now = ns
        return self


def iso(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    stamp = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{rest // 1000:06d}+00:00"


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def count_spans(path: Path) -> int:
    conn = sqlite3.connect(path, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
    finally:
        conn.close()


def master(path: Path) -> list[tuple[str, str, str, str | None]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
    finally:
        conn.close()


# -- schema -------------------------------------------------------------------------------------

SPANS_COLUMNS = [
    # (name, declared type, not null, default, primary key)
    ("span_id", "TEXT", 0, None, 1),
    ("trace_id", "TEXT", 1, None, 0),
    ("parent_id", "TEXT", 0, None, 0),
    ("name", "TEXT", 1, None, 0),
    ("kind", "TEXT", 1, None, 0),
    ("framework", "TEXT", 1, None, 0),
    ("start_time", "TEXT", 1, None, 0),
    ("end_time", "TEXT", 0, None, 0),
    ("duration_ms", "REAL", 0, None, 0),
    ("status", "TEXT", 1, None, 0),
    ("error", "TEXT", 0, None, 0),
    ("model", "TEXT", 0, None, 0),
    ("provider", "TEXT", 0, None, 0),
    ("prompt_tokens", "INTEGER", 0, None, 0),
    ("completion_tokens", "INTEGER", 0, None, 0),
    ("total_tokens", "INTEGER", 0, None, 0),
    ("cached_tokens", "INTEGER", 0, None, 0),
    ("reasoning_tokens", "INTEGER", 0, None, 0),
    ("cost_usd", "REAL", 0, None, 0),
    ("ttft_ms", "REAL", 0, None, 0),
    ("finish_reason", "TEXT", 0, None, 0),
    ("inputs", "TEXT", 0, None, 0),
    ("outputs", "TEXT", 0, None, 0),
    ("tags", "TEXT", 0, "'[]'", 0),
    ("metadata", "TEXT", 0, "'{}'", 0),
    ("user_id", "TEXT", 0, None, 0),
    ("session_id", "TEXT", 0, None, 0),
    ("usage_note", "TEXT", 0, None, 0),
    ("cost_note", "TEXT", 0, None, 0),
    ("counts_usage", "INTEGER", 0, "1", 0),
]

SPAN_EVENTS_COLUMNS = [
    ("id", "INTEGER", 0, None, 1),
    ("span_id", "TEXT", 1, None, 0),
    ("trace_id", "TEXT", 1, None, 0),
    ("name", "TEXT", 1, None, 0),
    ("time", "TEXT", 1, None, 0),
    ("attributes", "TEXT", 0, None, 0),
]

TRACES_VIEW_COLUMNS = [
    "trace_id",
    "name",
    "kind",
    "framework",
    "status",
    "error",
    "start_time",
    "end_time",
    "duration_ms",
    "span_count",
    "llm_calls",
    "error_spans",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "unpriced_calls",
    "user_id",
    "session_id",
    "tags",
]

INDEXES = {
    "idx_spans_trace_id_kind": ("spans", ["trace_id", "kind"], 0),
    "idx_spans_roots_cover": (
        "spans",
        ["start_time", "trace_id", "name", "status", "duration_ms", "error", "kind"],
        0,
    ),
    "idx_spans_llm_cover": (
        "spans",
        ["trace_id", "counts_usage", "model", "duration_ms", "ttft_ms", "prompt_tokens",
         "completion_tokens", "total_tokens", "cost_usd", "status", "end_time"],
        0,
    ),
    "idx_spans_errors": ("spans", ["trace_id"], 0),
    "idx_spans_llm_end": ("spans", ["end_time"], 0),
    "idx_span_events_trace_id": ("span_events", ["trace_id"], 0),
    "idx__sqlite_migrations_migration_set_name": (
        "_sqlite_migrations",
        ["migration_set", "name"],
        1,
    ),
}


def test_schema_after_migration_is_exact(handler: ChainWatchHandler, db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    try:
        def columns(table: str) -> list[tuple[Any, ...]]:
            info = conn.execute(f"PRAGMA table_info({table})").fetchall()
            return [(row[1], row[2], row[3], row[4], row[5]) for row in info]

        assert columns("spans") == SPANS_COLUMNS
        # `Span` and the writer's INSERT follow the table's column order.
        assert tuple(c[0] for c in SPANS_COLUMNS) == chainwatch.Span.fields
        assert columns("span_events") == SPAN_EVENTS_COLUMNS
        assert [r[1] for r in conn.execute("PRAGMA table_info(traces)")] == TRACES_VIEW_COLUMNS

        # Later migrations append tables of their own; these three are pinned exactly.
        owned = ("spans", "span_events", "traces")
        objects = conn.execute(
            "SELECT type, name FROM sqlite_master WHERE tbl_name IN (?, ?, ?) "
            "AND name NOT LIKE 'sqlite_autoindex%' ORDER BY type, name",
            owned,
        ).fetchall()
        assert objects == sorted(
            [("table", "span_events"), ("table", "spans"), ("view", "traces")]
            + [("index", name) for name, spec in INDEXES.items() if spec[0] in owned]
        )
        indexes = {}
        for name in INDEXES:
            table = conn.execute(
                "SELECT tbl_name FROM sqlite_master WHERE name = ?", [name]
            ).fetchone()[0]
            cols = [r[2] for r in conn.execute(f"PRAGMA index_info({name})")]
            unique = next(r[2] for r in conn.execute(f"PRAGMA index_list({table})") if r[1] == name)
            indexes[name] = (table, cols, unique)
        assert indexes == INDEXES

        applied = [
            r[0] for r in conn.execute(
                "SELECT name FROM _sqlite_migrations WHERE migration_set = 'chainwatch' ORDER BY id"
            )
        ]
        assert applied[:2] == ["m001_initial", "m002_traces_view"]
        # every registered migration, in order, and nothing else
        empty = Database(sqlite3.connect(":memory:"), execute_plugins=False)
        try:
            assert applied == [m.name for m in migrations.migrations.pending(empty)]
        finally:
            empty.conn.close()
        assert all(re.fullmatch(r"m\d{3}_[a-z0-9_]+", name) for name in applied)
        assert [int(name[1:4]) for name in applied] == list(range(1, len(applied) + 1))
    finally:
        conn.close()


def test_fresh_database_equals_one_upgraded_step_by_step(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.db"
    database.connect(fresh).conn.close()

    upgraded = tmp_path / "upgraded.db"
    db = Database(sqlite3.connect(upgraded, isolation_level=None), execute_plugins=False)
    migrations.migrations.apply(db, stop_before="m002_traces_view")
    assert [m.name for m in migrations.migrations.applied(db)] == ["m001_initial"]
    assert db.view_names() == []
    db.conn.close()
    # The rest is applied the way a newer chainwatch would: by opening the file.
    ChainWatchHandler(upgraded).shutdown()

    stepwise = tmp_path / "stepwise.db"
    db = Database(sqlite3.connect(stepwise, isolation_level=None), execute_plugins=False)
    migrations.migrations.apply(db, stop_before="m002_traces_view")
    migrations.migrations.apply(db)
    db.conn.close()

    assert master(upgraded) == master(fresh)
    assert master(stepwise) == master(fresh)
    names = [row[1] for row in master(fresh)]
    assert "traces" in names and "spans" in names and "span_events" in names


def test_file_is_private_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "private.db"
    old = os.umask(0)
    try:
        handler = ChainWatchHandler(path)
        handler.recorder.start("s1", None, "root", "chain", "manual", {"secret": "x"})
        handler.recorder.end("s1", "y")
        assert handler.flush()
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    for suffix in ("-wal", "-shm"):
        side = Path(str(path) + suffix)
        if side.exists():
            assert side.stat().st_mode & 0o777 == 0o600, suffix
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    handler.shutdown()


def test_migrations_are_applied_once(tmp_path: Path) -> None:
    path = tmp_path / "twice.db"
    first = ChainWatchHandler(path)
    conn = sqlite3.connect(path)
    before = conn.execute("SELECT * FROM _sqlite_migrations ORDER BY id").fetchall()
    conn.close()
    second = ChainWatchHandler(path)
    database.connect(path).conn.close()
    conn = sqlite3.connect(path)
    after = conn.execute("SELECT * FROM _sqlite_migrations ORDER BY id").fetchall()
    conn.close()
    assert [r[2] for r in before][:2] == ["m001_initial", "m002_traces_view"]
    assert after == before
    second.recorder.start("a", None, "after-reopen", "chain", "manual")
    second.recorder.end("a")
    assert second.flush()
    assert [s["name"] for s in read_spans(path)] == ["after-reopen"]
    first.shutdown()
    second.shutdown()


# -- the traces view and chainwatch.traces() ----------------------------------------------------


def _nested_llm_trace(db_path: Path) -> tuple[ChainWatchHandler, str]:
    clock = Clock(time.time_ns() - 10 * MINUTE)
    handler = ChainWatchHandler(db_path, clock=clock, prices=PRICES)
    rec = handler.recorder

    def llm(span_id: str, parent: str, model: str | None, usage: Usage | None) -> None:
        clock.now += MS
        span = rec.start(span_id, parent, span_id, "llm", "manual", "prompt")
        span.model = model
        span.usage = usage

    rec.start("root", None, "agent", "chain", "manual", {"q": "hi"})
    llm("outer", "root", "priced-model", Usage(100, 20))
    llm("inner", "outer", "priced-model", Usage(100, 20))  # the same call seen twice
    clock.now += MS
    rec.start("post", "outer", "post", "chain", "manual")
    llm("deep", "post", "priced-model", Usage(50, 5))  # a call of its own, under a chain
    for sid in ("deep", "post", "inner", "outer"):
        clock.now += MS
        rec.end(sid, "out")
    llm("unknown", "root", "no-such-model-xyz", Usage(7, 3))
    clock.now += MS
    rec.end("unknown", "out")
    llm("failed", "root", "no-such-model-xyz", None)
    clock.now += MS
    rec.end("failed", error=TimeoutError("provider timed out"))
    clock.now += MS
    rec.end("root", {"a": "done"})
    assert handler.flush()
    return handler, "root"


def test_totals_count_each_model_call_once(db_path: Path) -> None:
    handler, trace_id = _nested_llm_trace(db_path)
    spans = {s["span_id"]: s for s in read_spans(db_path)}
    assert {k: v["counts_usage"] for k, v in spans.items()} == {
        "root": 1, "outer": 1, "inner": 0, "post": 0, "deep": 1, "unknown": 1, "failed": 1
    }
    assert spans["outer"]["cost_usd"] == pytest.approx((100 * 1.0 + 20 * 2.0) / 1e6)
    assert spans["inner"]["cost_usd"] is None
    assert spans["unknown"]["cost_usd"] is None
    assert "no-such-model-xyz" in spans["unknown"]["cost_note"]

    expected = {
        "trace_id": trace_id,
        "name": "agent",
        "status": "ok",
        "span_count": 7,
        "llm_calls": 4,  # "inner" is "outer" seen twice
        "error_spans": 1,
        "prompt_tokens": 157,
        "completion_tokens": 28,
        "total_tokens": 185,
        "cost_usd": pytest.approx(200 / 1e6),
        # the failed call has no cost because it failed, not for want of a price
        "unpriced_calls": 1,
    }
    conn = connect(db_path)
    view = dict(conn.execute("SELECT * FROM traces WHERE trace_id = ?", [trace_id]).fetchone())
    conn.close()
    assert {k: view[k] for k in expected} == expected

    [row] = chainwatch.traces(db=db_path)
    assert {k: row[k] for k in expected} == expected

    totals = chainwatch.trace(trace_id, db=db_path).totals()
    assert totals["spans"] == 7
    assert totals["llm_calls"] == 4
    assert totals["prompt_tokens"] == 157
    assert totals["completion_tokens"] == 28
    assert totals["cost_usd"] == pytest.approx(200 / 1e6)
    handler.shutdown()


def test_traces_view_marks_a_running_trace_incomplete(db_path: Path) -> None:
    handler = ChainWatchHandler(db_path)
    rec = handler.recorder
    rec.start("root", None, "long-agent", "agent", "manual")
    rec.start("step", "root", "step", "tool", "manual")
    rec.end("step", "ok")
    assert handler.flush()
    conn = connect(db_path)
    row = dict(conn.execute("SELECT * FROM traces").fetchone())
    conn.close()
    assert row["trace_id"] == "root"
    assert row["status"] == "incomplete"
    assert row["span_count"] == 1
    assert chainwatch.traces(db=db_path) == []  # no root row yet
    rec.end("root")
    [done] = chainwatch.traces(db=db_path)
    assert done["status"] == "ok" and done["span_count"] == 2
    handler.shutdown()


@pytest.fixture
def three_traces(db_path: Path) -> Iterator[tuple[Path, int]]:
    """alpha 30 min ago, beta (error) 5 min ago, alpha 2 min ago; each with one child."""
    now = time.time_ns()
    clock = Clock(now)
    handler = ChainWatchHandler(db_path, clock=clock)
    rec = handler.recorder
    plan = [
        ("t1", "alpha", 30, ["a", "b"], "s1", "u1", None),
        ("t2", "beta", 5, ["a"], "s2", "u2", ValueError("nope")),
        ("t3", "alpha", 2, [], "s1", "u2", None),
    ]
    for trace_id, name, minutes_ago, tags, session, user, error in plan:
        clock.now = now - minutes_ago * MINUTE
        rec.start(trace_id, None, name, "chain", "manual", {"n": name}, tags=tags,
                  session_id=session, user_id=user)
        clock.now += MS
        # the child's tags must not make the trace match a tag filter
        rec.start(f"{trace_id}.c", trace_id, "child", "tool", "manual", tags=["b", "z"])
        clock.now += MS
        rec.end(f"{trace_id}.c", "x")
        clock.now += MS
        rec.end(trace_id, None if error else "ok", error=error)
    assert handler.flush()
    yield db_path, now
    handler.shutdown()


def _ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["trace_id"] for r in rows]


def test_traces_filters(three_traces: tuple[Path, int]) -> None:
    db, now = three_traces
    assert _ids(chainwatch.traces(db=db)) == ["t3", "t2", "t1"]
    assert _ids(chainwatch.traces(db=db, since="15m")) == ["t3", "t2"]
    assert _ids(chainwatch.traces(db=db, until="15m")) == ["t1"]
    assert _ids(chainwatch.traces(db=db, since="1h", until="3m")) == ["t2", "t1"]
    boundary = (now - 10 * MINUTE) / 1e9
    assert _ids(chainwatch.traces(db=db, since=boundary)) == ["t3", "t2"]
    as_dt = datetime.datetime.fromtimestamp(boundary, tz=datetime.timezone.utc)
    assert _ids(chainwatch.traces(db=db, until=as_dt)) == ["t1"]
    as_text = as_dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert _ids(chainwatch.traces(db=db, since=as_text)) == ["t3", "t2"]
    assert _ids(chainwatch.traces(db=db, name="alpha")) == ["t3", "t1"]
    assert _ids(chainwatch.traces(db=db, status="error")) == ["t2"]
    assert _ids(chainwatch.traces(db=db, status="ok")) == ["t3", "t1"]
    assert _ids(chainwatch.traces(db=db, tags=["a"])) == ["t2", "t1"]
    assert _ids(chainwatch.traces(db=db, tags=["a", "b"])) == ["t1"]
    assert _ids(chainwatch.traces(db=db, tags=["z"])) == []
    assert _ids(chainwatch.traces(db=db, session_id="s1")) == ["t3", "t1"]
    assert _ids(chainwatch.traces(db=db, user_id="u2")) == ["t3", "t2"]
    assert _ids(chainwatch.traces(db=db, user_id="u2", session_id="s1")) == ["t3"]
    assert _ids(chainwatch.traces(db=db, limit=1)) == ["t3"]
    assert _ids(chainwatch.traces(db=db, limit=None)) == ["t3", "t2", "t1"]

    [beta] = chainwatch.traces(db=db, name="beta")
    assert beta["status"] == "error"
    assert beta["error"] == "ValueError: nope"
    assert beta["span_count"] == 2
    assert beta["tags"] == ["a"]
    assert beta["session_id"] == "s2" and beta["user_id"] == "u2"


def test_traces_rejects_bad_status_and_times(three_traces: tuple[Path, int]) -> None:
    db, _ = three_traces
    with pytest.raises(ValueError, match="status"):
        chainwatch.traces(db=db, status="failed")
    for bad in ("yesterday", "15 minutes", "2026-13-45"):
        with pytest.raises(ValueError) as info:
            chainwatch.traces(db=db, since=bad)
        message = str(info.value)
        assert repr(bad) in message
        assert "ISO 8601" in message and "epoch seconds" in message and "15m" in message


def test_trace_tree_by_trace_or_span_id(db_path: Path) -> None:
    clock = Clock(time.time_ns() - MINUTE)
    handler = ChainWatchHandler(db_path, clock=clock)
    rec = handler.recorder
    rec.start("root", None, "pipeline", "chain", "manual", {"q": 1})
    clock.now += MS
    rec.start("a", "root", "retrieve", "retriever", "manual")
    clock.now += MS
    rec.start("b", "root", "answer", "llm", "manual")
    clock.now += MS
    rec.start("a1", "a", "rerank", "reranker", "manual")  # starts after b, but under a
    rec.event("a1", "retry", {"attempt": 2})
    clock.now += MS
    rec.end("a1", [1, 2])
    clock.now += MS
    rec.end("a", ["doc"])
    clock.now += MS
    rec.end("b", error=RuntimeError("model down"))
    clock.now += MS
    rec.end("root", "done")
    # another trace in the same file must not leak into this one
    rec.start("other", None, "other", "chain", "manual")
    rec.end("other")

    for key in ("root", "a1", "b"):
        tree = chainwatch.trace(key, db=db_path)
        assert tree.trace_id == "root"
        assert tree.root.span_id == "root"
        assert [s.span_id for s in tree.spans] == ["root", "a", "b", "a1"]
    assert [s.span_id for s in tree.children("root")] == ["a", "b"]
    assert [s.span_id for s in tree.children(tree.spans[1])] == ["a1"]
    assert tree.children("b") == []
    assert [(d, s.span_id) for d, s in tree.walk()] == [(0, "root"), (1, "a"), (2, "a1"), (1, "b")]
    assert tree.status == "ok"
    assert tree.duration_ms == pytest.approx(7.0)
    assert len(tree) == 4

    text = str(tree).splitlines()
    assert text[0].startswith("trace root  pipeline  ok")
    assert [line.split("[")[0].rstrip() for line in text[1:]] == [
        "• pipeline", "  • retrieve", "    • rerank", "  ✗ answer"
    ]
    assert "RuntimeError: model down" in text[4]

    events = [(e["span_id"], e["name"]) for e in tree.events]
    assert events == [("a1", "retry"), ("b", "exception")]
    assert tree.events[0]["attributes"] == {"attempt": 2}
    assert tree.events[1]["attributes"]["type"] == "RuntimeError"
    assert tree.spans[0].inputs == {"q": 1}
    assert tree.spans[3].outputs == [1, 2]

    with pytest.raises(LookupError):
        chainwatch.trace("no-such-id", db=db_path)
    handler.shutdown()


# -- summary ------------------------------------------------------------------------------------


def test_summary_matches_an_independent_computation(db_path: Path) -> None:
    now = time.time_ns()
    clock = Clock(now)
    handler = ChainWatchHandler(db_path, clock=clock, prices=PRICES)
    rec = handler.recorder
    calls = [
        # (start minutes ago, duration ms, model, usage, error)
        (40, 120.0, "priced-model", Usage(100, 20), None),
        (39, 80.5, "priced-model", Usage(10, 2), None),
        (38, 300.0, "no-such-model-xyz", Usage(40, 4), None),
        (37, 50.25, "priced-model", None, TimeoutError("slow")),
        (36, 1000.0, "priced-model", Usage(7, 1, 9), None),
        (35, 240.0, "no-such-model-xyz", None, ValueError("bad request")),
        (34, 75.0, "priced-model", Usage(1000, 300), None),
        (33, 600.0, "priced-model", None, TimeoutError("slow again")),
        (32, 12.0, "priced-model", Usage(5, 5), None),
    ]
    rec.start("root", None, "batch", "chain", "manual")
    for i, (ago, duration, model, usage, error) in enumerate(calls):
        clock.now = now - ago * MINUTE
        span = rec.start(f"c{i}", "root", "chat", "llm", "manual")
        span.model = model
        span.usage = usage
        if i == 0:  # a nested duplicate of the first call must not be counted
            nested = rec.start("dup", "c0", "chat", "llm", "manual")
            nested.model, nested.usage = model, usage
            clock.now += 5 * MS
            rec.end("dup")
        clock.now = now - ago * MINUTE + int(duration * MS)
        rec.end(f"c{i}", "answer", error=error)
    clock.now = now - 31 * MINUTE
    rec.end("root")
    # a call that ended two hours ago is outside the window
    clock.now = now - 120 * MINUTE
    rec.start("old", None, "chat", "llm", "manual").usage = Usage(1, 1)
    clock.now += 900 * MS
    rec.end("old")
    assert handler.flush()

    cutoff = iso(now - 60 * MINUTE)
    rows = [
        r for r in read_spans(db_path)
        if r["kind"] == "llm" and r["counts_usage"] == 1 and r["end_time"] >= cutoff
    ]
    assert len(rows) == len(calls)
    durations = sorted(r["duration_ms"] for r in rows)
    assert durations == pytest.approx(sorted(c[1] for c in calls))
    cuts = statistics.quantiles(durations, n=100, method="inclusive")
    tokens = [r["total_tokens"] for r in rows if r["total_tokens"] is not None]
    costs = [r["cost_usd"] for r in rows if r["cost_usd"] is not None]
    errors = [r for r in rows if r["status"] == "error"]

    got = chainwatch.summary(window_minutes=60, db=db_path)
    assert got["count"] == len(rows) == 9
    assert got["latency_p50_ms"] == pytest.approx(cuts[49])
    assert got["latency_p95_ms"] == pytest.approx(cuts[94])
    assert got["latency_p99_ms"] == pytest.approx(cuts[98])
    assert got["avg_tokens"] == pytest.approx(statistics.mean(tokens))
    assert got["total_tokens"] == sum(tokens) == 120 + 12 + 44 + 9 + 1300 + 10
    assert got["total_cost_usd"] == pytest.approx(sum(costs))
    assert got["total_cost_usd"] == pytest.approx((1122 * 1.0 + 328 * 2.0) / 1e6)
    assert got["unpriced_calls"] == 1  # the unknown model that answered
    assert got["errors"] == len(errors) == 3
    assert got["error_rate"] == pytest.approx(3 / 9)
    assert got["error_types"] == {"TimeoutError": 2, "ValueError": 1}
    assert "LLM calls          9" in str(got)

    everything = chainwatch.summary(window_minutes=None, db=db_path)
    assert everything["count"] == 10
    handler.shutdown()


def test_summary_of_an_empty_window_is_unknown_not_zero(db_path: Path) -> None:
    clock = Clock(time.time_ns() - 180 * MINUTE)
    handler = ChainWatchHandler(db_path, clock=clock)
    span = handler.recorder.start("old", None, "chat", "llm", "manual")
    span.usage = Usage(3, 4)
    clock.now += 10 * MS
    handler.recorder.end("old")
    assert handler.flush()
    got = chainwatch.summary(window_minutes=60, db=db_path)
    assert got["count"] == 0
    for key in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "avg_tokens",
                "total_tokens", "total_cost_usd", "error_rate"):
        assert got[key] is None, key
    assert got["errors"] == 0 and got["unpriced_calls"] == 0 and got["error_types"] == {}
    assert chainwatch.summary(window_minutes=None, db=db_path)["count"] == 1
    with pytest.raises(ValueError):
        chainwatch.summary(window_minutes=0, db=db_path)
    handler.shutdown()


# -- the writer ---------------------------------------------------------------------------------


def test_flush_makes_everything_visible(db_path: Path) -> None:
    handler = ChainWatchHandler(db_path)
    rec = handler.recorder
    for t in range(50):
        rec.start(f"t{t}", None, "root", "chain", "manual", {"t": t})
        for c in range(9):
            rec.start(f"t{t}.{c}", f"t{t}", "child", "tool", "manual")
            rec.event(f"t{t}.{c}", "tick", {"c": c})
            rec.end(f"t{t}.{c}", c)
        rec.end(f"t{t}", t)
    assert handler.flush(timeout=30) is True
    assert count_spans(db_path) == 500
    assert len(read_events(db_path)) == 450
    assert handler.stats["writer_written"] == 500
    assert chainwatch.flush() is True
    handler.shutdown()


def test_concurrent_flushes_each_return_without_waiting_for_a_tick(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flushes from many threads: each waits for its own spans, never for the writer's timer.

    The timer is made far longer than the flushes may take, so a flush left waiting for the
    next tick would time out.
    """
    from chainwatch.store import writer

    handler = ChainWatchHandler(db_path, hooks=[])
    rec = handler.recorder
    rec.start("warm", None, "root", "chain", "manual")
    rec.end("warm")
    assert handler.flush()
    monkeypatch.setattr(writer, "_IDLE_S", 120.0)
    results: list[bool] = []

    def work(i: int) -> None:
        for n in range(5):
            rec.start(f"s{i}.{n}", None, "root", "chain", "manual", {"i": i})
            rec.end(f"s{i}.{n}")
            results.append(handler._writer.flush(timeout=20))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 40
    assert count_spans(db_path) == 41
    monkeypatch.undo()
    handler.shutdown()


def test_an_idle_writer_moves_the_wal_into_the_database(db_path: Path) -> None:
    # Checkpoints wait for 8,000 pages of WAL or for an idle moment: a few hundred spans are
    # far from the first, so the database file grows only when the writer goes idle.
    handler = ChainWatchHandler(db_path, hooks=[])
    handler.flush()
    empty_size = db_path.stat().st_size
    rec = handler.recorder
    for t in range(300):
        rec.start(f"t{t}", None, "root", "chain", "manual", {"text": "x" * 500})
        rec.end(f"t{t}", {"text": "y" * 500})
    assert handler.flush(timeout=30) is True
    wal = db_path.with_name(db_path.name + "-wal")
    assert wal.stat().st_size > 300 * 1000
    deadline = time.monotonic() + 10
    while db_path.stat().st_size <= empty_size + 300 * 1000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db_path.stat().st_size > empty_size + 300 * 1000
    assert count_spans(db_path) == 300
    handler.shutdown()


def test_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    handler = ChainWatchHandler(path, queue_size=5)
    step = RunnableLambda(lambda x: x + 1)
    # Hold the write lock from another connection, so the writer cannot commit anything.
    blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        results = [step.invoke(i, config={"callbacks": [handler]}) for i in range(50)]
        stats = handler.stats
        assert results == list(range(1, 51))
        assert stats["spans_finished"] == 50
        assert stats["spans_dropped"] > 0
        assert stats["writer_dropped"] > 0
        assert stats["open_spans"] == 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert handler.flush(timeout=30)
    stats = handler.stats
    stored = count_spans(path)
    assert stored > 0
    assert stored + stats["writer_dropped"] == 50
    assert stats["spans_dropped"] == stats["writer_dropped"]
    assert stats["writer_errors"] == 0
    handler.shutdown()


def _writer_threads(path: Path) -> list[threading.Thread]:
    return [
        t for t in threading.enumerate()
        if t.name == f"chainwatch-writer:{path.name}" and t.is_alive()
    ]


def test_shutdown_is_idempotent_and_the_writer_restarts(tmp_path: Path) -> None:
    path = tmp_path / "restartable-writer.db"
    handler = ChainWatchHandler(path)
    rec = handler.recorder
    rec.start("before", None, "before", "chain", "manual")
    rec.end("before")
    assert len(_writer_threads(path)) == 1
    assert handler.shutdown() is True
    assert handler.shutdown() is True
    assert _writer_threads(path) == []
    assert [s["name"] for s in read_spans(path)] == ["before"]

    rec.start("after", None, "after", "chain", "manual")
    rec.end("after")
    assert len(_writer_threads(path)) == 1
    assert handler.flush()
    assert [s["name"] for s in read_spans(path)] == ["before", "after"]
    assert handler.shutdown() is True
    assert _writer_threads(path) == []


# -- several processes --------------------------------------------------------------------------

_WRITER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time, uuid
    import chainwatch

    path, go, tag = sys.argv[1:4]
    while not os.path.exists(go):
        time.sleep(0.001)
    handler = chainwatch.ChainWatchHandler(path)
    rec = handler.recorder
    for t in range(200):
        root = uuid.uuid4().hex
        rec.start(root, None, tag + "-root", "chain", "manual", {"t": t})
        for c in range(9):
            child = uuid.uuid4().hex
            rec.start(child, root, tag + "-child", "tool", "manual", {"c": c})
            rec.end(child, {"c": c})
        rec.end(root, {"t": t})
    flushed = handler.flush(60)
    print(json.dumps({"flushed": flushed, **handler.stats}))
    """
)


def test_two_processes_writing_one_file_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER_SCRIPT, str(path), str(go), tag],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("p1", "p2")
    ]
    go.touch()  # both open the new file and migrate it at the same moment
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out))
    for stats in outputs:
        assert stats["flushed"] is True
        assert stats["writer_written"] == 2000
        assert stats["writer_dropped"] == 0
        assert stats["writer_errors"] == 0
        assert stats["internal_errors"] == 0

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0] == 4000
        by_name = dict(conn.execute("SELECT name, COUNT(*) FROM spans GROUP BY name"))
        assert by_name == {"p1-root": 200, "p1-child": 1800, "p2-root": 200, "p2-child": 1800}
        assert conn.execute("SELECT COUNT(*) FROM traces").fetchone()[0] == 400
        applied = conn.execute("SELECT name FROM _sqlite_migrations").fetchall()
        assert len(applied) == len(set(applied))  # the race to migrate applied each one once
    finally:
        conn.close()


_EXIT_SCRIPT = textwrap.dedent(
    """
    import sys
    import chainwatch

    handler = chainwatch.ChainWatchHandler(sys.argv[1])
    for i in range(300):
        handler.recorder.start(f"s{i}", None, "at-exit", "chain", "manual", {"i": i})
        handler.recorder.end(f"s{i}", i)
    # no flush: a normal interpreter exit must write what was recorded
    """
)


def test_normal_exit_writes_what_was_recorded(db_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT, str(db_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert count_spans(db_path) == 300
    assert {s["outputs"] for s in read_spans(db_path)} == {str(i) for i in range(300)}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_forked_child_writes_with_its_own_writer(db_path: Path) -> None:
    handler = ChainWatchHandler(db_path)
    rec = handler.recorder
    rec.start("parent-1", None, "parent-before-fork", "chain", "manual")
    rec.end("parent-1")
    assert handler.flush()
    # queued but not flushed at fork time: the parent writes it, the child must not
    rec.start("parent-2", None, "parent-pending", "chain", "manual")
    rec.end("parent-2")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            before = handler.stats["writer_written"]
            for i in range(20):
                rec.start(f"child-{i}", None, "child", "chain", "manual", {"i": i})
                rec.end(f"child-{i}", i)
            ok = handler.flush(30)
            written = handler.stats["writer_written"] - before
            code = 0 if ok and written == 20 else 2
        finally:
            os._exit(code)

    deadline = time.monotonic() + 60
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.02)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.waitstatus_to_exitcode(status) == 0

    rec.start("parent-3", None, "parent-after-fork", "chain", "manual")
    rec.end("parent-3")
    assert handler.flush()
    names = [s["name"] for s in read_spans(db_path)]
    assert names.count("child") == 20
    assert sorted(n for n in names if n != "child") == [
        "parent-after-fork", "parent-before-fork", "parent-pending"
    ]
    handler.shutdown()


_LOOP_SCRIPT = textwrap.dedent(
    """
    import itertools, sys, uuid
    import chainwatch

    handler = chainwatch.ChainWatchHandler(sys.argv[1])
    rec = handler.recorder
    for i in itertools.count():
        root = uuid.uuid4().hex
        rec.start(root, None, "loop-root", "chain", "manual", {"i": i, "pad": "p" * 2000})
        for c in range(4):
            child = uuid.uuid4().hex
            span = rec.start(child, root, "loop-llm", "llm", "manual", {"c": c})
            span.model = "loop-model"
            span.usage = chainwatch.Usage(10, 5)
            rec.event(child, "tick", {"c": c})
            rec.end(child, {"out": c})
        rec.end(root, {"i": i})
        if i % 20 == 0:
            handler.flush()
    """
)

REQUIRED = ("span_id", "trace_id", "name", "kind", "framework", "start_time", "end_time",
            "duration_ms", "status", "inputs", "outputs", "tags", "metadata", "counts_usage")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_kill_9_mid_write_leaves_a_sound_database(db_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOOP_SCRIPT, str(db_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            if db_path.exists():
                try:
                    if count_spans(db_path) >= 1000:
                        break
                except sqlite3.OperationalError:
                    pass  # the schema is still being created
            time.sleep(0.02)
        else:
            pytest.fail("the writing process never stored 1000 spans")
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -9

    conn = connect(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall()[0][0] == "ok"
        rows = [dict(r) for r in conn.execute("SELECT * FROM spans")]
        orphans = conn.execute(
            "SELECT COUNT(*) FROM span_events e LEFT JOIN spans s ON s.span_id = e.span_id "
            "WHERE s.span_id IS NULL"
        ).fetchone()[0]
    finally:
        conn.close()
    assert len(rows) >= 1000
    assert orphans == 0  # events commit with their span
    for row in rows:
        missing = [c for c in REQUIRED if row[c] is None]
        assert missing == [], row
        assert row["status"] == "ok"
        inputs = json.loads(row["inputs"])
        if row["name"] == "loop-root":
            assert inputs["pad"] == "p" * 2000
        else:
            assert row["name"] == "loop-llm"
            assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (
                10, 5, 15
            )
            assert json.loads(row["outputs"]) == {"out": inputs["c"]}

    handler = ChainWatchHandler(db_path)
    handler.recorder.start("after-crash", None, "after-crash", "chain", "manual")
    handler.recorder.end("after-crash", "fine")
    assert handler.flush()
    assert chainwatch.trace("after-crash", db=db_path).root.outputs == "fine"
    assert count_spans(db_path) == len(rows) + 1
    handler.shutdown()


@pytest.mark.parametrize("count", [0, 1, 2, 7, 31, 32, 33, 75])
def test_bulk_insert_writes_every_row_in_order(tmp_path: Path, count: int) -> None:
    """Rows go in 32 (then 8, 2, 1) per statement; every remainder lands, in order."""
    from chainwatch.store.rows import BulkInsert

    conn = sqlite3.connect(tmp_path / "bulk.db")
    conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT, c REAL)")
    insert = BulkInsert("INSERT OR REPLACE INTO t", ("a", "b", "c"))
    rows = [(i, f"row {i}", i / 2) for i in range(count)]
    insert(conn, rows)
    assert conn.execute("SELECT a, b, c FROM t ORDER BY rowid").fetchall() == rows
    # OR REPLACE keeps its meaning across statements: a later row with the same key wins
    insert(conn, [(0, "first", 0.0), (0, "again", 1.0)])
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == max(count, 1)
    assert conn.execute("SELECT b FROM t WHERE a = 0").fetchone()[0] == "again"
    conn.close()


def test_begin_immediate_waits_for_another_writer_then_gives_up(tmp_path: Path) -> None:
    path = tmp_path / "lock.db"
    database.connect(path).conn.close()
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:  # another writer (its own connection, on its own thread)
        holder = database.connect(path).conn
        holder.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(30)
        holder.execute("COMMIT")
        holder.close()

    waiter = database.connect(path).conn
    thread = threading.Thread(target=hold)
    thread.start()
    assert locked.wait(30)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        database.begin_immediate(waiter, timeout_s=0.05)
    threading.Timer(0.2, release.set).start()
    database.begin_immediate(waiter, timeout_s=30)  # returns once the holder commits
    assert waiter.in_transaction and release.is_set()
    waiter.execute("COMMIT")
    thread.join()
    # the connection's own busy timeout is back for everything else
    assert waiter.execute("PRAGMA busy_timeout").fetchone()[0] == database.BUSY_TIMEOUT_MS
    waiter.close()
