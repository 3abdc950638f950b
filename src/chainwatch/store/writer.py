"""The one writer thread per process and database file (DESIGN.md invariants 1, 3, 4, 5).

Callers append finished spans to a bounded deque and return; a full queue drops the span and
counts it. The writer thread drains the deque in batches, each one `BEGIN IMMEDIATE`
transaction, and after a batch commits it calls back for each trace that completed in it.
"""

from __future__ import annotations

import atexit
import collections
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._errors import internal_error, logger
from ..spans import SpanRecord
from . import database, rows

_BATCH_MAX = 5_000
_WAKE_AT = 256
_IDLE_S = 0.05
_CHECKPOINT_PAGES = 8_000  # about 32 MB of WAL at SQLite's default 4 KB page
_WAL_LIMIT_BYTES = 64 * 1024 * 1024


class _Token:
    """A marker in the queue: set once everything queued before it is committed."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class _TraceDone:
    __slots__ = ("callback", "trace_id")

    def __init__(self, trace_id: str, callback: Callable[[str], None] | None) -> None:
        self.trace_id = trace_id
        self.callback = callback


class Writer:
    """Owns the queue, the thread and the connection for one database file in this process."""

    def __init__(self, path: Path, *, queue_size: int = 100_000) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.path = path
        self.queue_size = queue_size
        self.dropped = 0
        self.written = 0
        self.write_errors = 0
        self._lock = threading.Lock()
        self._start_fresh()
        _live.add(self)

    def _start_fresh(self) -> None:
        self._queue: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._flushes = 0  # flush tokens queued and not yet reached (see `_run`)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    # -- caller side: dict work only ------------------------------------------------------------

    def put(self, rec: SpanRecord, settings: rows.RowSettings) -> bool:
        """Queue a finished span; False (and counted) when the queue is full."""
        queue = self._queue
        if len(queue) >= self.queue_size:
            self.dropped += 1
            return False
        queue.append((rec, settings))
        if self._thread is None:
            self._ensure_thread()
        if len(queue) >= _WAKE_AT and not self._wake.is_set():
            # Once per wake-up: `set()` takes a lock and notifies, and a writer that is behind
            # would otherwise be signalled by every span.
            self._wake.set()
        return True

    def trace_done(self, trace_id: str, callback: Callable[[str], None] | None = None) -> None:
        """Mark a trace complete; `callback(trace_id)` runs after its spans are committed."""
        self._queue.append(_TraceDone(trace_id, callback))

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Block until everything queued so far is committed (and trace callbacks called)."""
        if self._thread is None and not self._queue:
            return True
        token = _Token()
        with self._lock:
            self._flushes += 1
            self._queue.append(token)
        self._ensure_thread()
        self._wake.set()
        return token.done.wait(timeout)

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Flush within `timeout` and stop the thread. Idempotent."""
        ok = self.flush(timeout)
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None
        return ok

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._pid != os.getpid():
                # After fork() the parent's thread does not exist here; what the parent had
                # queued is the parent's to write, so the child starts empty.
                self._start_fresh()
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._run, name=f"chainwatch-writer:{self.path.name}", daemon=True
                )
                self._thread.start()

    # -- writer thread --------------------------------------------------------------------------

    def _run(self) -> None:
        db = None
        while db is None:
            try:
                db = database.connect(self.path)
            except Exception as exc:
                self.write_errors += 1
                logger.error("chainwatch cannot open %s: %r; retrying", self.path, exc)
                if self._stopping:
                    return
                time.sleep(1.0)
        conn = db.conn
        # Checkpoint the WAL into the database less often, in larger steps (a page written
        # many times between checkpoints is copied once), and when idle rather than mid-burst.
        conn.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT_BYTES}")
        unchecked = False  # written since the last checkpoint
        quiet = False  # nothing arrived during the last tick
        try:
            while True:
                woken = self._wake.wait(_IDLE_S)
                self._wake.clear()
                if quiet and unchecked and not woken and not self._queue:
                    # A whole tick without a span: the app is idle, so copy the WAL now.
                    unchecked = not self._checkpoint(conn)
                quiet = not self._queue
                if self._queue:
                    self._drain_once(conn)
                    unchecked = True
                # Keep draining only for a backlog, a waiting flush or a stop. Spans that
                # trickled in during that commit wait for the next tick: a transaction's cost
                # is mostly per page it dirties, so 50 ms of spans in one commit cost far less
                # per span than the same spans in the several small commits of chasing them.
                while self._queue and (
                    len(self._queue) >= _WAKE_AT or self._flushes or self._stopping
                ):
                    self._drain_once(conn)
                if self._stopping and not self._queue:
                    return
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> bool:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            return True
        except Exception as exc:  # a busy database: the next idle tick tries again
            logger.debug("chainwatch checkpoint of %s deferred: %r", self.path, exc)
            return False

    def _drain_once(self, conn: sqlite3.Connection) -> None:
        queue = self._queue
        spans: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        done: list[_TraceDone] = []
        tokens: list[_Token] = []
        seen: dict[int, Any] = {}
        while queue and len(spans) < _BATCH_MAX:
            item = queue.popleft()
            if type(item) is tuple:
                rec, settings = item
                try:
                    spans.append(rows.span_row(rec, settings, seen))
                    if rec.events or rec.extra:
                        events.extend(rows.event_rows(rec, settings))
                except Exception as exc:
                    self._internal("writer.row", exc)
            elif type(item) is _TraceDone:
                done.append(item)
            else:
                tokens.append(item)
                break
        if spans or events:
            self._commit(conn, spans, events)
        for marker in done:
            if marker.callback is None:
                continue
            try:
                marker.callback(marker.trace_id)
            except Exception as exc:
                self._internal("writer.listener", exc)
        for token in tokens:
            with self._lock:
                self._flushes -= 1
            token.done.set()

    def _commit(
        self, conn: sqlite3.Connection, spans: list[tuple[Any, ...]], events: list[tuple[Any, ...]]
    ) -> None:
        # One BEGIN IMMEDIATE transaction per batch: the write lock is taken up front, so
        # other processes wait on the busy timeout instead of failing a lock upgrade.
        for attempt in range(4):
            try:
                # SQLite's own busy handler here, not `database.begin_immediate`: it waits
                # without the interpreter lock, where a retry loop in Python would take the
                # lock from the app for every try.
                conn.execute("BEGIN IMMEDIATE")
                try:
                    rows.insert_spans(conn, spans)
                    if events:
                        rows.insert_events(conn, events)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                self.written += len(spans)
                return
            except sqlite3.OperationalError as exc:
                if attempt == 3:
                    self.write_errors += 1
                    self.dropped += len(spans)
                    self._internal("writer.commit", exc)
                    return
                time.sleep(0.1 * (attempt + 1))
            except Exception as exc:
                self.write_errors += 1
                self.dropped += len(spans)
                self._internal("writer.commit", exc)
                return

    @staticmethod
    def _internal(where: str, exc: BaseException) -> None:
        try:
            internal_error(where, exc)
        except BaseException:
            # On this thread re-raising would only kill the writer; the count and log suffice.
            pass


_live: weakref.WeakSet[Writer] = weakref.WeakSet()
_registry: dict[Path, Writer] = {}
_registry_lock = threading.Lock()


def writer_for(path: Path, queue_size: int = 100_000) -> Writer:
    """The process's writer for `path`, created on first use."""
    with _registry_lock:
        writer = _registry.get(path)
        if writer is None:
            writer = _registry[path] = Writer(path, queue_size=queue_size)
        return writer


_after_flush: list[Callable[[float | None], bool]] = []


def flush_all(timeout: float | None = 30.0) -> bool:
    """Flush every live writer of this process, then whatever runs after commits (hooks)."""
    ok = True
    for writer in list(_live):
        ok = writer.flush(timeout) and ok
    if _after_flush:
        for follow_up in list(_after_flush):
            ok = follow_up(timeout) and ok
        # What the follow-ups recorded (a judge's own spans) becomes visible as well.
        for writer in list(_live):
            ok = writer.flush(timeout) and ok
    return ok


def _shutdown_all(budget_s: float = 5.0) -> None:
    deadline = time.monotonic() + budget_s
    for writer in list(_live):
        remaining = max(0.05, deadline - time.monotonic())
        try:
            writer.shutdown(remaining)
        except Exception:
            pass


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for writer in list(_live):
        writer._lock = threading.Lock()
        writer._start_fresh()


atexit.register(_shutdown_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
