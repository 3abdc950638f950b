"""The hook thread: takes committed traces from the writer and runs their hooks in batches.

One thread per process serves every handler, in trace order. Batches whose hooks are all
portable go to the hook process (`hook_process`) without waiting; others run here through
`hooks.run_batch`. `flush()` waits for both. A slow hook delays only the hooks behind it,
never the app or the writer.
"""

from __future__ import annotations

import atexit
import collections
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._errors import internal_error
from .hook_process import HookNotPortable, HookProcess, HookProcessError, is_portable
from .hooks import BATCH, Hook, Store, run_batch
from .store import writer as writer_module

_IDLE_S = 0.05
_PROCESS_IDLE_S = 0.01
_OPEN_STORES = 4
_IDLE_CHECK_S = 1.0


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
        self.process = HookProcess()
        self._reset()

    def _reset(self) -> None:
        self._queue: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._flush_requested = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._stores: dict[Path, Store] = {}

    def _after_fork(self) -> None:
        """In a forked child: a fresh queue and thread; the parent's worker stays the parent's."""
        self._reset()
        self.process.forget_after_fork()

    def submit(
        self, hooks: Sequence[Hook], trace_id: str, path: Path, process: bool = True
    ) -> None:
        """Queue a committed trace for its hooks (called on the writer thread).

        With `process`, portable hooks run in the hook process (see `hook_process`).
        """
        queue = self._queue
        if len(queue) >= self.max_pending:
            self.dropped += 1
            return
        # Traces are taken in batches: each batch costs a read and a commit whatever its size.
        # The first trace wakes an idle thread, which then gives the batch _IDLE_S to fill; a
        # full batch (or a flush) cuts that short. "First" is judged before appending: two
        # writer threads (two files) appending at once could each see a queue of two.
        first = not queue
        queue.append(_Job(hooks, trace_id, path, process))
        self._ensure_thread()
        if (first or len(queue) >= BATCH) and not self._wake.is_set():
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
            self._after_fork()
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
                # Idle until a trace or a flush arrives; the timeout only guards against a
                # wake-up that never comes.
                self._wake.wait(_IDLE_CHECK_S)
                self._wake.clear()
                if not self._queue:
                    continue
            if len(self._queue) < BATCH and not self._flush_requested.is_set():
                self._wake.wait(self._window())
                self._wake.clear()
            while self._queue:
                batch: list[_Job] = []
                marker = None
                while self._queue and len(batch) < BATCH:
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
        except Exception as exc:
            self._internal(exc)
        for batch in self.process.take_redo():
            try:
                run_batch(batch.hooks, batch.trace_ids, self._store(batch.path))
            except Exception as exc:  # one batch's failure does not cost the others theirs
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


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=runner._after_fork)


def trace_listener(
    hooks: Sequence[Hook], path: Path, process: bool = True
) -> Callable[[str], None]:
    """The callback the writer calls once a trace's spans are committed."""

    def committed(trace_id: str) -> None:
        runner.submit(hooks, trace_id, path, process)

    return committed
