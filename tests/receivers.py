"""Real HTTP receivers on 127.0.0.1 that play Slack, PagerDuty and a webhook endpoint.

A `Receiver` is a threaded HTTP server. Each path answers from a script (status codes,
`Retry-After`, a hang of N seconds) and then from its default reply; every request is recorded
with its body, headers and arrival time. A path can validate what it receives against the
service's documented required fields and answer 400 like the service would.

A hang waits on an event that `stop()` sets, so a receiver told to hang for 30 s ends at
teardown instead of keeping the test (or its threads) alive.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import hashlib
import hmac
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SLACK_PATH = "/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"
PAGERDUTY_PATH = "/v2/enqueue"
WEBHOOK_PATH = "/hooks/alerts"

SLACK_HEADER_LIMIT = 150
SLACK_SECTION_LIMIT = 3000
SLACK_BLOCK_LIMIT = 50
SLACK_TEXT_LIMIT = 40_000
PAGERDUTY_SUMMARY_LIMIT = 1024
PAGERDUTY_DEDUP_KEY_LIMIT = 255
PAGERDUTY_ACTIONS = ("trigger", "acknowledge", "resolve")
PAGERDUTY_SEVERITIES = ("critical", "error", "warning", "info")
ALERTMANAGER_ALERT_FIELDS = (
    "status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"
)


@dataclass(frozen=True)
class Reply:
    """One scripted answer: a status, optional Retry-After and body, or a hang first."""

    status: int = 200
    body: bytes = b""
    retry_after: str | None = None
    hang_s: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Request:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    reply: Reply
    problems: list[str] = field(default_factory=list)

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


Validator = Callable[[Request], list[str]]


class _Server(ThreadingHTTPServer):
    # Handler threads are joined by server_close(), so no request outlives the receiver.
    daemon_threads = False
    block_on_close = True
    receiver: Receiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (read timeout) is expected, not an error."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read `Receiver.requests` instead."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.server.receiver._answer(self.path, headers, body)
        if reply.hang_s:
            self.server.receiver.released.wait(reply.hang_s)
        try:
            self.send_response(reply.status)
            if reply.retry_after is not None:
                self.send_header("Retry-After", reply.retry_after)
            for name, value in reply.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:
            pass  # the client timed out and closed the connection during the hang
        self.close_connection = True


class Receiver:
    """A scripted HTTP endpoint on 127.0.0.1; use as a context manager or start()/stop()."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.released = threading.Event()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._scripts: dict[str, collections.deque[Reply]] = {}
        self._defaults: dict[str, Reply] = {}
        self._validators: dict[str, Validator] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Receiver:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.receiver = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="receiver",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """End every hang, stop serving and join all handler threads."""
        self.released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "receiver not started"
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    # -- scripting -----------------------------------------------------------------------------

    def script(self, path: str, *replies: Reply | int, then: Reply | int | None = None) -> None:
        """Answer the next requests to `path` with `replies`, then with `then` (if given)."""
        with self._lock:
            queue = self._scripts.setdefault(path, collections.deque())
            queue.extend(_reply(r) for r in replies)
            if then is not None:
                self._defaults[path] = _reply(then)

    def reply_always(self, path: str, reply: Reply | int) -> None:
        """Drop any scripted replies for `path` and answer every request with `reply`."""
        with self._lock:
            self._scripts.pop(path, None)
            self._defaults[path] = _reply(reply)

    def validate(self, path: str, validator: Validator, ok: Reply | int = 200) -> None:
        """Reject (400, problems as JSON) requests to `path` that `validator` finds wrong."""
        with self._lock:
            self._validators[path] = validator
            self._defaults.setdefault(path, _reply(ok))

    def release_hangs(self) -> None:
        """End current and future hangs now (a test that has seen enough)."""
        self.released.set()

    def _answer(self, path: str, headers: dict[str, str], body: bytes) -> Reply:
        with self._lock:
            request = Request(path, headers, body, time.monotonic(), Reply())
            validator = self._validators.get(path)
            problems = validator(request) if validator is not None else []
            if problems:
                reply = Reply(400, json.dumps({"status": "invalid event",
                                               "errors": problems}).encode())
            else:
                queue = self._scripts.get(path)
                reply = queue.popleft() if queue else self._defaults.get(path, Reply(404))
            request.reply = reply
            request.problems = problems
            self.requests.append(request)
            self._arrived.notify_all()
            return reply

    # -- reading -------------------------------------------------------------------------------

    def received(self, path: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def wait_for(self, count: int, path: str | None = None, timeout: float = 10.0) -> list[Request]:
        """Block until `count` requests (to `path`) have arrived; returns them all."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                seen = [r for r in self.requests if path is None or r.path == path]
                remaining = deadline - time.monotonic()
                if len(seen) >= count or remaining <= 0:
                    return seen
                self._arrived.wait(remaining)


def _reply(value: Reply | int) -> Reply:
    return value if isinstance(value, Reply) else Reply(value)


@contextlib.contextmanager
def refusing_url(path: str = "/") -> Iterator[str]:
    """A URL on 127.0.0.1 whose port is bound but not listening: connections are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}{path}"
    finally:
        sock.close()


