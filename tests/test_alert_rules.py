"""Alert rules and their states: validation, windows, pending/firing/resolved, no data, cooldowns.

The data comes from real LangChain runs through `ChainWatchHandler` with an injected clock: the
fake chat model moves the clock by its own latency, so every duration, time to first token and
window boundary is exact. `chainwatch.alerts.evaluate(..., now_ns=...)` then evaluates at chosen
times, and notifications go to a `CallableNotifier` that keeps what it was given.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough

import chainwatch
from chainwatch import ChainWatchHandler
from chainwatch.alerts import METRICS, Alert, AlertHook, CallableNotifier, Rule, default_rules
from chainwatch.quality import QualityHook

MS = 1_000_000
SECOND = 1_000 * MS
MINUTE = 60 * SECOND
T0 = 1_780_000_000 * SECOND  # 2026-05-28T20:26:40Z
HOUSE_PRICES = {"house-model": {"input_per_mtok": 1000.0, "output_per_mtok": 1000.0}}
REFUSAL = "I'm sorry, but I can't help with that request."
HEDGE = "I'm not entirely sure, but I believe the museum opens at nine."
PLAIN = "The museum opens at nine and closes at five."
EIFFEL = (
    "The Eiffel Tower was completed in 1889 for the World's Fair. "
    "It stands on the Champ de Mars in Paris."
)
INVENTED = (
    "Gustave Eiffel secretly sold the tower to Scottish bankers in 1925. "
    "Its elevators are powered by underground windmills."
)

Row = dict[str, Any]


# -- a fake provider that moves the clock --------------------------------------------------------


class Clock:
    """Nanoseconds since the epoch, moved by the test and by the model's latency."""

    def __init__(self, now_ns: int) -> None:
        self.now = now_ns

    def __call__(self) -> int:
        return self.now


class ScriptedChatModel(BaseChatModel):
    """A chat model with a fixed latency, time to first token and token usage."""

    model: str = "gpt-4o-mini"
    answers: list[str] = ["The capital of France is Paris."]
    latency_ms: float = 200.0
    ttft_ms: float = 50.0
    prompt_tokens: int = 100
    completion_tokens: int = 20
    clock: Any = None
    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _wait(self, ms: float) -> None:
        if self.clock is not None:
            self.clock.now += int(ms * MS)

    def _next_answer(self) -> str:
        answer = self.answers[self.calls % len(self.answers)]
        self.calls += 1
        return answer

    def _usage(self) -> dict[str, Any]:
        return {
            "usage_metadata": {
                "input_tokens": self.prompt_tokens,
                "output_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
            },
            "response_metadata": {"model_name": self.model},
        }

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self._wait(self.latency_ms)
        message = AIMessage(content=self._next_answer(), **self._usage())
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> Iterator[ChatGenerationChunk]:
        self._wait(self.ttft_ms)
        yield ChatGenerationChunk(message=AIMessageChunk(content=self._next_answer()))
        self._wait(self.latency_ms - self.ttft_ms)
        yield ChatGenerationChunk(message=AIMessageChunk(content="", **self._usage()))


class FailingChatModel(ScriptedChatModel):
    """The provider times out after `latency_ms`."""

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self._wait(self.latency_ms)
        raise ConnectionError("provider unreachable")


class FixedRetriever(BaseRetriever):
    """A real LangChain retriever that always returns the same documents."""

    texts: list[str]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return [Document(page_content=t) for t in self.texts]


def qa_chain(model: BaseChatModel, name: str) -> Runnable[str, str]:
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    chain = {"question": RunnablePassthrough()} | prompt | model | StrOutputParser()
    return chain.with_config(run_name=name)


def rag_chain(model: BaseChatModel, texts: list[str]) -> Runnable[str, str]:
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer only from:\n{context}"), ("human", "{question}")]
    )
    context = FixedRetriever(texts=texts) | RunnableLambda(
        lambda docs: "\n".join(d.page_content for d in docs)
    )
    chain = {"context": context, "question": RunnablePassthrough()} | prompt | model
    return (chain | StrOutputParser()).with_config(run_name="rag")


