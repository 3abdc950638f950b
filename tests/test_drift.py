"""Drift detection: statistical targets on simulated windows, storage, hooks, and a real chain.

The simulated windows draw every metric from known distributions with a fixed seed, so the
false-alarm and power targets of the issue are checked exactly as stated (1,000 pairs of
500-call windows; 2 % -> 6 % refusals and +30 % median latency at 1,000 calls a window).
"""

from __future__ import annotations

import datetime
import json
import math
import random
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from pydantic import PrivateAttr

import chainwatch
from chainwatch import ChainWatchHandler, Usage, stats
from chainwatch.baselines import DriftHook
from chainwatch.drift import (
    METRICS,
    DriftResult,
    DriftSettings,
    MetricDrift,
    compare_samples,
    compare_simple,
)
from chainwatch.quality import QualityHook, analyze_response

Segments = dict[str, dict[str, list[float]]]


@pytest.fixture
def stdlib_backend() -> Iterator[None]:
    stats.set_backend("stdlib")
    yield
    stats.set_backend("auto")


# -- simulated windows ---------------------------------------------------------------------------


def window(
    rng: random.Random,
    n: int,
    *,
    refusal: float = 0.02,
    latency_scale: float = 1.0,
    error: float = 0.03,
) -> Segments:
    """`n` calls with every metric drawn from a fixed distribution (overall segment only)."""
    g, r, exp = rng.gauss, rng.random, math.exp
    latency = [exp(g(6.7, 0.5)) * latency_scale for _ in range(n)]
    ttft = [exp(g(5.3, 0.4)) for _ in range(n)]
    prompt = [float(int(exp(g(6.0, 0.3)))) for _ in range(n)]
    completion = [float(max(1, int(g(150, 40)))) for _ in range(n)]
    values = {
        "latency_ms": latency,
        "ttft_ms": ttft,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cost_usd": [p * 1.5e-7 + c * 6e-7 for p, c in zip(prompt, completion, strict=True)],
        "error_rate": [float(r() < error) for _ in range(n)],
        "refusal_rate": [float(r() < refusal) for _ in range(n)],
        "hedging_rate": [float(r() < 0.10) for _ in range(n)],
        "response_length": [c * 4 + int(r() * 41) - 20 for c in completion],
        "sentiment": [round(min(1.0, max(-1.0, g(0.3, 0.4))), 4) for _ in range(n)],
        "groundedness": rng.choices((0.0, 0.25, 0.5, 0.75, 1.0), (1, 1, 1, 1, 3), k=n),
        "feedback_score": rng.choices((1.0, 2.0, 3.0, 4.0, 5.0), (5, 5, 10, 30, 50), k=n),
    }
    assert set(values) == set(METRICS)
    return {"overall": values}


def drifted_metrics(results: list[MetricDrift]) -> set[str]:
    return {r.metric for r in results if r.status == "drift"}


def by_metric(results: list[MetricDrift], segment: str = "overall") -> dict[str, MetricDrift]:
    return {r.metric: r for r in results if r.segment == segment}


def rate_samples(events: int, n: int) -> list[float]:
    return [1.0] * events + [0.0] * (n - events)


def test_false_alarms_at_most_5_percent_over_1000_pairs_of_500_calls(
    stdlib_backend: None,
) -> None:
    rng = random.Random(20261101)
    alarms = 0
    flagged: Counter[str] = Counter()
    for _ in range(1000):
        results = compare_samples(window(rng, 500), window(rng, 500))
        assert {r.metric for r in results} == set(METRICS)
        assert all(r.status in ("ok", "drift") for r in results), "every metric is tested"
        drifted = drifted_metrics(results)
        alarms += bool(drifted)
        flagged.update(drifted)
    assert alarms <= 50, f"{alarms} of 1000 checks drifted: {dict(flagged)}"


def test_power_refusal_rate_2_to_6_percent_at_1000_calls(stdlib_backend: None) -> None:
    rng = random.Random(606)
    found: Counter[str] = Counter()
    checks = 120
    for _ in range(checks):
        results = compare_samples(window(rng, 1000), window(rng, 1000, refusal=0.06))
        found.update(drifted_metrics(results))
        refusal = by_metric(results)["refusal_rate"]
        assert refusal.effect_kind == "rate_difference"
        assert refusal.n_baseline == refusal.n_current == 1000
    assert found["refusal_rate"] >= 0.8 * checks, found
    assert found["latency_ms"] <= 0.05 * checks, found


def test_power_median_latency_plus_30_percent_at_1000_calls(stdlib_backend: None) -> None:
    rng = random.Random(1300)
    found: Counter[str] = Counter()
    checks = 120
    for _ in range(checks):
        results = compare_samples(window(rng, 1000), window(rng, 1000, latency_scale=1.3))
        found.update(drifted_metrics(results))
        latency = by_metric(results)["latency_ms"]
        assert latency.effect_kind == "median_ratio"
        assert latency.test == "mann_whitney_u"
    assert found["latency_ms"] >= 0.8 * checks, found
    assert found["refusal_rate"] <= 0.05 * checks, found


