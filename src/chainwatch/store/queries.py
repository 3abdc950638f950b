"""The read API over a chainwatch database. Every value reaches SQL through `?` parameters."""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..spans import SPAN_FIELDS, Span
from . import database, writer
from .rows import iso_time

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_JSON_COLUMNS = ("inputs", "outputs", "tags", "metadata")


def to_iso(
    value: str | datetime.datetime | float | int | None, *, now_ns: int | None = None
) -> str | None:
    """A time bound in the stored format: ISO datetime, epoch seconds, or relative ("15m", "2h").

    Raises:
        ValueError: when the value cannot be read as a time.

    """
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return iso_time(int(value.timestamp() * 1_000_000) * 1000)
    if isinstance(value, (int, float)):
        return iso_time(int(value * 1e9))
    match = _RELATIVE.match(value)
    if match:
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
        now = now_ns if now_ns is not None else time.time_ns()
        return iso_time(now - int(seconds * 1e9))
    text = value.strip().replace("Z", "+00:00").replace(" ", "T", 1)
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"cannot read {value!r} as a time: use ISO 8601 ('2026-11-27T10:00:00Z'), "
            "epoch seconds, or a relative span such as '15m', '2h', '7d'"
        ) from None
    return to_iso(parsed)


def open_read(db: str | os.PathLike[str] | None) -> Any:
    """Flush this process's writers, then open `db` for reading (migrated)."""
    path = database.resolve_path(db)
    if not path.exists():
        raise FileNotFoundError(f"no chainwatch database at {path}")
    writer.flush_all()
    store = database.connect(Path(path))
    # Reports build temp tables of the traces in scope: keep them in memory, not in files.
    store.conn.execute("PRAGMA temp_store = MEMORY")
    return store


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for column in _JSON_COLUMNS:
        value = row.get(column)
        if isinstance(value, str):
            try:
                row[column] = json.loads(value)
            except ValueError:
                pass
    return row


def root_filters(
    *,
    since: str | None = None,
    until: str | None = None,
    tags: Sequence[str] | None = None,
    name: str | None = None,
    status: str | None = None,
    session_id: str | None = None,
    user_id: str | None = None,
    table: str = "spans",
) -> tuple[list[str], list[Any]]:
    """SQL conditions (and their parameters) on root spans of `table`, for every filter given.

    Raises:
        ValueError: for a status other than ok or error.
    """
    where = [f"{table}.span_id = {table}.trace_id"]
    params: list[Any] = []
    if since:
        where.append(f"{table}.start_time >= ?")
        params.append(since)
    if until:
        where.append(f"{table}.start_time < ?")
        params.append(until)
    if status:
        if status not in ("ok", "error"):
            raise ValueError("status must be 'ok' or 'error'")
    for tag in tags or ():
        where.append(
            f"EXISTS (SELECT 1 FROM json_each({table}.tags) WHERE json_each.value = ?)"
        )
        params.append(tag)
    for column, value in (("name", name), ("status", status), ("session_id", session_id),
                          ("user_id", user_id)):
        if value:
            where.append(f"{table}.{column} = ?")
            params.append(value)
    return where, params


def trace_rows(
    db: Any,
    *,
    since: str | None = None,
    until: str | None = None,
    name: str | None = None,
    status: str | None = None,
    tags: Sequence[str] | None = None,
    session_id: str | None = None,
    user_id: str | None = None,
    limit: int | None = 100,
) -> list[dict[str, Any]]:
    """Traces (newest first) whose root span matches every filter given."""
    where, params = root_filters(
        since=since, until=until, tags=tags, name=name, status=status,
        session_id=session_id, user_id=user_id, table="r",
    )
    limit_sql = ""
    if limit is not None:
        limit_sql = "LIMIT ?"
        params.append(int(limit))
    sql = f"""
        WITH roots AS (
            SELECT * FROM spans r WHERE {" AND ".join(where)}
            ORDER BY r.start_time DESC {limit_sql}
        )
        SELECT r.trace_id, r.name, r.kind, r.framework, r.status, r.error,
            r.start_time, r.end_time, r.duration_ms,
            COUNT(s.span_id) AS span_count,
            SUM(s.kind = 'llm' AND s.counts_usage) AS llm_calls,
            SUM(s.status = 'error') AS error_spans,
            SUM(CASE WHEN s.counts_usage THEN s.prompt_tokens END) AS prompt_tokens,
            SUM(CASE WHEN s.counts_usage THEN s.completion_tokens END) AS completion_tokens,
            SUM(CASE WHEN s.counts_usage THEN s.total_tokens END) AS total_tokens,
            SUM(CASE WHEN s.counts_usage THEN s.cost_usd END) AS cost_usd,
            SUM(s.kind = 'llm' AND s.counts_usage AND s.status = 'ok' AND s.cost_usd IS NULL)
                AS unpriced_calls,
            r.user_id, r.session_id, r.tags
        FROM roots r JOIN spans s ON s.trace_id = r.trace_id
        GROUP BY r.trace_id
        ORDER BY r.start_time DESC
    """
    cursor = db.conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    out = []
    for values in cursor.fetchall():
        row = dict(zip(names, values, strict=True))
        row["tags"] = json.loads(row["tags"]) if row["tags"] else []
        out.append(row)
    return out