class Traffic:
    """Real LangChain runs through one handler; each call starts a second after the last."""

    def __init__(self, db_path: Path, clock: Clock | None, hooks: list[Any]) -> None:
        self.clock = clock
        self.handler = ChainWatchHandler(db_path, clock=clock, hooks=hooks, prices=HOUSE_PRICES)

    def run(
        self,
        n: int = 1,
        *,
        fail: bool = False,
        stream: bool = False,
        chain: str = "support",
        question: str = "When does the museum open?",
        **model: Any,
    ) -> None:
        llm = (FailingChatModel if fail else ScriptedChatModel)(clock=self.clock, **model)
        runnable = qa_chain(llm, chain)
        config = {"callbacks": [self.handler]}
        for _ in range(n):
            if self.clock is not None:
                self.clock.now += SECOND
            if fail:
                with pytest.raises(ConnectionError):
                    runnable.invoke(question, config=config)
            elif stream:
                assert "".join(runnable.stream(question, config=config))
            else:
                runnable.invoke(question, config=config)
        assert self.handler.flush()


class Inbox:
    """A notifier function that keeps every group of alerts it was sent."""

    __name__ = "inbox"

    def __init__(self) -> None:
        self.groups: list[list[Alert]] = []

    def __call__(self, alerts: list[Alert]) -> None:
        self.groups.append(alerts)

    @property
    def alerts(self) -> list[Alert]:
        return [a for group in self.groups for a in group]

    def transitions(self, rule: str | None = None) -> list[str]:
        return [a.transition for a in self.alerts if rule is None or a.rule == rule]


@pytest.fixture
def traffic(db_path: Path) -> Iterator[Callable[..., Traffic]]:
    made: list[Traffic] = []

    def make(clock: Clock | None = None, hooks: list[Any] | None = None) -> Traffic:
        t = Traffic(db_path, clock, [] if hooks is None else hooks)
        made.append(t)
        return t

    yield make
    for t in made:
        t.handler.shutdown()


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def evaluate(
    db_path: Path, inbox: Inbox
) -> Callable[..., list[tuple[str, str, dict[str, str]]]]:
    """Evaluate at `at` and wait for delivery; returns (rule, transition, labels) queued."""
    notifier = CallableNotifier(inbox, name="inbox")

    def run(rules: list[Rule], at: int) -> list[tuple[str, str, dict[str, str]]]:
        queued = chainwatch.alerts.evaluate(rules, [notifier], db=db_path, now_ns=at, wait=True)
        return [(n.alert.rule, n.alert.transition, n.alert.labels) for n in queued]

    return run


def rows(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def alert_state(db_path: Path, rule: str, labels: dict[str, str] | None = None) -> Row:
    key = json.dumps(dict(sorted((labels or {}).items())))
    [row] = rows(db_path, "SELECT * FROM alerts WHERE rule = ? AND labels = ?", (rule, key))
    return row


def iso(ns: int) -> str:
    seconds, rest = divmod(ns, SECOND)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:06d}+00:00"


# -- rules are data, validated when created -----------------------------------------------------