def verdicts(results: list[MetricDrift]) -> list[tuple[str, str, str, str | None]]:
    return [(r.segment, r.metric, r.status, r.test) for r in results]


def test_stdlib_and_scipy_backends_give_the_same_verdicts() -> None:
    rng = random.Random(77)
    pairs: list[tuple[Segments, Segments]] = []
    for _ in range(8):
        pairs.append((window(rng, 500), window(rng, 500)))
        pairs.append((window(rng, 1000), window(rng, 1000, refusal=0.06)))
        pairs.append((window(rng, 1000), window(rng, 1000, latency_scale=1.3)))
        # few events: Fisher's exact test decides the rates
        pairs.append((window(rng, 150, refusal=0.01, error=0.025),
                      window(rng, 150, refusal=0.08, error=0.025)))
    outcomes: Counter[str] = Counter()
    try:
        for baseline, current in pairs:
            stats.set_backend("stdlib")
            plain = compare_samples(baseline, current)
            stats.set_backend("scipy")
            exact = compare_samples(baseline, current)
            assert verdicts(plain) == verdicts(exact)
            outcomes.update(f"{r.test}:{r.status}" for r in plain)
    finally:
        stats.set_backend("auto")
    # the comparison covered both rate tests and both verdicts
    for outcome in ("fisher_exact:drift", "fisher_exact:ok", "two_proportion_z:drift",
                    "two_proportion_z:ok", "mann_whitney_u:drift", "mann_whitney_u:ok"):
        assert outcomes[outcome] > 0, outcomes


def test_huge_window_with_tiny_significant_latency_shift_is_ok_not_drift(
    stdlib_backend: None,
) -> None:
    rng = random.Random(20000)
    baseline, current = window(rng, 20_000), window(rng, 20_000, latency_scale=1.03)
    latency = by_metric(compare_samples(baseline, current))["latency_ms"]
    assert latency.p_adjusted is not None and latency.p_adjusted < 1e-3, "the shift is significant"
    assert latency.effect == pytest.approx(1.03, abs=0.015)
    assert latency.status == "ok"
    # the effect-size minimum is what keeps it ok: lower it and the same data drifts
    lenient = DriftSettings(min_median_ratio=1.01)
    assert by_metric(compare_samples(baseline, current, lenient))["latency_ms"].status == "drift"


@pytest.mark.parametrize("backend", ["stdlib", "scipy"])
def test_an_overwhelming_drift_whose_p_value_underflows_to_zero_is_drift(backend: str) -> None:
    # No overlap at all: the p-values are below the smallest float and read 0.0.
    baseline = {"overall": {"latency_ms": [100.0 + i % 50 for i in range(3000)],
                            "refusal_rate": rate_samples(0, 3000)}}
    current = {"overall": {"latency_ms": [300.0 + i % 50 for i in range(3000)],
                           "refusal_rate": rate_samples(1500, 3000)}}
    stats.set_backend(backend)
    try:
        results = by_metric(compare_samples(baseline, current))
    finally:
        stats.set_backend("auto")
    assert results["latency_ms"].effect == pytest.approx(2.6, abs=0.01)
    assert results["refusal_rate"].effect == pytest.approx(0.5)
    for metric in ("latency_ms", "refusal_rate"):
        drift = results[metric]
        assert drift.p_value is not None and drift.p_value < 1e-100
        assert drift.p_adjusted is not None and drift.p_adjusted < 0.05, drift
        assert drift.status == "drift", drift


def test_a_latency_drop_drifts_like_a_rise(stdlib_backend: None) -> None:
    rng = random.Random(31)
    results = compare_samples(window(rng, 1000), window(rng, 1000, latency_scale=0.7))
    latency = by_metric(results)["latency_ms"]
    assert latency.status == "drift"
    assert latency.effect == pytest.approx(0.7, abs=0.05)


# -- insufficient data -----------------------------------------------------------------------------


def test_fewer_than_min_samples_is_insufficient_data_never_a_verdict(
    stdlib_backend: None,
) -> None:
    rng = random.Random(99)
    results = compare_samples(window(rng, 99), window(rng, 99, refusal=0.5, latency_scale=3.0))
    assert {r.metric for r in results} == set(METRICS)
    for r in results:
        assert r.status == "insufficient_data", r
        assert r.p_value is None and r.p_adjusted is None and r.test is None
        assert r.n_baseline == r.n_current == 99
        assert r.reason is not None and "100" in r.reason
    assert DriftResult("c", "default", "stats", results).status == "insufficient_data"

    at_minimum = compare_samples(window(rng, 100), window(rng, 100, refusal=0.5))
    assert by_metric(at_minimum)["refusal_rate"].status == "drift"


def test_one_small_window_is_enough_for_insufficient_data(stdlib_backend: None) -> None:
    rng = random.Random(98)
    results = compare_samples(window(rng, 2000), window(rng, 60, refusal=0.9))
    assert all(r.status == "insufficient_data" for r in results)
    assert all(r.n_current == 60 for r in results)


