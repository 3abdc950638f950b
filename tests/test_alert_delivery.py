"""Alert delivery over real HTTP: Slack, PagerDuty and webhook receivers on 127.0.0.1.

The receivers (tests/receivers.py) validate each payload against the service's documented
required fields and answer 200, 202, 400, 404, 429 with Retry-After, 500, or hang. Retry
timings are observed from the receiver's arrival times; the one timing comparison is the app's
latency with a hanging notifier against no notifier, as a ratio within one test run.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnablePassthrough

import chainwatch
from chainwatch import ChainWatchHandler
from chainwatch.alerts import (
    Alert,
    AlertHook,
    CallableNotifier,
    LoggingNotifier,
    PagerDutyNotifier,
    RetryPolicy,
    Rule,
    SlackNotifier,
    WebhookNotifier,
    default_rules,
    engine,
)
from chainwatch.alerts.delivery import Dispatcher
from chainwatch.store import database
from receivers import (
    PAGERDUTY_PATH,
    SLACK_PATH,
    WEBHOOK_PATH,
    Receiver,
    Reply,
    alertmanager_problems,
    play_services,
    refusing_url,
    signature,
    slack_escaping_problems,
)

MS = 1_000_000
SECOND = 1_000 * MS
MINUTE = 60 * SECOND
T0 = 1_780_000_000 * SECOND
SECRET = "whsec-7f1c2a"
ROUTING_KEY = "R0UTINGKEY0123456789abcdef012345"
FAST = RetryPolicy(max_attempts=3, backoff_s=0.05, max_backoff_s=0.2, max_retry_after_s=5.0,
                   connect_timeout_s=1.0, read_timeout_s=0.5)
ERRORS = Rule("errors", "error_rate > 0.1", severity="critical", group_by=("model",),
              description="Model calls are failing.")

Row = dict[str, Any]


# -- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        play_services(r, secret=SECRET)
        yield r


def slack(receiver: Receiver, policy: RetryPolicy = FAST) -> SlackNotifier:
    return SlackNotifier(receiver.url(SLACK_PATH), policy=policy)


def pagerduty(receiver: Receiver, policy: RetryPolicy = FAST) -> PagerDutyNotifier:
    return PagerDutyNotifier(ROUTING_KEY, endpoint=receiver.url(PAGERDUTY_PATH), policy=policy)


def webhook(receiver: Receiver, policy: RetryPolicy = FAST, **kwargs: Any) -> WebhookNotifier:
    kwargs.setdefault("secret", SECRET)
    return WebhookNotifier(receiver.url(WEBHOOK_PATH), policy=policy, **kwargs)


class Clock:
    def __init__(self, now_ns: int) -> None:
        self.now = now_ns

    def __call__(self) -> int:
        return self.now


def record(
    db_path: Path, at: int, n: int, *, failed: int = 0, model: str = "gpt-4o",
    chain: str = "support",
) -> None:
    """`n` model calls (the first `failed` of them failing) through the handler's recorder."""
    clock = Clock(at)
    handler = ChainWatchHandler(db_path, clock=clock, hooks=[])
    rec = handler.recorder
    for i in range(n):
        root, llm = str(uuid.uuid4()), str(uuid.uuid4())
        rec.start(root, None, chain, "chain", "manual", {"question": "hi"})
        span = rec.start(llm, root, "chat", "llm", "manual", "hi")
        span.model = model
        clock.now += 100 * MS
        if i < failed:
            rec.end(llm, error=TimeoutError("provider timed out"))
        else:
            rec.end(llm, "hello")
        rec.end(root, "hello")
        clock.now += SECOND
    assert handler.flush()
    handler.shutdown()


def evaluate(db_path: Path, rules: list[Rule], notifiers: list[Any], at: int) -> list[str]:
    queued = chainwatch.alerts.evaluate(rules, notifiers, db=db_path, now_ns=at, wait=True)
    return [n.alert.transition for n in queued]


def notification_rows(db_path: Path) -> list[Row]:
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM alert_notifications ORDER BY id")]
    finally:
        conn.close()


def outcome(row: Row) -> tuple[Any, ...]:
    return (row["notifier"], row["transition"], row["status"], row["http_status"],
            row["attempts"])