def test_the_issues_rule_is_data() -> None:
    rule = Rule("refusals", "refusal_rate > 0.1", severity="warning", window_minutes=15,
                cooldown_minutes=30)
    assert (rule.name, rule.metric, rule.threshold) == ("refusals", "refusal_rate", 0.1)
    assert rule.parsed() == ("refusal_rate", ">", 0.1)
    assert (rule.severity, rule.window_minutes, rule.cooldown_minutes) == ("warning", 15, 30)
    assert (rule.for_evaluations, rule.labels, rule.group_by, rule.min_calls) == (1, {}, (), 1)
    for op in (">", ">=", "<", "<=", "==", "!="):
        assert Rule("r", f"groundedness {op} 0.5").parsed()[1] == op
    assert Rule("r", "cost_usd>=1e-3").threshold == pytest.approx(0.001)
    assert Rule("r", "  feedback_score <  -0.5 ").threshold == -0.5


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("r", "p95_latency > 5000"), {}, "unknown metric 'p95_latency'"),
        (("r", "latency_p95_ms >> 5000"), {}, "cannot read rule expression"),
        (("r", "latency_p95_ms > five"), {}, "cannot read rule expression"),
        (("r", "latency_p95_ms >"), {}, "cannot read rule expression"),
        (("r", "latency_p95_ms"), {}, "cannot read rule expression"),
        (("r", "error_rate > 0.1 and cost_usd > 5"), {}, "cannot read rule expression"),
        (("r", "error_rate > 1.2.3"), {}, "could not convert"),
        (("r", "error_rate > 0.1"), {"severity": "page"}, "severity must be one of"),
        (("r", "error_rate > 0.1"), {"severity": "CRITICAL"}, "severity must be one of"),
        (("r", "error_rate > 0.1"), {"labels": {"region": "eu"}}, "labels can only be"),
        (("r", "error_rate > 0.1"), {"group_by": ("user",)}, "group_by can only use"),
        (("r",), {}, "exactly one of an expression or a predicate"),
        (("r", "error_rate > 0.1"), {"predicate": lambda m: True}, "exactly one of"),
        (("r", "error_rate > 0.1"), {"window_minutes": 0}, "window_minutes"),
        (("r", "error_rate > 0.1"), {"cooldown_minutes": -1}, "cooldown_minutes"),
        (("r", "error_rate > 0.1"), {"for_evaluations": 0}, "for_evaluations"),
        (("r", "error_rate > 0.1"), {"min_calls": 0}, "min_calls"),
        (("", "error_rate > 0.1"), {}, "name"),
        (("r", "error_rate > 0.1"), {"threshold": 0.2}, "threshold"),
    ],
)
def test_invalid_rules_fail_when_created(
    args: tuple[str, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Rule(*args, **kwargs)


def test_rules_are_frozen() -> None:
    rule = Rule("r", "error_rate > 0.1")
    with pytest.raises(ValueError):
        rule.severity = "critical"  # type: ignore[misc]
    assert rule.severity == "warning"


def test_duplicate_rule_names_are_rejected_everywhere(db_path: Path) -> None:
    rules = [Rule("errors", "error_rate > 0.05"), Rule("errors", "error_rate > 0.1")]
    with pytest.raises(ValueError, match="unique"):
        AlertHook(rules)
    with pytest.raises(ValueError, match="unique"):
        ChainWatchHandler(db_path, alerts=rules)
    with pytest.raises(ValueError, match="unique"):
        chainwatch.alerts.evaluate(rules, db=db_path)
    assert rows(db_path, "SELECT * FROM alerts") == []


def test_duplicate_notifier_names_are_rejected_by_the_handler(db_path: Path) -> None:
    def page(alerts: list[Alert]) -> None:
        pass

    with pytest.raises(ValueError, match="notifier names must be unique"):
        ChainWatchHandler(db_path, alerts=[Rule("r", "count > 0")], notifiers=[page, page])


def test_alerts_that_are_not_rules_are_a_value_error(db_path: Path) -> None:
    """A config mistake (a string where a Rule goes) is reported as one, with the remedy."""
    with pytest.raises(ValueError, match="chainwatch.alerts.Rule"):
        AlertHook(["error_rate > 0.1"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="chainwatch.alerts.Rule"):
        ChainWatchHandler(db_path, alerts=[{"name": "errors", "expression": "error_rate > 0.1"}])


def test_rule_reads_in_a_terminal_and_in_jupyter() -> None:
    rule = Rule("refusals", "refusal_rate > 0.1", severity="warning", window_minutes=15,
                cooldown_minutes=30)
    assert str(rule) == (
        "refusals: refusal_rate > 0.1 over 15 min [warning, repeat every 30 min]"
    )
    scoped = Rule("slow_rag", "latency_p95_ms > 5000", severity="critical", window_minutes=7.5,
                  cooldown_minutes=60, for_evaluations=3, labels={"chain": "<rag & qa>"},
                  group_by=("model",))
    assert str(scoped) == (
        "slow_rag: latency_p95_ms > 5000 over 7.5 min where {'chain': '<rag & qa>'} by model "
        "[critical, repeat every 60 min, for 3 evaluations]"
    )
    assert scoped._repr_html_() == (
        "<code>slow_rag: latency_p95_ms &gt; 5000 over 7.5 min where {&#x27;chain&#x27;: "
        "&#x27;&lt;rag &amp; qa&gt;&#x27;} by model [critical, repeat every 60 min, "
        "for 3 evaluations]</code>"
    )

    def mostly_failing(metrics: dict[str, Any]) -> bool:
        return bool(metrics["error_rate"] > 0.5)

    assert str(Rule("mostly_failing", predicate=mostly_failing)) == (
        "mostly_failing: predicate mostly_failing over 15 min [warning, repeat every 30 min]"
    )


def test_default_rules_are_the_seeds_six() -> None:
    rules = default_rules()
    assert [(r.name, r.expression, r.severity, r.window_minutes) for r in rules] == [
        ("high_latency_p95", "latency_p95_ms > 5000", "warning", 15),
        ("high_latency_p99", "latency_p99_ms > 10000", "critical", 15),
        ("error_rate_warning", "error_rate > 0.05", "warning", 15),
        ("error_rate_critical", "error_rate > 0.1", "critical", 15),
        ("cost_budget", "cost_usd > 100", "warning", 60),
        ("token_usage", "avg_tokens > 10000", "warning", 15),
    ]
    assert default_rules() == rules and default_rules() is not rules
    # the issue's list plus a user rule is a valid configuration
    AlertHook([*rules, Rule("refusals", "refusal_rate > 0.1")])


def test_metrics_cover_the_issue() -> None:
    assert {
        "latency_p95_ms", "latency_p99_ms", "error_rate", "cost_usd", "avg_tokens",
        "ttft_p50_ms", "ttft_p95_ms", "refusal_rate", "hedging_rate", "groundedness",
        "feedback_score", "drifted_metrics",
    } <= set(METRICS)
    assert all(isinstance(text, str) and text for text in METRICS.values())


# -- the seed's rules on real runs --------------------------------------------------------------


def test_default_rules_fire_on_the_seeds_conditions(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], inbox: Inbox, db_path: Path
) -> None:
    t = traffic(Clock(T0))
    # $12 and 12,000 tokens a call, 12 s each; 2 failures in 12 calls = 16.7 % errors
    t.run(10, model="house-model", latency_ms=12_000, prompt_tokens=11_000,
          completion_tokens=1_000)
    t.run(2, fail=True, model="house-model", latency_ms=12_000)
    fired = evaluate(default_rules(), T0 + 5 * MINUTE)
    assert sorted((rule, transition) for rule, transition, _ in fired) == [
        ("cost_budget", "firing"),
        ("error_rate_critical", "firing"),
        ("error_rate_warning", "firing"),
        ("high_latency_p95", "firing"),
        ("high_latency_p99", "firing"),
        ("token_usage", "firing"),
    ]
    by_rule = {a.rule: a for a in inbox.alerts}
    assert by_rule["cost_budget"].value == pytest.approx(120.0)
    assert by_rule["token_usage"].value == pytest.approx(12_000)
    assert by_rule["error_rate_critical"].value == pytest.approx(2 / 12)
    assert by_rule["high_latency_p99"].value == pytest.approx(12_000)
    assert {r: a.severity for r, a in by_rule.items()} == {
        r.name: r.severity for r in default_rules()
    }
    assert len(inbox.groups) == 1  # one evaluation, one message


def test_default_rules_stay_quiet_on_healthy_traffic(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], inbox: Inbox, db_path: Path
) -> None:
    t = traffic(Clock(T0))
    t.run(20, model="house-model", latency_ms=800, prompt_tokens=500, completion_tokens=100)
    assert evaluate(default_rules(), T0 + MINUTE) == []
    assert inbox.groups == []
    states = {r["rule"]: r["state"] for r in rows(db_path, "SELECT * FROM alerts")}
    assert states == {r.name: "inactive" for r in default_rules()}
    assert chainwatch.alerts.active(db=db_path) == []


# -- cooldowns, pending, resolve ----------------------------------------------------------------


def test_fires_once_within_its_cooldown_across_1000_breaching_evaluations(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], inbox: Inbox, db_path: Path
) -> None:
    t = traffic(Clock(T0))
    t.run(5, fail=True)
    t.run(5)
    rule = Rule("errors", "error_rate > 0.1", window_minutes=60, cooldown_minutes=30)
    start = T0 + MINUTE
    queued = [evaluate([rule], start + i * SECOND) for i in range(1000)]  # 16 min 40 s
    assert [q for q in queued if q] == [[("errors", "firing", {})]]
    assert queued[0] == [("errors", "firing", {})]
    assert inbox.transitions() == ["firing"]
    state = alert_state(db_path, "errors")
    assert state["state"] == "firing"
    assert state["consecutive"] == 1000
    assert state["fired_at"] == state["last_notified_at"] == iso(start)
    assert state["value"] == pytest.approx(0.5)

    # still breaching: nothing until the cooldown has passed, then one repeat
    assert evaluate([rule], start + 30 * MINUTE - SECOND) == []
    assert evaluate([rule], start + 30 * MINUTE) == [("errors", "repeat", {})]
    assert evaluate([rule], start + 31 * MINUTE) == []
    assert inbox.transitions() == ["firing", "repeat"]
    sent = rows(db_path, "SELECT * FROM alert_notifications ORDER BY id")
    assert [(n["transition"], n["notifier"], n["status"], n["attempts"]) for n in sent] == [
        ("firing", "inbox", "sent", 1), ("repeat", "inbox", "sent", 1),
    ]


