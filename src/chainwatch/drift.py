"""Drift detection: a named baseline window against the current one, metric by metric.

Each metric is compared per segment (overall, per model, per root chain name) with a
two-sample test; the p-values of one check are Holm-adjusted together, and a metric drifts
only when its adjusted p-value is below `alpha` and its effect size passes a minimum, so a huge
window does not flag a trivial change. Too few samples give `insufficient_data`, never a
verdict. `mode="simple"` keeps the seed's fixed thresholds for users who want them.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from . import stats

if TYPE_CHECKING:
    pass

# metric -> (kind, effect): kind "rate" (0/1 per call) or "continuous".
METRICS: dict[str, tuple[str, str]] = {
    "latency_ms": ("continuous", "median_ratio"),
    "ttft_ms": ("continuous", "median_ratio"),
    "prompt_tokens": ("continuous", "median_ratio"),
    "completion_tokens": ("continuous", "median_ratio"),
    "cost_usd": ("continuous", "median_ratio"),
    "error_rate": ("rate", "rate_difference"),
    "refusal_rate": ("rate", "rate_difference"),
    "hedging_rate": ("rate", "rate_difference"),
    "response_length": ("continuous", "median_ratio"),
    "sentiment": ("continuous", "wasserstein"),
    "groundedness": ("continuous", "wasserstein"),
    "feedback_score": ("continuous", "wasserstein"),
}
# The seed's thresholds, for mode="simple": absolute change of a rate, relative change of a mean.
SIMPLE_THRESHOLDS = {"refusal_rate": 0.10, "response_length": 0.30, "hedging_rate": 0.15}

_SAMPLES_SQL = """
SELECT s.model, r.name, s.duration_ms, s.ttft_ms, s.prompt_tokens, s.completion_tokens,
       s.cost_usd, s.status, q.has_refusal, q.has_hedging, q.response_length,
       q.sentiment_score, q.groundedness, s.trace_id
