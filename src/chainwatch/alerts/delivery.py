"""Delivery threads: one per notifier, each with a bounded queue.

A notifier that hangs or fails only delays its own queue: the app, the writer, the hook thread
and the other notifiers never wait for it. Every outcome is written back to the
`alert_notifications` row the evaluation queued.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._errors import internal_error, logger
from ..store import database
from ..store.rows import iso_time
from .engine import Notification
from .notifiers import Delivery, Notifier


class _Worker:
    def __init__(self, notifier: Notifier, path: Path, max_queue: int) -> None:
        self.notifier = notifier
        self.path = path
        self.queue: queue.Queue[Any] = queue.Queue(max_queue)
        self.dropped = 0
        self.thread = threading.Thread(
            target=self._run, name=f"chainwatch-notify:{notifier.name}", daemon=True
        )
        self.thread.start()

    def submit(self, group: list[Notification]) -> bool:
        try:
            self.queue.put_nowait(group)
            return True
        except queue.Full:
            self.dropped += len(group)
            return False

    def _run(self) -> None:
        db = None
        while True:
            item = self.queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                results = self.notifier.deliver([n.alert for n in item])
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                results = [Delivery("failed", None, error, 1)] * len(item)
            if any(r.status != "sent" for r in results):
                logger.warning("chainwatch notifier %s failed: %s", self.notifier.name,
                               next(r.error for r in results if r.status != "sent"))
            try:
                db = db or database.connect(self.path)
                _record(db.conn, item, results)
            except Exception as exc:
                try:
                    internal_error("alerts.record", exc)
                except BaseException:
                    pass


def _record(conn: Any, group: Sequence[Notification], results: Sequence[Delivery]) -> None:
    stamp = iso_time(time.time_ns())
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            "UPDATE alert_notifications SET status = ?, http_status = ?, error = ?, "
            "attempts = ?, finished_at = ? WHERE id = ?",
            [(r.status, r.http_status, r.error, r.attempts, stamp, n.row_id)
             for n, r in zip(group, results, strict=True)],
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class Dispatcher:
    """Routes queued notifications to their notifiers' threads."""

    def __init__(self, notifiers: Sequence[Notifier], path: Path, max_queue: int = 1000) -> None:
        names = [n.name for n in notifiers]
        if len(set(names)) != len(names):
            raise ValueError(f"notifier names must be unique (pass name=...): {names}")
        self.notifiers = list(notifiers)
        self.path = path
        self.max_queue = max_queue
        self._workers: dict[str, _Worker] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def use(self, notifiers: Sequence[Notifier]) -> None:
        """Deliver through these notifier objects from now on (same names, newer objects)."""
        self.notifiers = list(notifiers)
        with self._lock:
            for notifier in notifiers:
                worker = self._workers.get(notifier.name)
                if worker is not None:
                    worker.notifier = notifier

    def _worker(self, notifier: Notifier) -> _Worker:
        with self._lock:
            if self._pid != os.getpid():
                self._workers, self._pid = {}, os.getpid()
            worker = self._workers.get(notifier.name)
            if worker is None:
                worker = self._workers[notifier.name] = _Worker(notifier, self.path,
                                                                self.max_queue)
            return worker

    def dispatch(self, queued: Sequence[Notification]) -> None:
        """Hand each notifier its group (all alerts of one evaluation: one message)."""
        for notifier in self.notifiers:
            group = [n for n in queued if n.notifier == notifier.name]
            if group and not self._worker(notifier).submit(group):
                _mark_dropped(self.path, group)

    def wait(self, timeout: float | None = 30.0) -> bool:
        """Wait until every delivery queued so far has finished (for tests and shutdown)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ok = True
        for worker in list(self._workers.values()):
            done = threading.Event()
            try:
                worker.queue.put(done, timeout=timeout)
            except queue.Full:
                return False
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ok = done.wait(remaining) and ok
        return ok

    @property
    def dropped(self) -> int:
        """Notifications dropped because a notifier's queue was full."""
        return sum(w.dropped for w in self._workers.values())


def _mark_dropped(path: Path, group: Sequence[Notification]) -> None:
    try:
        db = database.connect(path)
        try:
            _record(db.conn, group, [Delivery("dropped", None, "notifier queue full", 0)]
                    * len(group))
        finally:
            db.conn.close()
    except Exception as exc:
        try:
            internal_error("alerts.drop", exc)
        except BaseException:
            pass