def test_pending_then_firing_then_resolved_with_one_resolve(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], inbox: Inbox, db_path: Path
) -> None:
    clock = Clock(T0)
    t = traffic(clock)
    t.run(10, latency_ms=6_000)
    rule = Rule("slow", "latency_p95_ms > 5000", window_minutes=5, for_evaluations=3,
                cooldown_minutes=10)
    first = T0 + 2 * MINUTE
    assert evaluate([rule], first) == []
    pending = alert_state(db_path, "slow")
    assert (pending["state"], pending["consecutive"]) == ("pending", 1)
    assert pending["active_since"] == iso(first)
    assert pending["fired_at"] is None
    assert chainwatch.alerts.active(db=db_path) == []

    assert evaluate([rule], first + 10 * SECOND) == []
    assert alert_state(db_path, "slow")["consecutive"] == 2
    assert evaluate([rule], first + 20 * SECOND) == [("slow", "firing", {})]
    firing = alert_state(db_path, "slow")
    assert (firing["state"], firing["active_since"]) == ("firing", iso(first))
    assert firing["fired_at"] == iso(first + 20 * SECOND)

    # fast calls later; once the slow ones leave the 5-minute window the alert resolves
    clock.now = T0 + 9 * MINUTE
    t.run(10, latency_ms=300)
    resolve_at = T0 + 12 * MINUTE
    assert evaluate([rule], resolve_at) == [("slow", "resolved", {})]
    for i in range(1, 51):
        assert evaluate([rule], resolve_at + i * SECOND) == []
    assert inbox.transitions() == ["firing", "resolved"]
    resolved = inbox.alerts[-1]
    assert resolved.state == "resolved"
    assert resolved.started_at == iso(first + 20 * SECOND)
    assert resolved.ended_at == iso(resolve_at)
    assert resolved.value == pytest.approx(300)
    assert resolved.dedup_key == inbox.alerts[0].dedup_key
    assert alert_state(db_path, "slow")["state"] == "resolved"
    assert chainwatch.alerts.active(db=db_path) == []