def gaps(requests: list[Any]) -> list[float]:
    return [b.received_at - a.received_at for a, b in zip(requests, requests[1:], strict=False)]


def qa_chain() -> Runnable[str, str]:
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    model = FakeListChatModel(responses=["Paris is the capital of France."])
    return {"question": RunnablePassthrough()} | prompt | model | StrOutputParser()


# -- payloads the services accept ---------------------------------------------------------------


def test_fire_and_resolve_reach_slack_pagerduty_and_webhook_in_their_shapes(
    receiver: Receiver, db_path: Path
) -> None:
    notifiers = [slack(receiver), pagerduty(receiver), webhook(receiver)]
    record(db_path, T0, 10, failed=5)
    assert evaluate(db_path, [ERRORS], notifiers, T0 + MINUTE) == ["firing"] * 3
    record(db_path, T0 + 20 * MINUTE, 10)
    assert evaluate(db_path, [ERRORS], notifiers, T0 + 21 * MINUTE) == ["resolved"] * 3
    for i in range(20):  # the resolve is sent once
        assert evaluate(db_path, [ERRORS], notifiers, T0 + 22 * MINUTE + i * SECOND) == []

    requests = receiver.received()
    assert all(r.problems == [] for r in requests), [r.problems for r in requests]
    assert len(requests) == 6

    fire, resolve = (r.json for r in receiver.received(PAGERDUTY_PATH))
    assert (fire["event_action"], resolve["event_action"]) == ("trigger", "resolve")
    assert fire["routing_key"] == resolve["routing_key"] == ROUTING_KEY
    assert fire["dedup_key"] == resolve["dedup_key"]
    assert fire["payload"]["severity"] == "critical"
    assert fire["payload"]["source"] == "chainwatch"
    assert fire["payload"]["summary"].startswith("[CRITICAL] errors model=gpt-4o: error_rate")
    assert fire["payload"]["custom_details"]["value"] == pytest.approx(0.5)

    fired, resolved = (r.json for r in receiver.received(WEBHOOK_PATH))
    assert (fired["status"], resolved["status"]) == ("firing", "resolved")
    [a], [b] = fired["alerts"], resolved["alerts"]
    assert a["labels"] == b["labels"] == {"alertname": "errors", "severity": "critical",
                                          "model": "gpt-4o"}
    assert a["fingerprint"] == b["fingerprint"]
    assert a["startsAt"] == b["startsAt"]
    assert a["endsAt"] == "0001-01-01T00:00:00Z"
    assert b["endsAt"] > b["startsAt"]
    assert a["annotations"]["description"] == "Model calls are failing."
    assert fired["commonLabels"] == a["labels"]

    fired_msg, resolved_msg = (r.json for r in receiver.received(SLACK_PATH))
    assert fired_msg["blocks"][0]["text"]["text"] == "chainwatch: 1 firing, 0 resolved"
    assert "Model calls are failing." in fired_msg["blocks"][1]["text"]["text"]
    assert "[CRITICAL] errors model=gpt-4o" in fired_msg["text"]
    assert resolved_msg["blocks"][0]["text"]["text"] == "chainwatch: 0 firing, 1 resolved"
    assert "[RESOLVED] errors model=gpt-4o" in resolved_msg["text"]

    rows = notification_rows(db_path)
    assert [outcome(r) for r in rows] == [
        ("slack", "firing", "sent", 200, 1),
        ("pagerduty", "firing", "sent", 202, 1),
        ("webhook", "firing", "sent", 200, 1),
        ("slack", "resolved", "sent", 200, 1),
        ("pagerduty", "resolved", "sent", 202, 1),
        ("webhook", "resolved", "sent", 200, 1),
    ]
    assert all(r["error"] is None and r["finished_at"] and r["pid"] == os.getpid()
               for r in rows)
    assert {r["labels"] for r in rows} == {'{"model": "gpt-4o"}'}


