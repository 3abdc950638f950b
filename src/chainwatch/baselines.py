"""Named baselines, `check_drift`, and the drift post-run hook; everything stored in SQLite."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import drift
from .store import queries
from .store.rows import iso_time

if TYPE_CHECKING:
    from .hooks import Store
    from .views import Trace

_INSERT = (
    "INSERT INTO drift_checks (check_id, created_at, baseline, mode, window, segment, metric, "
    "status, test, statistic, p_value, p_adjusted, effect, effect_kind, baseline_value, "
    "current_value, n_baseline, n_current, reason) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _trace_ids(
    conn: Any,
    *,
    since: str | None,
    until: str | None,
    tags: Sequence[str] | None,
    first_n: int | None = None,
    last_n: int | None = None,
) -> list[str]:
    where, params = queries.root_filters(since=since, until=until, tags=tags)
    order = "DESC" if last_n is not None else "ASC"
    limit = last_n if last_n is not None else first_n
    sql = f"SELECT trace_id FROM spans WHERE {' AND '.join(where)} ORDER BY start_time {order}"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    return [row[0] for row in conn.execute(sql, params).fetchall()]


def set_baseline(
    name: str = "default",
    *,
    since: Any = None,
    until: Any = None,
    first_n: int | None = None,
    tags: Sequence[str] | None = None,
    db: str | os.PathLike[str] | None = None,
) -> int:
    """Name a window of traces as the baseline that later windows are compared with.

    Args:
        name: the baseline's name (one database holds several).
        since: start of the window (ISO 8601, epoch seconds, datetime, or "7d").
        until: end of the window (exclusive).
        first_n: the first N traces from `since` instead of a time range.
        tags: only traces whose root span has every one of these tags.
        db: the database (default ``$CHAINWATCH_DB`` or ``./chainwatch.db``).

    Returns:
        How many traces the baseline holds now.
    """
    if not name:
        raise ValueError("a baseline needs a name")
    if first_n is not None and first_n < 1:
        raise ValueError("first_n must be at least 1")
    since_iso, until_iso = queries.to_iso(since), queries.to_iso(until)
    store = queries.open_read(db)
    try:
        conn = store.conn
        count = len(_trace_ids(conn, since=since_iso, until=until_iso, tags=tags,
                               first_n=first_n))
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT OR REPLACE INTO baselines (name, since, until, first_n, tags, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [name, since_iso, until_iso, first_n, json.dumps(list(tags or [])),
             iso_time(time.time_ns())],
        )
        conn.execute("COMMIT")
        return count
    finally:
        store.conn.close()


def run_check(
    conn: Any,
    *,
    baseline: str = "default",
    since: str | None = None,
    until: str | None = None,
    last_n: int | None = 500,
    mode: str = "stats",
    settings: drift.DriftSettings | None = None,
) -> drift.DriftResult:
    """Compare the current window with a stored baseline on `conn`, and store the result."""
    if mode not in ("stats", "simple"):
        raise ValueError("mode must be 'stats' or 'simple'")
    row = conn.execute(
        "SELECT since, until, first_n, tags FROM baselines WHERE name = ?", [baseline]
    ).fetchone()
    if row is None:
        raise LookupError(f"no baseline named {baseline!r}: call chainwatch.set_baseline() first")
    b_since, b_until, b_first, b_tags = row
    tags = json.loads(b_tags or "[]")
    base_ids = _trace_ids(conn, since=b_since, until=b_until, tags=tags, first_n=b_first)
    window: dict[str, Any] = {"since": since, "until": until}
    if since is None and until is None:
        window = {"last_n": last_n}
        cur_ids = _trace_ids(conn, since=None, until=None, tags=tags, last_n=last_n)
    else:
        cur_ids = _trace_ids(conn, since=since, until=until, tags=tags)
    in_baseline = set(base_ids)
    cur_ids = [t for t in cur_ids if t not in in_baseline]
    base, cur = drift._samples(conn, base_ids), drift._samples(conn, cur_ids)
    if mode == "simple":
        results = drift.compare_simple(base, cur)
    else:
        results = drift.compare_samples(base, cur, settings)
    result = drift.DriftResult(str(uuid.uuid4()), baseline, mode, results)
    now = iso_time(time.time_ns())
    window_json = json.dumps(window)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            _INSERT,
            [
                (result.check_id, now, baseline, mode, window_json, r.segment, r.metric, r.status,
                 r.test, r.statistic, r.p_value, r.p_adjusted, r.effect, r.effect_kind,
                 r.baseline_value, r.current_value, r.n_baseline, r.n_current, r.reason)
                for r in results
            ],
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return result


def check_drift(
    *,
    baseline: str = "default",
    since: Any = None,
    until: Any = None,
    last_n: int | None = 500,
    mode: str = "stats",
    settings: drift.DriftSettings | None = None,
    db: str | os.PathLike[str] | None = None,
) -> drift.DriftResult:
    """Compare the current window with a baseline; the result is stored in `drift_checks`.

    Args:
        baseline: the baseline's name.
        since: start of the current window; with neither `since` nor `until` the window is the
            last `last_n` traces.
        until: end of the current window (exclusive).
        last_n: size of the current window in traces when no time range is given.
        mode: ``stats`` (tests, Holm adjustment, effect sizes) or ``simple`` (the seed's fixed
            thresholds on refusal rate, average length and hedging rate).
        settings: significance level, minimum samples and minimum effect sizes.
        db: the database (default ``$CHAINWATCH_DB`` or ``./chainwatch.db``).

    Raises:
        LookupError: when the baseline does not exist.
    """
    store = queries.open_read(db)
    try:
        return run_check(
            store.conn, baseline=baseline, since=queries.to_iso(since),
            until=queries.to_iso(until), last_n=last_n, mode=mode, settings=settings,
        )
    finally:
        store.conn.close()


class DriftHook:
    """Post-run hook: a drift check against `baseline` every `every_n_traces` traces."""

    name = "drift"
    portable = True  # may run in the hook process; these attributes come back after each batch
    portable_state = ("seen", "last_result")

    def __init__(
        self,
        baseline: str = "default",
        *,
        every_n_traces: int = 100,
        last_n: int = 500,
        settings: drift.DriftSettings | None = None,
    ) -> None:
        if every_n_traces < 1 or last_n < 1:
            raise ValueError("every_n_traces and last_n must be at least 1")
        self.baseline = baseline
        self.every_n_traces = every_n_traces
        self.last_n = last_n
        self.settings = settings
        self.seen = 0
        self.last_result: drift.DriftResult | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(state)
        self._lock = threading.Lock()

    def __call__(self, trace: Trace, store: Store) -> drift.DriftResult | None:
        """Count the trace; every N traces, check drift (if the baseline exists)."""
        with self._lock:
            self.seen += 1
            due = self.seen % self.every_n_traces == 0
        if not due:
            return None
        exists = store.conn.execute(
            "SELECT 1 FROM baselines WHERE name = ?", [self.baseline]
        ).fetchone()
        if exists is None:
            return None
        self.last_result = run_check(
            store.conn, baseline=self.baseline, last_n=self.last_n, settings=self.settings
        )
        return self.last_result

