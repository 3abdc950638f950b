"""`ChainWatchHandler`: the one object a user adds to their framework's callbacks."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from . import _errors, hook_runner, pricing
from .hook_process import enabled_by_env
from .integrations.langchain import LangChainCallbacks
from .integrations.llama_index import LlamaIndexCallbacks
from .recorder import Recorder
from .report import note_trace
from .store import database, writer
from .store.rows import RowSettings


class HandlerConfig(BaseModel):
    """Validated handler settings; bad values fail when the handler is built."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    tags: list[str] = Field(default_factory=list)
    user_id: str | None = None
    session_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    max_chars: int = Field(default=32_000, ge=100)
    capture_inputs: bool = True
    capture_outputs: bool = True
    queue_size: int = Field(default=100_000, ge=1)
    max_open_s: float = Field(default=6 * 3600, gt=0)


class ChainWatchHandler(LangChainCallbacks, LlamaIndexCallbacks):
    """Records every run of the framework it is attached to as spans in a SQLite file.

    The same object works as a LangChain callback handler and as a LlamaIndex
    `CallbackManager` handler; `chainwatch.instrument_llama_index(handler)` adds LlamaIndex's
    instrumentation (dispatcher) path.

    Args:
        db: database file; default ``$CHAINWATCH_DB`` or ``./chainwatch.db``.
        tags: tags added to every span.
        user_id: default user for every trace (a run's ``user_id`` metadata wins).
        session_id: default session (a run's ``session_id`` / ``thread_id`` metadata wins).
        metadata: metadata merged into every span's metadata.
        max_chars: longest stored text of one value (inputs, outputs, errors); longer is cut.
        capture_inputs: store inputs (off for sensitive prompts).
        capture_outputs: store outputs.
        prices: USD prices per million tokens for models genai-prices does not know,
            e.g. ``{"my-llm": {"input_per_mtok": 0.5, "output_per_mtok": 1.5}}``.
        hooks: post-run hooks, each called as ``hook(trace, store)`` after a trace's spans
            are committed, in order: on the hook thread, or in the hook process for hooks
            marked ``portable``. Default: quality analysis and a drift check every 100
            traces once a baseline is set; ``[]`` runs none.
        hook_process: run the built-in hooks (quality, drift) in a helper process, so that
            their analysis does not compete with the app for the interpreter lock; other
            hooks run on the hook thread either way. Default on, unless
            ``CHAINWATCH_HOOK_PROCESS=0``.
        alerts: alert rules (`chainwatch.alerts.Rule`) evaluated after each trace.
        notifiers: where alert notifications go (Slack, PagerDuty, webhook, logging,
            any callable).
        queue_size: finished spans waiting for the writer; beyond it spans are dropped
            and counted, so the app never waits.
        max_open_s: spans open longer than this are closed as never ended.
        clock: nanoseconds since the epoch (tests inject a fixed clock).

    Raises:
        ValueError: on invalid settings, or when the database folder does not exist.

    """

    def __init__(
        self,
        db: str | os.PathLike[str] | None = None,
        *,
        tags: list[str] | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        max_chars: int = 32_000,
        capture_inputs: bool = True,
        capture_outputs: bool = True,
        prices: Mapping[str, Any] | None = None,
        hooks: Sequence[Callable[..., Any]] | None = None,
        hook_process: bool | None = None,
        alerts: Sequence[Any] | None = None,
        notifiers: Sequence[Any] | None = None,
        queue_size: int = 100_000,
        max_open_s: float = 6 * 3600,
        clock: Callable[[], int] | None = None,
    ) -> None:
        config = HandlerConfig(
            tags=[tags] if isinstance(tags, str) else list(tags or []),
            user_id=user_id,
            session_id=session_id,
            metadata=dict(metadata or {}),
            max_chars=max_chars,
            capture_inputs=capture_inputs,
            capture_outputs=capture_outputs,
            queue_size=queue_size,
            max_open_s=max_open_s,
        )
        self.config = config
        prices_table = pricing.validate_prices(prices)
        self.db_path = database.resolve_path(db)
        try:
            database.connect(self.db_path).conn.close()
        except FileNotFoundError as exc:
            raise ValueError(str(exc)) from exc
        settings = RowSettings(
            max_chars=config.max_chars,
            capture_inputs=config.capture_inputs,
            capture_outputs=config.capture_outputs,
            prices=prices_table,
        )
        self._writer = writer.writer_for(self.db_path, queue_size=config.queue_size)
        kwargs: dict[str, Any] = {"max_open_s": config.max_open_s}
        if clock is not None:
            kwargs["clock"] = clock
        if hooks is None:
            from .baselines import DriftHook
            from .quality import QualityHook

            hooks = [QualityHook(), DriftHook()]
        if alerts or notifiers:
            from .alerts import AlertHook

            hooks = [*hooks, AlertHook(alerts or [], notifiers or [])]
        for hook in hooks:
            if not callable(hook):
                raise ValueError(f"hooks must be callables taking (trace, store), got {hook!r}")
        self.hooks: tuple[Callable[..., Any], ...] = tuple(hooks)
        if hook_process is None:
            hook_process = enabled_by_env()
        self.hook_process = hook_process
        listener = None
        if self.hooks:
            listener = hook_runner.trace_listener(self.hooks, self.db_path, hook_process)
        writer_ = self._writer

        path = self.db_path

        def trace_done(trace_id: str) -> None:
            note_trace(path, trace_id)
            writer_.trace_done(trace_id, listener)

        self._rec = Recorder(self._writer.put, trace_done, settings, **kwargs)
        self._tags = config.tags
        self._metadata = config.metadata or None
        self._user_id = config.user_id
        self._session_id = config.session_id

    @property
    def recorder(self) -> Recorder:
        """The framework-neutral recorder behind this handler (manual spans use it)."""
        return self._rec

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Make everything recorded so far visible in the database, hook results included.

        Returns:
            False when `timeout` passed first.
        """
        try:
            self._rec.close_dangling()
        except Exception as exc:
            _errors.internal_error("handler.flush", exc)
        ok = self._writer.flush(timeout)
        ok = hook_runner.runner.flush(timeout) and ok
        # Hooks may record spans of their own (a judge's calls): make those visible too.
        return self._writer.flush(timeout) and ok

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Flush within `timeout` and stop the writer thread (it restarts on the next span)."""
        return self._writer.shutdown(timeout)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: spans started, finished, dropped and written; internal errors."""
        return {
            "spans_started": self._rec.spans_started,
            "spans_finished": self._rec.spans_finished,
            "spans_dropped": self._rec.spans_dropped,
            "open_spans": self._rec.open_spans,
            "open_traces": self._rec.open_traces,
            "writer_written": self._writer.written,
            "writer_dropped": self._writer.dropped,
            "writer_errors": self._writer.write_errors,
            "internal_errors": _errors.total_errors(),
        }

    def __repr__(self) -> str:
        return f"ChainWatchHandler(db={str(self.db_path)!r})"
