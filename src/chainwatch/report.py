"""`chainwatch.report()`: what a batch of runs did, as pydantic models rendered for people.

The data is computed here with SQL over the spans in scope; `report_render` turns it into text,
markdown and a self-contained HTML page (charts from `charts` when matplotlib is installed).
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .store import queries
from .store.queries import percentile

_BATCH_MAX = 100_000
_batch_lock = threading.Lock()
_batches: dict[Path, collections.deque[str]] = {}


def note_trace(path: Path, trace_id: str) -> None:
    """Remember a trace this process completed (the default scope of the next report).

    Bounded: only the newest 100,000 traces are kept, so memory stays flat without reports.
    """
    batch = _batches.get(path)
    if batch is None:
        with _batch_lock:
            batch = _batches.setdefault(path, collections.deque(maxlen=_BATCH_MAX))
    batch.append(trace_id)


def take_batch(path: Path) -> list[str]:
    """The traces completed since the last report of `path`, forgetting them."""
    with _batch_lock:
        batch = _batches.pop(path, None)
    return list(batch) if batch else []


class Scope(BaseModel):
    """What the report covers."""

    description: str
    since: str | None = None
    until: str | None = None
    traces: int = 0
    db: str = ""


class Summary(BaseModel):
    """The seed's summary of the model calls in scope."""

    traces: int = 0
    llm_calls: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    avg_tokens: float | None = None
    total_tokens: int | None = None
    total_cost_usd: float | None = None
    unpriced_calls: int = 0
    error_rate: float | None = None
    errors: int = 0
    trace_error_rate: float | None = None


class Breakdown(BaseModel):
    """Calls, tokens, cost and latency of one model or one chain."""

    key: str
    calls: int
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cost_usd: float | None = None
    latency_p95_ms: float | None = None
    errors: int = 0


class TraceRow(BaseModel):
    """One trace in a list (slowest, most expensive, failed)."""

    trace_id: str
    name: str
    status: str
    start_time: str
    duration_ms: float | None = None
    total_tokens: int | None = None
    cost_usd: float | None = None
    error: str | None = None


class ErrorGroup(BaseModel):
    """Errors of one type."""

    type: str
    count: int
    example: str
    trace_ids: list[str]


class Quality(BaseModel):
    """Quality of the answers in scope."""

    answers: int = 0
    refusal_rate: float | None = None
    hedging_rate: float | None = None
    avg_sentiment: float | None = None
    avg_groundedness: float | None = None
    judge_scores: dict[str, float | None] = Field(default_factory=dict)
    feedback_count: int = 0
    avg_feedback: float | None = None


class DriftSection(BaseModel):
    """The latest drift check in scope."""

    check_id: str
    baseline: str
    created_at: str
    status: str
    drifted: list[str]


class AlertRow(BaseModel):
    """An alert that fired in the window, or is firing now."""

    rule: str
    labels: dict[str, str]
    severity: str
    state: str
    fired_at: str | None = None
    value: float | None = None


class Series(BaseModel):
    """Points for the charts: latencies, and tokens/latency over time."""

    latencies_ms: list[float] = Field(default_factory=list)
    times: list[str] = Field(default_factory=list)
    tokens: list[int | None] = Field(default_factory=list)
    durations_ms: list[float] = Field(default_factory=list)


class ReportData(BaseModel):
    """Everything a report shows, JSON-serialisable."""

    scope: Scope
    summary: Summary
    by_model: list[Breakdown] = Field(default_factory=list)
    by_chain: list[Breakdown] = Field(default_factory=list)
    slowest: list[TraceRow] = Field(default_factory=list)
    most_expensive: list[TraceRow] = Field(default_factory=list)
    failed: list[TraceRow] = Field(default_factory=list)
    errors: list[ErrorGroup] = Field(default_factory=list)
    quality: Quality | None = None
    drift: DriftSection | None = None
    alerts: list[AlertRow] = Field(default_factory=list)
    series: Series = Field(default_factory=Series)
    generated_at: str = ""


def _scope_ids(conn: Any, where: list[str], params: list[Any]) -> list[str]:
    sql = f"SELECT trace_id FROM spans WHERE span_id = trace_id AND {' AND '.join(where)}"
    return [r[0] for r in conn.execute(sql, params).fetchall()]