def test_pending_that_stops_breaching_never_fires(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], inbox: Inbox, db_path: Path
) -> None:
    clock = Clock(T0)
    t = traffic(clock)
    t.run(3, fail=True)
    rule = Rule("errors", "error_rate > 0.5", window_minutes=5, for_evaluations=2)
    assert evaluate([rule], T0 + MINUTE) == []
    assert alert_state(db_path, "errors")["state"] == "pending"
    clock.now = T0 + 2 * MINUTE
    t.run(10)
    assert evaluate([rule], T0 + 3 * MINUTE) == []
    assert (alert_state(db_path, "errors")["state"],
            alert_state(db_path, "errors")["consecutive"]) == ("inactive", 0)
    clock.now = T0 + 4 * MINUTE
    t.run(20, fail=True)
    assert evaluate([rule], T0 + 5 * MINUTE) == []  # the count starts again
    assert evaluate([rule], T0 + 5 * MINUTE + SECOND) == [("errors", "firing", {})]
    assert inbox.transitions() == ["firing"]


def test_resolved_alert_fires_again_as_a_new_alert(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], inbox: Inbox
) -> None:
    clock = Clock(T0)
    t = traffic(clock)
    rule = Rule("errors", "error_rate > 0.5", window_minutes=1, cooldown_minutes=60)
    for start in (0, 4, 8):
        clock.now = T0 + start * MINUTE
        t.run(3, fail=True)
        evaluate([rule], clock.now + SECOND)
        clock.now += 2 * MINUTE
        t.run(3)
        evaluate([rule], clock.now + SECOND)
    assert inbox.transitions() == ["firing", "resolved"] * 3


# -- no data ------------------------------------------------------------------------------------


def test_no_data_is_its_own_state(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], inbox: Inbox, db_path: Path
) -> None:
    clock = Clock(T0)
    t = traffic(clock)
    errors = Rule("errors", "error_rate < 0.5", window_minutes=5)  # breaches on 0 % errors
    refusals = Rule("refusals", "refusal_rate <= 0.0", window_minutes=5)
    busy = Rule("busy", "error_rate < 0.5", window_minutes=5, min_calls=10)
    rules = [errors, refusals, busy]

    assert evaluate(rules, T0) == []  # an empty database
    for rule in rules:
        state = alert_state(db_path, rule.name)
        assert (state["state"], state["value"], state["consecutive"]) == ("no_data", None, 0)

    t.run(3)  # healthy calls, but no quality analysis (hooks=[]) and fewer than min_calls
    assert evaluate(rules, T0 + MINUTE) == [("errors", "firing", {})]
    assert alert_state(db_path, "refusals")["state"] == "no_data"
    assert alert_state(db_path, "busy")["state"] == "no_data"

    # the calls leave the window: no data again, not "0 % errors"
    assert evaluate(rules, T0 + 10 * MINUTE) == []
    assert alert_state(db_path, "errors")["state"] == "no_data"
    assert alert_state(db_path, "errors")["value"] is None
    assert "repeat" not in inbox.transitions()


