"""LlamaIndex's instrumentation module (dispatcher spans and events) as spans.

`instrument(handler)` registers one span handler and one event handler on the root
dispatcher. Spans come from `@dispatcher.span` methods; model usage, time to first token and
tool calls come from the events dispatched inside them. A span whose method returns a stream
stays open until the model's end event for that stream arrives, so its duration covers the
whole stream; the user's stream itself is never touched.
"""

from __future__ import annotations

import inspect
import threading
from typing import TYPE_CHECKING, Any

from .. import usage as _usage
from .._errors import internal_error, on_own_thread
from ..recorder import Recorder
from ..spans import SpanRecord
from . import llama_index as _legacy

if TYPE_CHECKING:
    from ..handler import ChainWatchHandler

FRAMEWORK = "llama_index"
_LLM = "llm"
_UUID_SUFFIX = 37  # "-" plus a uuid4
_END_EVENTS = frozenset({"LLMChatEndEvent", "LLMCompletionEndEvent"})
_PROGRESS_EVENTS = frozenset({"LLMChatInProgressEvent", "LLMCompletionInProgressEvent"})
_START_EVENTS = frozenset({"LLMChatStartEvent", "LLMCompletionStartEvent"})

_registered: dict[int, tuple[Any, Any]] = {}
_lock = threading.Lock()
_kinds_cache: list[tuple[type, str]] = []


def _kinds() -> list[tuple[type, str]]:
    if not _kinds_cache:
        from llama_index.core.base.base_query_engine import BaseQueryEngine
        from llama_index.core.base.base_retriever import BaseRetriever
        from llama_index.core.base.embeddings.base import BaseEmbedding
        from llama_index.core.base.llms.base import BaseLLM
        from llama_index.core.postprocessor.types import BaseNodePostprocessor
        from llama_index.core.tools.types import BaseTool

        found: list[tuple[type, str]] = [
            (BaseLLM, "llm"),
            (BaseEmbedding, "embedding"),
            (BaseRetriever, "retriever"),
            (BaseNodePostprocessor, "reranker"),
            (BaseTool, "tool"),
            (BaseQueryEngine, "chain"),
        ]
        try:
            from llama_index.core.agent.workflow import BaseWorkflowAgent

            found.insert(0, (BaseWorkflowAgent, "agent"))
        except ImportError:
            pass
        _kinds_cache.extend(found)
    return _kinds_cache


_MODEL_METHODS = frozenset(
    f"{prefix}{name}"
    for prefix in ("", "a")
    for name in (
        "chat", "stream_chat", "complete", "stream_complete", "predict", "stream",
        "structured_predict", "stream_structured_predict", "predict_and_call",
        "chat_with_tools", "stream_chat_with_tools",
    )
)


def kind_of(instance: Any, method: str | None = None) -> str:
    """Span kind of a dispatcher span from the instance (and method) it wraps.

    Only the model-calling methods of an LLM are `llm` spans; its helpers
    (``_prepare_chat_with_tools``, ``get_tool_calls_from_response``) are not model calls.
    """
    if instance is None:
        return "chain"
    key = (type(instance), method)
    kind = _kind_cache.get(key)
    if kind is None:
        kind = "chain"
        for cls, candidate in _kinds():
            if isinstance(instance, cls):
                llm_helper = candidate == "llm" and method is not None
                kind = "chain" if llm_helper and method not in _MODEL_METHODS else candidate
                break
        if len(_kind_cache) < 4096:
            _kind_cache[key] = kind
    return kind


_kind_cache: dict[tuple[type, str | None], str] = {}


def span_name(id_: str) -> str:
    """`OpenAI.chat-<uuid4>` -> `OpenAI.chat`."""
    if len(id_) > _UUID_SUFFIX and id_[-_UUID_SUFFIX] == "-":
        return id_[:-_UUID_SUFFIX]
    return id_


def _provider(instance: Any) -> str | None:
    module = type(instance).__module__
    if module.startswith("llama_index.llms."):
        return module.split(".")[2]
    return None


def _has_tool_call(response: Any) -> bool:
    message = getattr(response, "message", None)
    if message is None:
        return False
    if (getattr(message, "additional_kwargs", None) or {}).get("tool_calls"):
        return True
    return any(type(b).__name__ == "ToolCallBlock" for b in getattr(message, "blocks", ()) or ())


