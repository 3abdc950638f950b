"""LangChain model callbacks (chat models and completion models) as `llm` spans.

The model half of `LangChainCallbacks`: start, streamed tokens (time to first token, usage of
a stream), end (usage, model, finish reason) and errors. The same rules hold as in
`integrations.langchain`: dict work only, every body guarded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

from .. import usage as _usage
from .._errors import internal_error
from ..recorder import Recorder
from ..spans import SpanRecord


def run_name(serialized: Any, kwargs: dict[str, Any], default: str) -> str:
    """A run's name: LangChain's `name` argument, else the serialized name or class."""
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


class LangChainModelCallbacks:
    """Model runs; mixed into `LangChainCallbacks`, whose `_lc_start` opens their spans."""

    _rec: Recorder
    _streaming: tuple[UUID, SpanRecord] | None = None

    if TYPE_CHECKING:

        def _lc_start(
            self,
            run_id: UUID,
            parent_run_id: UUID | None,
            name: str,
            kind: str,
            inputs: Any,
            tags: list[str] | None,
            metadata: dict[str, Any] | None,
        ) -> SpanRecord: ...

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
        name = run_name(serialized, kwargs, "llm")
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
                    # Kept for a result without usage of its own (see on_llm_end); the last
                    # chunk that carried usage wins.
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
