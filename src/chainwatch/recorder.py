"""Framework-neutral span lifecycle: start, end, error, events, trace completion.

Runs on the caller's thread, so it does dict work only (DESIGN.md invariant 1). It relies on
the GIL for thread safety: each open span is added and popped with single dict operations, so
concurrent threads and event loops can start and end runs through one recorder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .spans import SpanKind, SpanRecord, Status
from .store.rows import RowSettings

_SWEEP_EVERY = 4_096
_LLM = SpanKind.LLM.value
# How long a trace whose root has ended waits for runs still open in it before they are
# closed as never ended (a sweep or a flush checks).
_DANGLING_S = 30.0
# A framework's stream span (flagged `stream_pending`) that nobody reads ends after this.
_UNREAD_STREAM_S = 900.0
_DANGLING_ERROR = f"chainwatch: span did not end within {_DANGLING_S:g} s of its trace's root"


class _Trace:
    __slots__ = ("open", "root_end_ns", "span_ids")

    def __init__(self) -> None:
        self.span_ids: list[str] = []
        self.open = 0  # spans started and not yet ended
        self.root_end_ns: int | None = None  # set when the root ended before its last span


class Recorder:
    """Builds `SpanRecord`s and hands finished ones to a sink (the writer).

    Args:
        put: called with each finished span and the row settings; returns False when dropped.
        trace_done: called with a trace id when its root span has ended.
        settings: how spans are written (truncation, capture, prices).
        clock: nanoseconds since the epoch; injectable for tests.
        max_open_s: a span open longer than this is closed by the sweep as never ended.

    """

    def __init__(
        self,
        put: Callable[[SpanRecord, RowSettings], bool],
        trace_done: Callable[[str], None],
        settings: RowSettings,
        *,
        clock: Callable[[], int] = time.time_ns,
        max_open_s: float = 6 * 3600,
    ) -> None:
        self._put = put
        self._trace_done = trace_done
        self.settings = settings
        self.clock = clock
        self.max_open_ns = int(max_open_s * 1e9)
        self._open: dict[str, SpanRecord] = {}
        self._traces: dict[str, _Trace] = {}
        self._trace_of: dict[str, str] = {}
        self._dangling: dict[str, _Trace] = {}  # traces whose root ended with spans still open
        self._starts = 0
        self.spans_started = 0
        self.spans_finished = 0
        self.spans_dropped = 0

    def start(
        self,
        span_id: str,
        parent_id: str | None,
        name: str,
        kind: str,
        framework: str,
        inputs: Any = None,
        *,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        start_ns: int | None = None,
    ) -> SpanRecord:
        """Open a span. Its trace is the parent's, or a new one rooted at this span."""
        trace_id = self._trace_of.get(parent_id) if parent_id is not None else None
        parent = self._open.get(parent_id) if parent_id is not None else None
        if trace_id is None:
            trace_id = span_id
            trace = self._traces[span_id] = _Trace()
        else:
            trace = self._traces.get(trace_id) or _Trace()
        rec = SpanRecord(
            span_id,
            trace_id,
            parent_id,
            name,
            kind,
            framework,
            start_ns if start_ns is not None else self.clock(),
            inputs=inputs,
            tags=tags,
            metadata=metadata,
            user_id=user_id,
            session_id=session_id,
        )
        if parent is not None:
            if user_id is None:
                rec.user_id = parent.user_id
            if session_id is None:
                rec.session_id = parent.session_id
            if parent.kind == _LLM:
                # A model call inside a model call (a legacy LlamaIndex event inside its
                # dispatcher span, `chat` inside `predict_and_call`): the outer one has the
                # usage. Below a chain or tool in between (a tool's own query), calls count.
                rec.counts_usage = False
        self._open[span_id] = rec
        self._trace_of[span_id] = trace_id
        trace.span_ids.append(span_id)
        trace.open += 1
        self.spans_started += 1
        self._starts += 1
        if self._starts >= _SWEEP_EVERY:
            self._starts = 0
            self.sweep()
        return rec

    def open_in_trace(self, trace_id: str) -> list[SpanRecord]:
        """Spans of a running trace that have not ended yet."""
        trace = self._traces.get(trace_id)
        if trace is None:
            return []
        return [rec for sid in trace.span_ids if (rec := self._open.get(sid)) is not None]

    def trace_of(self, span_id: str) -> str | None:
        """The trace of a span whose trace has not ended (open or finished span)."""
        return self._trace_of.get(span_id)

    def get(self, span_id: str) -> SpanRecord | None:
        """The open span with this id, if any."""
        return self._open.get(span_id)

    def end(
        self,
        span_id: str,
        outputs: Any = None,
        *,
        error: BaseException | str | None = None,
        end_ns: int | None = None,
    ) -> SpanRecord | None:
        """Close a span (with an error when given) and queue it for writing.

        Returns the finished record, or None when the span was unknown or already ended.
        """
        rec = self._open.pop(span_id, None)
        if rec is None:
            return None
        rec.end_ns = end_ns if end_ns is not None else self.clock()
        if outputs is not None:
            rec.outputs = outputs
        if error is not None:
            rec.status = Status.ERROR.value
            if isinstance(error, BaseException):
                rec.extra = rec.extra or {}
                rec.extra["exception"] = error
            else:
                rec.error = error
        self._emit(rec)
        return rec

    def _emit(self, rec: SpanRecord) -> None:
        self.spans_finished += 1
        if not self._put(rec, self.settings):
            self.spans_dropped += 1
        trace = self._traces.get(rec.trace_id)
        if trace is None:
            if rec.span_id == rec.trace_id:
                self._trace_done(rec.trace_id)
            return
        trace.open -= 1
        if rec.span_id == rec.trace_id:
            if trace.open > 0:
                # LangChain ends some runs after their root: a stream the caller stopped
                # reading closes the root first, then the model and parser inside it. The
                # trace is complete (and its hooks run) once they have ended too.
                trace.root_end_ns = rec.end_ns
                self._dangling[rec.trace_id] = trace
                return
            self._complete(rec.trace_id, trace, rec.end_ns)
        elif trace.root_end_ns is not None and trace.open <= 0:
            self._complete(rec.trace_id, trace, trace.root_end_ns)

    def _complete(self, trace_id: str, trace: _Trace, end_ns: int | None) -> None:
        """Forget a finished trace and report it; spans still open in it end as errors."""
        self._traces.pop(trace_id, None)
        self._dangling.pop(trace_id, None)
        trace_of = self._trace_of
        for sid in trace.span_ids:
            trace_of.pop(sid, None)
            orphan = self._open.pop(sid, None)
            if orphan is not None:
                orphan.end_ns = max(end_ns or orphan.start_ns, orphan.start_ns)
                orphan.status = Status.ERROR.value
                orphan.error = _DANGLING_ERROR
                self.spans_finished += 1
                if not self._put(orphan, self.settings):
                    self.spans_dropped += 1
        self._trace_done(trace_id)

    def close_dangling(self, now_ns: int | None = None, wait_s: float = _DANGLING_S) -> int:
        """Complete traces whose root ended over `wait_s` ago; returns how many."""
        if not self._dangling:
            return 0
        now = now_ns if now_ns is not None else self.clock()
        limit = int(wait_s * 1e9)
        due = [
            (tid, trace)
            for tid, trace in list(self._dangling.items())
            if now - (trace.root_end_ns or now) >= limit
        ]
        for tid, trace in due:
            self._complete(tid, trace, now)
        return len(due)

    def event(self, span_id: str, name: str, attributes: Any = None) -> bool:
        """Attach an event to an open span; False when the span is not open."""
        rec = self._open.get(span_id)
        if rec is None:
            return False
        rec.add_event(name, self.clock(), attributes)
        return True

    def sweep(self, now_ns: int | None = None) -> int:
        """Close spans open longer than `max_open_s`; returns how many were closed."""
        now = now_ns if now_ns is not None else self.clock()
        limit = self.max_open_ns
        unread_ns = int(_UNREAD_STREAM_S * 1e9)
        stale: list[str] = []
        unread: list[SpanRecord] = []
        for sid, rec in list(self._open.items()):
            if now - rec.start_ns > limit:
                stale.append(sid)
            elif rec.extra and rec.extra.get("stream_pending") and now - rec.start_ns > unread_ns:
                unread.append(rec)
        for sid in stale:
            self.end(sid, error="chainwatch: span never ended", end_ns=now)
        for rec in unread:
            # A stream returned to the app and never read to its end (a client that went
            # away): the call itself did not fail, and its span must not wait for hours.
            rec.metadata = {**(rec.metadata or {}), "stream_unread": True}
            self.end(rec.span_id, end_ns=now)
        self.close_dangling(now)
        return len(stale)

    @property
    def open_spans(self) -> int:
        """How many spans are open now."""
        return len(self._open)

    @property
    def open_traces(self) -> int:
        """How many traces have not ended yet."""
        return len(self._traces)
