"""Notifiers: Slack, PagerDuty Events API v2, a signed webhook, logging, any callable.

Each turns a group of alerts into deliveries; HTTP ones share `post_json`,
which always sets connect and read timeouts and retries only what may succeed later.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import http.client
import json
import logging
import ssl
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .engine import Alert

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
_SLACK_TEXT_LIMIT = 3000
_SLACK_BLOCK_LIMIT = 50
_PD_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}


@dataclass(frozen=True, slots=True)
class Delivery:
    """What happened to one delivery: final status, last HTTP status and error, attempts."""

    status: str
    http_status: int | None
    error: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries for 429, 5xx and network errors; a 4xx other than 429 is final."""

    max_attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 60.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0


def _retry_after(value: str | None, cap: float) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); None if unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if parsed is None:
            return None
        seconds = parsed.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, cap))


def _slack_escape(text: str) -> str:
    """Slack's control characters as entities, so names cannot ping or link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _check_url(url: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"notifier URL must be http(s)://host/..., got {url!r}")
    return parts


def post_json(
    url: str,
    body: bytes,
    headers: dict[str, str],
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
) -> Delivery:
    """POST `body` with timeouts and retries; never raises."""
    parts = _check_url(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    status: int | None = None
    error: str | None = None
    for attempt in range(1, policy.max_attempts + 1):
        wait = min(policy.max_backoff_s, policy.backoff_s * 2 ** (attempt - 1))
        conn: http.client.HTTPConnection
        try:
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(
                    parts.hostname or "", parts.port, timeout=policy.connect_timeout_s,
                    context=ssl.create_default_context(),
                )
            else:
                conn = http.client.HTTPConnection(
                    parts.hostname or "", parts.port, timeout=policy.connect_timeout_s
                )
            try:
                conn.connect()
                if conn.sock is not None:
                    conn.sock.settimeout(policy.read_timeout_s)
                conn.request("POST", path, body=body, headers={
                    "Content-Type": "application/json", "User-Agent": "chainwatch", **headers,
                })
                response = conn.getresponse()
                response.read(65536)
                status, error = response.status, None
                if 200 <= status < 300:
                    return Delivery("sent", status, None, attempt)
                error = f"HTTP {status} {response.reason}"
                if status != 429 and status < 500:
                    return Delivery("failed", status, error, attempt)
                retry_after = _retry_after(
                    response.getheader("Retry-After"), policy.max_retry_after_s
                )
                if retry_after is not None:
                    wait = retry_after
            finally:
                conn.close()
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"
        if attempt < policy.max_attempts:
            sleep(wait)
    return Delivery("failed", status, error, policy.max_attempts)


class Notifier:
    """Base class: `deliver(alerts)` sends one group and reports each alert's delivery."""

    name = "notifier"

    def deliver(self, alerts: Sequence[Alert]) -> list[Delivery]:
        """Send a group of alerts; one Delivery per alert."""
        raise NotImplementedError


class _HttpNotifier(Notifier):
    def __init__(self, url: str, policy: RetryPolicy | None, name: str | None) -> None:
        _check_url(url)
        self.url = url
        self.policy = policy or RetryPolicy()
        if name:
            self.name = name

    def _post(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Delivery:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        return post_json(self.url, body, headers or {}, self.policy)


class SlackNotifier(_HttpNotifier):
    """Slack incoming webhook: one message per group, text plus blocks within Slack's limits."""

    name = "slack"

    def __init__(self, webhook_url: str, *, policy: RetryPolicy | None = None,
                 name: str | None = None) -> None:
        super().__init__(webhook_url, policy, name)

    @staticmethod
    def payload(alerts: Sequence[Alert]) -> dict[str, Any]:
        """The message: `text` (fallback) and `blocks` (header, one section per alert)."""
        firing = sum(a.transition != "resolved" for a in alerts)
        title = f"chainwatch: {firing} firing, {len(alerts) - firing} resolved"
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150]}}
        ]
        for alert in alerts[: _SLACK_BLOCK_LIMIT - 2]:
            text = f"*{_slack_escape(alert.summary())}*"
            if alert.description:
                text += f"\n{_slack_escape(alert.description)}"
            blocks.append({"type": "section",
                           "text": {"type": "mrkdwn", "text": text[:_SLACK_TEXT_LIMIT]}})
        if len(alerts) > _SLACK_BLOCK_LIMIT - 2:
            more = len(alerts) - (_SLACK_BLOCK_LIMIT - 2)
            blocks.append({"type": "context",
                           "elements": [{"type": "mrkdwn", "text": f"and {more} more"}]})
        text = "\n".join([title, *(_slack_escape(a.summary()) for a in alerts)])
        text = text[:_SLACK_TEXT_LIMIT]
        return {"text": text, "blocks": blocks}

    def deliver(self, alerts: Sequence[Alert]) -> list[Delivery]:
        """One POST for the whole group."""
        result = self._post(self.payload(alerts))
        return [result] * len(alerts)