def test_one_evaluation_sends_one_message_with_every_alert(
    receiver: Receiver, db_path: Path
) -> None:
    record(db_path, T0, 10, failed=4)
    rules = [ERRORS, Rule("busy", "count >= 10", severity="info")]
    notifiers = [slack(receiver), pagerduty(receiver), webhook(receiver)]
    assert evaluate(db_path, rules, notifiers, T0 + MINUTE) == ["firing"] * 6

    [message] = receiver.received(SLACK_PATH)
    sections = [b for b in message.json["blocks"] if b["type"] == "section"]
    assert message.json["blocks"][0]["text"]["text"] == "chainwatch: 2 firing, 0 resolved"
    assert len(sections) == 2
    [hook] = receiver.received(WEBHOOK_PATH)
    assert [a["labels"]["alertname"] for a in hook.json["alerts"]] == ["errors", "busy"]
    assert hook.json["commonLabels"] == {}
    events = [r.json for r in receiver.received(PAGERDUTY_PATH)]
    assert [e["payload"]["severity"] for e in events] == ["critical", "info"]
    assert len({e["dedup_key"] for e in events}) == 2
    assert all(r.problems == [] for r in receiver.received())


def test_webhook_signature_is_hmac_sha256_of_timestamp_and_body(
    receiver: Receiver, db_path: Path
) -> None:
    record(db_path, T0, 5, failed=5)
    evaluate(db_path, [ERRORS], [webhook(receiver)], T0 + MINUTE)
    [request] = receiver.received(WEBHOOK_PATH)
    stamp = request.header("X-Chainwatch-Timestamp")
    assert stamp is not None and abs(int(stamp) - time.time()) < 60
    assert request.header("X-Chainwatch-Signature") == signature(SECRET, stamp, request.body)
    assert request.header("Content-Type") == "application/json"

    # a wrong secret fails the receiver's check: a 400, which is final
    record(db_path, T0 + 30 * MINUTE, 5, failed=5)
    wrong = WebhookNotifier(receiver.url(WEBHOOK_PATH), secret="not-the-secret", policy=FAST)
    evaluate(db_path, [ERRORS], [wrong], T0 + 31 * MINUTE)
    rejected = receiver.received(WEBHOOK_PATH)[-1]
    assert rejected.problems == ["bad signature"]
    assert outcome(notification_rows(db_path)[-1]) == ("webhook", "repeat", "failed", 400, 1)


def test_unsigned_webhook_has_no_signature_headers(receiver: Receiver, db_path: Path) -> None:
    receiver.validate("/unsigned", lambda r: alertmanager_problems(json.loads(r.body)))
    record(db_path, T0, 5, failed=5)
    plain = WebhookNotifier(receiver.url("/unsigned"), policy=FAST, receiver="team-llm")
    evaluate(db_path, [ERRORS], [plain], T0 + MINUTE)
    [request] = receiver.received("/unsigned")
    assert request.problems == []
    assert request.header("X-Chainwatch-Signature") is None
    assert request.json["receiver"] == "team-llm"


def test_pagerduty_dedup_key_fits_pagerdutys_limit(receiver: Receiver, db_path: Path) -> None:
    """PagerDuty rejects a dedup_key over 255 characters; rule and chain names can be long."""
    chain = "customer-support-retrieval-augmented-generation-pipeline-" * 4
    rule = Rule("p95_latency_of_the_customer_support_rag_pipeline_in_production",
                "error_rate > 0.1", severity="critical", group_by=("chain", "model"))
    record(db_path, T0, 5, failed=5, chain=chain)
    evaluate(db_path, [rule], [pagerduty(receiver)], T0 + MINUTE)
    record(db_path, T0 + 20 * MINUTE, 5, chain=chain)
    evaluate(db_path, [rule], [pagerduty(receiver)], T0 + 21 * MINUTE)
    trigger, resolve = receiver.received(PAGERDUTY_PATH)
    assert trigger.problems == [] and resolve.problems == []
    assert trigger.json["dedup_key"] == resolve.json["dedup_key"]
    assert [r["status"] for r in notification_rows(db_path)] == ["sent", "sent"]


