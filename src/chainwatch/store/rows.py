"""Finished spans to SQL rows. Runs on the writer thread: JSON, repair, pricing live here."""

from __future__ import annotations

import json
import sqlite3
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from .. import pricing
from .._serialize import DEFAULT_MAX_CHARS, repair_text, to_json, truncate_text
from ..spans import SPAN_FIELDS, SpanRecord


class BulkInsert:
    """Inserts rows with one statement per 32 rows (then 8, 2, 1) instead of one per row.

    `executemany` lets go of the interpreter lock around every row's step and must take it
    back before the next: while the app keeps the interpreter busy, every retake waits up to a
    switch interval (5 ms) and then preempts the app. Measured here against a busy thread,
    that was 9 ms per row; one statement per 32 rows retakes the lock 32 times less often.
    32 rows of up to 30 columns stay under SQLite's oldest limit of 999 parameters.
    """

    _SIZES = (32, 8, 2, 1)

    def __init__(self, head: str, columns: Sequence[str]) -> None:
        one = "(" + ", ".join("?" for _ in columns) + ")"
        prefix = f"{head} ({', '.join(columns)}) VALUES "
        self.statements = {size: prefix + ", ".join([one] * size) for size in self._SIZES}
        self.one_row = prefix + one

    def __call__(self, conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Insert `rows` on `conn` (inside the caller's transaction)."""
        done, total = 0, len(rows)
        for size in self._SIZES:
            statement = self.statements[size]
            while total - done >= size:
                conn.execute(statement, list(chain.from_iterable(rows[done : done + size])))
                done += size


insert_spans = BulkInsert("INSERT OR REPLACE INTO spans", SPAN_FIELDS)
insert_events = BulkInsert(
    "INSERT INTO span_events", ("span_id", "trace_id", "name", "time", "attributes")
)
SPAN_INSERT = insert_spans.one_row  # one row: for executemany
_PRICED_KINDS = frozenset({"llm", "embedding", "evaluator"})


@dataclass(frozen=True, slots=True)
class RowSettings:
    """How one handler wants its spans written (several handlers may share a writer)."""

    max_chars: int = DEFAULT_MAX_CHARS
    capture_inputs: bool = True
    capture_outputs: bool = True
    prices: pricing.PriceTable = field(default_factory=dict)


_second_cache: list[Any] = [None, ""]


def iso_time(ns: int) -> str:
    """ISO 8601 UTC with microseconds, e.g. 2026-11-27T09:20:01.123456+00:00."""
    seconds, rest = divmod(ns, 1_000_000_000)
    cache = _second_cache
    if cache[0] != seconds:
        # Spans written together mostly share their second: format it once.
        cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        cache[0] = seconds
    return f"{cache[1]}.{rest // 1000:06d}+00:00"


def _text(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    if type(value) is not str:
        value = str(value)
    return truncate_text(repair_text(value), limit)


def describe_exception(exc: BaseException) -> str:
    """`Type: message`, as stored in `spans.error`."""
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable message>"
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


def _payload(obj: Any, limit: int, seen: dict[int, tuple[Any, str | None]] | None) -> str | None:
    """`to_json(obj)`, once per object per batch.

    A RAG chain hands the same documents on from run to run, and a run's inputs are often
    its parent's very object; the JSON is the same, so it is built once.
    """
    if obj is None:
        return None
    if seen is None or type(obj) is str:
        return _to_json(obj, limit)
    hit = seen.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    text = _to_json(obj, limit)
    seen[id(obj)] = (obj, text)  # holding obj keeps its id from being reused in the batch
    return text


def _to_json(obj: Any, limit: int) -> str | None:
    """`to_json`, and when even that fails, a marker: one bad value costs itself, not the row."""
    try:
        return to_json(obj, limit)
    except Exception as exc:
        return json.dumps(f"<unserialisable {type(obj).__name__}: {type(exc).__name__}>")


def span_row(
    rec: SpanRecord,
    settings: RowSettings,
    seen: dict[int, tuple[Any, str | None]] | None = None,
) -> tuple[Any, ...]:
    """The `spans` row of a finished span, in column (SPAN_FIELDS) order.

    `seen` (one dict per batch) lets spans written together share the JSON of a shared object.
    """
    limit = settings.max_chars
    usage = rec.usage
    prompt = completion = total = cached = reasoning = None
    if usage is not None:
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
        total, cached, reasoning = usage.total_tokens, usage.cached_tokens, usage.reasoning_tokens
        if total is None and prompt is not None and completion is not None:
            total = prompt + completion
    cost = cost_note = None
    if rec.kind in _PRICED_KINDS and rec.counts_usage:
        try:
            cost, cost_note = pricing.cost_of(usage, rec.model, rec.provider, settings.prices)
        except Exception as exc:  # a price that cannot be computed costs the cost, not the span
            cost, cost_note = None, f"price lookup failed: {type(exc).__name__}"
        if cost is None and rec.status != "ok" and usage is None:
            cost_note = "call failed before reporting usage"
    end_ns = rec.end_ns if rec.end_ns is not None else rec.start_ns
    error = rec.error
    if error is None and rec.extra and "exception" in rec.extra:
        error = describe_exception(rec.extra["exception"])
    metadata = rec.metadata or {}
    return (
        rec.span_id,
        rec.trace_id,
        rec.parent_id,
        _text(rec.name, 500) or "unnamed",
        rec.kind,
        rec.framework,
        iso_time(rec.start_ns),
        iso_time(end_ns),
        (end_ns - rec.start_ns) / 1e6,
        rec.status,
        _text(error, limit),
        _text(rec.model, 200),
        _text(rec.provider, 100),
        prompt,
        completion,
        total,
        cached,
        reasoning,
        cost,
        rec.ttft_ns / 1e6 if rec.ttft_ns is not None else None,
        _text(rec.finish_reason, 100),
        _payload(rec.inputs, limit, seen) if settings.capture_inputs else None,
        _payload(rec.outputs, limit, seen) if settings.capture_outputs else None,
        _payload(rec.tags, limit, seen) if rec.tags else "[]",
        _payload(metadata, limit, seen) if metadata else "{}",
        _text(rec.user_id, 500),
        _text(rec.session_id, 500),
        _text(rec.usage_note, 500),
        _text(cost_note, 500),
        1 if rec.counts_usage else 0,
    )


def event_rows(rec: SpanRecord, settings: RowSettings) -> list[tuple[Any, ...]]:
    """The `span_events` rows of a finished span, including one for its exception."""
    rows = []
    for event in rec.events or ():
        attributes = to_json(event.attributes, settings.max_chars)
        name = _text(event.name, 200) or "event"
        rows.append((rec.span_id, rec.trace_id, name, iso_time(event.time_ns), attributes))
    exc = rec.extra.get("exception") if rec.extra else None
    if isinstance(exc, BaseException):
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        attributes = json.dumps(
            {
                "type": type(exc).__name__,
                "message": _text(describe_exception(exc), settings.max_chars),
                "stacktrace": _text(stack, settings.max_chars),
            },
            ensure_ascii=False,
        )
        rows.append((rec.span_id, rec.trace_id, "exception", iso_time(end_ns(rec)), attributes))
    return rows


def end_ns(rec: SpanRecord) -> int:
    """When the span ended (its start when it never did)."""
    return rec.end_ns if rec.end_ns is not None else rec.start_ns
