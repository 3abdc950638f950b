"""The schema, as append-only sqlite-utils migrations. Never edit one that has landed.

The README's schema section is generated from these (`python -m chainwatch.store.schema_doc`),
so the documentation cannot drift from what a database really holds.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("chainwatch")

SPAN_COLUMNS: dict[str, type] = {
    "span_id": str,
    "trace_id": str,
    "parent_id": str,
    "name": str,
    "kind": str,
    "framework": str,
    "start_time": str,
    "end_time": str,
    "duration_ms": float,
    "status": str,
    "error": str,
    "model": str,
    "provider": str,
    "prompt_tokens": int,
    "completion_tokens": int,
    "total_tokens": int,
    "cached_tokens": int,
    "reasoning_tokens": int,
    "cost_usd": float,
    "ttft_ms": float,
    "finish_reason": str,
    "inputs": str,
    "outputs": str,
    "tags": str,
    "metadata": str,
    "user_id": str,
    "session_id": str,
    "usage_note": str,
    "cost_note": str,
    "counts_usage": int,
}


@migrations()
def m001_initial(db: Database) -> None:
    """Spans and their events."""
    db["spans"].create(  # type: ignore[union-attr]
        SPAN_COLUMNS,
        pk="span_id",
        not_null={"trace_id", "name", "kind", "framework", "start_time", "status"},
        defaults={"counts_usage": 1, "tags": "[]", "metadata": "{}"},
    )
    db["spans"].create_index(["trace_id"])  # type: ignore[union-attr]
    db["spans"].create_index(["start_time"])  # type: ignore[union-attr]
    db["spans"].create_index(["kind", "end_time"])  # type: ignore[union-attr]
    db["span_events"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "span_id": str,
            "trace_id": str,
            "name": str,
            "time": str,
            "attributes": str,
        },
        pk="id",
        not_null={"span_id", "trace_id", "name", "time"},
    )
    db["span_events"].create_index(["span_id"])  # type: ignore[union-attr]
    db["span_events"].create_index(["trace_id"])  # type: ignore[union-attr]


@migrations()
def m002_traces_view(db: Database) -> None:
    """One row per trace, with totals that count each model call once.

    Token and cost totals sum only spans with `counts_usage = 1`: a model call nested inside
    another model span (a wrapper, or one call seen by two instrumentation paths) is kept as a
    span but not counted again.
    """
    db.create_view(
        "traces",
        """
        SELECT
            s.trace_id AS trace_id,
            r.name AS name,
            r.kind AS kind,
            r.framework AS framework,
            CASE WHEN r.span_id IS NULL THEN 'incomplete' ELSE r.status END AS status,
            r.error AS error,
            MIN(s.start_time) AS start_time,
            MAX(s.end_time) AS end_time,
            r.duration_ms AS duration_ms,
            COUNT(*) AS span_count,
            SUM(s.kind = 'llm') AS llm_calls,
            SUM(s.status = 'error') AS error_spans,
            SUM(CASE WHEN s.counts_usage THEN s.prompt_tokens END) AS prompt_tokens,
            SUM(CASE WHEN s.counts_usage THEN s.completion_tokens END) AS completion_tokens,
            SUM(CASE WHEN s.counts_usage THEN s.total_tokens END) AS total_tokens,
            SUM(CASE WHEN s.counts_usage THEN s.cost_usd END) AS cost_usd,
            SUM(s.kind = 'llm' AND s.counts_usage AND s.status = 'ok' AND s.cost_usd IS NULL)
                AS unpriced_calls,
            r.user_id AS user_id,
            r.session_id AS session_id,
            r.tags AS tags
        FROM spans s
        LEFT JOIN spans r ON r.span_id = s.trace_id
        GROUP BY s.trace_id
        """,
    )



def apply(db: Database) -> None:
    """Bring `db` up to the newest schema."""
    migrations.apply(db)


@migrations()
def m003_hooks_quality_feedback(db: Database) -> None:
    """Post-run hook runs, per-answer quality, judge scores and user feedback."""
    db["hook_runs"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "hook": str,
            "trace_id": str,
            "status": str,
            "started_at": str,
            "duration_ms": float,
            "error": str,
        },
        pk="id",
        not_null={"hook", "trace_id", "status", "started_at"},
    )
    db["hook_runs"].create_index(["trace_id"])  # type: ignore[union-attr]
    db["quality"].create(  # type: ignore[union-attr]
        {
            "span_id": str,
            "trace_id": str,
            "has_refusal": int,
            "refusal_kind": str,
            "refusal_evidence": str,
            "has_hedging": int,
            "hedging_evidence": str,
            "sentiment_score": float,
            "response_length": int,
            "groundedness": float,
            "unsupported_sentences": str,
            "analyzed_at": str,
            "analyzer_version": str,
        },
        pk="span_id",
        not_null={"trace_id", "has_refusal", "has_hedging", "response_length", "analyzed_at"},
    )
    db["quality"].create_index(["trace_id"])  # type: ignore[union-attr]
    db["quality"].create_index(["analyzed_at"])  # type: ignore[union-attr]
    db["judgements"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "span_id": str,
            "trace_id": str,
            "criterion": str,
            "score": float,
            "reason": str,
            "raw": str,
            "judge_model": str,
            "judge_trace_id": str,
            "created_at": str,
        },
        pk="id",
        not_null={"span_id", "trace_id", "criterion", "created_at"},
    )
    db["judgements"].create_index(["trace_id"])  # type: ignore[union-attr]
    db["feedback"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "trace_id": str,
            "span_id": str,
            "score": float,
            "comment": str,
            "source": str,
            "created_at": str,
        },
        pk="id",
        not_null={"trace_id", "score", "source", "created_at"},
    )
    db["feedback"].create_index(["trace_id"])  # type: ignore[union-attr]


@migrations()
def m004_drift(db: Database) -> None:
    """Named drift baselines and every drift comparison made."""
    db["baselines"].create(  # type: ignore[union-attr]
        {
            "name": str,
            "since": str,
            "until": str,
            "first_n": int,
            "tags": str,
            "created_at": str,
        },
        pk="name",
        not_null={"created_at"},
    )
    db["drift_checks"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "check_id": str,
            "created_at": str,
            "baseline": str,
            "mode": str,
            "window": str,
            "segment": str,
            "metric": str,
            "status": str,
            "test": str,
            "statistic": float,
            "p_value": float,
            "p_adjusted": float,
            "effect": float,
            "effect_kind": str,
            "baseline_value": float,
            "current_value": float,
            "n_baseline": int,
            "n_current": int,
            "reason": str,
        },
        pk="id",
        not_null={"check_id", "created_at", "baseline", "segment", "metric", "status"},
    )
    db["drift_checks"].create_index(["check_id"])  # type: ignore[union-attr]
    db["drift_checks"].create_index(["created_at"])  # type: ignore[union-attr]


@migrations()
def m005_alerts(db: Database) -> None:
    """Alert state per rule and label set, and every notification attempt."""
    db["alerts"].create(  # type: ignore[union-attr]
        {
            "rule": str,
            "labels": str,
            "state": str,
            "severity": str,
            "value": float,
            "threshold": float,
            "expression": str,
            "consecutive": int,
            "active_since": str,
            "fired_at": str,
            "resolved_at": str,
            "last_evaluated_at": str,
            "last_notified_at": str,
        },
        pk=("rule", "labels"),
        not_null={"state", "severity", "last_evaluated_at"},
    )
    db["alert_notifications"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "rule": str,
            "labels": str,
            "transition": str,
            "notifier": str,
            "status": str,
            "http_status": int,
            "error": str,
            "attempts": int,
            "created_at": str,
            "finished_at": str,
            "pid": int,
        },
        pk="id",
        not_null={"rule", "labels", "transition", "notifier", "status", "attempts", "created_at"},
    )
    db["alert_notifications"].create_index(["rule", "labels"])  # type: ignore[union-attr]
    db["alert_notifications"].create_index(["created_at"])  # type: ignore[union-attr]


@migrations()
def m006_read_indexes(db: Database) -> None:
    """Indexes for reports: roots by start time, and a trace's spans by kind."""
    db.execute(
        "CREATE INDEX IF NOT EXISTS idx_spans_roots_start ON spans (start_time) "
        "WHERE span_id = trace_id"
    )
    db["spans"].create_index(["trace_id", "kind"])  # type: ignore[union-attr]
    db.execute(
        "CREATE INDEX IF NOT EXISTS idx_spans_errors ON spans (trace_id) WHERE status = 'error'"
    )
    db.execute("DROP INDEX IF EXISTS idx_spans_trace_id")
    # Every read by start time is a read of roots (the partial index); events are read by trace.
    db.execute("DROP INDEX IF EXISTS idx_spans_start_time")
    db.execute("DROP INDEX IF EXISTS idx_span_events_span_id")


