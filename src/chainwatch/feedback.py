"""User feedback on traces and spans, stored in the `feedback` table."""

from __future__ import annotations

import math
import os
import time

from ._serialize import repair_text
from .store import database as _database
from .store import queries
from .store.rows import iso_time


def feedback(
    trace_or_span_id: str,
    score: float,
    comment: str | None = None,
    source: str = "user",
    *,
    db: str | os.PathLike[str] | None = None,
) -> int:
    """Record feedback on a trace (its id) or on one span (a span id).

    Args:
        trace_or_span_id: a trace id or a span id from the database.
        score: a finite number, e.g. 1 / 0 for thumbs up / down or 1 to 5.
        comment: free text.
        source: who gave it: ``user``, ``reviewer``, ...
        db: the database (default ``$CHAINWATCH_DB`` or ``./chainwatch.db``).

    Returns:
        The feedback row's id.

    Raises:
        LookupError: when no trace or span has this id.
        ValueError: when the score is not a finite number or the source is empty.
    """
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise ValueError(f"feedback score must be a finite number, got {score!r}")
    if not source:
        raise ValueError("feedback source must not be empty")
    database = queries.open_read(db)
    try:
        conn = database.conn
        key = str(trace_or_span_id)
        found = conn.execute(
            "SELECT trace_id, span_id FROM spans WHERE span_id = ? OR trace_id = ? "
            "ORDER BY span_id = ? DESC LIMIT 1",
            [key, key, key],
        ).fetchone()
        if found is None:
            path = _database.resolve_path(db)
            raise LookupError(f"no trace or span with id {key!r} in {path}")
        trace_id, span_id = found
        span = None if span_id == trace_id or key == trace_id else span_id
        conn.execute("BEGIN IMMEDIATE")
        cursor = conn.execute(
            "INSERT INTO feedback (trace_id, span_id, score, comment, source, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                trace_id,
                span,
                float(score),
                repair_text(comment) if comment else None,
                repair_text(source),
                iso_time(time.time_ns()),
            ],
        )
        conn.execute("COMMIT")
        return int(cursor.lastrowid or 0)
    finally:
        database.conn.close()
