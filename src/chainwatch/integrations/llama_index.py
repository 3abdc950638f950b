"""LlamaIndex's legacy `CallbackManager` events as spans.

LlamaIndex's `CallbackManager` calls handlers without catching their errors, so every method
here is guarded. Nothing here imports LlamaIndex: event types are read by their string values.

`start_trace` opens a root span named after the trace ("query", "index_construction"); the
events under it nest by their ids, and events with LlamaIndex's `root` parent hang from that
span (or are roots themselves when no trace is open).
"""

from __future__ import annotations

import contextvars
import sys
import uuid
from typing import Any

from .. import usage as _usage
from .._errors import internal_error, on_own_thread
from ..recorder import Recorder

FRAMEWORK = "llama_index"
_ROOT = "root"
_KINDS = {
    "query": "chain",
    "retrieve": "retriever",
    "synthesize": "chain",
    "llm": "llm",
    "embedding": "embedding",
    "chunking": "chain",
    "node_parsing": "chain",
    "templating": "prompt",
    "reranking": "reranker",
    "function_call": "tool",
    "agent_step": "agent",
    "sub_question": "chain",
    "tree": "chain",
    "exception": "other",
}

# The root spans of the legacy traces running in this context (thread or task), by recorder.
_legacy_trace: contextvars.ContextVar[dict[int, str] | None] = contextvars.ContextVar(
    "chainwatch_llama_index_trace", default=None
)


def _legacy_root(rec: Recorder) -> str | None:
    roots = _legacy_trace.get()
    return roots.get(id(rec)) if roots else None


def _set_legacy_root(rec: Recorder, span_id: str | None) -> None:
    roots = dict(_legacy_trace.get() or {})
    if span_id is None:
        roots.pop(id(rec), None)
    else:
        roots[id(rec)] = span_id
    _legacy_trace.set(roots or None)


def _value(event_type: Any) -> str:
    return str(getattr(event_type, "value", event_type))


def _payload_get(payload: Any, key: str) -> Any:
    """A payload value by its EventPayload name (payload keys are enum members or strings)."""
    if not payload:
        return None
    # EventPayload is a str enum: its members hash and compare as their values.
    value = payload.get(key)
    if value is not None or key in payload:
        return value
    for k, v in payload.items():
        if _value(k) == key:
            return v
    return None


def active_dispatcher_span(rec: Recorder) -> str | None:
    """The LlamaIndex instrumentation span active in this context, if this recorder has it."""
    module = sys.modules.get("llama_index_instrumentation.span")
    if module is None:
        return None
    span_id = module.active_span_id.get()
    return span_id if span_id is not None and rec.trace_of(span_id) is not None else None


def active_langchain_run(rec: Recorder) -> str | None:
    """The LangChain run whose code is running in this context (a tool's body, say)."""
    module = sys.modules.get("langchain_core.runnables.config")
    if module is None:
        return None
    config = module.var_child_runnable_config.get()
    if not config:
        return None
    parent = getattr(config.get("callbacks"), "parent_run_id", None)
    if parent is None:
        return None
    parent_id = str(parent)
    return parent_id if rec.trace_of(parent_id) is not None else None


def llama_index_parent(rec: Recorder) -> str | None:
    """The LlamaIndex span (legacy trace or dispatcher span) running in this context."""
    if "llama_index_instrumentation" not in sys.modules and _legacy_trace.get() is None:
        return None
    return _legacy_root(rec) or active_dispatcher_span(rec)


def outer_parent(rec: Recorder) -> str | None:
    """Where a LlamaIndex root belongs: a legacy trace, a dispatcher span or a LangChain run."""
    return _legacy_root(rec) or active_dispatcher_span(rec) or active_langchain_run(rec)


