"""Reports: numbers against plain SQL over the same rows, scopes, filters, every rendering,
snapshots, the CLI, and the saved page opened in headless Chromium.

The data comes from real LangChain runs through `ChainWatchHandler` with an injected clock:
the fake chat models (and the fake OpenAI server's responder) move the clock by their latency,
so every duration and time to first token is exact. Expected values are computed here from
`sqlite3` rows, never through chainwatch.
"""

from __future__ import annotations

import base64
import calendar
import functools
import html
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.callbacks import CallbackManager
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough
from langchain_openai import ChatOpenAI

import chainwatch
from chainwatch import ChainWatchHandler, Usage, _errors
from chainwatch.alerts import Rule
from chainwatch.baselines import DriftHook
from chainwatch.fake_provider import FakeOpenAI, Reply, demo_responder
from chainwatch.judge import Judge
from chainwatch.quality import QualityHook

MS = 1_000_000
SECOND = 1_000 * MS
SNAP_T0 = 1_780_000_000 * SECOND  # 2026-05-28T20:26:40Z
HOUSE_PRICES = {
    "house-mini": {"input_per_mtok": 0.5, "output_per_mtok": 2.0},
    "house-large": {"input_per_mtok": 5.0, "output_per_mtok": 15.0},
}
REFUSAL = "I'm sorry, but I can't help with that request."
HEDGE = "I'm not entirely sure, but I believe the museum opens at nine."
PLAIN = [
    "The museum opens at nine and closes at five.",
    "Tickets cost twelve euros and children enter for free.",
    "The nearest station is three minutes away on foot.",
    "Guided tours start every hour from the main hall.",
]
LONG = (
    "The report compares three options in detail. The first is cheaper but slower, the "
    "second is faster but costs twice as much, and the third balances both."
)
SECTIONS = {
    "scope", "summary", "by_model", "by_chain", "slowest", "most_expensive", "failed", "errors",
    "quality", "drift", "alerts", "series", "generated_at",
}


# -- fake models that move the clock ------------------------------------------------------------


class Clock:
    """Nanoseconds since the epoch, moved by the test and by the models' latency."""

    def __init__(self, now_ns: int) -> None:
        self.now = now_ns

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += int(ms * MS)


class ClockedChatModel(BaseChatModel):
    """A chat model whose calls take `latencies_ms` (cycled) on the clock and report usage."""

    model: str = "gpt-4o-mini"
    answers: list[str] = PLAIN
    latencies_ms: list[float] = [200.0]
    ttfts_ms: list[float] = [50.0]
    prompt_tokens: int = 100
    fail: bool = False
    clock: Any = None
    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "clocked"

    def _next(self) -> tuple[int, str, float, dict[str, int]]:
        i = self.calls
        self.calls += 1
        answer = self.answers[i % len(self.answers)]
        prompt, completion = self.prompt_tokens + 10 * i, len(answer.split()) + 3
        usage = {"input_tokens": prompt, "output_tokens": completion,
                 "total_tokens": prompt + completion}
        return i, answer, self.latencies_ms[i % len(self.latencies_ms)], usage

    def _wait(self, ms: float) -> None:
        if self.clock is not None:
            self.clock.advance(ms)

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        _, answer, latency, usage = self._next()
        self._wait(latency)
        if self.fail:
            raise ConnectionError("provider unreachable")
        message = AIMessage(content=answer, usage_metadata=usage,  # type: ignore[arg-type]
                            response_metadata={"model_name": self.model})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> Iterator[ChatGenerationChunk]:
        i, answer, latency, usage = self._next()
        ttft = self.ttfts_ms[i % len(self.ttfts_ms)]
        self._wait(ttft)
        yield ChatGenerationChunk(message=AIMessageChunk(content=answer))
        self._wait(latency - ttft)
        yield ChatGenerationChunk(message=AIMessageChunk(
            content="", usage_metadata=usage,  # type: ignore[arg-type]
            response_metadata={"model_name": self.model}))


class RouterChatModel(BaseChatModel):
    """Answers by calling `inner` as a child run and passing its usage on.

    The router's span and the inner model's span both carry the same tokens; only the outer
    one may count, or every total doubles.
    """

    model: str = "gpt-4o"
    inner: ClockedChatModel
    overhead_ms: float = 15.0
    clock: Any = None

    @property
    def _llm_type(self) -> str:
        return "router"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        child = None
        if run_manager is not None:
            handlers = list(run_manager.inheritable_handlers)
            child = CallbackManager(handlers, handlers, parent_run_id=run_manager.run_id)
        reply = self.inner.invoke(messages, config={"callbacks": child})
        if self.clock is not None:
            self.clock.advance(self.overhead_ms)
        message = AIMessage(content=reply.content, usage_metadata=reply.usage_metadata,
                            response_metadata={"model_name": self.model})
        return ChatResult(generations=[ChatGeneration(message=message)])


def qa_chain(model: BaseChatModel, name: str) -> Runnable[str, str]:
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    chain = {"question": RunnablePassthrough()} | prompt | model | StrOutputParser()
    return chain.with_config(run_name=name)


def broken_search(_: Any) -> str:
    raise TimeoutError("search backend did not answer in 2s")