class PagerDutyNotifier(_HttpNotifier):
    """PagerDuty Events API v2: trigger and resolve with one dedup_key per alert."""

    name = "pagerduty"

    def __init__(self, routing_key: str, *, endpoint: str = PAGERDUTY_EVENTS_URL,
                 source: str = "chainwatch", policy: RetryPolicy | None = None,
                 name: str | None = None) -> None:
        if not routing_key:
            raise ValueError("PagerDuty needs a routing key (an Events API v2 integration key)")
        super().__init__(endpoint, policy, name)
        self.routing_key = routing_key
        self.source = source

    def payload(self, alert: Alert) -> dict[str, Any]:
        """One event: trigger (with the required summary/source/severity) or resolve."""
        if alert.transition == "resolved":
            return {"routing_key": self.routing_key, "event_action": "resolve",
                    "dedup_key": alert.dedup_key}
        return {
            "routing_key": self.routing_key,
            "event_action": "trigger",
            "dedup_key": alert.dedup_key,
            "payload": {
                "summary": alert.summary()[:1024],
                "source": self.source,
                "severity": _PD_SEVERITY[alert.severity],
                "timestamp": alert.started_at,
                "component": alert.labels.get("chain"),
                "group": alert.labels.get("model"),
                "class": alert.rule,
                "custom_details": {"expression": alert.expression, "value": alert.value,
                                   "threshold": alert.threshold, **alert.metrics},
            },
        }

    def deliver(self, alerts: Sequence[Alert]) -> list[Delivery]:
        """One event per alert (PagerDuty deduplicates by dedup_key)."""
        return [self._post(self.payload(alert)) for alert in alerts]


class WebhookNotifier(_HttpNotifier):
    """Alertmanager's webhook JSON, signed with HMAC-SHA256 when a secret is given.

    The signature is ``X-Chainwatch-Signature: sha256=<hex>`` over
    ``<X-Chainwatch-Timestamp>.<body>``.
    """

    name = "webhook"

    def __init__(self, url: str, *, secret: str | None = None, receiver: str = "chainwatch",
                 policy: RetryPolicy | None = None, name: str | None = None) -> None:
        super().__init__(url, policy, name)
        self.secret = secret
        self.receiver = receiver

    def payload(self, alerts: Sequence[Alert]) -> dict[str, Any]:
        """Alertmanager's webhook (version 4) shape."""
        items: list[dict[str, Any]] = []
        for alert in alerts:
            labels = {"alertname": alert.rule, "severity": alert.severity, **alert.labels}
            items.append({
                "status": "resolved" if alert.transition == "resolved" else "firing",
                "labels": labels,
                "annotations": {"summary": alert.summary(), "description": alert.description},
                "startsAt": alert.started_at,
                "endsAt": alert.ended_at or "0001-01-01T00:00:00Z",
                "generatorURL": "",
                "fingerprint": hashlib.sha256(alert.dedup_key.encode()).hexdigest()[:16],
            })
        label_sets = [set(i["labels"].items()) for i in items]
        common = set.intersection(*label_sets) if label_sets else set()
        status = "firing" if any(i["status"] == "firing" for i in items) else "resolved"
        return {
            "version": "4",
            "groupKey": "{}:" + json.dumps(sorted(common)),
            "truncatedAlerts": 0,
            "status": status,
            "receiver": self.receiver,
            "groupLabels": {},
            "commonLabels": dict(common),
            "commonAnnotations": {},
            "externalURL": "",
            "alerts": items,
        }

    def deliver(self, alerts: Sequence[Alert]) -> list[Delivery]:
        """One signed POST for the whole group."""
        body = json.dumps(self.payload(alerts), ensure_ascii=False).encode("utf-8")
        headers = {}
        if self.secret:
            stamp = str(int(time.time()))
            digest = hmac.new(self.secret.encode(), stamp.encode() + b"." + body,
                              hashlib.sha256).hexdigest()
            headers = {"X-Chainwatch-Timestamp": stamp,
                       "X-Chainwatch-Signature": f"sha256={digest}"}
        result = post_json(self.url, body, headers, self.policy)
        return [result] * len(alerts)


class LoggingNotifier(Notifier):
    """Alerts as log records (warning, critical as error) on the `chainwatch.alerts` logger."""

    name = "logging"

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("chainwatch.alerts")

    def deliver(self, alerts: Sequence[Alert]) -> list[Delivery]:
        """Log each alert."""
        for alert in alerts:
            level = logging.ERROR if alert.severity == "critical" else logging.WARNING
            if alert.transition == "resolved" or alert.severity == "info":
                level = logging.INFO
            self.logger.log(level, "%s", alert.summary())
        return [Delivery("sent", None, None, 1)] * len(alerts)


class CallableNotifier(Notifier):
    """Any callable, called with the list of alerts of a group."""

    def __init__(self, fn: Callable[[list[Alert]], Any], name: str | None = None) -> None:
        if not callable(fn):
            raise ValueError("CallableNotifier needs a callable")
        self.fn = fn
        self.name = str(name or getattr(fn, "__name__", "callable"))

    def deliver(self, alerts: Sequence[Alert]) -> list[Delivery]:
        """Call the function; an exception is a failed delivery."""
        try:
            self.fn(list(alerts))
        except Exception as exc:
            return [Delivery("failed", None, f"{type(exc).__name__}: {exc}", 1)] * len(alerts)
        return [Delivery("sent", None, None, 1)] * len(alerts)


def as_notifier(value: Notifier | Callable[[list[Alert]], Any]) -> Notifier:
    """A notifier from a notifier or a plain callable."""
    if isinstance(value, Notifier):
        return value
    return CallableNotifier(value)
