"""A helper process that runs portable post-run hooks, so analysis never holds the app's GIL.

Quality analysis costs several hundred microseconds of pure Python per trace. On the hook
thread that time is taken from the application whenever both want the interpreter lock; in
a process of its own it runs on another core. The hook thread still decides what runs when:
it sends the worker batches of committed trace ids and reads the answers as they come (a
flush waits for all of them; hooks that must run after portable ones wait for theirs), so
hook order, `hook_runs` and `flush()` mean what they mean for in-thread hooks.

Only hooks that say so (`portable = True`, and they must pickle) run here: the built-in
quality and drift hooks. Any other hook (a user's callable, alerts with their notifiers)
runs on the hook thread. When the worker cannot start or dies, the batches it owed run on
the hook thread instead; nothing is lost.

The protocol is pickled messages over the worker's stdin and stdout (the worker moves its
stdout aside first, so a stray print cannot corrupt it):

- parent: ``("hooks", key, hooks)`` once per hook group, ``("run", key, path, trace_ids)``
  per batch, ``("forget", key)`` when a group is evicted.
- worker: ``("ready",)`` once imported, then per batch ``("ok", results, states)``,
  ``("error", description)`` (the batch runs on the hook thread instead) or
  ``("refused", description)`` (its hooks do not unpickle there: they run on the hook thread
  from then on).

This module is the parent's side; `hook_worker` is the worker's. The worker reads its stdin
on a thread of its own, so the parent's messages never wait for a batch to finish, and the
parent reads answers whenever it waits for one: neither side can be left blocked writing to
a full pipe while the other does the same.
"""

from __future__ import annotations

import collections
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ._errors import logger

_BOOT = (
    "import os, sys\n"
    "out = os.dup(1); os.dup2(2, 1)\n"
    "from multiprocessing.connection import Connection\n"
    "inbox, outbox = Connection(0, writable=False), Connection(out, readable=False)\n"
    "sys.path[:] = inbox.recv()\n"
    # sqlite-utils imports pandas when it can, which the hooks do not need: ~35 MB here.
    "sys.modules['pandas'] = None\n"
    "try:\n"
    "    import sqlite_utils.db\n"
    "finally:\n"
    "    del sys.modules['pandas']\n"
    "from chainwatch.hook_worker import serve\n"
    "serve(inbox, outbox)\n"
)
_GROUPS = 64  # hook groups the worker keeps (one per handler; evicted least recently used)
_IN_FLIGHT = 16  # batches sent and not yet answered
_READY_S = 30.0  # how long a new worker may take to import chainwatch


class HookProcessError(RuntimeError):
    """The worker could not take a batch (it did not start, died, or could not unpickle)."""


class HookNotPortable(HookProcessError):
    """A hook marked portable does not pickle; its group runs on the hook thread."""


def is_portable(hook: Any) -> bool:
    """Whether `hook` may run in the worker process (it says so with ``portable = True``).

    A class defined in the app's `__main__` cannot be found by name in the worker, whose
    `__main__` is its own: such hooks stay on the hook thread.
    """
    return getattr(hook, "portable", False) is True and type(hook).__module__ != "__main__"


def enabled_by_env() -> bool:
    """``CHAINWATCH_HOOK_PROCESS=0`` keeps every hook on the hook thread.

    POSIX only: the pipes are file descriptors, which Windows' `Connection` does not take.
    """
    if os.name != "posix":
        return False
    return os.environ.get("CHAINWATCH_HOOK_PROCESS", "1").lower() not in ("0", "false", "no")


class Batch:
    """Traces handed to the worker for a group of hooks, until its answer comes back."""

    __slots__ = ("hooks", "path", "results", "trace_ids")

    def __init__(self, hooks: Sequence[Any], path: Path, trace_ids: Sequence[str]) -> None:
        self.hooks = hooks
        self.path = path
        self.trace_ids = list(trace_ids)
        self.results: dict[str, list[tuple[str, str]]] | None = None


