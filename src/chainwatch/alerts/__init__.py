"""Alerting: rules over windowed metrics, Prometheus-style states, cooldowns, notifiers.

```python
handler = ChainWatchHandler(
    alerts=chainwatch.alerts.default_rules() + [Rule("refusals", "refusal_rate > 0.1")],
    notifiers=[SlackNotifier(url), PagerDutyNotifier(key), WebhookNotifier(url, secret=s)],
)
chainwatch.alerts.active()
```
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..store import database, queries
from .delivery import Dispatcher
from .engine import Alert, Notification
from .engine import active as _active
from .engine import evaluate as _evaluate
from .notifiers import (
    CallableNotifier,
    Delivery,
    LoggingNotifier,
    Notifier,
    PagerDutyNotifier,
    RetryPolicy,
    SlackNotifier,
    WebhookNotifier,
    as_notifier,
)
from .rules import METRICS, Rule, default_rules

if TYPE_CHECKING:
    from ..hooks import Store
    from ..views import Trace

__all__ = [
    "METRICS",
    "Alert",
    "AlertHook",
    "CallableNotifier",
    "Delivery",
    "LoggingNotifier",
    "Notifier",
    "PagerDutyNotifier",
    "RetryPolicy",
    "Rule",
    "SlackNotifier",
    "WebhookNotifier",
    "active",
    "default_rules",
    "evaluate",
]

_dispatchers: dict[tuple[Path, tuple[str, ...]], Dispatcher] = {}
_lock = threading.Lock()


def _dispatcher(path: Path, notifiers: Sequence[Notifier]) -> Dispatcher:
    """One dispatcher (and one thread per notifier) per database and set of notifier names."""
    key = (path, tuple(n.name for n in notifiers))
    with _lock:
        dispatcher = _dispatchers.get(key)
        if dispatcher is None:
            dispatcher = _dispatchers[key] = Dispatcher(notifiers, path)
        else:
            dispatcher.use(notifiers)
        return dispatcher


def _check_rules(rules: Sequence[Rule]) -> list[Rule]:
    for rule in rules:
        if not isinstance(rule, Rule):
            raise ValueError(f"alerts must be chainwatch.alerts.Rule objects, got {rule!r}")
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise ValueError(f"alert rule names must be unique: {names}")
    return list(rules)


def _check_notifiers(notifiers: Sequence[Any]) -> list[Notifier]:
    chosen = [as_notifier(n) for n in notifiers]
    names = [n.name for n in chosen]
    if len(set(names)) != len(names):
        raise ValueError(f"notifier names must be unique (pass name=...): {names}")
    return chosen


class AlertHook:
    """Post-run hook: evaluate the rules (at most every `min_interval_s`) and notify."""

    name = "alerts"

    def __init__(
        self,
        rules: Sequence[Rule],
        notifiers: Sequence[Notifier | Callable[[list[Alert]], Any]] = (),
        *,
        min_interval_s: float = 1.0,
    ) -> None:
        self.rules = _check_rules(rules)
        self.notifiers = _check_notifiers(notifiers)
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self.dispatcher: Dispatcher | None = None

    def __call__(self, trace: Trace, store: Store) -> list[Notification]:
        """Evaluate if due; queued notifications go to the notifier threads."""
        now = time.monotonic()
        if now - self._last < self.min_interval_s:
            return []
        self._last = now
        queued = _evaluate(store.conn, self.rules, [n.name for n in self.notifiers])
        if queued:
            self.dispatcher = self.dispatcher or _dispatcher(store.path, self.notifiers)
            self.dispatcher.dispatch(queued)
        return queued


def evaluate(
    rules: Sequence[Rule],
    notifiers: Sequence[Notifier | Callable[[list[Alert]], Any]] = (),
    *,
    db: str | os.PathLike[str] | None = None,
    now_ns: int | None = None,
    wait: bool = False,
) -> list[Notification]:
    """Evaluate `rules` now (on demand) and send what is due through `notifiers`.

    Args:
        rules: the rules.
        notifiers: where notifications go.
        db: the database (default ``$CHAINWATCH_DB`` or ``./chainwatch.db``).
        now_ns: evaluation time (tests inject it).
        wait: block until the notifications are delivered (or given up).

    Returns:
        The notifications queued by this evaluation.
    """
    rules = _check_rules(rules)
    chosen = _check_notifiers(notifiers)
    store = queries.open_read(db)
    try:
        queued = _evaluate(store.conn, rules, [n.name for n in chosen], now_ns=now_ns)
    finally:
        store.conn.close()
    if queued and chosen:
        dispatcher = _dispatcher(database.resolve_path(db), chosen)
        dispatcher.dispatch(queued)
        if wait:
            dispatcher.wait()
    return queued


def active(*, db: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Alerts firing now: rule, labels, severity, value, threshold, since when."""
    store = queries.open_read(db)
    try:
        return _active(store.conn)
    finally:
        store.conn.close()