def _filters(
    since: str | None, until: str | None, tags: list[str] | None, session_id: str | None,
    user_id: str | None, name: str | None,
) -> tuple[list[str], list[Any]]:
    where, params = ["1"], []
    if since:
        where.append("start_time >= ?")
        params.append(since)
    if until:
        where.append("start_time < ?")
        params.append(until)
    for tag in tags or ():
        where.append("EXISTS (SELECT 1 FROM json_each(spans.tags) WHERE json_each.value = ?)")
        params.append(tag)
    for column, value in (("session_id", session_id), ("user_id", user_id), ("name", name)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    return where, params


def build(
    conn: Any, trace_ids: list[str], scope: Scope, *, model: str | None = None, top: int = 5
) -> ReportData:
    """Compute every section for these traces (optionally only one model's calls)."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS _scope (trace_id TEXT PRIMARY KEY)")
    conn.execute("DELETE FROM _scope")
    conn.executemany("INSERT OR IGNORE INTO _scope VALUES (?)", [(t,) for t in trace_ids])
    model_sql, model_params = ("AND s.model = ?", [model]) if model else ("", [])
    calls = conn.execute(
        "SELECT s.span_id, s.trace_id, s.model, r.name, s.duration_ms, s.ttft_ms, "
        "s.prompt_tokens, s.completion_tokens, s.total_tokens, s.cost_usd, s.status, s.error, "
        "s.end_time FROM _scope c JOIN spans s ON s.trace_id = c.trace_id "
        "JOIN spans r ON r.span_id = s.trace_id "
        f"WHERE s.kind = 'llm' AND s.counts_usage = 1 {model_sql} ORDER BY s.end_time",
        model_params,
    ).fetchall()
    roots = conn.execute(
        "SELECT r.trace_id, r.name, r.status, r.start_time, r.duration_ms, r.error "
        "FROM _scope c JOIN spans r ON r.span_id = c.trace_id"
    ).fetchall()
    data = ReportData(scope=scope, summary=_summary(calls, roots))
    data.by_model = _breakdown(calls, 2)
    data.by_chain = _breakdown(calls, 3)
    totals = _trace_totals(calls)
    rows = [
        TraceRow(trace_id=t, name=n, status=s, start_time=st, duration_ms=d,
                 total_tokens=totals.get(t, (None, None))[0], cost_usd=totals.get(t, (None,
                 None))[1], error=e)
        for t, n, s, st, d, e in roots
    ]
    data.slowest = sorted(rows, key=lambda r: -(r.duration_ms or 0))[:top]
    priced = [r for r in rows if r.cost_usd is not None]
    data.most_expensive = sorted(priced, key=lambda r: -(r.cost_usd or 0))[:top]
    data.failed = sorted((r for r in rows if r.status == "error"),
                         key=lambda r: r.start_time, reverse=True)[: top * 2]
    data.errors = _errors(conn)
    data.quality = _quality(conn, model_sql, model_params)
    data.drift = _drift(conn, scope)
    data.alerts = _alerts(conn, scope)
    data.series = Series(
        latencies_ms=[c[4] for c in calls if c[4] is not None],
        times=[c[12] for c in calls],
        tokens=[c[8] for c in calls],
        durations_ms=[c[4] for c in calls],
    )
    data.generated_at = queries.iso_time(time.time_ns())
    return data


def _summary(calls: list[tuple[Any, ...]], roots: list[tuple[Any, ...]]) -> Summary:
    durations = sorted(c[4] for c in calls if c[4] is not None)
    ttfts = sorted(c[5] for c in calls if c[5] is not None)
    tokens = [c[8] for c in calls if c[8] is not None]
    costs = [c[9] for c in calls if c[9] is not None]
    errors = sum(1 for c in calls if c[10] == "error")
    n = len(calls)
    return Summary(
        traces=len(roots),
        llm_calls=n,
        latency_p50_ms=percentile(durations, 50),
        latency_p95_ms=percentile(durations, 95),
        latency_p99_ms=percentile(durations, 99),
        ttft_p50_ms=percentile(ttfts, 50),
        ttft_p95_ms=percentile(ttfts, 95),
        avg_tokens=sum(tokens) / len(tokens) if tokens else None,
        total_tokens=sum(tokens) if tokens else None,
        total_cost_usd=sum(costs) if costs else None,
        unpriced_calls=sum(1 for c in calls if c[9] is None and c[10] == "ok"),
        error_rate=errors / n if n else None,
        errors=errors,
        trace_error_rate=(sum(1 for r in roots if r[2] == "error") / len(roots)) if roots else None,
    )


def _sum(values: list[Any]) -> Any:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _breakdown(calls: list[tuple[Any, ...]], column: int) -> list[Breakdown]:
    groups: dict[str, list[tuple[Any, ...]]] = {}
    for call in calls:
        groups.setdefault(call[column] or "unknown", []).append(call)
    out = [
        Breakdown(
            key=key, calls=len(members), prompt_tokens=_sum([m[6] for m in members]),
            completion_tokens=_sum([m[7] for m in members]),
            total_tokens=_sum([m[8] for m in members]), cost_usd=_sum([m[9] for m in members]),
            latency_p95_ms=percentile(sorted(m[4] for m in members if m[4] is not None), 95),
            errors=sum(1 for m in members if m[10] == "error"),
        )
        for key, members in groups.items()
    ]
    return sorted(out, key=lambda b: (-(b.cost_usd or 0), -b.calls, b.key))


def _trace_totals(calls: list[tuple[Any, ...]]) -> dict[str, tuple[int | None, float | None]]:
    grouped: dict[str, list[tuple[Any, ...]]] = {}
    for call in calls:
        grouped.setdefault(call[1], []).append(call)
    return {t: (_sum([c[8] for c in cs]), _sum([c[9] for c in cs])) for t, cs in grouped.items()}


def _errors(conn: Any) -> list[ErrorGroup]:
    rows = conn.execute(
        "SELECT s.error, s.trace_id FROM _scope c JOIN spans s ON s.trace_id = c.trace_id "
        "WHERE s.status = 'error' AND s.error IS NOT NULL AND NOT EXISTS (SELECT 1 FROM spans k "
        "WHERE k.parent_id = s.span_id AND k.status = 'error' AND k.error = s.error)"
    ).fetchall()
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
    row = conn.execute(
        "SELECT COUNT(*), AVG(q.has_refusal), AVG(q.has_hedging), AVG(q.sentiment_score), "
        "AVG(q.groundedness) FROM _scope c JOIN quality q ON q.trace_id = c.trace_id "
        f"JOIN spans s ON s.span_id = q.span_id WHERE 1 {model_sql}",
        params,
    ).fetchone()
    judges = dict(conn.execute(
        "SELECT j.criterion, AVG(j.score) FROM _scope c JOIN judgements j "
        "ON j.trace_id = c.trace_id GROUP BY j.criterion"
    ).fetchall())
    feedback = conn.execute(
        "SELECT COUNT(*), AVG(f.score) FROM _scope c JOIN feedback f ON f.trace_id = c.trace_id"
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
) -> ReportData:
    """The report's data for a scope: this process's last batch by default, else the filters."""
    from .store import database

    path = database.resolve_path(db)
    store = queries.open_read(db)
    try:
        conn = store.conn
        filtered = any(v is not None for v in (since, until, tags, session_id, user_id, name))
        since_iso, until_iso = queries.to_iso(since), queries.to_iso(until)
        batch = [] if filtered else take_batch(path)
        if batch:
            description = f"the last batch recorded by this process ({len(batch)} traces)"
            ids = batch
            first = conn.execute(
                "SELECT MIN(start_time) FROM spans WHERE trace_id IN (SELECT value FROM "
                "json_each(?))", [json.dumps(batch)],
            ).fetchone()[0]
            since_iso = first
        else:
            if not filtered:
                since_iso = queries.to_iso("24h")
            where, params = _filters(since_iso, until_iso, tags, session_id, user_id, name)
            ids = _scope_ids(conn, where, params)
            parts = [f"{k}={v}" for k, v in (("since", since_iso), ("until", until_iso),
                     ("tags", tags), ("session", session_id), ("user", user_id),
                     ("model", model), ("name", name)) if v]
            description = "traces with " + ", ".join(parts) if parts else "all traces"
        scope = Scope(description=description, since=since_iso, until=until_iso,
                      traces=len(ids), db=str(path))
        return build(conn, ids, scope, model=model, top=top)
    finally:
        store.conn.close()