class Workload:
    """Runs chains through one handler, one a second, remembering each trace's id by role."""

    def __init__(self, handler: ChainWatchHandler, clock: Clock) -> None:
        self.handler = handler
        self.clock = clock
        self.ids: dict[str, list[str]] = {}
        self.starts: dict[str, int] = {}

    def run(
        self,
        chain: Runnable[Any, Any],
        question: str,
        role: str,
        *,
        stream: bool = False,
        raises: type[BaseException] | None = None,
        run_id: uuid.UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        self.clock.now += 1 * SECOND
        run_id = run_id or uuid.uuid4()
        config: Any = {"callbacks": [self.handler], "run_id": run_id, "tags": tags or [],
                       "metadata": metadata or {}}
        self.starts[str(run_id)] = self.clock.now
        if raises is not None:
            with pytest.raises(raises):
                chain.invoke(question, config=config)
        elif stream:
            assert "".join(chain.stream(question, config=config))
        else:
            chain.invoke(question, config=config)
        self.ids.setdefault(role, []).append(str(run_id))
        return str(run_id)

    def manual_nested(self, role: str) -> str:
        """A pipeline recorded by hand: a model span with a model call nested inside it."""
        rec = self.handler.recorder
        self.clock.now += 1 * SECOND
        t = self.clock.now
        root, outer, inner = (str(uuid.uuid4()) for _ in range(3))
        self.starts[root] = t
        rec.start(root, None, "manual_pipeline", "chain", "manual", {"question": "Plan a trip"},
                  start_ns=t)
        planner = rec.start(outer, root, "planner", "llm", "manual", "Plan a trip",
                            start_ns=t + 100 * MS)
        planner.model = "gpt-4o"
        planner.usage = Usage(prompt_tokens=300, completion_tokens=40, total_tokens=340)
        nested = rec.start(inner, outer, "planner.inner", "llm", "manual", "Plan a trip",
                           start_ns=t + 200 * MS)
        nested.model = "gpt-4o-mini"
        nested.usage = Usage(prompt_tokens=300, completion_tokens=40, total_tokens=340)
        rec.end(inner, "Fly to Lisbon, then take the train.", end_ns=t + 700 * MS)
        rec.end(outer, "Fly to Lisbon, then take the train.", end_ns=t + 800 * MS)
        rec.end(root, {"plan": "Fly to Lisbon, then take the train."}, end_ns=t + 900 * MS)
        self.clock.now = t + 900 * MS
        self.ids.setdefault(role, []).append(root)
        return root


# -- plain SQL ----------------------------------------------------------------------------------


def rows(db: Path, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, list(params))]
    finally:
        conn.close()


def counted_calls(db: Path, trace_ids: list[str]) -> list[dict[str, Any]]:
    """The model calls that count: kind llm, counts_usage = 1, in these traces."""
    marks = ",".join("?" * len(trace_ids))
    return rows(
        db,
        "SELECT s.*, r.name AS chain FROM spans s JOIN spans r ON r.span_id = s.trace_id "
        f"WHERE s.kind = 'llm' AND s.counts_usage = 1 AND s.trace_id IN ({marks})",
        trace_ids,
    )


def roots(db: Path, trace_ids: list[str]) -> list[dict[str, Any]]:
    marks = ",".join("?" * len(trace_ids))
    return rows(db, f"SELECT * FROM spans WHERE span_id = trace_id AND span_id IN ({marks})",
                trace_ids)


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def iso(ns: int) -> str:
    seconds, rest = divmod(ns, SECOND)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:06d}+00:00"


def approx(value: float | None) -> Any:
    return None if value is None else pytest.approx(value, rel=1e-9, abs=1e-12)


# -- the recorded batch -------------------------------------------------------------------------