FROM spans s
JOIN spans r ON r.span_id = s.trace_id
LEFT JOIN quality q ON q.span_id = s.span_id
WHERE s.kind = 'llm' AND s.counts_usage = 1 AND s.trace_id IN (SELECT value FROM json_each(?))
"""


@dataclass(frozen=True, slots=True)
class DriftSettings:
    """How a check decides. Effects: rate difference, median ratio, normalised Wasserstein."""

    alpha: float = 0.05
    min_samples: int = 100
    min_events: int = 5
    min_rate_difference: float = 0.02
    min_median_ratio: float = 1.15
    min_wasserstein: float = 0.25

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError("alpha must be between 0 and 1")
        if self.min_samples < 2 or self.min_events < 1:
            raise ValueError("min_samples must be at least 2 and min_events at least 1")


@dataclass(frozen=True, slots=True)
class MetricDrift:
    """The comparison of one metric in one segment."""

    segment: str
    metric: str
    status: str
    test: str | None = None
    statistic: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    effect: float | None = None
    effect_kind: str | None = None
    baseline_value: float | None = None
    current_value: float | None = None
    n_baseline: int = 0
    n_current: int = 0
    reason: str | None = None


class DriftResult:
    """All metric comparisons of one check; readable in a terminal and in Jupyter."""

    def __init__(self, check_id: str, baseline: str, mode: str, results: list[MetricDrift]):
        self.check_id = check_id
        self.baseline = baseline
        self.mode = mode
        self.results = results

    @property
    def status(self) -> str:
        """Drift if any metric drifted, ok if any was tested, else insufficient_data."""
        if any(r.status == "drift" for r in self.results):
            return "drift"
        if any(r.status == "ok" for r in self.results):
            return "ok"
        return "insufficient_data"

    @property
    def drifted(self) -> list[MetricDrift]:
        """The comparisons that drifted."""
        return [r for r in self.results if r.status == "drift"]

    def get(self, metric: str, segment: str = "overall") -> MetricDrift | None:
        """The comparison of `metric` in `segment`."""
        return next((r for r in self.results if r.metric == metric and r.segment == segment), None)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        return {
            "check_id": self.check_id,
            "baseline": self.baseline,
            "mode": self.mode,
            "status": self.status,
            "results": [asdict(r) for r in self.results],
        }

    def _rows(self) -> list[list[str]]:
        def num(value: float | None, fmt: str = ".3g") -> str:
            return "-" if value is None else format(value, fmt)

        return [
            [r.segment, r.metric, r.status, num(r.baseline_value), num(r.current_value),
             r.effect_kind or "-", num(r.effect), num(r.p_adjusted, ".2g"),
             f"{r.n_baseline}/{r.n_current}"]
            for r in self.results
        ]

    _HEAD = ["segment", "metric", "status", "baseline", "current", "effect", "size", "p(adj)",
             "n"]

    def __str__(self) -> str:
        rows = [self._HEAD, *self._rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self._HEAD))]
        lines = [f"drift check against {self.baseline!r} ({self.mode}): {self.status}"]
        for row in rows:
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                              strict=True)))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<DriftResult {self.status} drifted={[r.metric for r in self.drifted]}>"

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in self._HEAD)
        body = "".join(
            "<tr" + (" style='background:#fde2e1'" if row[2] == "drift" else "") + ">"
            + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
            for row in self._rows()
        )
        title = html.escape(f"drift check against {self.baseline!r}: {self.status}")
        return f"<div><b>{title}</b><table><tr>{head}</tr>{body}</table></div>"


def _samples(conn: Any, trace_ids: list[str]) -> dict[str, dict[str, list[float]]]:
    """Metric values by segment for the model calls of these traces."""
    rows = conn.execute(_SAMPLES_SQL, [json.dumps(trace_ids)]).fetchall()
    feedback = dict(
        conn.execute(
            "SELECT trace_id, AVG(score) FROM feedback WHERE trace_id IN "
            "(SELECT value FROM json_each(?)) GROUP BY trace_id",
            [json.dumps(trace_ids)],
        ).fetchall()
    )
    segments: dict[str, dict[str, list[float]]] = {}
    seen_feedback: set[tuple[str, str]] = set()
    for (model, root, duration, ttft, prompt, completion, cost, status, refusal, hedging,
         length, sentiment, grounded, trace_id) in rows:
        values = {
            "latency_ms": duration, "ttft_ms": ttft, "prompt_tokens": prompt,
            "completion_tokens": completion, "cost_usd": cost,
            "error_rate": 1.0 if status == "error" else 0.0,
            "refusal_rate": refusal, "hedging_rate": hedging, "response_length": length,
            "sentiment": sentiment, "groundedness": grounded,
        }
        for segment in ("overall", f"model={model}", f"chain={root}"):
            bucket = segments.setdefault(segment, {})
            for metric, value in values.items():
                if value is not None:
                    bucket.setdefault(metric, []).append(float(value))
            score = feedback.get(trace_id)
            if score is not None and (segment, trace_id) not in seen_feedback:
                seen_feedback.add((segment, trace_id))
                bucket.setdefault("feedback_score", []).append(float(score))
    return segments


def _compare(
    segment: str, metric: str, base: list[float], cur: list[float], settings: DriftSettings
) -> tuple[MetricDrift, bool]:
    """One comparison; the flag says whether its p-value joins the Holm family."""
    kind, effect_kind = METRICS[metric]
    n1, n2 = len(base), len(cur)
    if n1 < settings.min_samples or n2 < settings.min_samples:
        return MetricDrift(segment, metric, "insufficient_data", n_baseline=n1, n_current=n2,
                           reason=f"fewer than {settings.min_samples} samples"), False
    if kind == "rate":
        k1, k2 = int(sum(base)), int(sum(cur))
        if k1 + k2 < settings.min_events:
            return MetricDrift(segment, metric, "insufficient_data", n_baseline=n1,
                               n_current=n2, baseline_value=k1 / n1, current_value=k2 / n2,
                               reason=f"fewer than {settings.min_events} events"), False
        result = stats.rate_test(k1, n1, k2, n2)
        effect = k2 / n2 - k1 / n1
        base_value, cur_value = k1 / n1, k2 / n2
    else:
        result = stats.mann_whitney(base, cur)
        base_value, cur_value = stats.median(base), stats.median(cur)
        if effect_kind == "median_ratio" and base_value > 0 and cur_value > 0:
            effect = cur_value / base_value
        else:
            effect_kind = "wasserstein"
            scale = stats.spread(base) or 1.0
            effect = stats.wasserstein(base, cur) / scale
    return MetricDrift(segment, metric, "pending", result.test, result.statistic,
                       result.p_value, None, effect, effect_kind, base_value, cur_value,
                       n1, n2), True


def _large_enough(drift: MetricDrift, settings: DriftSettings) -> bool:
    effect = drift.effect or 0.0
    if drift.effect_kind == "rate_difference":
        return abs(effect) >= settings.min_rate_difference
    if drift.effect_kind == "median_ratio":
        return max(effect, 1 / effect) >= settings.min_median_ratio if effect > 0 else False
    return effect >= settings.min_wasserstein


def compare_samples(
    baseline: dict[str, dict[str, list[float]]],
    current: dict[str, dict[str, list[float]]],
    settings: DriftSettings | None = None,
) -> list[MetricDrift]:
    """Compare metric samples by segment (the statistics of `check_drift`, without storage)."""
    settings = settings or DriftSettings()
    overall_sizes = {m: (len(baseline.get("overall", {}).get(m, [])),
                         len(current.get("overall", {}).get(m, []))) for m in METRICS}
    pending: list[tuple[MetricDrift, bool]] = []
    for segment in sorted(set(baseline) | set(current), key=lambda s: (s != "overall", s)):
        for metric in METRICS:
            base = baseline.get(segment, {}).get(metric, [])
            cur = current.get(segment, {}).get(metric, [])
            if not base and not cur:
                continue
            if segment != "overall" and (len(base), len(cur)) == overall_sizes[metric]:
                continue  # the same calls as overall: testing them again adds nothing
            pending.append(_compare(segment, metric, base, cur, settings))
    tested = [d for d, joins in pending if joins]
    adjusted = stats.holm([1.0 if d.p_value is None else d.p_value for d in tested])
    by_id = {id(d): p for d, p in zip(tested, adjusted, strict=True)}
    out = []
    for drift, joins in pending:
        if not joins:
            out.append(drift)
            continue
        p_adj = by_id[id(drift)]
        significant = p_adj < settings.alpha and _large_enough(drift, settings)
        out.append(_replace(drift, p_adjusted=p_adj, status="drift" if significant else "ok"))
    return out


def _replace(drift: MetricDrift, **changes: Any) -> MetricDrift:
    values = asdict(drift)
    values.update(changes)
    return MetricDrift(**values)


def compare_simple(
    baseline: dict[str, dict[str, list[float]]], current: dict[str, dict[str, list[float]]]
) -> list[MetricDrift]:
    """The seed's fixed thresholds on means (no statistics): documented as the simple mode."""
    out = []
    base, cur = baseline.get("overall", {}), current.get("overall", {})
    for metric, threshold in SIMPLE_THRESHOLDS.items():
        b, c = base.get(metric, []), cur.get(metric, [])
        if not b or not c:
            out.append(MetricDrift("overall", metric, "insufficient_data", n_baseline=len(b),
                                   n_current=len(c), reason="no samples"))
            continue
        mean_b, mean_c = sum(b) / len(b), sum(c) / len(c)
        if metric == "response_length":
            change = (mean_c - mean_b) / mean_b if mean_b else 0.0
            kind = "relative_change"
        else:
            change, kind = mean_c - mean_b, "rate_difference"
        status = "drift" if abs(change) > threshold else "ok"
        out.append(MetricDrift("overall", metric, status, "threshold", None, None, None, change,
                               kind, mean_b, mean_c, len(b), len(c)))
    return out