def test_min_samples_is_configurable(stdlib_backend: None) -> None:
    rng = random.Random(97)
    baseline, current = window(rng, 60), window(rng, 60, refusal=0.6)
    assert by_metric(compare_samples(baseline, current))["refusal_rate"].status == (
        "insufficient_data"
    )
    relaxed = compare_samples(baseline, current, DriftSettings(min_samples=50))
    assert by_metric(relaxed)["refusal_rate"].status == "drift"


def test_rates_with_fewer_than_min_events_are_insufficient_data(stdlib_backend: None) -> None:
    def refusal(base_events: int, cur_events: int, **settings: Any) -> MetricDrift:
        baseline = {"overall": {"refusal_rate": rate_samples(base_events, 500)}}
        current = {"overall": {"refusal_rate": rate_samples(cur_events, 500)}}
        (result,) = compare_samples(baseline, current, DriftSettings(**settings))
        return result

    none = refusal(0, 0)
    assert none.status == "insufficient_data" and none.p_value is None
    few = refusal(0, 4)  # 0 % -> 0.8 %: four events cannot tell
    assert few.status == "insufficient_data"
    assert few.reason is not None and "5 events" in few.reason
    assert few.baseline_value == 0.0 and few.current_value == pytest.approx(4 / 500)
    assert refusal(1, 4).status != "insufficient_data"  # five events are testable
    assert refusal(0, 4, min_events=3).status != "insufficient_data"
    assert refusal(0, 40).status == "drift"


def test_metrics_missing_from_both_windows_are_left_out(stdlib_backend: None) -> None:
    rng = random.Random(96)
    baseline, current = window(rng, 300), window(rng, 300)
    for segments in (baseline, current):
        del segments["overall"]["groundedness"]
    del current["overall"]["feedback_score"]
    results = by_metric(compare_samples(baseline, current))
    assert "groundedness" not in results
    assert results["feedback_score"].status == "insufficient_data"
    assert results["feedback_score"].n_current == 0


def test_drift_settings_are_validated() -> None:
    for bad in ({"alpha": 0}, {"alpha": 1.5}, {"min_samples": 1}, {"min_events": 0}):
        with pytest.raises(ValueError):
            DriftSettings(**bad)  # type: ignore[arg-type]


# -- segments --------------------------------------------------------------------------------------


def test_segments_show_which_model_drifted(stdlib_backend: None) -> None:
    rng = random.Random(55)

    def segmented(refusal_b: float) -> Segments:
        a = window(rng, 600)["overall"]
        b = window(rng, 600, refusal=refusal_b)["overall"]
        both = {m: a[m] + b[m] for m in METRICS}
        return {"overall": both, "model=a": a, "model=b": b, "chain=qa": both}

    results = compare_samples(segmented(0.02), segmented(0.14))
    assert by_metric(results, "model=b")["refusal_rate"].status == "drift"
    assert by_metric(results, "model=a")["refusal_rate"].status == "ok"
    assert by_metric(results, "model=b")["refusal_rate"].n_current == 600
    # a segment holding exactly the overall calls is not tested twice
    assert by_metric(results, "chain=qa") == {}
    assert results[0].segment == "overall"


# -- simple mode -----------------------------------------------------------------------------------


def simple(metric: str, base: list[float], cur: list[float]) -> MetricDrift:
    results = {r.metric: r for r in compare_simple({"overall": {metric: base}},
                                                   {"overall": {metric: cur}})}
    return results[metric]


def test_simple_mode_uses_the_seed_thresholds() -> None:
    refusal = simple("refusal_rate", rate_samples(2, 100), rate_samples(15, 100))
    assert refusal.status == "drift" and refusal.effect == pytest.approx(0.13)
    assert simple("refusal_rate", rate_samples(2, 100), rate_samples(10, 100)).status == "ok"
    assert simple("refusal_rate", rate_samples(20, 100), rate_samples(5, 100)).status == "drift"

    length = simple("response_length", [100.0] * 50, [135.0] * 50)
    assert length.status == "drift" and length.effect == pytest.approx(0.35)
    assert length.effect_kind == "relative_change"
    assert simple("response_length", [100.0] * 50, [125.0] * 50).status == "ok"
    assert simple("response_length", [100.0] * 50, [65.0] * 50).status == "drift"

    assert simple("hedging_rate", rate_samples(10, 100), rate_samples(30, 100)).status == "drift"
    assert simple("hedging_rate", rate_samples(10, 100), rate_samples(20, 100)).status == "ok"


def test_simple_mode_covers_three_metrics_and_needs_samples() -> None:
    results = compare_simple({"overall": {"refusal_rate": [0.0] * 10}}, {"overall": {}})
    assert [r.metric for r in results] == ["refusal_rate", "response_length", "hedging_rate"]
    assert all(r.status == "insufficient_data" for r in results)


# -- the result object -----------------------------------------------------------------------------


def sample_result(baseline_name: str = "prod <v2>") -> DriftResult:
    rng = random.Random(8)
    stats.set_backend("stdlib")
    try:
        results = compare_samples(window(rng, 500), window(rng, 500, refusal=0.12))
        results += compare_samples({"overall": {"groundedness": [1.0] * 10}},
                                   {"overall": {"groundedness": [0.0] * 10}})
    finally:
        stats.set_backend("auto")
    return DriftResult("check-1", baseline_name, "stats", results)


