"""Post-run hooks: analysis that runs after a trace is complete and committed.

The writer tells the runner a trace is committed; the runner's own thread loads the trace and
calls each hook in order, handing runs of portable hooks to the hook process (`hook_process`)
and waiting for them. A hook that raises is recorded in `hook_runs` and the next one runs; a
slow hook delays only the hooks behind it, never the app or the writer.
"""

from __future__ import annotations

import atexit
import collections
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from ._errors import internal_error, logger
from .hook_process import HookNotPortable, HookProcess, HookProcessError, is_portable
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
        if self._buffer:
            pending, self._buffer = self._buffer, {}
            self._commit(pending)
        return self.db.conn

    def trace(self, trace_id: str) -> Trace:
        """Load a stored trace."""
        self.conn  # noqa: B018 - what earlier hooks wrote lands first
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

    Each hook sees every trace of the batch before the next hook starts, and what it stores
    (with the `hook_runs` rows so far) is committed in one transaction before the next hook
    runs, so a later hook reads what an earlier one stored. Given `process`, consecutive
    portable hooks run there while this thread waits; if it fails they run here instead.
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


_BATCH = 200
_IDLE_S = 0.05
_PROCESS_IDLE_S = 0.01
_OPEN_STORES = 4


class _Job:
    __slots__ = ("hooks", "path", "process", "trace_id")

    def __init__(self, hooks: Sequence[Hook], trace_id: str, path: Path, process: bool) -> None:
        self.hooks = hooks
        self.trace_id = trace_id
        self.path = path
        self.process = process


class HookRunner:
    """One thread per process that runs hooks for every handler, in trace order."""

    def __init__(self, max_pending: int = 100_000) -> None:
        self.max_pending = max_pending
        self.dropped = 0
        self.runs = 0
        self._reset()

    def _reset(self) -> None:
        self._queue: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._flush_requested = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._stores: dict[Path, Store] = {}
        process = getattr(self, "process", None)
        if process is None:
            self.process = HookProcess()
        else:
            process.forget_after_fork()  # the parent's worker stays the parent's

    def submit(
        self, hooks: Sequence[Hook], trace_id: str, path: Path, process: bool = True
    ) -> None:
        """Queue a committed trace for its hooks (called on the writer thread).

        With `process`, portable hooks run in the hook process (see `hook_process`).
        """
        if len(self._queue) >= self.max_pending:
            self.dropped += 1
            return
        self._queue.append(_Job(hooks, trace_id, path, process))
        self._ensure_thread()
        # Traces are taken in batches: each batch costs a read and a commit whatever its size.
        # The first trace wakes an idle thread, which then gives the batch _IDLE_S to fill; a
        # full batch (or a flush) cuts that short.
        if (len(self._queue) == 1 or len(self._queue) >= _BATCH) and not self._wake.is_set():
            self._wake.set()

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait until every queued trace's hooks have run."""
        if self._thread is None and not self._queue:
            return True
        done = threading.Event()
        self._queue.append(done)
        self._ensure_thread()
        self._flush_requested.set()
        self._wake.set()
        return done.wait(timeout)

    def _ensure_thread(self) -> None:
        if self._pid != os.getpid():
            self._reset()
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="chainwatch-hooks", daemon=True
                )
                self._thread.start()

    def _window(self) -> float:
        """How long a batch may fill.

        A batch for the hook process costs this process one message, so it goes sooner, and
        less is left for a `flush()` to wait for.
        """
        first = self._queue[0] if self._queue else None
        if isinstance(first, _Job) and first.process and not self.process.failed:
            return _PROCESS_IDLE_S
        return _IDLE_S

    def _store(self, path: Path) -> Store:
        store = self._stores.pop(path, None)
        if store is None:
            store = Store(path)
            while len(self._stores) >= _OPEN_STORES:
                # The least recently used database's connection is closed, not leaked.
                self._stores.pop(next(iter(self._stores))).close()
        self._stores[path] = store
        return store

    def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.wait()  # idle: nothing to do until a trace or a flush arrives
                self._wake.clear()
            if len(self._queue) < _BATCH and not self._flush_requested.is_set():
                self._wake.wait(self._window())
                self._wake.clear()
            while self._queue:
                batch: list[_Job] = []
                marker = None
                while self._queue and len(batch) < _BATCH:
                    item = self._queue.popleft()
                    if isinstance(item, threading.Event):
                        marker = item
                        self._flush_requested.clear()
                        break
                    batch.append(item)
                # Traces of one handler (same hooks, same file) run together.
                groups: dict[tuple[int, Path, bool], list[_Job]] = {}
                for job in batch:
                    groups.setdefault((id(job.hooks), job.path, job.process), []).append(job)
                for jobs in groups.values():
                    self._run_jobs(jobs)
                self._catch_up(wait=marker is not None)
                if marker is not None:
                    marker.set()

    def _run_jobs(self, jobs: list[_Job]) -> None:
        hooks, path = jobs[0].hooks, jobs[0].path
        trace_ids = [j.trace_id for j in jobs]
        try:
            use_process = jobs[0].process and not self.process.failed
            if use_process and all(map(is_portable, hooks)):
                # Only the hook process's hooks: hand it the batch and go on; its answer is
                # read later (at the latest by a flush).
                try:
                    self.process.send(hooks, path, trace_ids)
                    self.runs += len(jobs)
                    return
                except HookNotPortable:
                    pass
                except HookProcessError:
                    return  # the batch waits in take_redo(), run by _catch_up
            process = self.process if use_process else None
            run_batch(hooks, trace_ids, self._store(path), process)
            self.runs += len(jobs)
        except Exception as exc:
            self._internal(exc)

    def _catch_up(self, wait: bool) -> None:
        """Read the hook process's answers; run here what it failed to."""
        try:
            self.process.collect(wait)
            for batch in self.process.take_redo():
                run_batch(batch.hooks, batch.trace_ids, self._store(batch.path))
        except Exception as exc:
            self._internal(exc)

    @staticmethod
    def _internal(exc: BaseException) -> None:
        try:
            internal_error("hooks.run", exc)
        except BaseException:
            pass  # on this thread re-raising would only stop the hooks


runner = HookRunner()
writer_module._after_flush.append(runner.flush)


def _at_exit(budget_s: float = 5.0) -> None:
    # Registered after the writers' own exit handler, so this runs first: the last traces'
    # spans and their hooks land, then the hook process is told to end.
    try:
        writer_module.flush_all(budget_s)
    except Exception:
        pass
    runner.process.close()


atexit.register(_at_exit)


def _after_fork_in_child() -> None:
    runner._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


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
        for start in range(0, len(trace_ids), _BATCH):
            run_batch(hooks, trace_ids[start: start + _BATCH], store)
        return len(trace_ids)
    finally:
        store.close()


def trace_listener(
    hooks: Sequence[Hook], path: Path, process: bool = True
) -> Callable[[str], None]:
    """The callback the writer calls once a trace's spans are committed."""

    def committed(trace_id: str) -> None:
        runner.submit(hooks, trace_id, path, process)

    return committed
