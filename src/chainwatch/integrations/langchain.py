"""LangChain callbacks as spans.

LangChain calls these methods on the thread (or event loop) that runs the user's runnable, so
each body does dict work only and is guarded: a failure inside chainwatch is logged and
counted, never raised into LangChain. Nothing here imports LangChain; its objects are read by
shape, which keeps `import chainwatch` free of frameworks.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from .. import usage as _usage
from .._errors import internal_error
from ..recorder import Recorder
from ..spans import SpanRecord
from . import llama_index as _li

FRAMEWORK = "langchain"
_CHAIN_RUN_TYPES = {"prompt": "prompt", "parser": "parser"}
_CONTROL_FLOW = frozenset({"GraphBubbleUp"})


def _name(serialized: Any, kwargs: dict[str, Any], default: str) -> str:
    name = kwargs.get("name")
    if name:
        return str(name)
    if serialized:
        name = serialized.get("name")
        if name:
            return str(name)
        ids = serialized.get("id")
        if ids:
            return str(ids[-1])
    return default


def is_control_flow(error: BaseException) -> bool:
    """LangGraph interrupts and bubbling commands are control flow, not failures."""
    return any(cls.__name__ in _CONTROL_FLOW for cls in type(error).__mro__)


class LangChainCallbacks:
    """The LangChain half of `ChainWatchHandler` (duck-typed `BaseCallbackHandler`)."""

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
    _streaming: tuple[UUID, SpanRecord] | None = None
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
            name = _name(serialized, kwargs, "chain")
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

    # -- models ---------------------------------------------------------------------------------

    def _lc_model_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        run_id: UUID,
        parent_run_id: UUID | None,
        tags: list[str] | None,
        metadata: dict[str, Any] | None,
        kwargs: dict[str, Any],
    ) -> None:
        params = kwargs.get("invocation_params")
        model, provider = _usage.requested_model(metadata, params)
        if params:
            metadata = {**metadata, "invocation_params": params} if metadata else {
                "invocation_params": params
            }
        name = _name(serialized, kwargs, "llm")
        rec = self._lc_start(run_id, parent_run_id, name, "llm", inputs, tags, metadata)
        rec.model = model
        rec.provider = provider

    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[Any]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """A chat model call started."""
        try:
            inputs = messages[0] if len(messages) == 1 else messages
            self._lc_model_start(
                serialized, inputs, run_id, parent_run_id, tags, metadata, kwargs
            )
        except Exception as exc:
            internal_error("langchain.on_chat_model_start", exc)

    def on_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """A completion model call started."""
        try:
            inputs = prompts[0] if len(prompts) == 1 else prompts
            self._lc_model_start(
                serialized, inputs, run_id, parent_run_id, tags, metadata, kwargs
            )
        except Exception as exc:
            internal_error("langchain.on_llm_start", exc)

    def on_llm_new_token(
        self, token: Any, *, chunk: Any = None, run_id: UUID, **kwargs: Any
    ) -> None:
        """A streamed chunk arrived: time to first token, and the stream's usage."""
        try:
            # A stream's chunks arrive one after another with the same run id object: skip
            # turning it into a string and looking it up again while that span is open.
            last = self._streaming
            rec: SpanRecord | None
            if last is not None and last[0] is run_id and last[1].end_ns is None:
                rec = last[1]
            else:
                rec = self._rec.get(str(run_id))
                if rec is None:
                    return
                self._streaming = (run_id, rec)
            if rec.ttft_ns is None and (
                token or getattr(getattr(chunk, "message", None), "tool_call_chunks", None)
            ):
                now = self._rec.clock()
                rec.ttft_ns = now - rec.start_ns
                rec.add_event("first_token", now)
            # Most chunks carry no usage: test for it before building anything.
            meta = getattr(getattr(chunk, "message", None), "usage_metadata", None)
            if meta:
                stream_usage = _usage.from_usage_metadata(meta, "stream_chunk")
                if stream_usage is not None:
                    # The last usage chunk wins: providers that repeat running totals must
                    # not be summed.
                    rec.extra = rec.extra or {}
                    rec.extra["stream_usage"] = stream_usage
        except Exception as exc:
            internal_error("langchain.on_llm_new_token", exc)

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """A model call finished: usage, model, finish reason, outputs."""
        outputs: Any = None
        try:
            rec = self._rec.get(str(run_id))
            if rec is None:
                return
            outputs = [
                getattr(gen, "message", None) or getattr(gen, "text", None)
                for group in (getattr(response, "generations", None) or ())
                for gen in group
            ]
            outputs = outputs[0] if len(outputs) == 1 else outputs
            # A streamed call's message is LangChain's merge of its chunks, whose usage is
            # additive by LangChain's contract (a start chunk with the input tokens and a
            # last one with the output tokens, say); the last chunk that carried usage is the
            # fallback for a result without it.
            stream_usage = rec.extra.get("stream_usage") if rec.extra else None
            rec.usage = _usage.llm_result_usage(response) or stream_usage
            if rec.usage is None:
                rec.usage_note = "provider returned no token usage"
            rec.model = _usage.llm_result_model(response) or rec.model
            rec.finish_reason = _usage.llm_result_finish_reason(response)
        except Exception as exc:
            internal_error("langchain.on_llm_end", exc)
        try:
            # Ended whatever went wrong above: its trace waits for every span to end.
            self._rec.end(str(run_id), outputs)
        except Exception as exc:
            internal_error("langchain.on_llm_end", exc)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """A model call raised."""
        try:
            rec = self._rec.get(str(run_id))
            if rec is not None:
                rec.usage_note = "call failed before reporting usage"
            self._rec.end(str(run_id), error=error)
        except Exception as exc:
            internal_error("langchain.on_llm_error", exc)

    def on_stream_event(self, event: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """Protocol events of `stream_events(version="v3")`; tokens come via on_llm_new_token."""

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
            name = _name(serialized, kwargs, "retriever")
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
            name = _name(serialized, kwargs, "tool")
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