# -- the services ----------------------------------------------------------------------------


PAGERDUTY_ACCEPTED = Reply(
    202, b'{"status":"success","message":"Event processed","dedup_key":"x"}',
    headers=(("Content-Type", "application/json"),),
)


def play_services(receiver: Receiver, *, secret: str | None = None) -> None:
    """Slack, PagerDuty and a webhook endpoint on one receiver, each validating its payloads."""
    receiver.validate(SLACK_PATH, lambda r: slack_problems(_body(r)), ok=Reply(200, b"ok"))
    receiver.validate(PAGERDUTY_PATH, lambda r: pagerduty_problems(_body(r)),
                      ok=PAGERDUTY_ACCEPTED)

    def webhook(request: Request) -> list[str]:
        problems = alertmanager_problems(_body(request))
        if secret is not None:
            problems += signature_problems(secret, request)
        return problems

    receiver.validate(WEBHOOK_PATH, webhook, ok=200)


def _body(request: Request) -> Any:
    try:
        return json.loads(request.body)
    except ValueError:
        return None


def _text(value: Any, name: str, limit: int | None = None) -> list[str]:
    if not isinstance(value, str) or not value:
        return [f"{name} must be a non-empty string"]
    if limit is not None and len(value) > limit:
        return [f"{name} is {len(value)} characters, more than {limit}"]
    return []


def slack_problems(body: Any) -> list[str]:
    """Slack incoming webhook: `text` or `blocks`, within Slack's documented limits."""
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    problems: list[str] = []
    text, blocks = body.get("text"), body.get("blocks")
    if not text and not blocks:
        return ["a message needs text or blocks"]
    if text is not None:
        problems += _text(text, "text", SLACK_TEXT_LIMIT)
    if blocks is None:
        return problems
    if not isinstance(blocks, list) or not blocks:
        return [*problems, "blocks must be a non-empty list"]
    if len(blocks) > SLACK_BLOCK_LIMIT:
        problems.append(f"{len(blocks)} blocks, more than {SLACK_BLOCK_LIMIT}")
    for i, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "header":
            obj = block.get("text") or {}
            if obj.get("type") != "plain_text":
                problems.append(f"blocks[{i}]: a header's text must be plain_text")
            problems += _text(obj.get("text"), f"blocks[{i}].text.text", SLACK_HEADER_LIMIT)
        elif kind == "section":
            obj = block.get("text") or {}
            if obj.get("type") not in ("plain_text", "mrkdwn"):
                problems.append(f"blocks[{i}]: a section's text must be plain_text or mrkdwn")
            problems += _text(obj.get("text"), f"blocks[{i}].text.text", SLACK_SECTION_LIMIT)
        elif kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
                problems.append(f"blocks[{i}]: a context needs 1 to 10 elements")
        elif kind != "divider":
            problems.append(f"blocks[{i}]: unexpected block type {kind!r}")
    return problems


def slack_escaping_problems(body: Any) -> list[str]:
    """Slack's control characters `&`, `<`, `>` left raw in mrkdwn text (they must be entities).

    Slack parses them for mentions and links (`<!channel>`, `<url|text>`), so text that is not
    meant as markup has to carry `&amp;`, `&lt;` and `&gt;` instead.
    """
    texts = [body.get("text") or ""]
    for block in body.get("blocks") or []:
        obj = block.get("text") or {}
        if obj.get("type") == "mrkdwn":
            texts.append(obj.get("text") or "")
        texts += [e.get("text") or "" for e in block.get("elements") or []
                  if e.get("type") == "mrkdwn"]
    problems = []
    for text in texts:
        raw = re.sub(r"&(amp|lt|gt);", "", text)
        for char in "&<>":
            if char in raw:
                problems.append(f"unescaped {char!r} in {text[:80]!r}")
    return problems