@dataclass
class Recorded:
    db: Path
    ids: dict[str, list[str]]
    starts: dict[str, int]
    t0: int
    t_end: int
    drift_check_id: str
    alert_value: float | None
    fired_at: str

    @property
    def batch(self) -> list[str]:
        return [t for ids in self.ids.values() for t in ids]

    @property
    def window(self) -> dict[str, str]:
        """since/until that hold exactly the batch (the judge's own traces came later)."""
        return {"since": iso(self.t0), "until": iso(self.t_end + SECOND)}

    @functools.cached_property
    def report(self) -> chainwatch.Report:
        """The batch's report, scoped by its time window."""
        return chainwatch.report(db=self.db, **self.window)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    """One realistic batch, then feedback, a drift check, a firing alert, and two reports."""
    before = _errors.error_counts()
    db = tmp_path_factory.mktemp("report") / "chainwatch.db"
    t0 = (time.time_ns() // SECOND - 20 * 60) * SECOND
    clock = Clock(t0)
    judge_model = ClockedChatModel(model="judge-model",
                                   answers=['{"score": 8, "reason": "On topic."}'])
    handler = ChainWatchHandler(
        db, clock=clock, hooks=[QualityHook(), DriftHook(), Judge(judge_model,
                                                                  criteria=("relevance",))]
    )
    work = Workload(handler, clock)
    openai_latencies = [180.0, 190.0]

    def responder(body: dict[str, Any]) -> Reply:
        clock.advance(openai_latencies.pop(0))
        return demo_responder(body)

    support = qa_chain(ClockedChatModel(
        answers=[PLAIN[0], REFUSAL, PLAIN[1], HEDGE, PLAIN[2], PLAIN[3], PLAIN[0], PLAIN[1]],
        latencies_ms=[120, 340, 95, 410, 230, 780, 150, 505], clock=clock), "support")
    for i in range(8):
        meta = {"user_id": "ana", "session_id": "s-1"} if i < 3 else {"user_id": "bob"}
        work.run(support, f"Question {i} about the museum?", "support",
                 tags=["batch-7"] if i < 4 else [], metadata=meta)
    streaming = qa_chain(ClockedChatModel(latencies_ms=[260, 330], ttfts_ms=[40, 65],
                                          prompt_tokens=80, clock=clock), "support")
    for i in range(2):
        work.run(streaming, f"Streamed question {i}?", "stream", stream=True)
    research = qa_chain(ClockedChatModel(model="gpt-4o", answers=[LONG],
                                         latencies_ms=[1200, 860, 1430], prompt_tokens=400,
                                         clock=clock), "research")
    for i in range(3):
        work.run(research, f"Compare the options, part {i}.", "research")
    failing = qa_chain(ClockedChatModel(fail=True, latencies_ms=[3000, 2500], clock=clock),
                       "support")
    for i in range(2):
        work.run(failing, f"Will this fail {i}?", "failing", raises=ConnectionError)
    lookup = (qa_chain(ClockedChatModel(latencies_ms=[210], clock=clock), "qa")
              | RunnableLambda(broken_search)).with_config(run_name="lookup")
    work.run(lookup, "Which database does chainwatch use?", "lookup", raises=TimeoutError)
    router = qa_chain(RouterChatModel(inner=ClockedChatModel(latencies_ms=[640, 720],
                                                             prompt_tokens=150, clock=clock),
                                      clock=clock), "router")
    for i in range(2):
        work.run(router, f"Route question {i}?", "router")
    with FakeOpenAI(responder) as server:
        model = ChatOpenAI(model="gpt-4o-mini", base_url=server.base_url, api_key="sk-test",
                           max_retries=0)
        openai_qa = qa_chain(model, "openai_qa")
        work.run(openai_qa, "What is the capital of France?", "openai")
        work.run(openai_qa, "Tell me a joke about caching.", "openai")
    work.manual_nested("manual")
    t_end = clock.now
    assert handler.flush()
    assert chainwatch.flush()  # the judge's own evaluator spans, queued by its hook

    chainwatch.feedback(work.ids["support"][0], 1.0, "helpful", db=db)
    chainwatch.feedback(work.ids["research"][0], 0.0, "too long", db=db)
    chainwatch.set_baseline(first_n=6, db=db)
    check = chainwatch.check_drift(db=db)
    rule = Rule("errors", "error_rate > 0.05", severity="warning")
    fired_ns = t_end + SECOND
    chainwatch.alerts.evaluate([rule], db=db, now_ns=fired_ns)
    [alert] = rows(db, "SELECT * FROM alerts")
    assert alert["state"] == "firing"

    assert _errors.error_counts() == before
    yield Recorded(db=db, ids=work.ids, starts=work.starts, t0=t0, t_end=t_end,
                   drift_check_id=check.check_id, alert_value=alert["value"],
                   fired_at=iso(fired_ns))
    handler.shutdown()


@pytest.fixture(scope="module")
def batch_reports(recorded: Recorded) -> tuple[chainwatch.Report, chainwatch.Report]:
    """`report()` right after the batch, then again with nothing new recorded.

    The only unfiltered reports of this database: filtered ones leave the batch alone.
    """
    before = _errors.error_counts()
    first = chainwatch.report(db=recorded.db)
    second = chainwatch.report(db=recorded.db)
    assert _errors.error_counts() == before
    return first, second



# -- numbers against SQL ------------------------------------------------------------------------


def test_the_workload_has_nested_model_calls_that_must_not_count(recorded: Recorded) -> None:
    nested = rows(recorded.db, "SELECT * FROM spans WHERE kind = 'llm' AND counts_usage = 0")
    assert sorted(s["trace_id"] for s in nested) == sorted(
        recorded.ids["router"] + recorded.ids["manual"]
    )
    assert all(s["total_tokens"] for s in nested), "nested calls carry tokens of their own"
    everything = rows(recorded.db, "SELECT SUM(total_tokens) AS n FROM spans WHERE kind = 'llm'")
    counted = sum(c["total_tokens"] or 0 for c in counted_calls(recorded.db, recorded.batch))
    assert everything[0]["n"] == counted + sum(s["total_tokens"] for s in nested)
    summary = recorded.report.data.summary
    assert summary.total_tokens == counted
    assert summary.llm_calls == len(counted_calls(recorded.db, recorded.batch))


def test_summary_matches_sql(recorded: Recorded) -> None:
    calls = counted_calls(recorded.db, recorded.batch)
    durations = [c["duration_ms"] for c in calls]
    ttfts = [c["ttft_ms"] for c in calls if c["ttft_ms"] is not None]
    tokens = [c["total_tokens"] for c in calls if c["total_tokens"] is not None]
    costs = [c["cost_usd"] for c in calls if c["cost_usd"] is not None]
    errors = [c for c in calls if c["status"] == "error"]
    failed_roots = [r for r in roots(recorded.db, recorded.batch) if r["status"] == "error"]
    assert sorted(ttfts) == [40.0, 65.0]
    assert len(errors) == 2 and len(failed_roots) == 3

    s = recorded.report.data.summary
    assert s.traces == len(recorded.batch) == 21
    assert s.llm_calls == len(calls)
    assert s.latency_p50_ms == approx(pct(durations, 50))
    assert s.latency_p95_ms == approx(pct(durations, 95))
    assert s.latency_p99_ms == approx(pct(durations, 99))
    assert s.ttft_p50_ms == approx(pct(ttfts, 50))
    assert s.ttft_p95_ms == approx(pct(ttfts, 95))
    assert s.avg_tokens == approx(sum(tokens) / len(tokens))
    assert s.total_tokens == sum(tokens)
    assert s.total_cost_usd == approx(sum(costs))
    assert s.unpriced_calls == sum(1 for c in calls if c["status"] == "ok"
                                   and c["cost_usd"] is None) == 0
    assert s.errors == len(errors)
    assert s.error_rate == approx(len(errors) / len(calls))
    assert s.trace_error_rate == approx(len(failed_roots) / len(recorded.batch))


def _breakdown(calls: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for call in calls:
        groups.setdefault(call[key], []).append(call)
    return {
        name: {
            "calls": len(members),
            "prompt_tokens": sum(m["prompt_tokens"] or 0 for m in members),
            "completion_tokens": sum(m["completion_tokens"] or 0 for m in members),
            "total_tokens": sum(m["total_tokens"] or 0 for m in members),
            "cost_usd": approx(sum(m["cost_usd"] or 0 for m in members)),
            "latency_p95_ms": approx(pct([m["duration_ms"] for m in members], 95)),
            "errors": sum(1 for m in members if m["status"] == "error"),
        }
        for name, members in groups.items()
    }


def test_cost_and_tokens_by_model_and_by_chain_match_sql(recorded: Recorded) -> None:
    calls = counted_calls(recorded.db, recorded.batch)
    data = recorded.report.data
    got_models = {b.key: b.model_dump(exclude={"key"}) for b in data.by_model}
    assert got_models == _breakdown(calls, "model")
    assert set(got_models) == {"gpt-4o", "gpt-4o-mini"}
    got_chains = {b.key: b.model_dump(exclude={"key"}) for b in data.by_chain}
    assert got_chains == _breakdown(calls, "chain")
    assert set(got_chains) == {"support", "research", "lookup", "router", "openai_qa",
                               "manual_pipeline"}
    costs = [b.cost_usd or 0 for b in data.by_model]
    assert costs == sorted(costs, reverse=True), "most expensive first"


def test_slowest_most_expensive_and_failed_traces_match_sql(recorded: Recorded) -> None:
    data = recorded.report.data
    root_rows = roots(recorded.db, recorded.batch)
    calls = counted_calls(recorded.db, recorded.batch)
    cost = {r["span_id"]: [c["cost_usd"] for c in calls
                           if c["trace_id"] == r["span_id"] and c["cost_usd"] is not None]
            for r in root_rows}
    slowest = sorted(root_rows, key=lambda r: -r["duration_ms"])[:5]
    assert [(t.trace_id, t.duration_ms) for t in data.slowest] == [
        (r["span_id"], r["duration_ms"]) for r in slowest
    ]
    assert [t.duration_ms for t in data.slowest] == [3000.0, 2500.0, 1430.0, 1200.0, 900.0]
    priced = sorted((sum(v), k) for k, v in cost.items() if v)[::-1][:5]
    assert [(t.cost_usd, t.trace_id) for t in data.most_expensive] == [
        (approx(c), k) for c, k in priced
    ]
    failed = sorted((r for r in root_rows if r["status"] == "error"),
                    key=lambda r: r["start_time"], reverse=True)
    assert [(t.trace_id, t.error) for t in data.failed] == [
        (r["span_id"], r["error"]) for r in failed
    ]
    failing = recorded.ids["failing"] + recorded.ids["lookup"]
    assert {t.trace_id for t in data.failed} == set(failing)
    router = next(t for t in data.most_expensive if t.trace_id in recorded.ids["router"])
    [outer] = [c for c in calls if c["trace_id"] == router.trace_id]
    assert router.total_tokens == outer["total_tokens"], "the nested call is not added"


def test_errors_are_grouped_by_type_once_per_failure(recorded: Recorded) -> None:
    groups = {e.type: e for e in recorded.report.data.errors}
    assert set(groups) == {"ConnectionError", "TimeoutError"}
    assert groups["ConnectionError"].count == 2
    assert groups["ConnectionError"].example == "ConnectionError: provider unreachable"
    assert sorted(groups["ConnectionError"].trace_ids) == sorted(recorded.ids["failing"])
    assert groups["TimeoutError"].count == 1
    assert groups["TimeoutError"].example == "TimeoutError: search backend did not answer in 2s"
    assert groups["TimeoutError"].trace_ids == recorded.ids["lookup"]
    assert [e.type for e in recorded.report.data.errors] == ["ConnectionError", "TimeoutError"]


def test_quality_judge_scores_and_feedback_match_sql(recorded: Recorded) -> None:
    marks = ",".join("?" * len(recorded.batch))
    quality = rows(recorded.db, f"SELECT * FROM quality WHERE trace_id IN ({marks})",
                   recorded.batch)
    judged = rows(recorded.db, f"SELECT * FROM judgements WHERE trace_id IN ({marks})",
                  recorded.batch)
    feedback = rows(recorded.db, "SELECT * FROM feedback")
    ok_calls = [c for c in counted_calls(recorded.db, recorded.batch) if c["status"] == "ok"]
    assert {q["span_id"] for q in quality} == {c["span_id"] for c in ok_calls}

    q = recorded.report.data.quality
    assert q is not None
    assert q.answers == len(quality) == 19
    assert q.refusal_rate == approx(float(np.mean([r["has_refusal"] for r in quality])))
    assert q.refusal_rate == approx(1 / 19), "exactly one refusal in the batch"
    assert q.hedging_rate == approx(float(np.mean([r["has_hedging"] for r in quality])))
    assert q.hedging_rate == approx(1 / 19), "exactly one hedge in the batch"
    assert q.avg_sentiment == approx(float(np.mean([r["sentiment_score"] for r in quality])))
    assert q.avg_groundedness is None, "no trace retrieved documents"
    assert q.judge_scores == {"relevance": approx(float(np.mean([j["score"] for j in judged])))}
    assert q.judge_scores["relevance"] == approx(0.8)
    assert q.feedback_count == len(feedback) == 2
    assert q.avg_feedback == approx(0.5)


def test_drift_and_alert_sections(recorded: Recorded) -> None:
    data = recorded.report.data
    checks = rows(recorded.db, "SELECT * FROM drift_checks WHERE check_id = ?",
                  [recorded.drift_check_id])
    assert checks
    assert data.drift is not None
    assert data.drift.check_id == recorded.drift_check_id
    assert data.drift.baseline == "default"
    drifted = [c for c in checks if c["status"] == "drift"]
    expected = ("drift" if drifted else "ok" if any(
        c["status"] != "insufficient_data" for c in checks) else "insufficient_data")
    assert data.drift.status == expected
    assert len(data.drift.drifted) == len(drifted)
    assert [a.model_dump() for a in data.alerts] == [{
        "rule": "errors", "labels": {}, "severity": "warning", "state": "firing",
        "fired_at": recorded.fired_at, "value": approx(2 / 21),
    }]
    assert recorded.alert_value == approx(2 / 21)


def test_series_feed_the_charts(recorded: Recorded) -> None:
    calls = sorted(counted_calls(recorded.db, recorded.batch), key=lambda c: c["end_time"])
    series = recorded.report.data.series
    assert series.latencies_ms == [c["duration_ms"] for c in calls]
    assert series.times == [c["end_time"] for c in calls]
    assert series.tokens == [c["total_tokens"] for c in calls]
    assert series.durations_ms == [c["duration_ms"] for c in calls]


# -- scope --------------------------------------------------------------------------------------


def test_default_scope_is_the_batch_then_the_last_24_hours(
    recorded: Recorded, batch_reports: tuple[chainwatch.Report, chainwatch.Report]
) -> None:
    first, second = (r.data for r in batch_reports)
    assert first.scope.description == "the last batch recorded by this process (21 traces)"
    assert first.scope.traces == 21
    assert first.scope.since == iso(recorded.t0 + SECOND), "the batch's first span"
    assert first.scope.db == str(recorded.db)
    assert second.scope.description.startswith("traces with since=")
    assert second.scope.since is not None
    since = calendar.timegm(time.strptime(second.scope.since[:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs(since - (time.time() - 24 * 3600)) < 120
    assert second.summary.llm_calls == first.summary.llm_calls
    assert second.summary.total_tokens == first.summary.total_tokens
    windowed = recorded.report.data
    for section in ("summary", "by_model", "by_chain", "slowest", "most_expensive", "failed",
                    "errors", "quality", "drift", "alerts", "series"):
        assert getattr(first, section) == getattr(windowed, section), section


def test_judge_traces_are_not_counted_as_the_apps_traces(
    recorded: Recorded, batch_reports: tuple[chainwatch.Report, chainwatch.Report]
) -> None:
    """The judge's own evaluator traces are chainwatch's, not the app's: no report counts them.

    Found by this test: the 24-hour report counts each judge trace as a trace, so "traces" and
    "failed traces" describe a workload that never ran (40 traces, 7.5 % failed, for a batch of
    21 traces of which 14.3 % failed).
    """
    judge_roots = rows(recorded.db, "SELECT * FROM spans WHERE span_id = trace_id AND "
                       "kind = 'evaluator'")
    assert judge_roots, "the judge recorded its calls as traces of their own"
    second = batch_reports[1].data
    assert second.summary.traces == 21
    assert second.summary.trace_error_rate == approx(3 / 21)


def test_report_right_after_batch_covers_only_that_batch(db_path: Path) -> None:
    """The issue's example: `chain.batch(...)` then `chainwatch.report()`, no flush in between."""
    clock = Clock((time.time_ns() // SECOND - 60) * SECOND)
    handler = ChainWatchHandler(db_path, clock=clock)
    try:
        chain = qa_chain(ClockedChatModel(latencies_ms=[100, 200, 300], clock=clock), "support")

        def batch(questions: list[str]) -> list[str]:
            ids = [uuid.uuid4() for _ in questions]
            configs: Any = [{"callbacks": [handler], "run_id": i} for i in ids]
            chain.batch(questions, config=configs, max_concurrency=1)
            return [str(i) for i in ids]

        first_ids = batch(["one?", "two?", "three?"])
        first = chainwatch.report(db=db_path, top=100).data
        assert first.scope.description == "the last batch recorded by this process (3 traces)"
        assert {t.trace_id for t in first.slowest} == set(first_ids)
        assert first.quality is not None and first.quality.answers == 3, "hooks ran first"

        second_ids = batch(["four?", "five?"])
        second = chainwatch.report(db=db_path, top=100).data
        assert second.scope.description == "the last batch recorded by this process (2 traces)"
        assert {t.trace_id for t in second.slowest} == set(second_ids)
        assert second.summary.llm_calls == 2

        again = chainwatch.report(db=db_path, top=100).data
        assert again.scope.description.startswith("traces with since=")
        assert {t.trace_id for t in again.slowest} == set(first_ids + second_ids)
    finally:
        handler.shutdown()


def test_a_long_batch_is_covered_whole(db_path: Path) -> None:
    """Past the ids a process keeps in memory, the report still covers the whole batch."""
    clock = Clock((time.time_ns() // SECOND - 600) * SECOND)
    handler = ChainWatchHandler(db_path, clock=clock, hooks=[])
    try:
        rec = handler.recorder
        for i in range(1_205):
            span_id = str(uuid.uuid4())
            rec.start(span_id, None, "step", "chain", "manual", {"i": i})
            clock.advance(3)
            rec.end(span_id, {"ok": True}, error="ValueError: odd" if i % 100 == 0 else None)
        data = chainwatch.report(db=db_path, top=3).data
    finally:
        handler.shutdown()
    assert data.scope.description == "the last batch recorded by this process (1205 traces)"
    assert data.scope.traces == data.summary.traces == 1_205
    assert data.summary.trace_error_rate == approx(13 / 1_205)
    assert len(data.failed) == 6 and [e.count for e in data.errors] == [13]


def test_a_batch_of_another_database_is_not_taken(tmp_path: Path) -> None:
    clock = Clock((time.time_ns() // SECOND - 60) * SECOND)
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    handlers = [ChainWatchHandler(a, clock=clock, hooks=[]),
                ChainWatchHandler(b, clock=clock, hooks=[])]
    try:
        chain = qa_chain(ClockedChatModel(clock=clock), "support")
        chain.invoke("to a", config={"callbacks": [handlers[0]]})
        chain.invoke("to b", config={"callbacks": [handlers[1]]})
        chain.invoke("to b again", config={"callbacks": [handlers[1]]})
        assert chainwatch.report(db=a).data.scope.traces == 1
        rep = chainwatch.report(db=b).data
        assert rep.scope.description == "the last batch recorded by this process (2 traces)"
    finally:
        for h in handlers:
            h.shutdown()


# -- filters ------------------------------------------------------------------------------------


def _expect(recorded: Recorded, ids: list[str], data: Any) -> None:
    calls = counted_calls(recorded.db, ids)
    assert data.scope.traces == data.summary.traces == len(ids)
    assert {t.trace_id for t in data.slowest} == set(ids)
    assert data.summary.llm_calls == len(calls)
    tokens = [c["total_tokens"] for c in calls if c["total_tokens"] is not None]
    assert data.summary.total_tokens == (sum(tokens) if tokens else None)
    assert data.summary.latency_p95_ms == approx(pct([c["duration_ms"] for c in calls], 95))


@pytest.mark.parametrize(
    ("filters", "roles", "description"),
    [
        ({"tags": ["batch-7"]}, [("support", 0, 4)], "tags=['batch-7']"),
        ({"session_id": "s-1"}, [("support", 0, 3)], "session=s-1"),
        ({"user_id": "bob"}, [("support", 3, 8)], "user=bob"),
        ({"name": "research"}, [("research", 0, 3)], "name=research"),
    ],
)
def test_filters_on_the_root_span(
    recorded: Recorded, filters: dict[str, Any], roles: list[tuple[str, int, int]],
    description: str,
) -> None:
    ids = [t for role, lo, hi in roles for t in recorded.ids[role][lo:hi]]
    data = chainwatch.report(db=recorded.db, top=100, **filters).data
    _expect(recorded, ids, data)
    assert description in data.scope.description


def test_time_window_filter(recorded: Recorded) -> None:
    start = recorded.starts[recorded.ids["research"][0]]
    until = recorded.starts[recorded.ids["router"][0]]
    ids = [t for t, ns in recorded.starts.items() if start <= ns < until]
    assert set(ids) == set(recorded.ids["research"] + recorded.ids["failing"]
                           + recorded.ids["lookup"])
    data = chainwatch.report(db=recorded.db, since=iso(start), until=iso(until), top=100).data
    _expect(recorded, ids, data)
    assert data.scope.since == iso(start) and data.scope.until == iso(until)
    relative = chainwatch.report(db=recorded.db, since="2h", top=100).data
    assert set(recorded.batch) <= {t.trace_id for t in relative.slowest}


def test_model_filter_covers_only_that_models_calls_and_traces(recorded: Recorded) -> None:
    """`model=` scopes the report to the model: its calls, and the traces that called it.

    Found by this test: the calls are filtered but the trace sections are not, so a report
    for gpt-4o lists failed traces and errors that come from gpt-4o-mini calls.
    """
    window = {"since": iso(recorded.t0), "until": iso(recorded.t_end + SECOND)}
    data = chainwatch.report(db=recorded.db, model="gpt-4o", top=100, **window).data
    calls = [c for c in counted_calls(recorded.db, recorded.batch) if c["model"] == "gpt-4o"]
    assert [b.key for b in data.by_model] == ["gpt-4o"]
    assert data.summary.llm_calls == len(calls) == 6
    assert data.summary.total_tokens == sum(c["total_tokens"] for c in calls)
    assert data.summary.total_cost_usd == approx(sum(c["cost_usd"] for c in calls))
    assert "model=gpt-4o" in data.scope.description
    users = {c["trace_id"] for c in calls}
    assert {t.trace_id for t in data.slowest} == users
    assert data.summary.traces == len(users)
    assert data.failed == [] and data.errors == [], "no gpt-4o call failed"


def test_a_scope_with_nothing_in_it_renders_unknowns_not_zeros(recorded: Recorded) -> None:
    report = chainwatch.report(db=recorded.db, tags=["no-such-tag"])
    s = report.data.summary
    assert (s.traces, s.llm_calls, s.errors) == (0, 0, 0)
    assert s.latency_p50_ms is s.total_tokens is s.total_cost_usd is s.error_rate is None
    assert report.data.slowest == report.data.failed == report.data.errors == []
    assert report.data.quality is None
    text = report.to_text(width=100)
    assert re.search(r"^latency p50 / p95 / p99\s+- / - / -$", text, re.MULTILINE)
    assert re.search(r"^total cost\s+-$", text, re.MULTILINE)
    assert "<img" not in report.to_html() and "Slowest traces" not in report.to_markdown()


def test_unknown_database_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        chainwatch.report(db=tmp_path / "missing.db")


# -- renderings ---------------------------------------------------------------------------------


def test_to_dict_has_every_section_and_is_json(recorded: Recorded) -> None:
    out = recorded.report.to_dict()
    assert set(out) == SECTIONS
    assert json.loads(json.dumps(out)) == out
    assert out["summary"]["traces"] == 21
    assert out["errors"][0]["type"] == "ConnectionError"
    assert out["alerts"][0]["rule"] == "errors"
    assert out["drift"]["check_id"] == recorded.drift_check_id
    assert out["quality"]["judge_scores"] == {"relevance": approx(0.8)}
    assert repr(recorded.report) == (
        f"<Report 21 traces, 21 LLM calls: traces with since={recorded.window['since']}, "
        f"until={recorded.window['until']}>"
    )


def test_save_writes_html_markdown_and_json(recorded: Recorded, tmp_path: Path) -> None:
    report = recorded.report
    saved_json = report.save(tmp_path / "report.json")
    assert json.loads(saved_json.read_text(encoding="utf-8")) == report.to_dict()
    saved_md = report.save(tmp_path / "report.md")
    assert saved_md.read_text(encoding="utf-8") == report.to_markdown()
    saved_html = report.save(tmp_path / "report.html")
    assert saved_html.read_text(encoding="utf-8") == report.to_html()
    with pytest.raises(ValueError, match="html, .md or .json"):
        report.save(tmp_path / "report.pdf")


def _external_refs(page: str) -> list[str]:
    found = re.findall(r"""(?:src|href|action)\s*=\s*["']?([^"'\s>]+)""", page, re.IGNORECASE)
    found += re.findall(r"""url\(\s*["']?([^"')]+)""", page, re.IGNORECASE)
    found += re.findall(r"""@import\s+["']([^"']+)""", page, re.IGNORECASE)
    return [u for u in found if re.match(r"(?:https?:)?//", u, re.IGNORECASE)]


def test_html_report_is_one_self_contained_file_with_charts(recorded: Recorded) -> None:
    page = recorded.report.to_html()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert _external_refs(page) == []
    assert "<script src" not in page and "<link" not in page
    images = re.findall(r'<img alt="chart" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3, "latency distribution, cost by model, tokens and latency over time"
    for data in images:
        png = base64.b64decode(data, validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000
    for title in ("Cost and tokens by model", "Cost and tokens by chain", "Slowest traces",
                  "Most expensive traces", "Failed traces", "Errors by type", "Quality",
                  "Drift", "Alerts"):
        assert f"<h2>{title}</h2>" in page
    assert html.escape("ConnectionError: provider unreachable") in page


def _element_ids(page: str) -> list[str]:
    return re.findall(r"""\sid=["']([^"']+)["']""", page)


def test_every_trace_link_opens_its_trace_view(recorded: Recorded) -> None:
    page = recorded.report.to_html()
    linked = set(re.findall(r'href="#trace-([^"]+)"', page))
    data = recorded.report.data
    listed = {t.trace_id for t in [*data.slowest, *data.most_expensive, *data.failed]}
    assert linked == listed
    assert set(recorded.report.traces) == linked
    ids = _element_ids(page)
    for trace_id in linked:
        assert f"trace-{trace_id}" in ids
        view = recorded.report.traces[trace_id]
        assert view.trace_id == trace_id and len(view.spans) >= 2
        assert f"<summary>{trace_id} {html.escape(view.root.name)}</summary>" in page


def test_html_element_ids_are_unique(recorded: Recorded) -> None:
    """A link target must be one element.

    Found by this test: each linked trace gets `id='trace-…'` twice, on the report's
    `<details>` and again on the waterfall `<div>` inside it (`Trace._repr_html_`), which is
    invalid HTML; `#trace-…` links and `getElementById` can only ever reach the first.
    """
    ids = _element_ids(recorded.report.to_html())
    assert ids
    assert sorted({i for i in ids if ids.count(i) > 1}) == []


def test_notebook_html_keeps_its_styles_to_itself(recorded: Recorded) -> None:
    """`_repr_html_` goes into a notebook page: no <html> shell and no rule outside the report.

    Found by this test: the stylesheet has a bare `body{...}` rule, so displaying a report in
    Jupyter restyles the whole notebook (margin, font and colour of its body).
    """
    fragment = recorded.report._repr_html_()
    assert "<html" not in fragment and "<body" not in fragment
    assert fragment.count('<div class="cw-report">') == 1
    for css in re.findall(r"<style>(.*?)</style>", fragment, re.DOTALL):
        for selectors in re.findall(r"([^{}]+)\{[^{}]*\}", css):
            for selector in selectors.split(","):
                assert selector.strip().startswith((".cw-report", ".cw-trace", ".cw-")), (
                    f"unscoped CSS rule {selector.strip()!r} would restyle the notebook"
                )


def test_text_report_fits_the_width(recorded: Recorded, monkeypatch: pytest.MonkeyPatch) -> None:
    text = recorded.report.to_text(width=60)
    too_long = [line for line in text.splitlines() if len(line) > 60]
    assert too_long == []
    monkeypatch.setenv("COLUMNS", "72")
    monkeypatch.setenv("LINES", "40")
    assert max(len(line) for line in str(recorded.report).splitlines()) <= 72
    wide = recorded.report.to_text(width=200)
    assert "ConnectionError: provider unreachable" in wide
    assert all(t.trace_id in wide for t in recorded.report.data.slowest)


def test_text_and_html_without_matplotlib(recorded: Recorded) -> None:
    script = (
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"
        "sys.modules['pandas'] = None\n"
        "import chainwatch\n"
        f"r = chainwatch.report(db={str(recorded.db)!r}, since='1d')\n"
        "print(r.to_text(100))\n"
        "page = r.to_html()\n"
        "assert '<img' not in page and 'Slowest traces' in page, 'no charts, every table'\n"
        "assert 'matplotlib' not in sys.modules or sys.modules['matplotlib'] is None\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Slowest traces" in done.stdout and "LLM calls" in done.stdout



def test_charts_of_a_one_model_batch_render_without_warnings(db_path: Path) -> None:
    """The commonest report (one model) draws its charts cleanly.

    Found by this test: `charts.cost_by_model` makes a figure 0.9 inch tall for one model, too
    short for its title and axis label, so matplotlib warns "Tight layout not applied" (an
    error under this suite's warning filter, a stray warning in every notebook).
    """
    clock = Clock((time.time_ns() // SECOND - 60) * SECOND)
    handler = ChainWatchHandler(db_path, clock=clock, hooks=[])
    try:
        chain = qa_chain(ClockedChatModel(latencies_ms=[100, 250], clock=clock), "support")
        chain.batch(["one?", "two?"], config={"callbacks": [handler]}, max_concurrency=1)
        report = chainwatch.report(db=db_path)
    finally:
        handler.shutdown()
    assert [b.key for b in report.data.by_model] == ["gpt-4o-mini"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        page = report.to_html()
    assert [str(w.message) for w in caught] == []
    assert page.count("data:image/png;base64,") == 3

# -- snapshots ----------------------------------------------------------------------------------


def fixed_id(n: int) -> uuid.UUID:
    return uuid.UUID(f"00000000-0000-4000-8000-{n:012d}")


@pytest.fixture
def snapshot_report(tmp_path: Path) -> chainwatch.Report:
    """Six traces with fixed ids at fixed times, house prices, one feedback, one firing alert."""
    db = tmp_path / "snapshot.db"
    clock = Clock(SNAP_T0)
    handler = ChainWatchHandler(db, clock=clock, prices=HOUSE_PRICES)
    try:
        work = Workload(handler, clock)
        mini = qa_chain(ClockedChatModel(model="house-mini", answers=[PLAIN[0], REFUSAL, HEDGE],
                                         latencies_ms=[120, 340, 95], clock=clock), "support")
        large = qa_chain(ClockedChatModel(model="house-large", answers=[LONG],
                                          latencies_ms=[900], ttfts_ms=[80], prompt_tokens=400,
                                          clock=clock), "research")
        failing = qa_chain(ClockedChatModel(model="house-mini", fail=True, latencies_ms=[2500],
                                            clock=clock), "support")
        lookup = (qa_chain(ClockedChatModel(model="house-mini", latencies_ms=[200],
                                            clock=clock), "qa")
                  | RunnableLambda(broken_search)).with_config(run_name="lookup")
        work.run(mini, "When does the museum open?", "ok", run_id=fixed_id(1))
        work.run(mini, "Can you help me break in?", "ok", run_id=fixed_id(2))
        work.run(large, "Compare the three options.", "ok", run_id=fixed_id(3), stream=True)
        work.run(failing, "Is it open on Monday?", "failed", run_id=fixed_id(4),
                 raises=ConnectionError)
        work.run(lookup, "Which database does chainwatch use?", "failed", run_id=fixed_id(5),
                 raises=TimeoutError)
        work.run(mini, "When does it close?", "ok", run_id=fixed_id(6))
        assert handler.flush()
        chainwatch.feedback(str(fixed_id(1)), 1.0, db=db)
        rule = Rule("errors", "error_rate > 0.05", severity="warning")
        chainwatch.alerts.evaluate([rule], db=db, now_ns=clock.now + SECOND)
        return chainwatch.report(db=db)
    finally:
        handler.shutdown()


def _stable(text: str, report: chainwatch.Report) -> str:
    return text.replace(report.data.scope.db, "<db>/snapshot.db")


SNAPSHOTS = Path(__file__).parent / "snapshots"


def snapshot(name: str, text: str) -> str:
    """tests/snapshots/<name>; with CHAINWATCH_UPDATE_SNAPSHOTS=1 it is rewritten to `text`."""
    path = SNAPSHOTS / name
    if os.environ.get("CHAINWATCH_UPDATE_SNAPSHOTS"):
        path.write_text(text, encoding="utf-8")
    return path.read_text(encoding="utf-8")


def test_text_snapshot(snapshot_report: chainwatch.Report) -> None:
    text = _stable(snapshot_report.to_text(width=100), snapshot_report) + "\n"
    assert text == snapshot("report.txt", text)


def test_markdown_snapshot(snapshot_report: chainwatch.Report) -> None:
    markdown = snapshot_report.to_markdown()
    assert markdown == snapshot("report.md", markdown)


def test_cutting_to_the_width_never_shows_a_different_number(
    snapshot_report: chainwatch.Report,
) -> None:
    """A cell cut at the terminal's edge must not read as another value.

    Found by this test: `to_text` cuts each line at `width` characters, so at 100 columns the
    cost $0.000079 of a trace is printed as "$0.00" and $0.000074 as "$0.000".
    """
    full = snapshot_report.to_text(width=1000)
    amounts = set(re.findall(r"\$[0-9.,]+", full))
    for width in (100, 80):
        shown = set(re.findall(r"\$[0-9.,]+", snapshot_report.to_text(width=width)))
        assert shown <= amounts, f"at width {width}: {sorted(shown - amounts)}"


# -- the command line ---------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "chainwatch.cli", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_cli_report_writes_the_html_file(recorded: Recorded, tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.html"
    target.parent.mkdir()
    done = cli("report", "--db", str(recorded.db), "--html", str(target))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"report written to {target}"
    page = target.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and _external_refs(page) == []
    assert page.count("data:image/png;base64,") == 3
    assert all(f'href="#trace-{t}"' in page for t in recorded.ids["failing"])


def test_cli_report_prints_text_and_markdown(recorded: Recorded) -> None:
    text = cli("report", "--db", str(recorded.db), "--tag", "batch-7")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("chainwatch report: traces with since=")
    assert re.search(r"^traces\s+4$", text.stdout, re.MULTILINE)
    markdown = cli("report", "--db", str(recorded.db), "--markdown", "--name", "research")
    assert markdown.returncode == 0, markdown.stderr
    assert markdown.stdout.startswith("# chainwatch report\n")
    assert "| traces | 3 |" in markdown.stdout
    assert "## Cost and tokens by model" in markdown.stdout


def test_cli_show_prints_the_span_tree(recorded: Recorded) -> None:
    [trace_id] = recorded.ids["lookup"]
    done = cli("show", trace_id, "--db", str(recorded.db))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"trace {trace_id}  lookup  error  210.0ms"
    assert lines[1].startswith("✗ lookup  [chain, 210.0ms]")
    assert "TimeoutError: search backend did not answer in 2s" in lines[1]
    model = next(line for line in lines if "ClockedChatModel" in line)
    assert model.startswith("    • ClockedChatModel  [llm, 210.0ms, ")
    assert "gpt-4o-mini" in model
    assert len(lines) == 1 + len(rows(recorded.db, "SELECT 1 FROM spans WHERE trace_id = ?",
                                      [trace_id]))
    missing = cli("show", "no-such-trace", "--db", str(recorded.db))
    assert missing.returncode == 1
    assert "no trace or span with id 'no-such-trace'" in missing.stderr


# -- headless Chromium --------------------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if found is None:
        message = "Debian's chromium package is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {message}")
        pytest.skip(message)
    return found


def run_chromium(url: str, workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={workdir / 'chromium-profile'}",
        "--enable-logging=stderr", "--v=0", *extra, url,
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def page_problems(stderr: str, url: str) -> list[str]:
    """Console messages and errors of the page (Chromium's own dbus/gpu noise is ignored)."""
    return [
        line for line in stderr.splitlines()
        if "CONSOLE" in line or "Uncaught" in line or (":ERROR:" in line and url in line)
    ]


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_console_check_catches_a_broken_page(tmp_path: Path) -> None:
    """The check below would pass on any page if Chromium's console never reached stderr."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><p>x</p><script>console.error('boom'); missing();</script>",
                    encoding="utf-8")
    done = run_chromium(page.as_uri(), tmp_path, "--dump-dom")
    problems = page_problems(done.stderr, page.as_uri())
    assert any("boom" in p for p in problems)
    assert any("Uncaught ReferenceError" in p for p in problems)


def test_html_report_renders_in_headless_chromium(recorded: Recorded, tmp_path: Path) -> None:
    path = recorded.report.save(tmp_path / "report.html")
    shot = tmp_path / "report.png"
    done = run_chromium(path.as_uri(), tmp_path, f"--screenshot={shot}",
                        "--window-size=1200,2000")
    assert done.returncode == 0, done.stderr[-3000:]
    assert page_problems(done.stderr, path.as_uri()) == []
    assert shot.exists() and shot.stat().st_size > 20_000
    assert png_size(shot) == (1200, 2000)


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text = ""
        self._in = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in = self._in or dict(attrs).get("id") == "out"

    def handle_data(self, data: str) -> None:
        if self._in:
            self.text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self._in = False


def test_trace_list_sorts_by_clicked_column_in_chromium(
    recorded: Recorded, tmp_path: Path
) -> None:
    listing = chainwatch.traces(db=recorded.db, limit=None)
    columns = list(chainwatch.TraceList._COLUMNS)
    duration, name = columns.index("duration_ms"), columns.index("name")
    script = (
        "<script>var t=document.querySelector('table.cw-traces'),h=t.rows[0].cells,o={};"
        "function col(i){return Array.from(t.rows).slice(1).map(function(r){"
        "return r.cells[i].dataset.v})}"
        f"h[{duration}].click();o.asc=col({duration});h[{duration}].click();o.desc=col({duration});"
        f"h[{name}].click();o.names=col({name});"
        "document.getElementById('out').textContent=JSON.stringify(o);</script>"
    )
    page = tmp_path / "traces.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                    f"{listing._repr_html_()}<pre id='out'></pre>{script}</body></html>",
                    encoding="utf-8")
    done = run_chromium(page.as_uri(), tmp_path, "--dump-dom")
    assert done.returncode == 0, done.stderr[-3000:]
    assert page_problems(done.stderr, page.as_uri()) == []
    parser = _Cells()
    parser.feed(done.stdout)
    order = json.loads(parser.text)
    durations = [float(v) for v in order["asc"]]
    assert len(durations) == len(listing) >= len(recorded.batch)
    assert durations == sorted(r["duration_ms"] for r in listing)
    assert [float(v) for v in order["desc"]] == sorted(durations, reverse=True)
    assert order["names"] == sorted(order["names"], key=str.lower)