def test_slack_message_stays_within_slacks_limits(receiver: Receiver, db_path: Path) -> None:
    record(db_path, T0, 3)
    rules = [Rule(f"rule_{i:02d}_" + "x" * 180, "count > 0", description="d" * 5000)
             for i in range(60)]
    evaluate(db_path, rules, [slack(receiver), webhook(receiver)], T0 + MINUTE)
    [message] = receiver.received(SLACK_PATH)
    assert message.problems == []
    blocks = message.json["blocks"]
    assert len(blocks) == 50
    assert blocks[-1]["type"] == "context"
    assert "12 more" in blocks[-1]["elements"][0]["text"]
    assert all(len(b["text"]["text"]) <= 3000 for b in blocks if b["type"] == "section")
    [hook] = receiver.received(WEBHOOK_PATH)
    assert hook.problems == [] and len(hook.json["alerts"]) == 60


def test_slack_text_escapes_slacks_control_characters(
    receiver: Receiver, db_path: Path
) -> None:
    """A chain called "Q&A <!channel>" must not ping the whole channel."""
    record(db_path, T0, 5, failed=5, chain="Q&A <!channel>")
    rule = Rule("errors", "error_rate > 0.1", group_by=("chain",),
                description="Errors > 10 % & rising for <all users>.")
    evaluate(db_path, [rule], [slack(receiver)], T0 + MINUTE)
    [message] = receiver.received(SLACK_PATH)
    assert message.problems == []
    section = message.json["blocks"][1]["text"]["text"]
    assert "chain=Q&amp;A &lt;!channel&gt;" in section
    assert "error_rate &gt; 0.1" in section
    assert slack_escaping_problems(message.json) == []


