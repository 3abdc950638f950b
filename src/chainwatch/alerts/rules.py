"""Alert rules as data, and the window metrics they are evaluated against."""

from __future__ import annotations

import html
import json
import math
import operator
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..store.queries import percentile

METRICS: dict[str, str] = {
    "count": "model calls in the window",
    "error_rate": "share of model calls that failed",
    "latency_p50_ms": "median model-call latency",
    "latency_p95_ms": "95th percentile model-call latency",
    "latency_p99_ms": "99th percentile model-call latency",
    "ttft_p50_ms": "median time to first token",
    "ttft_p95_ms": "95th percentile time to first token",
    "avg_tokens": "average total tokens per call",
    "total_tokens": "total tokens in the window",
    "cost_usd": "total cost in the window",
    "refusal_rate": "share of analysed answers that refuse",
    "hedging_rate": "share of analysed answers that hedge",
    "groundedness": "average groundedness of RAG answers",
    "feedback_score": "average user feedback score",
    "drifted_metrics": "metrics that drifted in the latest drift check in the window",
}
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "==": operator.eq, "!=": operator.ne,
}
_EXPR = re.compile(r"^\s*([a-z_0-9]+)\s*(>=|<=|==|!=|>|<)\s*(-?[0-9.]+(?:e-?[0-9]+)?)\s*$")
SEVERITIES = ("info", "warning", "critical")
LABELS = ("model", "chain")


class Rule(BaseModel):
    """An alert rule: a metric, a comparison and a threshold over a time window.

    ``Rule("refusals", "refusal_rate > 0.1", severity="warning", window_minutes=15,
    cooldown_minutes=30)``. Give ``predicate`` (a callable taking the window's metrics dict)
    instead of an expression for conditions a comparison cannot say.

    Args:
        name: unique name of the rule.
        expression: ``metric op threshold``; metrics are listed in `METRICS`.
        severity: info, warning or critical.
        window_minutes: the window the metric is computed over, ending now.
        cooldown_minutes: repeat interval while the alert keeps firing.
        for_evaluations: consecutive breaching evaluations before it fires (pending until).
        labels: only calls with these labels, e.g. ``{"model": "gpt-4o"}``.
        group_by: evaluate separately per ``model`` and/or ``chain``.
        min_calls: fewer model calls than this in the window is no data.
        description: shown in notifications.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str = Field(min_length=1, max_length=200)
    expression: str | None = None
    severity: str = "warning"
    window_minutes: float = Field(default=15, gt=0)
    cooldown_minutes: float = Field(default=30, ge=0)
    for_evaluations: int = Field(default=1, ge=1)
    labels: dict[str, str] = Field(default_factory=dict)
    group_by: tuple[str, ...] = ()
    min_calls: int = Field(default=1, ge=1)
    description: str = ""
    predicate: Callable[[dict[str, Any]], bool] | None = None

    def __init__(self, name: str, expression: str | None = None, /, **data: Any) -> None:
        super().__init__(name=name, expression=expression, **data)

    @field_validator("severity")
    @classmethod
    def _severity(cls, value: str) -> str:
        if value not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = set(value) - set(LABELS)
        if unknown:
            raise ValueError(f"labels can only be {LABELS}, not {sorted(unknown)}")
        return value

    @field_validator("group_by")
    @classmethod
    def _group_by(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(value) - set(LABELS)
        if unknown:
            raise ValueError(f"group_by can only use {LABELS}, not {sorted(unknown)}")
        return value

    @model_validator(mode="after")
    def _condition(self) -> Rule:
        if (self.expression is None) == (self.predicate is None):
            raise ValueError("a rule needs exactly one of an expression or a predicate")
        if self.expression is not None:
            self.parsed()
        return self

    def parsed(self) -> tuple[str, str, float]:
        """(metric, operator, threshold) of the expression."""
        match = _EXPR.match(self.expression or "")
        if match is None:
            raise ValueError(
                f"cannot read rule expression {self.expression!r}: write 'metric > number' "
                f"with one of {', '.join(_OPS)}"
            )
        metric, op, number = match.groups()
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
        threshold = float(number)
        if not math.isfinite(threshold):
            raise ValueError("the threshold must be a finite number")
        return metric, op, threshold

    @property
    def metric(self) -> str | None:
        """The metric the rule watches (None for a predicate)."""
        return self.parsed()[0] if self.expression else None

    @property
    def threshold(self) -> float | None:
        """The rule's threshold (None for a predicate)."""
        return self.parsed()[2] if self.expression else None

    def breached(self, metrics: dict[str, Any]) -> bool | None:
        """True when breached, False when not, None when there is no data to judge."""
        if (metrics.get("count") or 0) < self.min_calls:
            return None
        if self.predicate is not None:
            return bool(self.predicate(metrics))
        metric, op, threshold = self.parsed()
        value = metrics.get(metric)
        if value is None:
            return None
        return _OPS[op](float(value), threshold)

    def describe(self) -> str:
        """The rule in one line."""
        condition = self.expression or f"predicate {getattr(self.predicate, '__name__', '?')}"
        scope = f" where {self.labels}" if self.labels else ""
        group = f" by {', '.join(self.group_by)}" if self.group_by else ""
        pending = f", for {self.for_evaluations} evaluations" if self.for_evaluations > 1 else ""
        return (
            f"{self.name}: {condition} over {self.window_minutes:g} min{scope}{group} "
            f"[{self.severity}, repeat every {self.cooldown_minutes:g} min{pending}]"
        )

    def __str__(self) -> str:
        return self.describe()

    def _repr_html_(self) -> str:
        return f"<code>{html.escape(self.describe())}</code>"