class HookProcess:
    """The parent's side: starts the worker on first use, sends batches, reads answers.

    Batches are pipelined: `send` does not wait, and the answers are read as they come
    (`collect`), at the latest when a flush needs them. When the worker fails, every batch it
    had not answered is handed back through `take_redo()` to run on the hook thread. Used by
    the hook thread only; `close()` may come from `atexit`.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._inbox: Connection | None = None  # the worker's answers
        self._outbox: Connection | None = None  # to the worker
        # The worker's copies of hook groups, by the ids of their hooks (kept alive here, so
        # the ids stay theirs).
        self._groups: dict[tuple[int, ...], tuple[Any, ...]] = {}
        self._refused: dict[tuple[int, ...], tuple[Any, ...]] = {}  # groups that do not pickle
        self._in_flight: collections.deque[Batch] = collections.deque()
        self._redo: list[Batch] = []
        self._lock = threading.Lock()
        self.failed = False  # once the worker failed, this process runs hooks in-thread

    @property
    def pid(self) -> int | None:
        """The worker's process id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def in_flight(self) -> int:
        """Batches sent to the worker and not answered yet."""
        return len(self._in_flight)

    def send(
        self, hooks: Sequence[Any], path: Path, trace_ids: Sequence[str], *, redo: bool = True
    ) -> Batch:
        """Hand the worker a batch without waiting for it.

        Raises:
            HookNotPortable: a hook does not pickle; the worker is fine, run them here.
            HookProcessError: the worker failed; any unanswered batches before this one are
                in `take_redo()`, and so is this one unless `redo` is False (the caller then
                runs it itself).
        """
        key = tuple(map(id, hooks))
        batch = Batch(hooks, path, trace_ids)
        with self._lock:
            if self.failed:
                raise HookProcessError("the hook process failed before")
            if key in self._refused:
                raise HookNotPortable("does not pickle")
            # A bounded pipeline: neither pipe can fill up while the other side waits.
            while len(self._in_flight) >= _IN_FLIGHT:
                self._read(wait=True, one=True)
                if self.failed:
                    if redo:
                        self._redo.append(batch)
                    raise HookProcessError("the hook process failed")
            try:
                self._start()
                assert self._outbox is not None
                if key not in self._groups:
                    self._remember(key, tuple(hooks))
                else:
                    self._groups[key] = self._groups.pop(key)  # most recently used last
                self._outbox.send(("run", key, str(path), batch.trace_ids))
            except HookNotPortable:
                raise
            except (HookProcessError, OSError, pickle.PicklingError) as exc:
                if redo:
                    self._redo.append(batch)
                self._fail(exc)
                raise HookProcessError(f"hook process failed: {exc!r}") from exc
            self._in_flight.append(batch)
        return batch

    def collect(self, wait: bool) -> None:
        """Read the answers that arrived (`wait`: every answer still owed)."""
        with self._lock:
            self._read(wait=wait)

    def run(
        self, hooks: Sequence[Any], path: Path, trace_ids: Sequence[str]
    ) -> dict[str, list[tuple[str, str]]]:
        """Run `hooks` on the stored traces in the worker and wait for them.

        Raises:
            HookNotPortable: a hook does not pickle; the worker is fine, run them here.
            HookProcessError: the worker could not run the batch; run it here.
        """
        batch = self.send(hooks, path, trace_ids, redo=False)
        self.collect(wait=True)
        if batch.results is None:
            with self._lock:
                if batch in self._redo:
                    self._redo.remove(batch)  # the caller runs it, not the redo list
            raise HookProcessError("the hook process failed")
        return batch.results

    def take_redo(self) -> list[Batch]:
        """Batches the failed worker did not answer: the hook thread runs them itself."""
        with self._lock:
            redo, self._redo = self._redo, []
        return redo

    def _read(self, wait: bool, one: bool = False) -> None:
        while self._in_flight:
            inbox = self._inbox
            try:
                if inbox is None or (not wait and not inbox.poll()):
                    return
                answer = inbox.recv()
            except (OSError, EOFError, pickle.UnpicklingError) as exc:
                self._fail(exc)
                return
            batch = self._in_flight.popleft()
            if answer[0] == "refused":
                key = tuple(map(id, batch.hooks))
                self._groups.pop(key, None)
                self._refuse(key, tuple(batch.hooks), f"they do not unpickle there: {answer[1]}")
                self._redo.append(batch)
            elif answer[0] != "ok":
                # The worker is fine; this batch (nothing of it committed) runs here.
                logger.warning("chainwatch runs a batch of hooks on the hook thread: it "
                               "failed in the hook process (%s)", answer[1])
                self._redo.append(batch)
            else:
                _, batch.results, states = answer
                for hook, state in zip(batch.hooks, states, strict=True):
                    for name, value in state.items():
                        setattr(hook, name, value)
            if one:
                return

    def _fail(self, exc: BaseException) -> None:
        """The worker is no use any more: what it owes goes to `take_redo()`."""
        self._redo.extend(self._in_flight)
        self._in_flight.clear()
        self.failed = True
        self._stop()
        logger.warning("chainwatch runs its hooks on the hook thread from now on: the hook "
                       "process failed (%r)", exc)

    def _remember(self, key: tuple[int, ...], hooks: tuple[Any, ...]) -> None:
        assert self._outbox is not None
        try:
            blob = pickle.dumps(hooks)
        except Exception as exc:
            self._refuse(key, hooks, f"they do not pickle: {exc!r}")
            raise HookNotPortable(repr(exc)) from exc
        while len(self._groups) >= _GROUPS:
            old = next(iter(self._groups))
            del self._groups[old]
            self._outbox.send(("forget", old))
        self._outbox.send(("hooks", key, blob))
        self._groups[key] = hooks

    def _refuse(self, key: tuple[int, ...], hooks: tuple[Any, ...], why: str) -> None:
        # Remembered with the hooks themselves, so that their ids stay theirs.
        while len(self._refused) >= _GROUPS:
            del self._refused[next(iter(self._refused))]
        self._refused[key] = hooks
        names = [getattr(h, "name", None) or type(h).__name__ for h in hooks]
        logger.warning("chainwatch runs hooks %s on the hook thread (%s)", names, why)

    def _start(self) -> None:
        if self._proc is not None:
            code = self._proc.poll()
            if code is None:
                return
            self._stop()
            raise HookProcessError(f"hook process exited with code {code}")
        if not sys.executable:
            raise HookProcessError("no Python executable to start the hook process with")
        # A session of its own: Ctrl-C in a terminal interrupts the app, not its analysis.
        # The worker ends when its stdin closes, i.e. when this process closes it or dies.
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=os.name == "posix",
            )
        except OSError as exc:
            raise HookProcessError(f"could not start the hook process: {exc!r}") from exc
        assert proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        self._outbox = Connection(os.dup(proc.stdin.fileno()), readable=False)
        self._inbox = Connection(os.dup(proc.stdout.fileno()), writable=False)
        proc.stdin.close()
        proc.stdout.close()
        self._outbox.send(list(sys.path))
        # A Python that is not one (an embedding server's `sys.executable`) could sit on the
        # pipe for ever; the worker says it is ready once chainwatch is imported, or it is
        # given up on.
        try:
            ready = self._inbox.poll(_READY_S) and self._inbox.recv() == ("ready",)
        except (OSError, EOFError, pickle.UnpicklingError):
            ready = False
        if not ready:
            raise HookProcessError(
                f"{sys.executable} did not start a hook process within {_READY_S:g} s"
            )

    def _stop(self, wait_s: float = 1.0) -> None:
        """Close the pipes; the worker sees end of input and exits (killed if it lingers)."""
        proc, self._proc = self._proc, None
        for conn in (self._outbox, self._inbox):
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
        self._outbox = self._inbox = None
        self._groups.clear()
        if proc is None:
            return
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self, wait_s: float = 1.0) -> None:
        """Stop the worker, after the answers it still owes (up to `wait_s`). Idempotent.

        Batches still unanswered go to `take_redo()`. Never blocks much longer than `wait_s`:
        when the hook thread is stuck waiting on the worker (a hook that never returns), the
        worker is killed, which ends that wait.
        """
        if not self._lock.acquire(timeout=wait_s):
            proc = self._proc
            if proc is not None:
                try:
                    proc.kill()
                except OSError:
                    pass
            return
        try:
            deadline = time.monotonic() + wait_s
            while self._in_flight and self._inbox is not None:
                try:
                    if not self._inbox.poll(max(0.0, deadline - time.monotonic())):
                        break
                except OSError:
                    break
                self._read(wait=True, one=True)
            self._stop(wait_s)
            self._redo.extend(self._in_flight)
            self._in_flight.clear()
        finally:
            self._lock.release()

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's worker without touching it."""
        for conn in (self._outbox, self._inbox):
            if conn is not None:
                try:
                    conn.close()  # this process's copies of the pipe ends only
                except OSError:
                    pass
        self._proc = self._outbox = self._inbox = None
        self._groups = {}
        self._refused = {}
        self._in_flight = collections.deque()
        self._redo = []
        self._lock = threading.Lock()