def test_no_data_then_healthy_traffic_is_inactive(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], db_path: Path
) -> None:
    clock = Clock(T0)
    t = traffic(clock)
    rule = Rule("errors", "error_rate > 0.1", window_minutes=5)
    assert evaluate([rule], T0) == []
    assert alert_state(db_path, "errors")["state"] == "no_data"
    t.run(5)
    assert evaluate([rule], clock.now + SECOND) == []
    state = alert_state(db_path, "errors")
    assert (state["state"], state["value"]) == ("inactive", 0.0)


def test_firing_alert_that_loses_its_data_does_not_notify_twice_within_cooldown(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], inbox: Inbox, db_path: Path
) -> None:
    """Traffic that pauses for a window must not page again as if the alert were new.

    Either the gap resolves the alert (a resolve, then a new firing) or the alert stays one
    incident and keeps its cooldown; two firings with no resolve between is neither.
    """
    clock = Clock(T0)
    t = traffic(clock)
    rule = Rule("errors", "error_rate > 0.1", window_minutes=5, cooldown_minutes=60)
    t.run(5, fail=True)
    assert evaluate([rule], clock.now + SECOND) == [("errors", "firing", {})]
    clock.now += 10 * MINUTE
    assert evaluate([rule], clock.now) == []
    assert alert_state(db_path, "errors")["state"] == "no_data"
    t.run(5, fail=True)  # still failing, 20 minutes into a 60-minute cooldown
    evaluate([rule], clock.now + SECOND)
    assert inbox.transitions() in (["firing"], ["firing", "resolved", "firing"])


# -- labels: filters and groups -----------------------------------------------------------------


def test_group_by_model_keeps_separate_label_sets_and_cooldowns(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], inbox: Inbox, db_path: Path
) -> None:
    clock = Clock(T0)
    t = traffic(clock)
    t.run(4, fail=True, model="gpt-4o")
    t.run(4, model="claude-sonnet")
    rule = Rule("errors", "error_rate > 0.1", window_minutes=120, cooldown_minutes=30,
                group_by=("model",))
    assert evaluate([rule], T0 + MINUTE) == [("errors", "firing", {"model": "gpt-4o"})]
    assert alert_state(db_path, "errors", {"model": "claude-sonnet"})["state"] == "inactive"

    clock.now = T0 + 20 * MINUTE
    t.run(8, fail=True, model="claude-sonnet")
    assert evaluate([rule], T0 + 21 * MINUTE) == [
        ("errors", "firing", {"model": "claude-sonnet"})
    ]
    # gpt-4o's cooldown ends at 31 min, claude-sonnet's at 51 min
    assert evaluate([rule], T0 + 31 * MINUTE) == [("errors", "repeat", {"model": "gpt-4o"})]
    assert evaluate([rule], T0 + 40 * MINUTE) == []
    assert evaluate([rule], T0 + 51 * MINUTE) == [
        ("errors", "repeat", {"model": "claude-sonnet"})
    ]
    keys = {a.dedup_key for a in inbox.alerts}
    assert len(keys) == 2
    assert sorted(
        (a["labels"]["model"], a["value"]) for a in chainwatch.alerts.active(db=db_path)
    ) == [("claude-sonnet", pytest.approx(8 / 12)), ("gpt-4o", 1.0)]


def test_group_by_chain_and_model(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], inbox: Inbox
) -> None:
    t = traffic(Clock(T0))
    t.run(3, chain="billing", model="gpt-4o", latency_ms=7_000)
    t.run(3, chain="billing", model="gpt-4o-mini", latency_ms=300)
    t.run(3, chain="search", model="gpt-4o", latency_ms=300)
    rule = Rule("slow", "latency_p95_ms > 5000", window_minutes=60, group_by=("chain", "model"))
    assert evaluate([rule], T0 + MINUTE) == [
        ("slow", "firing", {"chain": "billing", "model": "gpt-4o"})
    ]
    assert "chain=billing model=gpt-4o" in inbox.alerts[0].summary()


