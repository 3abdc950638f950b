"""`chainwatch.report()`: what a batch of runs did, as pydantic models rendered for people.

The data is computed here with SQL over the spans in scope; `report_render` turns it into text,
markdown and a self-contained HTML page (charts from `charts` when matplotlib is installed).
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from .report_models import (
    AlertRow,
    Breakdown,
    CallSummary,
    DriftSection,
    ErrorGroup,
    Quality,
    ReportData,
    Scope,
    Series,
    TraceRow,
)
from .report_render import Report
from .store import queries
from .store.queries import percentile
from .views import Trace

_BATCH_MAX = 1_000
_SERIES_POINTS = 5_000
_batch_lock = threading.Lock()
_batches: dict[Path, _Batch] = {}


class _Batch:
    """The traces this process completed since the last report: ids, or past 1,000 a count."""

    __slots__ = ("count", "ids")

    def __init__(self) -> None:
        self.ids: collections.deque[str] = collections.deque(maxlen=_BATCH_MAX)
        self.count = 0


def note_trace(path: Path, trace_id: str) -> None:
    """Remember a trace this process completed (the default scope of the next report).

    Memory stays flat: past 1,000 traces only the oldest id is kept, and the report then covers
    every trace since that one started.
    """
    batch = _batches.get(path)
    if batch is None:
        with _batch_lock:
            batch = _batches.setdefault(path, _Batch())
    if batch.count < _BATCH_MAX:
        batch.ids.append(trace_id)
    batch.count += 1


def take_batch(path: Path) -> tuple[list[str], int]:
    """The traces completed since the last report of `path` (ids, and how many), forgetting."""
    with _batch_lock:
        batch = _batches.pop(path, None)
    if batch is None:
        return [], 0
    return list(batch.ids), batch.count


def _filters(
    since: str | None, until: str | None, tags: list[str] | None, session_id: str | None,
    user_id: str | None, name: str | None,
) -> tuple[list[str], list[Any]]:
    return queries.root_filters(
        since=since, until=until, tags=tags, session_id=session_id, user_id=user_id, name=name
    )




_ROOT_COLUMNS = "trace_id, name, status, start_time, duration_ms, error"


def _fill_scope(conn: Any, trace_ids: list[str] | None, where: str, params: list[Any]) -> None:
    """The roots in scope, once, in a temp table every section joins against."""
    conn.execute("DROP TABLE IF EXISTS temp._scope")
    # No key to maintain: roots are unique by span_id already, and every join looks up spans.
    conn.execute(
        "CREATE TEMP TABLE _scope (trace_id TEXT, name TEXT, status TEXT, "
        "start_time TEXT, duration_ms REAL, error TEXT)"
    )
    if trace_ids is not None:
        conn.execute(
            f"INSERT INTO _scope SELECT {_ROOT_COLUMNS} FROM spans "
            "WHERE span_id IN (SELECT DISTINCT value FROM json_each(?)) AND span_id = trace_id "
            "ORDER BY start_time, trace_id",
            [json.dumps(trace_ids)],
        )
    else:
        conn.execute(
            f"INSERT INTO _scope SELECT {_ROOT_COLUMNS} FROM spans "
            f"WHERE span_id = trace_id AND kind != 'evaluator' AND {where} "
            "ORDER BY start_time, trace_id", params,
        )


def build(
    conn: Any, trace_ids: list[str] | None, scope: Scope, *, model: str | None = None,
    top: int = 5, where: str = "1", params: list[Any] | None = None,
) -> ReportData:
    """Compute every section for the traces in scope (optionally only one model's calls).

    Aggregates run in SQLite; Python only sorts the latencies it needs for percentiles.
    """
    _fill_scope(conn, trace_ids, where, params or [])
    model_sql, model_params = ("AND s.model = ?", [model]) if model else ("", [])
    if model:
        # A model's report covers the traces that called it.
        conn.execute(
            "DELETE FROM _scope WHERE trace_id NOT IN (SELECT s.trace_id FROM _scope c CROSS JOIN "
            "spans s ON s.trace_id = c.trace_id AND s.kind = 'llm' WHERE s.counts_usage = 1 "
            "AND s.model = ?)", [model],
        )
    scope.traces = conn.execute("SELECT COUNT(*) FROM _scope").fetchone()[0]
    # The model calls in scope, once: every aggregate below scans this small table.
    conn.execute("DROP TABLE IF EXISTS temp._calls")
    conn.execute(
        "CREATE TEMP TABLE _calls AS SELECT s.trace_id, s.model, c.name AS chain, "
        "s.duration_ms, s.ttft_ms, s.prompt_tokens, s.completion_tokens, s.total_tokens, "
        "s.cost_usd, s.status, s.end_time FROM _scope c CROSS JOIN spans s ON s.trace_id = "
        f"c.trace_id AND s.kind = 'llm' WHERE s.counts_usage = 1 {model_sql}",
        model_params,
    )
    # One scan for every count and sum, grouped by model and chain (both additive), with each
    # group's latencies as one string: a row per group instead of a row per call.
    groups = conn.execute(
        "SELECT COALESCE(model, 'unknown'), COALESCE(chain, 'unknown'), COUNT(*), "
        "SUM(prompt_tokens), SUM(completion_tokens), SUM(total_tokens), COUNT(total_tokens), "
        "SUM(cost_usd), COUNT(cost_usd), SUM(status = 'error'), "
        "SUM(cost_usd IS NULL AND status = 'ok'), group_concat(duration_ms) "
        "FROM _calls GROUP BY 1, 2"
    ).fetchall()
    latencies = {
        (g[0], g[1]): sorted(map(float, g[11].split(","))) if g[11] else [] for g in groups
    }
    ttfts = sorted(v for (v,) in conn.execute(
        "SELECT ttft_ms FROM _calls WHERE ttft_ms IS NOT NULL"))
    data = ReportData(scope=scope, summary=_summary(conn, groups, latencies, ttfts))
    data.by_model = _breakdown(groups, latencies, 0)
    data.by_chain = _breakdown(groups, latencies, 1)
    roots = (
        "SELECT r.trace_id, r.name, r.status, r.start_time, r.duration_ms, r.error, "
        "(SELECT SUM(x.total_tokens) FROM spans x WHERE x.trace_id = r.trace_id AND "
        f"x.kind = 'llm' AND x.counts_usage = 1 {model_sql.replace('s.', 'x.')}), "
        "(SELECT SUM(x.cost_usd) FROM spans x WHERE x.trace_id = r.trace_id AND "
        f"x.kind = 'llm' AND x.counts_usage = 1 {model_sql.replace('s.', 'x.')}) FROM ({{}}) r"
    )
    sums = model_params * 2
    data.slowest = _rows(conn, roots.format(
        "SELECT * FROM _scope ORDER BY duration_ms DESC, trace_id LIMIT ?"), [*sums, top])
    expensive = conn.execute(
        "SELECT trace_id FROM _calls WHERE cost_usd IS NOT NULL GROUP BY trace_id "
        "ORDER BY SUM(cost_usd) DESC, trace_id LIMIT ?", [top],
    ).fetchall()
    ranked = {t: i for i, (t,) in enumerate(expensive)}
    rows = _rows(conn, roots.format(
        "SELECT * FROM _scope WHERE trace_id IN (SELECT value FROM json_each(?))"),
        [*sums, json.dumps(list(ranked))])
    data.most_expensive = sorted(rows, key=lambda r: ranked[r.trace_id])
    data.failed = _rows(conn, roots.format(
        "SELECT * FROM _scope WHERE status = 'error' ORDER BY start_time DESC, trace_id LIMIT ?"),
        [*sums, top * 2])
    data.errors = _errors(conn)
    data.quality = _quality(conn, model_sql, model_params)
    data.drift = _drift(conn, scope)
    data.alerts = _alerts(conn, scope)
    data.series = _series(conn, sum(g[2] for g in groups))
    data.generated_at = queries.iso_time(time.time_ns())
    return data


def _rows(conn: Any, sql: str, params: list[Any]) -> list[TraceRow]:
    return [
        TraceRow(trace_id=t, name=n, status=s, start_time=st, duration_ms=d, error=e,
                 total_tokens=tokens, cost_usd=cost)
        for t, n, s, st, d, e, tokens, cost in conn.execute(sql, params).fetchall()
    ]


def _add(total: Any, value: Any) -> Any:
    return value if total is None else total if value is None else total + value


def _summary(
    conn: Any, groups: list[tuple[Any, ...]], latencies: dict[tuple[str, str], list[float]],
    ttfts: list[float],
) -> CallSummary:
    n = sum(g[2] for g in groups)
    tokens = tokens_known = cost_known = errors = unpriced = 0
    cost: float | None = None
    for g in groups:
        tokens += g[5] or 0
        tokens_known += g[6]
        cost = _add(cost, g[7])
        cost_known += g[8]
        errors += g[9] or 0
        unpriced += g[10] or 0
    # Sorted runs, merged: Timsort finds the runs, so this is close to linear.
    durations = sorted(itertools.chain.from_iterable(latencies.values()))
    traces, failed = conn.execute(
        "SELECT COUNT(*), SUM(status = 'error') FROM _scope"
    ).fetchone()
    return CallSummary(
        traces=traces,
        llm_calls=n,
        latency_p50_ms=percentile(durations, 50),
        latency_p95_ms=percentile(durations, 95),
        latency_p99_ms=percentile(durations, 99),
        ttft_p50_ms=percentile(ttfts, 50),
        ttft_p95_ms=percentile(ttfts, 95),
        avg_tokens=tokens / tokens_known if tokens_known else None,
        total_tokens=tokens if tokens_known else None,
        total_cost_usd=cost if cost_known else None,
        unpriced_calls=unpriced,
        error_rate=errors / n if n else None,
        errors=errors,
        trace_error_rate=(failed or 0) / traces if traces else None,
    )


def _breakdown(
    groups: list[tuple[Any, ...]], latencies: dict[tuple[str, str], list[float]], column: int
) -> list[Breakdown]:
    """Per model (column 0) or per chain (column 1), summed from the model-and-chain groups."""
    merged: dict[str, list[Any]] = {}
    for g in groups:
        acc = merged.setdefault(g[column], [0, None, None, None, None, 0])
        acc[0] += g[2]
        for i, value in ((1, g[3]), (2, g[4]), (3, g[5]), (4, g[7])):
            acc[i] = _add(acc[i], value)
        acc[5] += g[9] or 0
    durations: dict[str, list[float]] = {}
    for group, values in latencies.items():
        durations.setdefault(group[column], []).extend(values)
    out = [
        Breakdown(key=key, calls=acc[0], prompt_tokens=acc[1], completion_tokens=acc[2],
                  total_tokens=acc[3], cost_usd=acc[4], errors=acc[5],
                  latency_p95_ms=percentile(sorted(durations.get(key, [])), 95))
        for key, acc in merged.items()
    ]
    return sorted(out, key=lambda b: (-(b.cost_usd or 0), -b.calls, b.key))


def _series(conn: Any, total: int) -> Series:
    """An even sample of the calls, in time order: charts need the shape, not every point."""
    step = max(1, total // _SERIES_POINTS)
    rows = sorted(conn.execute(
        "SELECT end_time, total_tokens, duration_ms FROM _calls "
        "WHERE duration_ms IS NOT NULL AND rowid % ? = 0", [step],
    ).fetchall())
    return Series(latencies_ms=[r[2] for r in rows], times=[r[0] for r in rows],
                  tokens=[r[1] for r in rows], durations_ms=[r[2] for r in rows])


def _errors(conn: Any) -> list[ErrorGroup]:
    failed = conn.execute(
        "SELECT s.span_id, s.parent_id, s.error, s.trace_id FROM _scope c CROSS JOIN spans s "
        "ON s.trace_id = c.trace_id AND s.status = 'error' WHERE s.error IS NOT NULL"
    ).fetchall()
    # An exception propagating up marks every ancestor: count it once, where it was raised.
    passed_up = {(parent, error) for _, parent, error, _ in failed}
    rows = [(error, trace) for span, _, error, trace in failed if (span, error) not in passed_up]
    groups: dict[str, ErrorGroup] = {}
    for error, trace_id in rows:
        kind = error.split(":", 1)[0]
        group = groups.setdefault(kind, ErrorGroup(type=kind, count=0, example=error[:300],
                                                   trace_ids=[]))
        group.count += 1
        if trace_id not in group.trace_ids and len(group.trace_ids) < 5:
            group.trace_ids.append(trace_id)
    return sorted(groups.values(), key=lambda g: -g.count)


def _quality(conn: Any, model_sql: str, params: list[Any]) -> Quality | None:
    join = "JOIN spans s ON s.span_id = q.span_id" if model_sql else ""
    row = conn.execute(
        "SELECT COUNT(*), AVG(q.has_refusal), AVG(q.has_hedging), AVG(q.sentiment_score), "
        f"AVG(q.groundedness) FROM _scope c CROSS JOIN quality q ON q.trace_id = c.trace_id {join} "
        f"WHERE 1 {model_sql}",
        params,
    ).fetchone()
    judges = dict(conn.execute(
        "SELECT j.criterion, AVG(j.score) FROM _scope c CROSS JOIN judgements j "
        "ON j.trace_id = c.trace_id GROUP BY j.criterion"
    ).fetchall())
    feedback = conn.execute(
        "SELECT COUNT(*), AVG(f.score) FROM _scope c CROSS JOIN feedback f "
        "ON f.trace_id = c.trace_id"
    ).fetchone()
    if not row[0] and not judges and not feedback[0]:
        return None
    return Quality(answers=row[0], refusal_rate=row[1], hedging_rate=row[2],
                   avg_sentiment=row[3], avg_groundedness=row[4], judge_scores=judges,
                   feedback_count=feedback[0], avg_feedback=feedback[1])


def _drift(conn: Any, scope: Scope) -> DriftSection | None:
    row = conn.execute(
        "SELECT check_id, baseline, created_at FROM drift_checks WHERE created_at >= ? "
        "ORDER BY created_at DESC LIMIT 1",
        [scope.since or ""],
    ).fetchone()
    if row is None:
        return None
    check_id, baseline, created_at = row
    statuses = conn.execute(
        "SELECT segment, metric, status FROM drift_checks WHERE check_id = ?", [check_id]
    ).fetchall()
    drifted = [f"{m} ({s})" if s != "overall" else m for s, m, st in statuses if st == "drift"]
    tested = any(st != "insufficient_data" for _, _, st in statuses)
    status = "drift" if drifted else ("ok" if tested else "insufficient_data")
    return DriftSection(check_id=check_id, baseline=baseline, created_at=created_at,
                        status=status, drifted=drifted)


def _alerts(conn: Any, scope: Scope) -> list[AlertRow]:
    rows = conn.execute(
        "SELECT rule, labels, severity, state, fired_at, value FROM alerts "
        "WHERE state = 'firing' OR fired_at >= ? ORDER BY fired_at DESC",
        [scope.since or ""],
    ).fetchall()
    return [AlertRow(rule=r, labels=json.loads(lb), severity=sv, state=st, fired_at=f, value=v)
            for r, lb, sv, st, f, v in rows]


def compute(
    *,
    db: str | os.PathLike[str] | None = None,
    since: Any = None,
    until: Any = None,
    tags: list[str] | None = None,
    session_id: str | None = None,
    user_id: str | None = None,
    model: str | None = None,
    name: str | None = None,
    top: int = 5,
) -> Report:
    """The report for a scope: this process's last batch by default, else the filters."""
    from .store import database

    path = database.resolve_path(db)
    store = queries.open_read(db)
    try:
        conn = store.conn
        filtered = any(v is not None for v in (since, until, tags, session_id, user_id, name))
        since_iso, until_iso = queries.to_iso(since), queries.to_iso(until)
        batch, count = ([], 0) if filtered else take_batch(path)
        where, params = ["1"], []
        if batch:
            description = f"the last batch recorded by this process ({count} traces)"
            first = conn.execute(
                "SELECT MIN(start_time) FROM spans WHERE trace_id IN (SELECT value FROM "
                "json_each(?))", [json.dumps(batch)],
            ).fetchone()[0]
            since_iso = first
            ids: list[str] | None = batch
            if count > len(batch):
                # A long batch: every trace since its first one started.
                ids, where, params = None, ["start_time >= ?"], [first]
        else:
            if not filtered:
                since_iso = queries.to_iso("24h")
            where, params = _filters(since_iso, until_iso, tags, session_id, user_id, name)
            ids = None
            parts = [f"{k}={v}" for k, v in (("since", since_iso), ("until", until_iso),
                     ("tags", tags), ("session", session_id), ("user", user_id),
                     ("model", model), ("name", name)) if v]
            description = "traces with " + ", ".join(parts) if parts else "all traces"
        scope = Scope(description=description, since=since_iso, until=until_iso, db=str(path))
        data = build(conn, ids, scope, model=model, top=top, where=" AND ".join(where),
                     params=params)
        # The listed traces' waterfalls, read on the same connection: the report links them.
        linked = list(dict.fromkeys(
            t.trace_id for t in [*data.slowest, *data.most_expensive, *data.failed]
        ))
        spans = queries.spans_of_traces(store, linked)
        events = queries.events_of_traces(store, linked)
        views = {t: Trace(spans[t], events.get(t, [])) for t in linked if t in spans}
        return Report(data, views)
    finally:
        store.conn.close()