def pagerduty_problems(body: Any) -> list[str]:
    """PagerDuty Events API v2 alert event: the documented required fields and limits."""
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    problems = _text(body.get("routing_key"), "routing_key")
    action = body.get("event_action")
    if action not in PAGERDUTY_ACTIONS:
        problems.append(f"event_action must be one of {PAGERDUTY_ACTIONS}, not {action!r}")
    problems += _text(body.get("dedup_key"), "dedup_key", PAGERDUTY_DEDUP_KEY_LIMIT)
    if action != "trigger":
        return problems
    payload = body.get("payload")
    if not isinstance(payload, dict):
        return [*problems, "a trigger needs a payload object"]
    problems += _text(payload.get("summary"), "payload.summary", PAGERDUTY_SUMMARY_LIMIT)
    problems += _text(payload.get("source"), "payload.source")
    if payload.get("severity") not in PAGERDUTY_SEVERITIES:
        problems.append(f"payload.severity must be one of {PAGERDUTY_SEVERITIES}")
    for name in ("timestamp", "component", "group", "class"):
        value = payload.get(name)
        if value is not None and not isinstance(value, str):
            problems.append(f"payload.{name} must be a string")
    if payload.get("timestamp") is not None and _rfc3339(payload["timestamp"]) is None:
        problems.append("payload.timestamp must be an ISO 8601 timestamp")
    details = payload.get("custom_details")
    if details is not None and not isinstance(details, dict):
        problems.append("payload.custom_details must be an object")
    return problems


def _string_map(value: Any, name: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{name} must be an object"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return [f"{name} must map strings to strings"]
    return []


def _rfc3339(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def alertmanager_problems(body: Any) -> list[str]:
    """Alertmanager's webhook (version 4) JSON shape."""
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    problems = []
    if body.get("version") != "4":
        problems.append("version must be '4'")
    problems += _text(body.get("groupKey"), "groupKey")
    if body.get("status") not in ("firing", "resolved"):
        problems.append("status must be firing or resolved")
    problems += _text(body.get("receiver"), "receiver")
    for name in ("groupLabels", "commonLabels", "commonAnnotations"):
        problems += _string_map(body.get(name), name)
    if not isinstance(body.get("externalURL"), str):
        problems.append("externalURL must be a string")
    alerts = body.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        return [*problems, "alerts must be a non-empty list"]
    for i, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            problems.append(f"alerts[{i}] must be an object")
            continue
        missing = [k for k in ALERTMANAGER_ALERT_FIELDS if k not in alert]
        if missing:
            problems.append(f"alerts[{i}] lacks {missing}")
            continue
        if alert["status"] not in ("firing", "resolved"):
            problems.append(f"alerts[{i}].status must be firing or resolved")
        problems += _string_map(alert["labels"], f"alerts[{i}].labels")
        problems += _string_map(alert["annotations"], f"alerts[{i}].annotations")
        starts, ends = _rfc3339(alert["startsAt"]), _rfc3339(alert["endsAt"])
        if starts is None or ends is None:
            problems.append(f"alerts[{i}]: startsAt and endsAt must be RFC 3339 times")
        elif alert["status"] == "resolved" and ends < starts:
            problems.append(f"alerts[{i}] ends before it starts")
        if not isinstance(alert["generatorURL"], str):
            problems.append(f"alerts[{i}].generatorURL must be a string")
        problems += _text(alert["fingerprint"], f"alerts[{i}].fingerprint")
        common = body.get("commonLabels")
        labels = alert["labels"]
        if isinstance(common, dict) and isinstance(labels, dict):
            if any(labels.get(k) != v for k, v in common.items()):
                problems.append(f"alerts[{i}] lacks a common label")
    if not problems:
        any_firing = any(a["status"] == "firing" for a in alerts)
        if body["status"] != ("firing" if any_firing else "resolved"):
            problems.append("status must be firing while any alert fires")
    return problems


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The expected `X-Chainwatch-Signature`: HMAC-SHA256 over `<timestamp>.<body>`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def signature_problems(secret: str, request: Request, max_age_s: float = 300) -> list[str]:
    """Check the webhook's HMAC signature and that its timestamp is recent."""
    stamp = request.header("X-Chainwatch-Timestamp")
    given = request.header("X-Chainwatch-Signature")
    if not stamp or not given:
        return ["the request is not signed"]
    if not hmac.compare_digest(given, signature(secret, stamp, request.body)):
        return ["bad signature"]
    if not stamp.isdigit() or abs(time.time() - int(stamp)) > max_age_s:
        return ["stale or malformed signature timestamp"]
    return []