def test_labels_filter_only_matching_calls(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], inbox: Inbox, db_path: Path
) -> None:
    clock = Clock(T0)
    t = traffic(clock)
    t.run(5, fail=True, chain="support", model="gpt-4o")
    t.run(5, chain="billing", model="gpt-4o")
    t.run(5, fail=True, chain="billing", model="claude-sonnet")
    billing = Rule("billing_errors", "error_rate > 0.1", window_minutes=60,
                   labels={"chain": "billing", "model": "gpt-4o"})
    support = Rule("support_errors", "error_rate > 0.1", window_minutes=60,
                   labels={"chain": "support"})
    nothing = Rule("nobody", "error_rate > 0.1", window_minutes=60, labels={"chain": "nobody"})
    assert evaluate([billing, support, nothing], T0 + MINUTE) == [
        ("support_errors", "firing", {"chain": "support"})
    ]
    state = alert_state(db_path, "billing_errors", {"chain": "billing", "model": "gpt-4o"})
    assert (state["state"], state["value"]) == ("inactive", 0.0)
    assert alert_state(db_path, "nobody", {"chain": "nobody"})["state"] == "no_data"


def test_a_label_set_that_stops_reporting_goes_to_no_data(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], db_path: Path
) -> None:
    clock = Clock(T0)
    t = traffic(clock)
    t.run(3, model="gpt-4o")
    t.run(3, model="claude-sonnet")
    rule = Rule("slow", "latency_p95_ms > 5000", window_minutes=5, group_by=("model",))
    evaluate([rule], clock.now + SECOND)
    clock.now += 10 * MINUTE
    t.run(3, model="gpt-4o")
    evaluate([rule], clock.now + SECOND)
    assert alert_state(db_path, "slow", {"model": "gpt-4o"})["state"] == "inactive"
    assert alert_state(db_path, "slow", {"model": "claude-sonnet"})["state"] == "no_data"


# -- predicates ---------------------------------------------------------------------------------


def test_predicate_rule(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], inbox: Inbox
) -> None:
    t = traffic(Clock(T0))
    t.run(6)
    t.run(4, fail=True)
    seen: list[dict[str, Any]] = []

    def failing_with_traffic(metrics: dict[str, Any]) -> bool:
        seen.append(metrics)
        return bool(metrics["count"] >= 10 and metrics["error_rate"] > 0.3)

    rule = Rule("failing", predicate=failing_with_traffic, severity="critical", min_calls=5)
    assert evaluate([rule], T0 + MINUTE) == [("failing", "firing", {})]
    [alert] = inbox.alerts
    assert (alert.expression, alert.value, alert.threshold) == ("predicate", None, None)
    assert alert.severity == "critical"
    assert seen[0]["count"] == 10 and seen[0]["error_rate"] == pytest.approx(0.4)
    assert alert.metrics["count"] == 10


def test_a_predicate_that_raises_does_not_stop_the_other_rules(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], inbox: Inbox, db_path: Path
) -> None:
    """A plausible predicate on a metric that is None (no streaming, so no TTFT) raises."""
    t = traffic(Clock(T0))
    t.run(5, fail=True)

    def slow_first_token(metrics: dict[str, Any]) -> bool:
        return bool(metrics["ttft_p95_ms"] > 2000)

    rules = [Rule("slow_first_token", predicate=slow_first_token),
             Rule("errors", "error_rate > 0.1")]
    queued = evaluate(rules, T0 + MINUTE)
    assert ("errors", "firing", {}) in queued
    assert inbox.transitions("errors") == ["firing"]
    assert alert_state(db_path, "errors")["state"] == "firing"


# -- time to first token, quality, feedback, drift ----------------------------------------------


def test_ttft_rule(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], inbox: Inbox, db_path: Path
) -> None:
    clock = Clock(T0)
    t = traffic(clock)
    rule = Rule("slow_first_token", "ttft_p95_ms > 2000", window_minutes=5)
    t.run(5, latency_ms=4_000)  # not streamed: no first token to time
    assert evaluate([rule], clock.now + SECOND) == []
    assert alert_state(db_path, "slow_first_token")["state"] == "no_data"
    t.run(5, stream=True, latency_ms=4_000, ttft_ms=3_000)
    assert evaluate([rule], clock.now + SECOND) == [("slow_first_token", "firing", {})]
    assert inbox.alerts[0].value == pytest.approx(3_000)
    clock.now += 6 * MINUTE
    t.run(5, stream=True, latency_ms=1_000, ttft_ms=150)
    assert evaluate([rule], clock.now + SECOND) == [("slow_first_token", "resolved", {})]


