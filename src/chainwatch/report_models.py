"""The report's data, as pydantic models (JSON-serialisable; rendered by `report_render`)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Scope(BaseModel):
    """What the report covers."""

    description: str
    since: str | None = None
    until: str | None = None
    traces: int = 0
    db: str = ""


class CallSummary(BaseModel):
    """The seed's summary of the model calls in scope."""

    traces: int = 0
    llm_calls: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    avg_tokens: float | None = None
    total_tokens: int | None = None
    total_cost_usd: float | None = None
    unpriced_calls: int = 0
    error_rate: float | None = None
    errors: int = 0
    trace_error_rate: float | None = None


class Breakdown(BaseModel):
    """Calls, tokens, cost and latency of one model or one chain."""

    key: str
    calls: int
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cost_usd: float | None = None
    latency_p95_ms: float | None = None
    errors: int = 0


class TraceRow(BaseModel):
    """One trace in a list (slowest, most expensive, failed)."""

    trace_id: str
    name: str
    status: str
    start_time: str
    duration_ms: float | None = None
    total_tokens: int | None = None
    cost_usd: float | None = None
    error: str | None = None


class ErrorGroup(BaseModel):
    """Errors of one type."""

    type: str
    count: int
    example: str
    trace_ids: list[str]


class Quality(BaseModel):
    """Quality of the answers in scope."""

    answers: int = 0
    refusal_rate: float | None = None
    hedging_rate: float | None = None
    avg_sentiment: float | None = None
    avg_groundedness: float | None = None
    judge_scores: dict[str, float | None] = Field(default_factory=dict)
    feedback_count: int = 0
    avg_feedback: float | None = None


class DriftSection(BaseModel):
    """The latest drift check in scope."""

    check_id: str
    baseline: str
    created_at: str
    status: str
    drifted: list[str]


class AlertRow(BaseModel):
    """An alert that fired in the window, or is firing now."""

    rule: str
    labels: dict[str, str]
    severity: str
    state: str
    fired_at: str | None = None
    value: float | None = None


class Series(BaseModel):
    """Points for the charts: latencies, and tokens/latency over time."""

    latencies_ms: list[float] = Field(default_factory=list)
    times: list[str] = Field(default_factory=list)
    tokens: list[int | None] = Field(default_factory=list)
    durations_ms: list[float] = Field(default_factory=list)


class ReportData(BaseModel):
    """Everything a report shows, JSON-serialisable."""

    scope: Scope
    summary: CallSummary
    by_model: list[Breakdown] = Field(default_factory=list)
    by_chain: list[Breakdown] = Field(default_factory=list)
    slowest: list[TraceRow] = Field(default_factory=list)
    most_expensive: list[TraceRow] = Field(default_factory=list)
    failed: list[TraceRow] = Field(default_factory=list)
    errors: list[ErrorGroup] = Field(default_factory=list)
    quality: Quality | None = None
    drift: DriftSection | None = None
    alerts: list[AlertRow] = Field(default_factory=list)
    series: Series = Field(default_factory=Series)
    generated_at: str = ""