def test_result_prints_as_an_aligned_table() -> None:
    result = sample_result()
    lines = str(result).splitlines()
    assert lines[0] == "drift check against 'prod <v2>' (stats): drift"
    header, rows = lines[1], lines[2:]
    assert header.split() == ["segment", "metric", "status", "baseline", "current", "effect",
                              "size", "p(adj)", "n"]
    assert len(rows) == len(result.results)
    assert len({len(line) for line in lines[1:]}) == 1, "columns are padded to one width"
    refusal_row = next(row for row in rows if row.split()[1] == "refusal_rate")
    assert refusal_row.split()[:3] == ["overall", "refusal_rate", "drift"]
    assert refusal_row.split()[-1] == "500/500"
    insufficient = rows[-1]
    assert insufficient.split()[:2] == ["overall", "groundedness"]
    assert insufficient.split()[2:8] == ["insufficient_data", "-", "-", "-", "-", "-"]
    assert repr(result) == "<DriftResult drift drifted=['refusal_rate']>"


def test_result_renders_as_escaped_html_with_drift_rows_marked() -> None:
    result = sample_result()
    page = result._repr_html_()
    assert "prod &lt;v2&gt;" in page and "prod <v2>" not in page
    assert page.count("<tr") == len(result.results) + 1
    assert page.count("background:#fde2e1") == len(result.drifted) == 1
    assert "<td>refusal_rate</td>" in page


def test_result_to_dict_is_plain_json() -> None:
    result = sample_result()
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["check_id"] == "check-1" and data["baseline"] == "prod <v2>"
    assert data["status"] == "drift" and data["mode"] == "stats"
    assert len(data["results"]) == len(result.results)
    refusal = next(r for r in data["results"] if r["metric"] == "refusal_rate")
    assert refusal["status"] == "drift" and refusal["effect_kind"] == "rate_difference"
    assert set(refusal) == {
        "segment", "metric", "status", "test", "statistic", "p_value", "p_adjusted", "effect",
        "effect_kind", "baseline_value", "current_value", "n_baseline", "n_current", "reason",
    }
    assert 0 <= refusal["p_value"] <= refusal["p_adjusted"] <= 1


# -- recorded calls in a database -----------------------------------------------------------------

ANSWERS = [
    "The capital of France is Paris, on the Seine.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The Pacific is the largest ocean on the planet.",
    "Mount Everest is 8,849 metres above sea level.",
    "Python was first released by Guido van Rossum.",
    "The Moon orbits the Earth about every 27 days.",
    "Canberra is the capital city of Australia now.",
    "A year on Mars lasts about 687 days on Earth.",
    "The Nile flows north into the Mediterranean Sea.",
    "Gold has the chemical symbol Au in the table.",
]
# Same length and the same (neutral) sentiment as the answers: only the refusal rate moves.
REFUSAL = "I cannot assist with that request on this topic."
QUESTIONS = [
    "What is the capital of France?",
    "At what temperature does water boil?",
    "Which is the largest ocean?",
    "How high is Mount Everest?",
    "Who created Python?",
    "How long does the Moon take to orbit the Earth?",
]
PRICES = {"sim-model": {"input_per_mtok": 0.5, "output_per_mtok": 1.5},
          "drift-fake": {"input_per_mtok": 0.5, "output_per_mtok": 1.5}}
MS = 1_000_000


def ns(iso: str) -> int:
    moment = datetime.datetime.fromisoformat(iso).replace(tzinfo=datetime.timezone.utc)
    return int(moment.timestamp()) * 1_000_000_000


def test_answers_and_refusal_differ_only_in_being_a_refusal() -> None:
    refusal = analyze_response(REFUSAL, QUESTIONS[0])
    assert refusal.has_refusal and not refusal.has_hedging
    assert refusal.sentiment_score == 0.0
    for answer in ANSWERS:
        quality = analyze_response(answer, QUESTIONS[0])
        assert not quality.has_refusal and not quality.has_hedging, answer
        assert quality.sentiment_score == 0.0, answer
        assert abs(len(answer) - len(REFUSAL)) <= 4


def record_calls(
    handler: ChainWatchHandler,
    rng: random.Random,
    count: int,
    *,
    start: str,
    every_s: float,
    refusal_share: float = 0.0,
    latency_scale: float = 1.0,
    model: str = "sim-model",
    tags: list[str] | None = None,
) -> list[str]:
    """`count` model calls, each its own trace, starting at `start`; returns their trace ids."""
    ids = []
    t0 = ns(start)
    for i in range(count):
        span_id = str(uuid.UUID(int=rng.getrandbits(128)))
        question = rng.choice(QUESTIONS)
        text = REFUSAL if rng.random() < refusal_share else rng.choice(ANSWERS)
        start_ns = t0 + int(i * every_s * 1e9)
        latency_ms = rng.lognormvariate(math.log(800), 0.25) * latency_scale
        rec = handler.recorder.start(span_id, None, "answer", "llm", "manual", question,
                                     start_ns=start_ns, tags=tags)
        rec.model = model
        rec.usage = Usage(len(question.split()) + 12, math.ceil(len(text) / 4))
        handler.recorder.end(span_id, text, end_ns=start_ns + int(latency_ms * MS))
        ids.append(span_id)
    return ids