def test_refusal_and_hedging_rules(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], inbox: Inbox
) -> None:
    clock = Clock(T0)
    t = traffic(clock, hooks=[QualityHook()])
    t.run(3, answers=[REFUSAL], question="How do I write ransomware?")
    t.run(3, answers=[HEDGE])
    t.run(4, answers=[PLAIN])
    rules = [
        Rule("refusals", "refusal_rate > 0.1", severity="warning", window_minutes=15,
             cooldown_minutes=30),
        Rule("hedging", "hedging_rate >= 0.3"),
        Rule("hedging_high", "hedging_rate > 0.5"),
    ]
    fired = evaluate(rules, clock.now + SECOND)
    assert sorted(fired) == [("hedging", "firing", {}), ("refusals", "firing", {})]
    values = {a.rule: a.value for a in inbox.alerts}
    assert values == {"refusals": pytest.approx(0.3), "hedging": pytest.approx(0.3)}


def test_groundedness_rule(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], inbox: Inbox, db_path: Path
) -> None:
    clock = Clock(T0)
    t = traffic(clock, hooks=[QualityHook()])
    rule = Rule("ungrounded", "groundedness < 0.5", severity="critical")
    t.run(3, answers=[EIFFEL])  # no retrieval: groundedness cannot be judged
    assert evaluate([rule], clock.now + SECOND) == []
    assert alert_state(db_path, "ungrounded")["state"] == "no_data"

    model = ScriptedChatModel(clock=clock, answers=[INVENTED])
    for _ in range(3):
        clock.now += SECOND
        rag_chain(model, [EIFFEL]).invoke(
            "Who owns the Eiffel Tower?", config={"callbacks": [t.handler]}
        )
    assert t.handler.flush()
    assert evaluate([rule], clock.now + SECOND) == [("ungrounded", "firing", {})]
    assert inbox.alerts[0].value == pytest.approx(0.0)


def test_feedback_rule(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], inbox: Inbox, db_path: Path
) -> None:
    # feedback is stamped with the real time, so this test runs on the real clock
    t = traffic(None)
    t.run(4)
    rule = Rule("unhappy_users", "feedback_score < 0.5", window_minutes=10)
    assert evaluate([rule], time.time_ns()) == []
    assert alert_state(db_path, "unhappy_users")["state"] == "no_data"
    traces = [r["trace_id"] for r in rows(db_path, "SELECT trace_id FROM spans WHERE kind='llm'")]
    for trace_id, score in zip(traces, [0, 0, 1, 0], strict=True):
        chainwatch.feedback(trace_id, score, db=db_path)
    assert evaluate([rule], time.time_ns()) == [("unhappy_users", "firing", {})]
    assert inbox.alerts[0].value == pytest.approx(0.25)


def test_drift_rule(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], inbox: Inbox, db_path: Path
) -> None:
    # drift checks are stamped with the real time, so this test runs on the real clock
    t = traffic(None, hooks=[QualityHook()])
    rule = Rule("drift", "drifted_metrics > 0", severity="critical", window_minutes=10)
    t.run(20, answers=[PLAIN])
    assert chainwatch.set_baseline("launch", first_n=20, db=db_path) == 20
    t.run(20, answers=[REFUSAL])
    assert evaluate([rule], time.time_ns()) == []
    assert alert_state(db_path, "drift")["state"] == "no_data"  # no drift check yet

    result = chainwatch.check_drift(baseline="launch", last_n=20, mode="simple", db=db_path)
    drifted = {d.metric for d in result.drifted}
    assert "refusal_rate" in drifted
    assert evaluate([rule], time.time_ns()) == [("drift", "firing", {})]
    assert inbox.alerts[0].value == len(drifted)


# -- active() -----------------------------------------------------------------------------------


def test_active_lists_only_what_fires_now(
    traffic: Callable[..., Traffic], evaluate: Callable[..., Any], db_path: Path
) -> None:
    t = traffic(Clock(T0))
    t.run(4, fail=True, model="gpt-4o", latency_ms=7_000)
    rules = [
        Rule("errors", "error_rate > 0.1", severity="critical", group_by=("model",)),
        Rule("slow", "latency_p95_ms > 5000"),
        Rule("pending", "count > 1", for_evaluations=5),
        Rule("quiet", "cost_usd > 100"),
    ]
    at = T0 + MINUTE
    evaluate(rules, at)
    active = sorted(chainwatch.alerts.active(db=db_path), key=lambda a: a["rule"])
    assert active == [
        {"rule": "errors", "labels": {"model": "gpt-4o"}, "severity": "critical", "value": 1.0,
         "threshold": 0.1, "expression": "error_rate > 0.1", "fired_at": iso(at),
         "last_evaluated_at": iso(at)},
        {"rule": "slow", "labels": {}, "severity": "warning", "value": 7000.0,
         "threshold": 5000.0, "expression": "latency_p95_ms > 5000", "fired_at": iso(at),
         "last_evaluated_at": iso(at)},
    ]