_STREAM_TYPES = frozenset({"StreamingResponse", "AsyncStreamingResponse",
                           "StreamingAgentChatResponse"})


def _is_stream(result: Any) -> bool:
    """Whether `result` is a stream the user reads later, told by its type.

    `AgentChatResponse` (what `predict_and_call` returns) has a `response_gen` property
    too, which raises unless it is a dummy stream.
    """
    if inspect.isgenerator(result) or inspect.isasyncgen(result):
        return True
    return any(cls.__name__ in _STREAM_TYPES for cls in type(result).__mro__)


class _Bridge:
    """The recorder side shared by the span handler and the event handler."""

    def __init__(self, handler: ChainWatchHandler) -> None:
        self.handler = handler
        self.rec: Recorder = handler.recorder

    def enter(self, id_: str, bound_args: Any, instance: Any, parent_id: str | None) -> None:
        if on_own_thread():
            return
        rec = self.rec
        parent = parent_id if parent_id and rec.trace_of(parent_id) is not None else None
        if parent is None:
            parent = _legacy.outer_parent(rec) if parent_id is None else parent_id
        name = span_name(id_)
        kind = kind_of(instance, name.rsplit(".", 1)[-1])
        arguments = getattr(bound_args, "arguments", None)
        h = self.handler
        span = rec.start(
            id_, parent, name, kind, FRAMEWORK, arguments,
            tags=h._tags, metadata=h._metadata, user_id=h._user_id, session_id=h._session_id,
        )
        if kind == _LLM:
            span.model = getattr(instance, "model", None) or getattr(instance, "model_name", None)
            span.provider = _provider(instance)

    def exit(self, id_: str, result: Any) -> None:
        span = self.rec.get(id_)
        if span is None:
            return
        if _is_stream(result):
            if span.kind == _LLM:
                # Ended by the model's end event when the user has consumed the stream.
                span.extra = span.extra or {}
                span.extra["stream_pending"] = True
                return
            span.metadata = {**(span.metadata or {}), "streaming": True}
        self.rec.end(id_, result)

    def drop(self, id_: str, err: BaseException | None) -> None:
        if err is None:
            self.rec.end(id_)
        else:
            self.rec.end(id_, error=err)

    def model_span(self, span_id: str | None) -> SpanRecord | None:
        """The outermost model span around `span_id` (where a call's usage belongs)."""
        span = self.rec.get(span_id) if span_id else None
        while span is not None and span.parent_id is not None:
            parent = self.rec.get(span.parent_id)
            if parent is None or parent.kind != _LLM:
                break
            span = parent
        return span

    def event(self, event: Any) -> None:
        name = type(event).__name__
        if name in _PROGRESS_EVENTS:
            span = self.model_span(event.span_id)
            if span is None:
                return
            response = event.response
            if span.ttft_ns is None and (
                getattr(response, "delta", None) or _has_tool_call(response)
            ):
                now = self.rec.clock()
                span.ttft_ns = now - span.start_ns
                span.add_event("first_token", now)
            reason = _usage.response_finish_reason(response)
            if reason:
                span.finish_reason = reason
        elif name in _END_EVENTS:
            self._model_end(event)
        elif name == "ExceptionEvent":
            self._close_pending(event.span_id, getattr(event, "exception", None))
        elif name in _START_EVENTS:
            span = self.model_span(event.span_id)
            if span is not None:
                model = (event.model_dict or {}).get("model")
                span.model = span.model or model
        elif name == "AgentToolCallEvent":
            tool = getattr(event, "tool", None)
            attributes = {"tool": getattr(tool, "name", None), "arguments": event.arguments}
            self.rec.event(event.span_id, "tool_call", attributes) if event.span_id else None

    def _close_pending(self, span_id: str | None, error: BaseException | None) -> None:
        """A stream failed part-way: end its waiting spans, innermost first, with the error.

        `GeneratorExit` is the reader stopping early (a `break`, a client gone): not a
        failure of the call, so the spans end ok, marked as abandoned.
        """
        abandoned = isinstance(error, GeneratorExit)
        current = self.rec.get(span_id) if span_id else None
        while current is not None and current.extra and current.extra.get("stream_pending"):
            parent_id = current.parent_id
            if abandoned:
                current.metadata = {**(current.metadata or {}), "stream_abandoned": True}
                self.rec.end(current.span_id)
            else:
                self.rec.end(current.span_id, error=error or RuntimeError("stream failed"))
            current = self.rec.get(parent_id) if parent_id else None

    def _model_end(self, event: Any) -> None:
        span = self.model_span(event.span_id)
        if span is None:
            return
        response = event.response
        if response is not None:
            span.usage = _usage.response_usage(response)
            span.model = _usage.response_model(response) or span.model
            span.finish_reason = _usage.response_finish_reason(response) or span.finish_reason
        if span.usage is None:
            span.usage_note = "provider returned no token usage"
        # A stream ends here: close the pending spans from the innermost one outwards.
        current = self.rec.get(event.span_id) if event.span_id else None
        while current is not None and current.extra and current.extra.get("stream_pending"):
            parent_id = current.parent_id
            self.rec.end(current.span_id, response if current is span else None)
            current = self.rec.get(parent_id) if parent_id else None