def test_logging_notifier_levels_follow_severity(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record(db_path, T0, 5, failed=5)
    rules = [ERRORS, Rule("slowish", "count > 0"), Rule("fyi", "count > 0", severity="info")]
    notifier = LoggingNotifier()
    with caplog.at_level(logging.INFO, logger="chainwatch.alerts"):
        evaluate(db_path, rules, [notifier], T0 + MINUTE)
        record(db_path, T0 + 20 * MINUTE, 5)
        evaluate(db_path, rules, [notifier], T0 + 21 * MINUTE)
    logged = [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records
              if r.name == "chainwatch.alerts"]
    assert logged == [
        ("ERROR", "[CRITICAL] errors model=gpt-4o"),
        ("WARNING", "[WARNING] slowish"),
        ("INFO", "[INFO] fyi"),
        ("INFO", "[RESOLVED] errors model=gpt-4o"),
    ]
    assert [r["status"] for r in notification_rows(db_path)] == ["sent"] * 4


def test_the_issues_handler_configuration_end_to_end(
    receiver: Receiver, db_path: Path
) -> None:
    handler = ChainWatchHandler(
        db_path,
        alerts=[*default_rules(),
                Rule("refusals", "refusal_rate > 0.1", severity="warning", window_minutes=15,
                     cooldown_minutes=30)],
        notifiers=[slack(receiver), pagerduty(receiver), webhook(receiver)],
    )
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    model = FakeListChatModel(responses=["I'm sorry, but I can't help with that request."])
    chain = {"question": RunnablePassthrough()} | prompt | model | StrOutputParser()
    for _ in range(3):
        chain.invoke("How do I pick a lock?", config={"callbacks": [handler]})
    assert handler.flush()
    [hook] = [h for h in handler.hooks if isinstance(h, AlertHook)]
    assert hook.dispatcher is not None and hook.dispatcher.wait(10)
    handler.shutdown()

    assert [r.path for r in receiver.received()].count(PAGERDUTY_PATH) == 1
    assert all(r.problems == [] for r in receiver.received())
    assert "refusals" in receiver.received(SLACK_PATH)[0].json["text"]
    assert receiver.received(PAGERDUTY_PATH)[0].json["payload"]["severity"] == "warning"
    [active] = chainwatch.alerts.active(db=db_path)
    assert (active["rule"], active["value"]) == ("refusals", 1.0)
    assert [r["status"] for r in notification_rows(db_path)] == ["sent"] * 3


# -- notifier configuration ---------------------------------------------------------------------


def test_notifier_configuration_is_validated() -> None:
    assert PagerDutyNotifier("k" * 32).url == "https://events.pagerduty.com/v2/enqueue"
    assert PagerDutyNotifier("k", endpoint="http://127.0.0.1:9/x").url == "http://127.0.0.1:9/x"
    with pytest.raises(ValueError, match="routing key"):
        PagerDutyNotifier("")
    for bad in ("hooks.slack.com/services/x", "ftp://example.com/x", "http:///path"):
        with pytest.raises(ValueError, match="http"):
            SlackNotifier(bad)
        with pytest.raises(ValueError, match="http"):
            WebhookNotifier(bad)
        with pytest.raises(ValueError, match="http"):
            PagerDutyNotifier("k", endpoint=bad)
    with pytest.raises(ValueError, match="callable"):
        CallableNotifier("not callable")  # type: ignore[arg-type]
    policy = RetryPolicy()
    assert policy.connect_timeout_s > 0 and policy.read_timeout_s > 0


def test_evaluate_rejects_duplicate_notifier_names_before_changing_state(
    receiver: Receiver, db_path: Path
) -> None:
    """A configuration error must not consume the alert (firing, with nobody told)."""
    record(db_path, T0, 5, failed=5)
    two_slacks = [slack(receiver), SlackNotifier(receiver.url("/other"), policy=FAST)]
    with pytest.raises(ValueError, match="unique"):
        evaluate(db_path, [ERRORS], two_slacks, T0 + MINUTE)
    assert notification_rows(db_path) == []
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT state FROM alerts").fetchall() in ([], [("inactive",)])
    finally:
        conn.close()


def test_evaluate_reuses_the_delivery_thread_of_a_notifier_function(db_path: Path) -> None:
    """Calling evaluate() on a schedule with the same function must not add a thread each time."""
    record(db_path, T0, 3)
    got: list[Alert] = []

    def page_oncall(alerts: list[Alert]) -> None:
        got.extend(alerts)

    rule = Rule("always", "count > 0", cooldown_minutes=0, window_minutes=60)
    for i in range(20):
        evaluate(db_path, [rule], [page_oncall], T0 + MINUTE + i * SECOND)
    assert len(got) == 20
    workers = [t for t in threading.enumerate() if t.name == "chainwatch-notify:page_oncall"]
    assert len(workers) == 1


# -- retries, timeouts and what is recorded -----------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 404, 413])
def test_a_4xx_is_final(receiver: Receiver, db_path: Path, status: int) -> None:
    receiver.reply_always(WEBHOOK_PATH, status)
    record(db_path, T0, 5, failed=5)
    evaluate(db_path, [ERRORS], [webhook(receiver)], T0 + MINUTE)
    assert len(receiver.received(WEBHOOK_PATH)) == 1
    [row] = notification_rows(db_path)
    assert outcome(row) == ("webhook", "firing", "failed", status, 1)
    assert row["error"].startswith(f"HTTP {status}")
    assert row["finished_at"] is not None


def test_429_with_retry_after_is_honoured(receiver: Receiver, db_path: Path) -> None:
    receiver.script(PAGERDUTY_PATH, Reply(429, retry_after="1"))
    record(db_path, T0, 5, failed=5)
    evaluate(db_path, [ERRORS], [pagerduty(receiver)], T0 + MINUTE)
    first, second = receiver.received(PAGERDUTY_PATH)
    assert second.received_at - first.received_at >= 1.0
    assert first.body == second.body
    [row] = notification_rows(db_path)
    assert outcome(row) == ("pagerduty", "firing", "sent", 202, 2)
    assert row["error"] is None


def test_retry_after_as_an_http_date_is_honoured(receiver: Receiver, db_path: Path) -> None:
    record(db_path, T0, 5, failed=5)
    # whole seconds: 3 s from now is at least 2 s away when the answer is read
    later = email.utils.formatdate(time.time() + 3, usegmt=True)
    receiver.script(SLACK_PATH, Reply(429, retry_after=later))
    evaluate(db_path, [ERRORS], [slack(receiver)], T0 + MINUTE)
    first, second = receiver.received(SLACK_PATH)
    assert second.received_at - first.received_at >= 1.5
    assert outcome(notification_rows(db_path)[0]) == ("slack", "firing", "sent", 200, 2)


def test_retry_after_is_capped_by_the_policy(receiver: Receiver, db_path: Path) -> None:
    policy = RetryPolicy(max_attempts=3, backoff_s=0.05, max_retry_after_s=0.3,
                         read_timeout_s=0.5)
    receiver.script(SLACK_PATH, Reply(429, retry_after="3600"), Reply(503, retry_after="3600"))
    record(db_path, T0, 5, failed=5)
    evaluate(db_path, [ERRORS], [slack(receiver, policy)], T0 + MINUTE)
    requests = receiver.received(SLACK_PATH)
    assert len(requests) == 3
    assert all(gap >= 0.3 for gap in gaps(requests))
    assert outcome(notification_rows(db_path)[0]) == ("slack", "firing", "sent", 200, 3)


def test_a_malformed_retry_after_falls_back_to_backoff(receiver: Receiver, db_path: Path) -> None:
    receiver.script(WEBHOOK_PATH, Reply(429, retry_after="soon"))
    record(db_path, T0, 5, failed=5)
    evaluate(db_path, [ERRORS], [webhook(receiver)], T0 + MINUTE)
    assert len(receiver.received(WEBHOOK_PATH)) == 2
    assert outcome(notification_rows(db_path)[0]) == ("webhook", "firing", "sent", 200, 2)


def test_5xx_is_retried_up_to_max_attempts(receiver: Receiver, db_path: Path) -> None:
    receiver.reply_always(WEBHOOK_PATH, 500)
    record(db_path, T0, 5, failed=5)
    evaluate(db_path, [ERRORS], [webhook(receiver)], T0 + MINUTE)
    requests = receiver.received(WEBHOOK_PATH)
    assert len(requests) == FAST.max_attempts == 3
    first_gap, second_gap = gaps(requests)
    assert first_gap >= FAST.backoff_s and second_gap >= 2 * FAST.backoff_s  # backoff grows
    [row] = notification_rows(db_path)
    assert outcome(row) == ("webhook", "firing", "failed", 500, 3)
    assert row["error"] == "HTTP 500 Internal Server Error"


def test_5xx_then_success_is_sent(receiver: Receiver, db_path: Path) -> None:
    receiver.script(PAGERDUTY_PATH, 503, 502)
    record(db_path, T0, 5, failed=5)
    evaluate(db_path, [ERRORS], [pagerduty(receiver)], T0 + MINUTE)
    assert [r.reply.status for r in receiver.received(PAGERDUTY_PATH)] == [503, 502, 202]
    [row] = notification_rows(db_path)
    assert outcome(row) == ("pagerduty", "firing", "sent", 202, 3)
    assert row["error"] is None


def test_connection_refused_is_retried(db_path: Path) -> None:
    record(db_path, T0, 5, failed=5)
    with refusing_url("/hook") as url:
        evaluate(db_path, [ERRORS], [WebhookNotifier(url, policy=FAST)], T0 + MINUTE)
    [row] = notification_rows(db_path)
    assert outcome(row) == ("webhook", "firing", "failed", None, 3)
    assert "ConnectionRefusedError" in row["error"]


def test_a_hanging_receiver_is_cut_by_the_read_timeout(db_path: Path) -> None:
    policy = RetryPolicy(max_attempts=2, backoff_s=0.05, connect_timeout_s=1.0,
                         read_timeout_s=0.5)
    record(db_path, T0, 5, failed=5)
    with Receiver() as hanging:
        hanging.reply_always("/hook", Reply(200, hang_s=30))
        evaluate(db_path, [ERRORS], [WebhookNotifier(hanging.url("/hook"), policy=policy)],
                 T0 + MINUTE)
        assert len(hanging.received("/hook")) == 2
    # leaving the block ended both hangs and joined the receiver's threads
    assert not [t for t in threading.enumerate() if "process_request_thread" in t.name]
    [row] = notification_rows(db_path)
    assert outcome(row) == ("webhook", "firing", "failed", None, 2)
    assert "timed out" in row["error"]


# -- isolation: the app, the writer and the other notifiers never wait --------------------------


def test_a_raising_callable_does_not_stop_the_webhook(receiver: Receiver, db_path: Path) -> None:
    def pager(alerts: list[Alert]) -> None:
        raise RuntimeError("pager service is down")

    record(db_path, T0, 5, failed=5)
    evaluate(db_path, [ERRORS], [CallableNotifier(pager), webhook(receiver)], T0 + MINUTE)
    assert len(receiver.received(WEBHOOK_PATH)) == 1
    by_notifier = {r["notifier"]: r for r in notification_rows(db_path)}
    assert outcome(by_notifier["pager"]) == ("pager", "firing", "failed", None, 1)
    assert by_notifier["pager"]["error"] == "RuntimeError: pager service is down"
    assert outcome(by_notifier["webhook"]) == ("webhook", "firing", "sent", 200, 1)


def test_a_hanging_notifier_does_not_delay_the_others_or_the_caller(
    receiver: Receiver, db_path: Path
) -> None:
    receiver.reply_always(WEBHOOK_PATH, Reply(200, hang_s=30))
    patient = RetryPolicy(max_attempts=1, read_timeout_s=30)
    told = threading.Event()
    record(db_path, T0, 5, failed=5)

    def chat(alerts: list[Alert]) -> None:
        told.set()

    notifiers = [webhook(receiver, patient), CallableNotifier(chat)]
    queued = chainwatch.alerts.evaluate([ERRORS], notifiers, db=db_path, now_ns=T0 + MINUTE)
    assert len(queued) == 2  # evaluate returned while the webhook is still to be delivered
    assert told.wait(10)
    assert len(receiver.wait_for(1, WEBHOOK_PATH)) == 1
    statuses = {r["notifier"]: r["status"] for r in notification_rows(db_path)}
    assert statuses["webhook"] == "queued"  # still hanging
    receiver.release_hangs()
    assert told.is_set()
    deadline = time.monotonic() + 10
    while notification_rows(db_path)[0]["status"] == "queued" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert {r["notifier"]: r["status"] for r in notification_rows(db_path)} == {
        "webhook": "sent", "chat": "sent"
    }


def test_a_full_queue_drops_and_records_it(db_path: Path) -> None:
    record(db_path, T0, 3)
    gate, busy = threading.Event(), threading.Event()
    delivered: list[list[Alert]] = []

    def slow(alerts: list[Alert]) -> None:
        busy.set()
        gate.wait(10)
        delivered.append(alerts)

    dispatcher = Dispatcher([CallableNotifier(slow)], db_path, max_queue=1)
    rule = Rule("always", "count > 0", cooldown_minutes=0, window_minutes=60)
    db = database.connect(db_path)
    try:
        groups = [engine.evaluate(db.conn, [rule], ["slow"], now_ns=T0 + MINUTE + i * SECOND)
                  for i in range(3)]
    finally:
        db.conn.close()
    dispatcher.dispatch(groups[0])
    assert busy.wait(5)  # the worker holds the first group
    dispatcher.dispatch(groups[1])  # fills the queue
    dispatcher.dispatch(groups[2])  # dropped, without waiting
    assert dispatcher.dropped == 1
    dropped = notification_rows(db_path)[2]
    assert (dropped["status"], dropped["attempts"], dropped["error"]) == (
        "dropped", 0, "notifier queue full"
    )
    gate.set()
    assert dispatcher.wait(10)
    assert len(delivered) == 2
    assert [r["status"] for r in notification_rows(db_path)] == ["sent", "sent", "dropped"]


def test_a_hanging_receiver_leaves_the_apps_latency_unchanged(
    receiver: Receiver, tmp_path: Path
) -> None:
    receiver.reply_always(WEBHOOK_PATH, Reply(200, hang_s=30))
    policy = RetryPolicy(max_attempts=2, backoff_s=0.05, connect_timeout_s=1.0,
                         read_timeout_s=0.5)
    hook = AlertHook([Rule("always", "count > 0", cooldown_minutes=0)],
                     [webhook(receiver, policy)], min_interval_s=0)
    alerting = ChainWatchHandler(tmp_path / "alerting.db", hooks=[hook])
    plain = ChainWatchHandler(tmp_path / "plain.db", hooks=[])
    chain = qa_chain()
    timings: dict[str, list[float]] = {"alerting": [], "plain": []}

    def timed(name: str, handler: ChainWatchHandler) -> None:
        start = time.perf_counter()
        chain.invoke("Capital of France?", config={"callbacks": [handler]})
        timings[name].append(time.perf_counter() - start)

    for handler in (plain, alerting):  # warm up
        chain.invoke("Capital of France?", config={"callbacks": [handler]})
    assert receiver.wait_for(1, WEBHOOK_PATH)  # the notifier is now stuck on the receiver
    for i in range(60):
        order = [("plain", plain), ("alerting", alerting)]
        for name, handler in order if i % 2 else reversed(order):
            timed(name, handler)
    ratio = statistics.median(timings["alerting"]) / statistics.median(timings["plain"])
    hanging = len(receiver.received(WEBHOOK_PATH))
    backlog = [r for r in notification_rows(tmp_path / "alerting.db") if r["status"] == "queued"]

    receiver.reply_always(WEBHOOK_PATH, 200)
    receiver.release_hangs()
    assert alerting.flush() and plain.flush()
    assert hook.dispatcher is not None and hook.dispatcher.wait(60)
    alerting.shutdown()
    plain.shutdown()
    print(f"median app latency ratio, hanging notifier vs none: {ratio:.2f}")
    assert ratio < 3, timings
    assert hanging >= 1 and backlog  # the notifier was stuck the whole time
    rows = notification_rows(tmp_path / "alerting.db")
    assert len(rows) > len(backlog) and {r["status"] for r in rows} <= {"sent", "failed"}
    assert len(chainwatch.traces(db=tmp_path / "alerting.db", limit=None)) == 61


# -- several processes, one database ------------------------------------------------------------


_PROCESS = textwrap.dedent(
    """
    import json, sys
    from chainwatch import alerts

    db, url, secret, now_ns = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    rule = alerts.Rule("errors", "error_rate > 0.1", window_minutes=60, cooldown_minutes=30)
    policy = alerts.RetryPolicy(max_attempts=2, backoff_s=0.05, read_timeout_s=5)
    notifier = alerts.WebhookNotifier(url, secret=secret, policy=policy)
    print("ready", flush=True)
    sys.stdin.readline()
    sent = []
    for i in range(25):
        queued = alerts.evaluate([rule], [notifier], db=db, now_ns=now_ns + i * 10**9, wait=True)
        sent += [n.alert.transition for n in queued]
    print(json.dumps(sent), flush=True)
    """
)


def test_two_processes_sharing_a_database_send_one_notification(
    receiver: Receiver, db_path: Path
) -> None:
    record(db_path, T0, 10, failed=5)
    env = {**os.environ, "CHAINWATCH_RAISE_INTERNAL_ERRORS": "1"}
    args = [str(db_path), receiver.url(WEBHOOK_PATH), SECRET, str(T0 + MINUTE)]
    procs = [
        subprocess.Popen([sys.executable, "-c", _PROCESS, *args], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:  # both start evaluating at the same moment
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
    sent = [t for out, _ in results for t in json.loads(out.strip().splitlines()[-1])]
    assert sent == ["firing"]
    [request] = receiver.received(WEBHOOK_PATH)
    assert request.problems == []
    [row] = notification_rows(db_path)
    assert (row["status"], row["http_status"], row["attempts"]) == ("sent", 200, 1)
    assert row["pid"] in {p.pid for p in procs}


# -- the hook path: a writer that never waits ---------------------------------------------------


def test_alert_hook_delivers_from_its_own_thread(
    receiver: Receiver, db_path: Path
) -> None:
    seen_threads: list[str] = []

    def where(alerts: list[Alert]) -> None:
        seen_threads.append(threading.current_thread().name)

    handler = ChainWatchHandler(db_path, hooks=[], alerts=[Rule("any", "count > 0")],
                                notifiers=[where, webhook(receiver)])
    qa_chain().invoke("Capital of France?", config={"callbacks": [handler]})
    assert handler.flush()
    [hook] = handler.hooks
    assert isinstance(hook, AlertHook)
    assert hook.dispatcher is not None and hook.dispatcher.wait(10)
    handler.shutdown()
    assert seen_threads == ["chainwatch-notify:where"]
    assert len(receiver.received(WEBHOOK_PATH)) == 1
    assert {r["status"] for r in notification_rows(db_path)} == {"sent"}

