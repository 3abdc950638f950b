"""LangChain callbacks as spans.

LangChain calls these methods on the thread (or event loop) that runs the user's runnable, so
each body does dict work only and is guarded: a failure inside chainwatch is logged and
counted, never raised into LangChain. Nothing here imports LangChain; its objects are read by
shape, which keeps `import chainwatch` free of frameworks.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from .._errors import internal_error
from ..recorder import Recorder
from ..spans import SpanRecord
from . import llama_index as _li
from .langchain_models import LangChainModelCallbacks, run_name

FRAMEWORK = "langchain"
_CHAIN_RUN_TYPES = {"prompt": "prompt", "parser": "parser"}
_CONTROL_FLOW = frozenset({"GraphBubbleUp"})


def is_control_flow(error: BaseException) -> bool:
    """LangGraph interrupts and bubbling commands are control flow, not failures."""
    return any(cls.__name__ in _CONTROL_FLOW for cls in type(error).__mro__)


class LangChainCallbacks(LangChainModelCallbacks):
    """The LangChain half of `ChainWatchHandler` (duck-typed `BaseCallbackHandler`).

    Chains, retrievers, tools, agents and events are here; model calls in
    `LangChainModelCallbacks`.
    """

    # LangChain reads these off every handler.
    raise_error = False
    # Thread-safe and cheap, so async runs call it inline instead of in an executor thread.
    run_inline = True
    ignore_llm = False
    ignore_retry = False
    ignore_chain = False
    ignore_agent = False
    ignore_retriever = False
    ignore_chat_model = False
    ignore_custom_event = False

    _rec: Recorder
    _tags: list[str]
    _metadata: dict[str, Any] | None
    _user_id: str | None
    _session_id: str | None

    # -- shared ---------------------------------------------------------------------------------

    def _lc_start(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        name: str,
        kind: str,
        inputs: Any,
        tags: list[str] | None,
        metadata: dict[str, Any] | None,
    ) -> SpanRecord:
        user_id = self._user_id
        session_id = self._session_id
        if metadata:
            user_id = metadata.get("user_id") or user_id
            session_id = (
                metadata.get("session_id")
                or metadata.get("thread_id")
                or metadata.get("conversation_id")
                or session_id
            )
            if self._metadata:
                metadata = {**self._metadata, **metadata}
        else:
            metadata = self._metadata
        handler_tags = self._tags
        if tags:
            if parent_run_id is not None:
                for tag in tags:
                    if tag.startswith("retry:attempt:"):
                        self._lc_retry(str(parent_run_id), tag)
            tags = handler_tags + tags if handler_tags else tags
        else:
            tags = handler_tags
        if parent_run_id is not None:
            parent: str | None = str(parent_run_id)
        else:
            # A LangChain root inside a LlamaIndex span (a query engine's tool, say) nests there.
            parent = _li.llama_index_parent(self._rec)
        return self._rec.start(
            str(run_id),
            parent,
            name,
            kind,
            FRAMEWORK,
            inputs,
            tags=tags,
            metadata=metadata,
            user_id=user_id,
            session_id=session_id,
        )

    def _lc_late_inputs(self, run_id: UUID, inputs: Any) -> None:
        """A streamed run starts with ``{"input": ""}`` and is told its real input at its end."""
        rec = self._rec.get(str(run_id))
        if rec is not None:
            rec.inputs = inputs

    def _lc_retry(self, parent_id: str, tag: str) -> None:
        """`Runnable.with_retry` tags attempts 2, 3, ...: a `retry` event on the retrying run."""
        parent = self._rec.get(parent_id)
        if parent is None:
            return
        try:
            attempt = int(tag.rsplit(":", 1)[1]) - 1
        except ValueError:
            return
        error = parent.extra.get("last_child_error") if parent.extra else None
        self._rec.event(parent_id, "retry", {"attempt": attempt, "error": error})

    def _lc_error(self, error: BaseException, run_id: UUID) -> None:
        if is_control_flow(error):
            span_id = str(run_id)
            self._rec.event(span_id, "interrupt", {"type": type(error).__name__, "value": error})
            self._rec.end(span_id)
        else:
            rec = self._rec.end(str(run_id), error=error)
            parent = self._rec.get(rec.parent_id) if rec and rec.parent_id else None
            if parent is not None:
                parent.extra = parent.extra or {}
                parent.extra["last_child_error"] = error

    # -- chains, prompts, parsers ---------------------------------------------------------------

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """A chain, prompt or parser run started."""
        try:
            kind = _CHAIN_RUN_TYPES.get(kwargs.get("run_type") or "", "chain")
            name = run_name(serialized, kwargs, "chain")
            self._lc_start(run_id, parent_run_id, name, kind, inputs, tags, metadata)
        except Exception as exc:
            internal_error("langchain.on_chain_start", exc)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """A chain run finished."""
        try:
            if kwargs.get("inputs") is not None:
                self._lc_late_inputs(run_id, kwargs["inputs"])
            self._rec.end(str(run_id), outputs)
        except Exception as exc:
            internal_error("langchain.on_chain_end", exc)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """A chain run raised (or was interrupted, for LangGraph control flow)."""
        try:
            if kwargs.get("inputs") is not None:
                self._lc_late_inputs(run_id, kwargs["inputs"])
            self._lc_error(error, run_id)
        except Exception as exc:
            internal_error("langchain.on_chain_error", exc)

    # -- retrievers and tools -------------------------------------------------------------------

    def on_retriever_start(
        self,
        serialized: dict[str, Any] | None,
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """A retriever run started."""
        try:
            name = run_name(serialized, kwargs, "retriever")
            inputs = {"query": query}
            self._lc_start(run_id, parent_run_id, name, "retriever", inputs, tags, metadata)
        except Exception as exc:
            internal_error("langchain.on_retriever_start", exc)

    def on_retriever_end(self, documents: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """A retriever returned documents."""
        try:
            self._rec.end(str(run_id), documents)
        except Exception as exc:
            internal_error("langchain.on_retriever_end", exc)

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """A retriever raised."""
        try:
            self._rec.end(str(run_id), error=error)
        except Exception as exc:
            internal_error("langchain.on_retriever_error", exc)

    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """A tool run started."""
        try:
            name = run_name(serialized, kwargs, "tool")
            value = inputs if inputs is not None else input_str
            self._lc_start(run_id, parent_run_id, name, "tool", value, tags, metadata)
        except Exception as exc:
            internal_error("langchain.on_tool_start", exc)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """A tool returned."""
        try:
            self._rec.end(str(run_id), output)
        except Exception as exc:
            internal_error("langchain.on_tool_end", exc)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """A tool raised (or interrupted a graph)."""
        try:
            self._lc_error(error, run_id)
        except Exception as exc:
            internal_error("langchain.on_tool_error", exc)

    # -- events inside runs ---------------------------------------------------------------------

    def on_agent_action(self, action: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """An agent chose a tool: an `agent_action` event on the agent's run."""
        try:
            attributes = {
                "tool": getattr(action, "tool", None),
                "tool_input": getattr(action, "tool_input", None),
                "log": getattr(action, "log", None),
            }
            self._rec.event(str(run_id), "agent_action", attributes)
        except Exception as exc:
            internal_error("langchain.on_agent_action", exc)

    def on_agent_finish(self, finish: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """An agent finished: an `agent_finish` event."""
        try:
            attributes = {
                "return_values": getattr(finish, "return_values", None),
                "log": getattr(finish, "log", None),
            }
            self._rec.event(str(run_id), "agent_finish", attributes)
        except Exception as exc:
            internal_error("langchain.on_agent_finish", exc)

    def on_retry(self, retry_state: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """A retry of the run: a `retry` event with the attempt and the error."""
        try:
            outcome = getattr(retry_state, "outcome", None)
            failed = outcome is not None and getattr(outcome, "failed", False)
            attributes = {
                "attempt": getattr(retry_state, "attempt_number", None),
                "error": outcome.exception() if failed and outcome is not None else None,
            }
            self._rec.event(str(run_id), "retry", attributes)
        except Exception as exc:
            internal_error("langchain.on_retry", exc)

    def on_custom_event(
        self, name: str, data: Any, *, run_id: UUID, **kwargs: Any
    ) -> None:
        """`dispatch_custom_event` from user code: an event with the user's name and data."""
        try:
            self._rec.event(str(run_id), str(name), data)
        except Exception as exc:
            internal_error("langchain.on_custom_event", exc)

    def on_text(self, text: str, *, run_id: UUID, **kwargs: Any) -> None:
        """Text a chain printed: a `text` event."""
        try:
            self._rec.event(str(run_id), "text", text)
        except Exception as exc:
            internal_error("langchain.on_text", exc)