def quality_handler(db_path: Path, *hooks: Any) -> ChainWatchHandler:
    return ChainWatchHandler(db_path, prices=PRICES, hooks=[QualityHook(), *hooks])


@pytest.fixture
def timeline(db_path: Path) -> Iterator[Path]:
    """Normal calls from Nov 1 and Nov 21, then from Nov 26 10:00 refusing and slower."""
    rng = random.Random(2611)
    handler = quality_handler(db_path)
    record_calls(handler, rng, 120, start="2026-11-01T00:00:00", every_s=3 * 3600)
    record_calls(handler, rng, 120, start="2026-11-21T00:00:00", every_s=1800)
    record_calls(handler, rng, 120, start="2026-11-26T10:00:00", every_s=600,
                 refusal_share=0.3, latency_scale=1.4)
    assert handler.flush()
    yield db_path
    handler.shutdown()


def drift_rows(db_path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM drift_checks ORDER BY id")]
    finally:
        conn.close()


def test_time_window_against_a_time_range_baseline(timeline: Path) -> None:
    held = chainwatch.set_baseline(name="default", since="2026-11-01", until="2026-11-20",
                                   db=timeline)
    assert held == 120
    result = chainwatch.check_drift(since="2026-11-26T10:00:00Z", until=None,
                                    baseline="default", db=timeline)
    assert result.baseline == "default" and result.mode == "stats"
    assert {r.metric for r in result.drifted} == {"refusal_rate", "latency_ms"}
    assert {r.segment for r in result.drifted} == {"overall"}
    refusal = result.get("refusal_rate")
    assert refusal is not None
    assert refusal.n_baseline == refusal.n_current == 120
    assert refusal.baseline_value == 0.0 and refusal.current_value > 0.15
    for metric in ("prompt_tokens", "completion_tokens", "cost_usd", "response_length",
                   "sentiment"):
        tested = result.get(metric)
        assert tested is not None and tested.status == "ok", tested

    calm = chainwatch.check_drift(since="2026-11-21", until="2026-11-26", db=timeline)
    assert calm.status == "ok"
    assert calm.get("latency_ms").n_current == 120  # type: ignore[union-attr]

    until_excludes = chainwatch.check_drift(since="2026-11-21", until="2026-11-21T00:30:00Z",
                                            db=timeline)
    assert until_excludes.get("latency_ms").n_current == 1  # type: ignore[union-attr]


def test_last_n_window(timeline: Path) -> None:
    chainwatch.set_baseline(first_n=120, db=timeline)
    newest = chainwatch.check_drift(last_n=120, db=timeline)
    assert {r.metric for r in newest.drifted} == {"refusal_rate", "latency_ms"}
    assert newest.get("refusal_rate").n_current == 120  # type: ignore[union-attr]
    wider = chainwatch.check_drift(last_n=240, db=timeline)
    assert wider.get("latency_ms").n_current == 240  # type: ignore[union-attr]
    # the baseline's own traces never count as the current window
    everything = chainwatch.check_drift(last_n=10_000, db=timeline)
    assert everything.get("latency_ms").n_current == 240  # type: ignore[union-attr]


def test_named_baselines_are_separate_and_survive_a_new_process(timeline: Path) -> None:
    assert chainwatch.set_baseline("early", first_n=120, db=timeline) == 120
    assert chainwatch.set_baseline("recent", since="2026-11-26T10:00:00Z", db=timeline) == 120
    conn = sqlite3.connect(timeline)
    try:
        stored = dict(conn.execute("SELECT name, first_n FROM baselines").fetchall())
    finally:
        conn.close()
    assert stored == {"early": 120, "recent": None}

    against_early = chainwatch.check_drift(baseline="early", last_n=120, db=timeline)
    assert against_early.status == "drift"
    against_recent = chainwatch.check_drift(baseline="recent", since="2026-11-21",
                                            until="2026-11-26", db=timeline)
    assert against_recent.get("refusal_rate").status == "drift"  # type: ignore[union-attr]
    assert against_recent.get("refusal_rate").effect < 0  # type: ignore[union-attr]

    code = (
        "import json, sys, chainwatch\n"
        "r = chainwatch.check_drift(baseline='early', last_n=120, db=sys.argv[1])\n"
        "print(json.dumps(r.to_dict()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(timeline)], capture_output=True,
                         text=True, check=True, timeout=300)
    other = json.loads(out.stdout)
    assert other["baseline"] == "early" and other["check_id"] != against_early.check_id
    assert [(r["segment"], r["metric"], r["status"]) for r in other["results"]] == [
        (r.segment, r.metric, r.status) for r in against_early.results
    ]
    checks = {row["check_id"] for row in drift_rows(timeline)}
    assert other["check_id"] in checks and against_early.check_id in checks


def test_baseline_survives_a_new_handler_and_can_be_redefined(db_path: Path) -> None:
    rng = random.Random(4)
    first = quality_handler(db_path)
    record_calls(first, rng, 110, start="2026-11-01T00:00:00", every_s=60)
    assert first.flush()
    chainwatch.set_baseline("default", since="2026-11-01", db=db_path)
    first.shutdown()

    second = quality_handler(db_path)
    record_calls(second, rng, 110, start="2026-11-10T00:00:00", every_s=60, refusal_share=0.4)
    assert second.flush()
    # a baseline without an end grows: it now holds the newer traces, and they are never
    # compared with themselves
    result = chainwatch.check_drift(since="2026-11-10", db=db_path)
    assert result.get("refusal_rate").n_baseline == 220  # type: ignore[union-attr]
    assert result.get("refusal_rate").n_current == 0  # type: ignore[union-attr]
    assert result.status == "insufficient_data"
    chainwatch.set_baseline("default", since="2026-11-01", until="2026-11-02", db=db_path)
    result = chainwatch.check_drift(since="2026-11-10", db=db_path)
    assert result.get("refusal_rate").n_baseline == 110  # type: ignore[union-attr]
    assert result.get("refusal_rate").status == "drift"  # type: ignore[union-attr]
    second.shutdown()


def test_baseline_tags_select_the_traces_of_both_windows(db_path: Path) -> None:
    rng = random.Random(5)
    handler = quality_handler(db_path)
    record_calls(handler, rng, 110, start="2026-11-01T00:00:00", every_s=60, tags=["prod"])
    record_calls(handler, rng, 110, start="2026-11-02T00:00:00", every_s=60, tags=["dev"],
                 refusal_share=0.5)
    record_calls(handler, rng, 110, start="2026-11-03T00:00:00", every_s=60, tags=["prod"])
    assert handler.flush()
    assert chainwatch.set_baseline(until="2026-11-02T12:00:00Z", tags=["prod"], db=db_path) == 110
    result = chainwatch.check_drift(since="2026-11-02", db=db_path)
    refusal = result.get("refusal_rate")
    assert refusal is not None and refusal.n_current == 110, "dev traces are not compared"
    assert refusal.status != "drift"
    handler.shutdown()


def test_segments_by_model_from_the_database(db_path: Path) -> None:
    rng = random.Random(6)
    handler = quality_handler(db_path)
    for model in ("sim-a", "sim-b"):
        record_calls(handler, rng, 110, start="2026-11-01T00:00:00", every_s=60, model=model)
    record_calls(handler, rng, 110, start="2026-11-02T00:00:00", every_s=60, model="sim-a")
    record_calls(handler, rng, 110, start="2026-11-02T00:00:00", every_s=60, model="sim-b",
                 refusal_share=0.5)
    assert handler.flush()
    chainwatch.set_baseline(until="2026-11-02", db=db_path)
    result = chainwatch.check_drift(since="2026-11-02", db=db_path)
    assert result.get("refusal_rate", "model=sim-b").status == "drift"  # type: ignore[union-attr]
    assert result.get("refusal_rate", "model=sim-a").status != "drift"  # type: ignore[union-attr]
    assert result.get("latency_ms", "model=sim-a").status == "ok"  # type: ignore[union-attr]
    assert result.get("refusal_rate").n_current == 220  # type: ignore[union-attr]
    assert result.get("refusal_rate", "chain=answer") is None  # the same calls as overall
    handler.shutdown()


DOCUMENT = (
    "The Eiffel Tower stands in Paris and opened in 1889. "
    "Gustave Eiffel's company designed and built the iron tower for the World's Fair."
)
GROUNDED = "The Eiffel Tower opened in Paris in 1889 for the World's Fair."
UNGROUNDED = "The Colosseum in Rome hosted gladiator contests for ancient crowds."


def record_rag_calls(
    handler: ChainWatchHandler, rng: random.Random, count: int, *, start: str,
    ungrounded_share: float, scores: tuple[float, ...],
) -> None:
    """Retriever then model under one chain root; every trace gets a feedback score."""
    rec = handler.recorder
    t0 = ns(start)
    trace_ids = []
    for i in range(count):
        root, retriever, llm = (str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(3))
        at = t0 + i * 60 * 1_000_000_000
        rec.start(root, None, "rag", "chain", "manual", "When did the tower open?", start_ns=at)
        rec.start(retriever, root, "search", "retriever", "manual", "tower", start_ns=at + MS)
        rec.end(retriever, [{"content": DOCUMENT}], end_ns=at + 5 * MS)
        span = rec.start(llm, root, "chat", "llm", "manual", "When did the tower open?",
                         start_ns=at + 6 * MS)
        span.model = "sim-model"
        span.usage = Usage(40, 16)
        answer = UNGROUNDED if rng.random() < ungrounded_share else GROUNDED
        rec.end(llm, answer, end_ns=at + 600 * MS)
        rec.end(root, answer, end_ns=at + 601 * MS)
        trace_ids.append(root)
    assert handler.flush()
    for trace_id in trace_ids:
        chainwatch.feedback(trace_id, rng.choice(scores), db=handler.db_path)


def test_groundedness_and_feedback_drift_from_quality_rows_and_feedback(db_path: Path) -> None:
    rng = random.Random(9)
    handler = quality_handler(db_path)
    record_rag_calls(handler, rng, 110, start="2026-11-01T00:00:00", ungrounded_share=0.05,
                     scores=(4.0, 5.0, 5.0))
    record_rag_calls(handler, rng, 110, start="2026-11-02T00:00:00", ungrounded_share=0.6,
                     scores=(1.0, 2.0, 4.0))
    chainwatch.set_baseline(until="2026-11-02", db=db_path)
    result = chainwatch.check_drift(since="2026-11-02", db=db_path)
    grounded, feedback = result.get("groundedness"), result.get("feedback_score")
    assert grounded is not None and grounded.status == "drift", grounded
    assert grounded.effect_kind == "wasserstein" and grounded.n_current == 110
    assert feedback is not None and feedback.status == "drift", feedback
    assert feedback.n_baseline == feedback.n_current == 110
    assert result.get("latency_ms").status == "ok"  # type: ignore[union-attr]
    handler.shutdown()


def test_unknown_baseline_raises_lookup_error_and_stores_nothing(timeline: Path) -> None:
    with pytest.raises(LookupError, match="nope"):
        chainwatch.check_drift(baseline="nope", db=timeline)
    assert drift_rows(timeline) == []
    with pytest.raises(ValueError):
        chainwatch.set_baseline("", db=timeline)
    with pytest.raises(ValueError):
        chainwatch.set_baseline(first_n=0, db=timeline)
    chainwatch.set_baseline(first_n=120, db=timeline)
    with pytest.raises(ValueError, match="mode"):
        chainwatch.check_drift(mode="fancy", db=timeline)


def test_every_check_is_stored_row_by_row(timeline: Path) -> None:
    chainwatch.set_baseline("default", first_n=120, db=timeline)
    first = chainwatch.check_drift(last_n=120, db=timeline)
    second = chainwatch.check_drift(since="2026-11-21", until="2026-11-26", db=timeline)
    simple_check = chainwatch.check_drift(last_n=120, mode="simple", db=timeline)
    rows = drift_rows(timeline)
    by_check: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_check.setdefault(row["check_id"], []).append(row)
    assert list(by_check) == [first.check_id, second.check_id, simple_check.check_id]
    for result in (first, second, simple_check):
        stored = by_check[result.check_id]
        assert [(r["segment"], r["metric"], r["status"]) for r in stored] == [
            (r.segment, r.metric, r.status) for r in result.results
        ]
        assert {r["baseline"] for r in stored} == {"default"}
        assert {r["mode"] for r in stored} == {result.mode}
        for row, drift in zip(stored, result.results, strict=True):
            assert row["p_adjusted"] == drift.p_adjusted and row["effect"] == drift.effect
            assert (row["n_baseline"], row["n_current"]) == (drift.n_baseline, drift.n_current)
            assert row["created_at"].endswith("+00:00")
    assert json.loads(by_check[first.check_id][0]["window"]) == {"last_n": 120}
    assert json.loads(by_check[second.check_id][0]["window"]) == {
        "since": "2026-11-21T00:00:00.000000+00:00", "until": "2026-11-26T00:00:00.000000+00:00"
    }
    assert [r.metric for r in simple_check.results] == [
        "refusal_rate", "response_length", "hedging_rate"
    ]
    assert simple_check.get("refusal_rate").status == "drift"  # type: ignore[union-attr]


# -- the drift hook --------------------------------------------------------------------------------


def drift_check_ids(db_path: Path) -> list[str]:
    return list(dict.fromkeys(row["check_id"] for row in drift_rows(db_path)))


def test_drift_hook_checks_every_n_traces_once_a_baseline_exists(db_path: Path) -> None:
    rng = random.Random(7)
    recorder = quality_handler(db_path)
    record_calls(recorder, rng, 120, start="2026-11-01T00:00:00", every_s=60)
    assert recorder.flush()
    chainwatch.set_baseline(first_n=120, db=db_path)
    recorder.shutdown()

    hook = DriftHook(every_n_traces=30, last_n=30, settings=DriftSettings(min_samples=25))
    handler = quality_handler(db_path, hook)
    record_calls(handler, rng, 29, start="2026-11-02T00:00:00", every_s=60, refusal_share=0.5)
    assert handler.flush()
    assert drift_check_ids(db_path) == [] and hook.last_result is None

    record_calls(handler, rng, 1, start="2026-11-03T00:00:00", every_s=60, refusal_share=0.5)
    assert handler.flush()
    assert drift_check_ids(db_path) == [hook.last_result.check_id]  # type: ignore[union-attr]
    rows = [r for r in drift_rows(db_path) if r["segment"] == "overall"]
    assert json.loads(rows[0]["window"]) == {"last_n": 30}
    refusal = next(r for r in rows if r["metric"] == "refusal_rate")
    assert (refusal["n_baseline"], refusal["n_current"]) == (120, 30)
    assert refusal["status"] == "drift"

    conn = sqlite3.connect(db_path)
    try:
        runs = conn.execute("SELECT status, COUNT(*) FROM hook_runs WHERE hook = 'drift' "
                            "GROUP BY status").fetchall()
    finally:
        conn.close()
    assert runs == [("ok", 30)]
    handler.shutdown()


def test_drift_hook_without_a_baseline_stores_nothing(db_path: Path) -> None:
    hook = DriftHook(every_n_traces=5)
    handler = quality_handler(db_path, hook)
    record_calls(handler, random.Random(8), 10, start="2026-11-01T00:00:00", every_s=60)
    assert handler.flush()
    assert drift_check_ids(db_path) == [] and hook.last_result is None
    assert hook.seen == 10
    handler.shutdown()
    with pytest.raises(ValueError):
        DriftHook(every_n_traces=0)


# -- end to end through a real LangChain chain ----------------------------------------------------


class DriftingChatModel(BaseChatModel):
    """A chat model that answers facts, and later refuses some questions and slows down."""

    model_name: str = "drift-fake"
    delay_ms: float = 12.0
    refusal_share: float = 0.0
    error_share: float = 0.04
    seed: int = 0
    _rng: random.Random = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        self._rng = random.Random(self.seed)

    @property
    def _llm_type(self) -> str:
        return "drifting-fake"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        rng = self._rng
        time.sleep(self.delay_ms * (1 + 0.1 * rng.random()) / 1000)
        if rng.random() < self.error_share:
            raise ConnectionError("upstream reset the connection")
        text = REFUSAL if rng.random() < self.refusal_share else rng.choice(ANSWERS)
        prompt_tokens = sum(len(str(m.content).split()) for m in messages)
        message = AIMessage(
            content=text,
            usage_metadata={
                "input_tokens": prompt_tokens,
                "output_tokens": math.ceil(len(text) / 4),
                "total_tokens": prompt_tokens + math.ceil(len(text) / 4),
            },
            response_metadata={"model_name": self.model_name, "finish_reason": "stop"},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def run_chain(
    handler: ChainWatchHandler, model: DriftingChatModel, rng: random.Random, count: int
) -> int:
    """Ask `count` questions through prompt | model | parser; returns how many failed."""
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You answer in one short factual sentence."), ("human", "{question}")]
    )
    chain = prompt | model | StrOutputParser()
    failures = 0
    for _ in range(count):
        try:
            answer = chain.invoke({"question": rng.choice(QUESTIONS)},
                                  config={"callbacks": [handler]})
        except ConnectionError:
            failures += 1
        else:
            assert answer == REFUSAL or answer in ANSWERS
    return failures


def test_end_to_end_refusals_and_slowdown_in_a_langchain_chain(db_path: Path) -> None:
    handler = ChainWatchHandler(db_path, prices=PRICES)  # default hooks: quality and drift
    rng = random.Random(42)
    model = DriftingChatModel(seed=42)
    base_failures = run_chain(handler, model, rng, 140)
    assert handler.flush()
    assert chainwatch.set_baseline(first_n=140, db=db_path) == 140

    model.delay_ms, model.refusal_share = 18.0, 0.35
    cur_failures = run_chain(handler, model, rng, 160)
    assert base_failures > 0 and cur_failures > 0

    result = chainwatch.check_drift(last_n=160, db=db_path)
    print(result)
    json.dumps(result.to_dict(), allow_nan=False)  # SciPy's numbers are plain floats too
    assert {(r.segment, r.metric) for r in result.drifted} == {
        ("overall", "refusal_rate"), ("overall", "latency_ms")
    }
    refusal = result.get("refusal_rate")
    assert refusal is not None and refusal.baseline_value == 0.0
    assert refusal.n_baseline == 140 - base_failures
    assert refusal.n_current == 160 - cur_failures
    latency = result.get("latency_ms")
    assert latency is not None and latency.effect is not None and latency.effect > 1.15
    assert latency.n_baseline == 140 and latency.n_current == 160
    for metric in ("error_rate", "prompt_tokens", "completion_tokens", "cost_usd",
                   "response_length", "sentiment"):
        tested = result.get(metric)
        assert tested is not None and tested.status == "ok", tested
    for metric in ("hedging_rate", "ttft_ms", "groundedness", "feedback_score"):
        untested = result.get(metric)
        assert untested is None or untested.status == "insufficient_data", untested
    # one model and one chain: their segments are the overall calls, not tested again
    assert {r.segment for r in result.results} == {"overall"}

    # the default drift hook checked on its own after the 200th and 300th trace
    hook = handler.hooks[1]
    assert isinstance(hook, DriftHook) and hook.seen == 300
    assert hook.last_result is not None
    assert {r.metric for r in hook.last_result.drifted} == {"refusal_rate", "latency_ms"}
    assert len(drift_check_ids(db_path)) == 3
    handler.shutdown()
