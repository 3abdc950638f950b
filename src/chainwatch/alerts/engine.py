"""Alert states, as in Prometheus: inactive, pending, firing, resolved, and no_data.

One evaluation reads every rule's window, moves each (rule, label set) through its states and
queues notifications, all in one `BEGIN IMMEDIATE` transaction: when several processes share a
database, the first to see a breach fires it and the others find it already firing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import logger
from ..store.rows import iso_time
from .rules import Rule, labels_key, window_metrics


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert as notifiers see it."""

    rule: str
    labels: dict[str, str]
    state: str
    transition: str
    severity: str
    value: float | None
    threshold: float | None
    expression: str
    description: str
    started_at: str | None
    ended_at: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def dedup_key(self) -> str:
        """The same key for every event of one alert (PagerDuty's, at most 255 characters)."""
        key = f"chainwatch:{self.rule}:{labels_key(self.labels)}"
        if len(key) <= 255:
            return key
        return "chainwatch:" + hashlib.sha256(key.encode("utf-8")).hexdigest()

    def summary(self) -> str:
        """One line for humans."""
        where = "".join(f" {k}={v}" for k, v in sorted(self.labels.items()))
        value = "no data" if self.value is None else f"{self.value:.4g}"
        head = "RESOLVED" if self.transition == "resolved" else self.severity.upper()
        return f"[{head}] {self.rule}{where}: {self.expression} (value {value})"


@dataclass(frozen=True, slots=True)
class Notification:
    """A queued notification: which alert, to which notifier, its row id."""

    row_id: int
    notifier: str
    alert: Alert


def _value(rule: Rule, metrics: dict[str, Any]) -> float | None:
    if rule.metric is None:
        return None
    value = metrics.get(rule.metric)
    return None if value is None else float(value)


def evaluate(
    conn: Any,
    rules: Sequence[Rule],
    notifier_names: Sequence[str],
    *,
    now_ns: int | None = None,
) -> list[Notification]:
    """Evaluate `rules` now, store the new states, and queue notifications.

    Returns:
        The notifications this call queued (to be delivered by this process).
    """
    now = now_ns if now_ns is not None else time.time_ns()
    stamp = iso_time(now)
    windows: dict[tuple[float, str, tuple[str, ...]], Any] = {}
    queued: list[Notification] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for rule in rules:
            since = iso_time(now - int(rule.window_minutes * 60e9))
            key = (rule.window_minutes, labels_key(rule.labels), rule.group_by)
            if key not in windows:
                windows[key] = window_metrics(conn, since, rule.labels, rule.group_by)
            seen = set()
            for group, metrics in windows[key].items():
                labels = {**rule.labels, **dict(group)}
                seen.add(labels_key(labels))
                alert = _step(conn, rule, labels, metrics, now, stamp)
                if alert is not None:
                    queued.extend(_queue(conn, alert, notifier_names, stamp))
            for stored in _stored_groups(conn, rule.name) - seen:
                alert = _step(conn, rule, json.loads(stored), {"count": 0}, now, stamp)
                if alert is not None:
                    queued.extend(_queue(conn, alert, notifier_names, stamp))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return queued


def _stored_groups(conn: Any, rule: str) -> set[str]:
    return {r[0] for r in conn.execute("SELECT labels FROM alerts WHERE rule = ?", [rule])}