def default_rules() -> list[Rule]:
    """The seed's six rules: latency p95/p99, error rate twice, cost and tokens."""
    return [
        Rule("high_latency_p95", "latency_p95_ms > 5000", severity="warning"),
        Rule("high_latency_p99", "latency_p99_ms > 10000", severity="critical"),
        Rule("error_rate_warning", "error_rate > 0.05", severity="warning"),
        Rule("error_rate_critical", "error_rate > 0.1", severity="critical"),
        Rule("cost_budget", "cost_usd > 100", severity="warning", window_minutes=60),
        Rule("token_usage", "avg_tokens > 10000", severity="warning"),
    ]


_WINDOW_SQL = """
SELECT s.model, r.name, s.duration_ms, s.ttft_ms, s.total_tokens, s.cost_usd, s.status,
       q.has_refusal, q.has_hedging, q.groundedness, s.trace_id
FROM spans s
JOIN spans r ON r.span_id = s.trace_id
LEFT JOIN quality q ON q.span_id = s.span_id
WHERE s.kind = 'llm' AND s.counts_usage = 1 AND s.end_time >= ?
"""


def window_metrics(
    conn: Any, since: str, labels: dict[str, str], group_by: tuple[str, ...]
) -> dict[tuple[tuple[str, str], ...], dict[str, Any]]:
    """Metrics of the model calls that ended since `since`, by label set."""
    rows = conn.execute(_WINDOW_SQL, [since]).fetchall()
    feedback = dict(conn.execute(
        "SELECT trace_id, AVG(score) FROM feedback WHERE created_at >= ? GROUP BY trace_id",
        [since],
    ).fetchall())
    drifted = conn.execute(
        "SELECT COUNT(*) FROM drift_checks WHERE status = 'drift' AND check_id = ("
        "SELECT check_id FROM drift_checks WHERE created_at >= ? ORDER BY created_at DESC "
        "LIMIT 1)",
        [since],
    ).fetchone()[0]
    has_check = conn.execute(
        "SELECT 1 FROM drift_checks WHERE created_at >= ? LIMIT 1", [since]
    ).fetchone() is not None
    groups: dict[tuple[tuple[str, str], ...], list[tuple[Any, ...]]] = {}
    for row in rows:
        values = {"model": row[0] or "unknown", "chain": row[1] or "unknown"}
        if any(values[k] != v for k, v in labels.items()):
            continue
        key = tuple((k, values[k]) for k in group_by)
        groups.setdefault(key, []).append(row)
    if not group_by:
        groups.setdefault((), [])
    out = {}
    for key, members in groups.items():
        out[key] = _summarise(members, feedback)
        out[key]["drifted_metrics"] = drifted if has_check else None
    return out


def _summarise(rows: list[tuple[Any, ...]], feedback: dict[str, float]) -> dict[str, Any]:
    count = len(rows)
    durations = sorted(r[2] for r in rows if r[2] is not None)
    ttfts = sorted(r[3] for r in rows if r[3] is not None)
    tokens = [r[4] for r in rows if r[4] is not None]
    costs = [r[5] for r in rows if r[5] is not None]
    refusals = [r[7] for r in rows if r[7] is not None]
    hedges = [r[8] for r in rows if r[8] is not None]
    grounded = [r[9] for r in rows if r[9] is not None]
    scores = [feedback[t] for t in {r[10] for r in rows} if t in feedback]

    def mean(values: list[Any]) -> float | None:
        return sum(values) / len(values) if values else None

    return {
        "count": count,
        "error_rate": sum(r[6] == "error" for r in rows) / count if count else None,
        "latency_p50_ms": percentile(durations, 50),
        "latency_p95_ms": percentile(durations, 95),
        "latency_p99_ms": percentile(durations, 99),
        "ttft_p50_ms": percentile(ttfts, 50),
        "ttft_p95_ms": percentile(ttfts, 95),
        "avg_tokens": mean(tokens),
        "total_tokens": sum(tokens) if tokens else None,
        "cost_usd": sum(costs) if costs else None,
        "refusal_rate": mean(refusals),
        "hedging_rate": mean(hedges),
        "groundedness": mean(grounded),
        "feedback_score": mean(scores),
    }


def labels_key(labels: dict[str, str]) -> str:
    """The stored form of a label set."""
    return json.dumps(dict(sorted(labels.items())))