def span_rows(db: Any, trace_or_span_id: str) -> list[Span]:
    """All spans of the trace with this id (or of the trace holding this span), by start."""
    conn = db.conn
    found = conn.execute(
        "SELECT trace_id FROM spans WHERE span_id = ? OR trace_id = ? LIMIT 1",
        [trace_or_span_id, trace_or_span_id],
    ).fetchone()
    if found is None:
        raise LookupError(f"no trace or span with id {trace_or_span_id!r}")
    cursor = conn.execute(
        "SELECT * FROM spans WHERE trace_id = ? ORDER BY start_time, rowid", [found[0]]
    )
    return _spans(cursor)


def _spans(cursor: Any) -> list[Span]:
    names = [d[0] for d in cursor.description]
    rows = cursor.fetchall()
    if tuple(names) == SPAN_FIELDS:
        return [Span.from_row(list(values)) for values in rows]
    # A database with columns this version does not know: pick the known ones by name.
    order = [names.index(f) for f in SPAN_FIELDS]
    return [Span.from_row([values[i] for i in order]) for values in rows]


def spans_of_traces(db: Any, trace_ids: Sequence[str]) -> dict[str, list[Span]]:
    """The spans of several traces in one query, by trace, each in start order."""
    cursor = db.conn.execute(
        "SELECT * FROM spans WHERE trace_id IN (SELECT value FROM json_each(?)) "
        "ORDER BY trace_id, start_time, rowid",
        [json.dumps(list(trace_ids))],
    )
    out: dict[str, list[Span]] = {}
    for span in _spans(cursor):
        out.setdefault(span.trace_id, []).append(span)
    return out


def events_of_traces(db: Any, trace_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The span events of several traces in one query, by trace."""
    cursor = db.conn.execute(
        "SELECT trace_id, span_id, name, time, attributes FROM span_events WHERE trace_id IN "
        "(SELECT value FROM json_each(?)) ORDER BY time, id",
        [json.dumps(list(trace_ids))],
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for trace_id, span_id, name, when, attributes in cursor.fetchall():
        out.setdefault(trace_id, []).append({
            "span_id": span_id, "name": name, "time": when,
            "attributes": json.loads(attributes) if attributes else None,
        })
    return out


def event_rows(db: Any, trace_id: str) -> list[dict[str, Any]]:
    """The span events of one trace, in time order."""
    cursor = db.conn.execute(
        "SELECT span_id, name, time, attributes FROM span_events WHERE trace_id = ? "
        "ORDER BY time, id",
        [trace_id],
    )
    out = []
    for span_id, name, when, attributes in cursor.fetchall():
        out.append(
            {
                "span_id": span_id,
                "name": name,
                "time": when,
                "attributes": json.loads(attributes) if attributes else None,
            }
        )
    return out


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (NumPy's default) of already sorted values."""
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    frac = pos - low
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * frac)


def llm_summary(db: Any, since: str | None, until: str | None = None) -> dict[str, Any]:
    """The seed's summary of model calls that ended in a window."""
    where = ["kind = 'llm'", "counts_usage = 1"]
    params: list[Any] = []
    if since:
        where.append("end_time >= ?")
        params.append(since)
    if until:
        where.append("end_time < ?")
        params.append(until)
    rows = db.conn.execute(
        f"SELECT duration_ms, total_tokens, cost_usd, status, error FROM spans "
        f"WHERE {' AND '.join(where)}",
        params,
    ).fetchall()
    durations = sorted(r[0] for r in rows if r[0] is not None)
    tokens = [r[1] for r in rows if r[1] is not None]
    costs = [r[2] for r in rows if r[2] is not None]
    errors = [r[4] or "error" for r in rows if r[3] == "error"]
    by_type: dict[str, int] = {}
    for message in errors:
        kind = message.split(":", 1)[0]
        by_type[kind] = by_type.get(kind, 0) + 1
    count = len(rows)
    return {
        "count": count,
        "latency_p50_ms": percentile(durations, 50),
        "latency_p95_ms": percentile(durations, 95),
        "latency_p99_ms": percentile(durations, 99),
        "avg_tokens": sum(tokens) / len(tokens) if tokens else None,
        "total_tokens": sum(tokens) if tokens else None,
        "total_cost_usd": sum(costs) if costs else None,
        "unpriced_calls": sum(1 for r in rows if r[2] is None and r[3] == "ok"),
        "error_rate": len(errors) / count if count else None,
        "errors": len(errors),
        "error_types": by_type,
    }
