"""Post-run hooks: the protocol, the store a hook writes through, and running hooks on traces.

`run_batch` loads committed traces and calls each hook in order; a run of portable hooks goes
to the hook process (`hook_process`) instead. A hook that raises is recorded in `hook_runs`
and the next one runs. The thread that feeds it lives in `hook_runner`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from ._errors import internal_error, logger
from .hook_process import HookProcess, HookProcessError, is_portable
from .store import database, queries
from .store import writer as writer_module
from .store.rows import describe_exception, iso_time
from .views import Trace


class Store:
    """What a hook gets besides the trace: this thread's connection to the database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = database.connect(path)
        self._buffer: dict[str, list[Sequence[Any]]] | None = None

    @property
    def conn(self) -> Any:
        """The `sqlite3.Connection` (explicit transactions: use `transaction()` to write).

        Writes that earlier hooks left waiting are committed first, so that whoever reads
        through this connection sees them.
        """
        self._commit_waiting()
        return self.db.conn

    def trace(self, trace_id: str) -> Trace:
        """Load a stored trace."""
        self._commit_waiting()
        spans = queries.span_rows(self.db, trace_id)
        return Trace(spans, queries.event_rows(self.db, spans[0].trace_id))

    def traces(self, trace_ids: Sequence[str]) -> dict[str, Trace]:
        """Load several stored traces with two queries."""
        spans = queries.spans_of_traces(self.db, trace_ids)
        events = queries.events_of_traces(self.db, list(spans))
        return {t: Trace(s, events.get(t, [])) for t, s in spans.items()}

    def write(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run `sql` for each row in one `BEGIN IMMEDIATE` transaction.

        While the hook thread runs a batch of traces, writes are collected and committed
        together once every hook has seen the whole batch, or earlier, when a hook reads
        through `conn`.
        """
        if not rows:
            return
        if self._buffer is not None:
            self._buffer.setdefault(sql, []).extend(rows)
            return
        self._commit({sql: list(rows)})

    def buffered(self) -> None:
        """Collect writes until `commit_buffer()`."""
        self._buffer = {}

    def commit_buffer(self) -> None:
        """Write what was collected, in one transaction."""
        pending, self._buffer = self._buffer or {}, None
        if pending:
            self._commit(pending)

    def _commit_waiting(self) -> None:
        """Commit collected writes now, and keep collecting."""
        if self._buffer:
            pending, self._buffer = self._buffer, {}
            self._commit(pending)

    def _commit(self, batches: dict[str, list[Sequence[Any]]]) -> None:
        conn = self.db.conn
        database.begin_immediate(conn)
        try:
            for sql, rows in batches.items():
                conn.executemany(sql, rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the connection."""
        self.db.conn.close()


class Hook(Protocol):
    """A post-run hook: called with the finished trace and the store."""

    def __call__(self, trace: Trace, store: Store) -> Any:
        """Analyse `trace`; write results through `store`."""


def hook_name(hook: Any) -> str:
    """The name a hook is recorded under."""
    name = getattr(hook, "name", None)
    if isinstance(name, str) and name:
        return name
    return getattr(hook, "__qualname__", None) or type(hook).__name__


_HOOK_RUN_SQL = (
    "INSERT INTO hook_runs (hook, trace_id, status, started_at, duration_ms, error) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


def run_batch(
    hooks: Sequence[Hook],
    trace_ids: Sequence[str],
    store: Store,
    process: HookProcess | None = None,
) -> dict[str, list[tuple[str, str]]]:
    """Run `hooks` on several stored traces, hook by hook, isolating every run.

    Each hook sees every trace of the batch before the next hook starts. What the hooks store
    and their `hook_runs` rows are committed in one transaction at the end, or earlier when a
    hook reads through `store.conn`, so a later hook reads what an earlier one stored. Given
    `process`, consecutive portable hooks run there while this thread waits; if it fails they
    run here instead.
    """
    results: dict[str, list[tuple[str, str]]] = {}
    loaded: dict[str, Trace] | None = None
    for portable, group in _groups(hooks, process is not None):
        if portable and process is not None and not process.failed:
            try:
                remote = process.run(group, store.path, trace_ids)
            except HookProcessError:
                pass  # logged by the hook process; the group runs here
            else:
                for trace_id, runs in remote.items():
                    results.setdefault(trace_id, []).extend(runs)
                continue
        if loaded is None:
            found = store.traces(trace_ids)
            loaded = {t: found[t] for t in dict.fromkeys(trace_ids) if t in found}
        for trace_id in loaded:
            results.setdefault(trace_id, [])
        _run_here(group, loaded, store, results)
    return results


def _groups(hooks: Sequence[Hook], split: bool) -> list[tuple[bool, list[Hook]]]:
    """Consecutive hooks that run in the same place, in order."""
    groups: list[tuple[bool, list[Hook]]] = []
    for hook in hooks:
        portable = split and is_portable(hook)
        if groups and groups[-1][0] == portable:
            groups[-1][1].append(hook)
        else:
            groups.append((portable, [hook]))
    return groups


def _run_here(
    hooks: Sequence[Hook],
    traces: dict[str, Trace],
    store: Store,
    results: dict[str, list[tuple[str, str]]],
) -> None:
    # One transaction for the batch: every hook's rows and the `hook_runs` rows. A hook that
    # reads through `store.conn` commits what the hooks before it wrote first (see `Store`).
    runs: list[tuple[Any, ...]] = []
    store.buffered()
    try:
        for hook in hooks:
            name = hook_name(hook)
            for trace_id, trace in traces.items():
                started = time.time_ns()
                t0 = time.perf_counter()
                error = None
                try:
                    hook(trace, store)
                except Exception as exc:
                    error = describe_exception(exc)
                    logger.warning("chainwatch hook %s failed on trace %s: %s", name, trace_id,
                                   error)
                duration_ms = (time.perf_counter() - t0) * 1000
                status = "ok" if error is None else "error"
                runs.append((name, trace_id, status, iso_time(started), duration_ms, error))
                results[trace_id].append((name, status))
    finally:
        try:
            store.write(_HOOK_RUN_SQL, runs)
            store.commit_buffer()
        except Exception as exc:
            store._buffer = None
            internal_error("hooks.record", exc)


BATCH = 200  # traces loaded and run together


def analyze(
    *,
    since: Any = None,
    until: Any = None,
    db: str | os.PathLike[str] | None = None,
    hooks: Sequence[Hook] | None = None,
    trace_ids: Sequence[str] | None = None,
) -> int:
    """Run hooks over stored traces, in this thread (for old databases or changed hooks).

    Args:
        since: only traces that started at or after this time (ISO 8601, epoch, "2h", ...).
        until: only traces that started before this time.
        db: the database (default ``$CHAINWATCH_DB`` or ``./chainwatch.db``).
        hooks: the hooks to run (default: quality analysis).
        trace_ids: exactly these traces instead of a time window.

    Returns:
        How many traces the hooks ran on.
    """
    if hooks is None:
        from .quality import QualityHook

        hooks = [QualityHook()]
    path = database.resolve_path(db)
    if not path.exists():
        raise FileNotFoundError(f"no chainwatch database at {path}")
    writer_module.flush_all()
    store = Store(path)
    try:
        if trace_ids is None:
            rows = queries.trace_rows(
                store.db, since=queries.to_iso(since), until=queries.to_iso(until), limit=None
            )
            trace_ids = [row["trace_id"] for row in reversed(rows)]
        for start in range(0, len(trace_ids), BATCH):
            run_batch(hooks, trace_ids[start: start + BATCH], store)
        return len(trace_ids)
    finally:
        store.close()