@migrations()
def m007_covering_read_indexes(db: Database) -> None:
    """Covering indexes for reports, which then read indexes instead of whole rows.

    Roots carry the columns a report lists; model calls carry the ones it sums. Only model calls
    are indexed by end time.
    """
    db.execute(
        "CREATE INDEX IF NOT EXISTS idx_spans_roots_cover ON spans (start_time, trace_id, name, "
        "status, duration_ms, error, kind) WHERE span_id = trace_id"
    )
    # The covering index starts with start_time under the same condition: it replaces this.
    db.execute("DROP INDEX IF EXISTS idx_spans_roots_start")
    db.execute(
        "CREATE INDEX IF NOT EXISTS idx_spans_llm_cover ON spans (trace_id, counts_usage, model, "
        "duration_ms, ttft_ms, prompt_tokens, completion_tokens, total_tokens, cost_usd, status, "
        "end_time) WHERE kind = 'llm'"
    )
    # Reads by end time are reads of model calls (summary, alert windows): only they pay for it.
    db.execute(
        "CREATE INDEX IF NOT EXISTS idx_spans_llm_end ON spans (end_time) WHERE kind = 'llm'"
    )
    db.execute("DROP INDEX IF EXISTS idx_spans_kind_end_time")


@migrations()
def m008_traces_count_each_model_call_once(db: Database) -> None:
    """`traces.llm_calls` counts model calls as the totals do: each call once.

    A call seen by both LlamaIndex paths, or `chat` inside `predict_and_call`, is one call.
    """
    row = db.execute("SELECT sql FROM sqlite_master WHERE type = 'view' AND name = 'traces'")
    found = row.fetchone()
    old = "SUM(s.kind = 'llm') AS llm_calls"
    if found is None or old not in found[0]:
        return
    db.execute("DROP VIEW traces")
    db.execute(found[0].replace(old, "SUM(s.kind = 'llm' AND s.counts_usage) AS llm_calls"))
