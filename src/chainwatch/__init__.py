"""chainwatch: local-first observability for LangChain and LlamaIndex.

`import chainwatch` imports no framework; the handler reads LangChain's objects by shape.
"""

from __future__ import annotations

import os
from typing import Any as _Any

from . import alerts as alerts  # `chainwatch.alerts.Rule`, `chainwatch.alerts.active()`
from . import quality as quality  # `chainwatch.quality.analyze_response`
from .baselines import check_drift, set_baseline
from .feedback import feedback
from .handler import ChainWatchHandler
from .hooks import analyze
from .report_render import Report
from .spans import Span, SpanKind, Status, Usage
from .store import queries
from .views import Summary, Trace, TraceList

__version__ = "0.1.0"

__all__ = [
    "ChainWatchHandler",
    "Report",
    "Span",
    "SpanKind",
    "Status",
    "Summary",
    "Trace",
    "TraceList",
    "Usage",
    "__version__",
    "analyze",
    "check_drift",
    "feedback",
    "flush",
    "instrument_llama_index",
    "report",
    "set_baseline",
    "summary",
    "trace",
    "traces",
    "uninstrument_llama_index",
]


def report(
    *,
    db: str | os.PathLike[str] | None = None,
    since: _Any = None,
    until: _Any = None,
    tags: list[str] | None = None,
    session_id: str | None = None,
    user_id: str | None = None,
    model: str | None = None,
    name: str | None = None,
    top: int = 5,
) -> Report:
    """A report of a batch of runs: HTML in Jupyter, text in a terminal.

    With no filter it covers what this process recorded since its last report (or the last
    24 hours when it recorded nothing). Filters: a time window (``since="1h"``), root tags,
    session, user, a model (only its calls), a root span name.

    Returns:
        A `Report`; ``.save("report.html")``, ``.to_markdown()``, ``.to_dict()``.
    """
    from .report import compute

    return compute(db=db, since=since, until=until, tags=tags, session_id=session_id,
                   user_id=user_id, model=model, name=name, top=top)


def flush(timeout: float | None = 30.0) -> bool:
    """Flush every handler of this process; False when `timeout` passed first."""
    from .store import writer

    return writer.flush_all(timeout)


def instrument_llama_index(handler: ChainWatchHandler) -> None:
    """Record LlamaIndex's instrumentation spans and events through `handler`.

    Registers a span handler and an event handler on LlamaIndex's root dispatcher, once per
    handler. Works alongside ``CallbackManager([handler])``: a model call seen by both paths
    is counted once.

    Raises:
        ImportError: when llama-index-core is not installed (names the pip command).
    """
    from .integrations import llama_index_dispatcher

    llama_index_dispatcher.instrument(handler)


def uninstrument_llama_index(handler: ChainWatchHandler) -> bool:
    """Stop recording LlamaIndex's instrumentation through `handler`; False if it was not."""
    from .integrations import llama_index_dispatcher

    return llama_index_dispatcher.uninstrument(handler)


def traces(
    *,
    db: str | os.PathLike[str] | None = None,
    since: _Any = None,
    until: _Any = None,
    name: str | None = None,
    status: str | None = None,
    tags: list[str] | None = None,
    session_id: str | None = None,
    user_id: str | None = None,
    limit: int | None = 100,
) -> TraceList:
    """Recent traces, newest first, one row each with totals that count each call once.

    Args:
        db: database file (default ``$CHAINWATCH_DB`` or ``./chainwatch.db``).
        since: only traces that started at or after this time: ISO 8601, epoch seconds,
            a datetime, or relative such as ``"15m"``, ``"2h"``, ``"7d"``.
        until: only traces that started before this time.
        name: the root span's name.
        status: ``"ok"`` or ``"error"``.
        tags: every one of these tags is on the root span.
        session_id: the trace's session.
        user_id: the trace's user.
        limit: most rows returned (None for all).

    """
    database = queries.open_read(db)
    try:
        rows = queries.trace_rows(
            database,
            since=queries.to_iso(since),
            until=queries.to_iso(until),
            name=name,
            status=status,
            tags=tags,
            session_id=session_id,
            user_id=user_id,
            limit=limit,
        )
    finally:
        database.conn.close()
    return TraceList(rows)


def trace(trace_id: str, *, db: str | os.PathLike[str] | None = None) -> Trace:
    """The span tree of one trace (a span id finds the trace that holds it).

    Raises:
        LookupError: when no span or trace has this id.

    """
    database = queries.open_read(db)
    try:
        spans = queries.span_rows(database, str(trace_id))
        events = queries.event_rows(database, spans[0].trace_id)
    finally:
        database.conn.close()
    return Trace(spans, events)


def summary(
    window_minutes: float | None = 60, *, db: str | os.PathLike[str] | None = None
) -> Summary:
    """The seed's summary of model calls that ended in the last `window_minutes`.

    Keys: count, latency_p50_ms, latency_p95_ms, latency_p99_ms, avg_tokens, total_tokens,
    total_cost_usd, unpriced_calls, error_rate, errors, error_types. Values that cannot be
    known (no calls, no prices) are None, not zero. `window_minutes=None` covers everything.
    """
    since = None
    if window_minutes is not None:
        if window_minutes <= 0:
            raise ValueError("window_minutes must be positive")
        since = queries.to_iso(f"{window_minutes * 60}s")
    database = queries.open_read(db)
    try:
        return Summary(queries.llm_summary(database, since))
    finally:
        database.conn.close()