def instrument(handler: ChainWatchHandler) -> None:
    """Register span and event handlers for `handler` on LlamaIndex's root dispatcher, once."""
    try:
        from llama_index.core.instrumentation import get_dispatcher
        from llama_index.core.instrumentation.event_handlers import BaseEventHandler
        from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
    except ImportError:
        raise ImportError(
            "LlamaIndex support needs llama-index-core: pip install 'chainwatch[llama-index]'"
        ) from None
    from pydantic import PrivateAttr

    with _lock:
        if id(handler) in _registered:
            return
        bridge = _Bridge(handler)

        class ChainWatchSpanHandler(BaseSpanHandler[Any]):
            _bridge: Any = PrivateAttr()

            @classmethod
            def class_name(cls) -> str:
                return "ChainWatchSpanHandler"

            def span_enter(self, id_: str, bound_args: Any, instance: Any = None,
                           parent_id: str | None = None, tags: Any = None, **kw: Any) -> None:
                try:
                    self._bridge.enter(id_, bound_args, instance, parent_id)
                except Exception as exc:
                    internal_error("llama_index.span_enter", exc)

            def span_exit(self, id_: str, bound_args: Any, instance: Any = None,
                          result: Any = None, **kw: Any) -> None:
                try:
                    self._bridge.exit(id_, result)
                except Exception as exc:
                    internal_error("llama_index.span_exit", exc)

            def span_drop(self, id_: str, bound_args: Any, instance: Any = None,
                          err: BaseException | None = None, **kw: Any) -> None:
                try:
                    self._bridge.drop(id_, err)
                except Exception as exc:
                    internal_error("llama_index.span_drop", exc)

            def new_span(self, *args: Any, **kwargs: Any) -> None:
                return None

            def prepare_to_exit_span(self, *args: Any, **kwargs: Any) -> None:
                return None

            def prepare_to_drop_span(self, *args: Any, **kwargs: Any) -> None:
                return None

        class ChainWatchEventHandler(BaseEventHandler):
            _bridge: Any = PrivateAttr()

            @classmethod
            def class_name(cls) -> str:
                return "ChainWatchEventHandler"

            def handle(self, event: Any, **kwargs: Any) -> None:
                try:
                    self._bridge.event(event)
                except Exception as exc:
                    internal_error("llama_index.event", exc)

        span_handler = ChainWatchSpanHandler()
        span_handler._bridge = bridge
        event_handler = ChainWatchEventHandler()
        event_handler._bridge = bridge
        root = get_dispatcher()
        root.add_span_handler(span_handler)
        root.add_event_handler(event_handler)
        _registered[id(handler)] = (span_handler, event_handler)


def uninstrument(handler: ChainWatchHandler) -> bool:
    """Remove `handler`'s span and event handlers from the root dispatcher."""
    with _lock:
        pair = _registered.pop(id(handler), None)
        if pair is None:
            return False
        from llama_index.core.instrumentation import get_dispatcher

        root = get_dispatcher()
        span_handler, event_handler = pair
        root.span_handlers = [h for h in root.span_handlers if h is not span_handler]
        root.event_handlers = [h for h in root.event_handlers if h is not event_handler]
        return True