def _step(
    conn: Any, rule: Rule, labels: dict[str, str], metrics: dict[str, Any], now: int, stamp: str
) -> Alert | None:
    """Move one alert one evaluation on; returns the alert when a notification is due."""
    key = labels_key(labels)
    row = conn.execute(
        "SELECT state, consecutive, active_since, fired_at, last_notified_at FROM alerts "
        "WHERE rule = ? AND labels = ?",
        [rule.name, key],
    ).fetchone()
    state, consecutive, active_since, fired_at, last_notified = row or (
        "inactive", 0, None, None, None
    )
    try:
        breached = rule.breached(metrics)
    except Exception as exc:
        logger.warning("chainwatch alert rule %s failed, treated as no data: %r", rule.name, exc)
        breached = None
    value = _value(rule, metrics)
    transition = None
    resolved_at = None
    # A firing alert whose data went missing keeps its incident (and its cooldown).
    was_firing = state == "firing" or (state == "no_data" and active_since is not None
                                       and fired_at is not None)
    if breached is None:
        state, consecutive = "no_data", 0
        if not was_firing:
            active_since = None
    elif breached and was_firing:
        consecutive += 1
        state = "firing"
        if _due(last_notified, now, rule.cooldown_minutes):
            transition = "repeat"
    elif breached:
        consecutive += 1
        if state != "firing":
            active_since = active_since if state == "pending" else stamp
            if consecutive >= rule.for_evaluations:
                state, fired_at, transition = "firing", stamp, "firing"
            else:
                state = "pending"
        elif _due(last_notified, now, rule.cooldown_minutes):
            transition = "repeat"
    else:
        if was_firing:
            state, transition, resolved_at = "resolved", "resolved", stamp
        elif state in ("pending", "no_data"):
            state = "inactive"
        consecutive, active_since = 0, None
    if transition is not None:
        last_notified = stamp
    conn.execute(
        "INSERT INTO alerts (rule, labels, state, severity, value, threshold, expression, "
        "consecutive, active_since, fired_at, resolved_at, last_evaluated_at, last_notified_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rule, labels) DO UPDATE SET "
        "state = excluded.state, severity = excluded.severity, value = excluded.value, "
        "threshold = excluded.threshold, expression = excluded.expression, "
        "consecutive = excluded.consecutive, active_since = excluded.active_since, "
        "fired_at = excluded.fired_at, resolved_at = COALESCE(excluded.resolved_at, "
        "alerts.resolved_at), last_evaluated_at = excluded.last_evaluated_at, "
        "last_notified_at = excluded.last_notified_at",
        [rule.name, key, state, rule.severity, value, rule.threshold,
         rule.expression or "predicate", consecutive, active_since, fired_at, resolved_at,
         stamp, last_notified],
    )
    if transition is None:
        return None
    return Alert(
        rule=rule.name, labels=labels, state=state, transition=transition,
        severity=rule.severity, value=value, threshold=rule.threshold,
        expression=rule.expression or "predicate", description=rule.description,
        started_at=fired_at, ended_at=resolved_at,
        metrics={k: v for k, v in metrics.items() if v is not None},
    )


def _due(last_notified: str | None, now: int, cooldown_minutes: float) -> bool:
    if last_notified is None:
        return True
    from ..store.queries import to_iso

    due_at = to_iso(f"{cooldown_minutes * 60}s", now_ns=now)
    return due_at is not None and last_notified <= due_at


def _queue(conn: Any, alert: Alert, notifiers: Sequence[str], stamp: str) -> list[Notification]:
    out = []
    for name in notifiers:
        cursor = conn.execute(
            "INSERT INTO alert_notifications (rule, labels, transition, notifier, status, "
            "attempts, created_at, pid) VALUES (?, ?, ?, ?, 'queued', 0, ?, ?)",
            [alert.rule, labels_key(alert.labels), alert.transition, name, stamp, os.getpid()],
        )
        out.append(Notification(int(cursor.lastrowid or 0), name, alert))
    return out


def active(conn: Any) -> list[dict[str, Any]]:
    """Alerts firing now."""
    cursor = conn.execute(
        "SELECT rule, labels, severity, value, threshold, expression, fired_at, "
        "last_evaluated_at FROM alerts WHERE state = 'firing' ORDER BY fired_at"
    )
    names = [d[0] for d in cursor.description]
    out = []
    for values in cursor.fetchall():
        row = dict(zip(names, values, strict=True))
        row["labels"] = json.loads(row["labels"])
        out.append(row)
    return out