class LlamaIndexCallbacks:
    """The legacy LlamaIndex half of `ChainWatchHandler` (duck-typed `BaseCallbackHandler`)."""

    event_starts_to_ignore: tuple[Any, ...] = ()
    event_ends_to_ignore: tuple[Any, ...] = ()

    _rec: Recorder
    _tags: list[str]
    _metadata: dict[str, Any] | None
    _user_id: str | None
    _session_id: str | None

    def _li_start(self, span_id: str, parent: str | None, name: str, kind: str, inputs: Any) -> Any:
        return self._rec.start(
            span_id,
            parent,
            name,
            kind,
            FRAMEWORK,
            inputs,
            tags=self._tags,
            metadata=self._metadata,
            user_id=self._user_id,
            session_id=self._session_id,
        )

    def start_trace(self, trace_id: str | None = None) -> None:
        """An outermost LlamaIndex trace began: open its root span."""
        try:
            if on_own_thread():
                return
            span_id = f"{trace_id or 'trace'}-{uuid.uuid4()}"
            parent = active_dispatcher_span(self._rec) or active_langchain_run(self._rec)
            root = self._li_start(span_id, parent, trace_id or "llama_index", "chain", None)
            handled = sys.exc_info()[1]
            if handled is not None:
                # Called inside the app's own `except` block: that exception is not this
                # trace's, whatever `sys.exc_info()` says at its end.
                root.extra = root.extra or {}
                root.extra["handled_before"] = handled
            _set_legacy_root(self._rec, span_id)
        except Exception as exc:
            internal_error("llama_index.start_trace", exc)

    def end_trace(
        self, trace_id: str | None = None, trace_map: dict[str, list[str]] | None = None
    ) -> None:
        """The trace ended: close its root span."""
        try:
            if on_own_thread():
                return
            span_id = _legacy_root(self._rec)
            if span_id is None:
                return
            _set_legacy_root(self._rec, None)
            rec = self._rec.get(span_id)
            if rec is None:
                return
            failure = rec.extra.get("trace_error") if rec.extra else None
            if failure is None:
                # end_trace runs in as_trace's `finally`: an exception leaving the trace is
                # here (a cancellation, which sends no exception event), unless it is one the
                # app was already handling when the trace began.
                failure = sys.exc_info()[1]
                if failure is not None and rec.extra and failure is rec.extra.get("handled_before"):
                    failure = None
            streaming = [s for s in self._rec.open_in_trace(span_id) if s.kind == "llm"]
            if streaming and failure is None:
                # A streamed answer is still being read: the trace ends when its model call does.
                rec.extra = rec.extra or {}
                rec.extra["end_when_streams_end"] = True
                return
            self._rec.end(span_id, error=failure)
        except Exception as exc:
            internal_error("llama_index.end_trace", exc)

    def on_event_start(
        self,
        event_type: Any,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        parent_id: str = "",
        **kwargs: Any,
    ) -> str:
        """A LlamaIndex event began: open a span (exceptions are recorded and closed at once)."""
        try:
            if on_own_thread():
                return event_id
            kind_name = _value(event_type)
            parent: str | None = parent_id if parent_id and parent_id != _ROOT else None
            if parent is None or self._rec.trace_of(parent) is None:
                parent = outer_parent(self._rec) if parent is None else parent
            event_id = event_id or str(uuid.uuid4())
            if kind_name == "exception":
                self._li_exception(event_id, parent, _payload_get(payload, "exception"))
                return event_id
            kind = _KINDS.get(kind_name, "other")
            serialized = _payload_get(payload, "serialized") or {}
            name = serialized.get("class_name") if kind in ("llm", "embedding") else None
            rec = self._li_start(event_id, parent, name or kind_name, kind, payload)
            if kind in ("llm", "embedding"):
                rec.model = serialized.get("model") or serialized.get("model_name")
                # The same call seen by the instrumentation path is already counted there.
                active = active_dispatcher_span(self._rec)
                twin = self._rec.get(active) if active else None
                if twin is not None and twin.kind == kind:
                    rec.counts_usage = False
                    rec.metadata = {**(rec.metadata or {}), "duplicate_of": active}
        except Exception as exc:
            internal_error("llama_index.on_event_start", exc)
        return event_id

    def _li_exception(self, event_id: str, parent: str | None, error: Any) -> None:
        rec = self._li_start(event_id, parent, "exception", "other", None)
        failure = error if isinstance(error, BaseException) else RuntimeError(str(error))
        trace_root = self._rec.get(rec.trace_id)
        if trace_root is not None:
            trace_root.extra = trace_root.extra or {}
            trace_root.extra["trace_error"] = failure
        self._rec.end(event_id, error=failure)

    def on_event_end(
        self,
        event_type: Any,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        **kwargs: Any,
    ) -> None:
        """A LlamaIndex event ended: close its span with usage for model calls."""
        try:
            if on_own_thread():
                return
            rec = self._rec.get(event_id)
            if rec is None:
                return
            error = _payload_get(payload, "exception")
            if rec.kind == "llm":
                response = _payload_get(payload, "response") or _payload_get(payload, "completion")
                if response is not None:
                    rec.usage = _usage.response_usage(response)
                    rec.model = _usage.response_model(response) or rec.model
                    rec.finish_reason = _usage.response_finish_reason(response)
                if rec.usage is None:
                    rec.usage_note = (
                        "call failed before reporting usage"
                        if error is not None
                        else "provider returned no token usage"
                    )
            elif rec.kind == "embedding":
                rec.usage_note = "embedding usage is not reported by LlamaIndex callbacks"
            self._rec.end(event_id, payload, error=error if error is not None else None)
            root = self._rec.get(rec.trace_id)
            if root is not None and root.extra and root.extra.get("end_when_streams_end"):
                if not any(s.kind == "llm" for s in self._rec.open_in_trace(rec.trace_id)):
                    self._rec.end(root.span_id)
        except Exception as exc:
            internal_error("llama_index.on_event_end", exc)
