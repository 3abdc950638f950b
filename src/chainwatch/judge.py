"""LLM-as-judge, opt-in: factual accuracy, answer relevance and groundedness.

The judge is any LangChain chat model (``invoke``) or LlamaIndex LLM (``chat``/``complete``).
Its calls are recorded as their own trace, spans of kind ``evaluator``, so they never add to
the judged trace's totals. A reply the score cannot be read from gives a NULL score with the
raw reply kept, never a made-up value.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import usage as _usage
from .quality import answer_text, question_text, retrieved_documents
from .recorder import Recorder
from .store import writer as _writer
from .store.rows import RowSettings, iso_time

if TYPE_CHECKING:
    from .hooks import Store
    from .views import Trace

CRITERIA = ("accuracy", "relevance", "groundedness")
_INSTRUCTIONS = {
    "accuracy": "Judge the FACTUAL ACCURACY of the answer against the reference answer. "
    "10 means it states the same facts as the reference with no errors; 0 means it "
    "contradicts the reference.",
    "relevance": "Judge how RELEVANT the answer is to the question. 10 means it directly and "
    "completely addresses the question; 0 means it ignores the question.",
    "groundedness": "Judge how well the answer is SUPPORTED BY THE CONTEXT. 10 means every "
    "claim can be found in the context; 0 means none can.",
}
_REPLY_FORMAT = (
    'Reply with only a JSON object: {"score": <integer 0 to 10>, "reason": "<one sentence>"}'
)
_SCORE_TEXT = re.compile(
    r"score\W{0,3}?(?<![-\d])(\d+(?:\.\d+)?)\s*(?:/\s*(100|10|5|1)\b)?", re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class JudgeScore:
    """One judgement: a score in [0, 1] (None when unreadable), the reason and the raw reply."""

    criterion: str
    score: float | None
    reason: str | None
    raw: str


def parse_reply(criterion: str, raw: str) -> JudgeScore:
    """Read the score (0-10, normalised to 0-1) from a judge's reply; None when unreadable."""
    score: float | None = None
    reason: str | None = None
    match = re.search(r"\{.*\}", raw, re.DOTALL)
    if match:
        try:
            data = json.loads(match.group(0))
        except ValueError:
            data = None
        if isinstance(data, dict):
            value = data.get("score")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                score = float(value)
            reason = data.get("reason") if isinstance(data.get("reason"), str) else None
    if score is None:
        found = _SCORE_TEXT.search(raw)
        if found:
            score = float(found.group(1))
            scale = found.group(2)
            if scale:
                score = score / float(scale) * 10
    if score is None or not math.isfinite(score) or not 0 <= score <= 10:
        return JudgeScore(criterion, None, reason, raw)
    return JudgeScore(criterion, score / 10, reason, raw)


def build_prompt(
    criterion: str, question: str | None, answer: str, context: str | None, reference: str | None
) -> str:
    """The judge's prompt for one criterion."""
    parts = ["You are a strict evaluator of AI assistant answers.", _INSTRUCTIONS[criterion]]
    if question:
        parts.append(f"Question:\n{question}")
    if reference is not None:
        parts.append(f"Reference answer:\n{reference}")
    if context is not None:
        parts.append(f"Context:\n{context}")
    parts.append(f"Answer to judge:\n{answer}")
    parts.append(_REPLY_FORMAT)
    return "\n\n".join(parts)


def _call(model: Any, prompt: str) -> tuple[str, Any]:
    """Ask a LangChain chat model or a LlamaIndex LLM; returns (text, response)."""
    if hasattr(model, "invoke"):
        response = model.invoke(prompt)
        content = getattr(response, "content", response)
        if isinstance(content, list):
            content = "".join(
                c.get("text", "") if isinstance(c, dict) else str(c) for c in content
            )
        return str(content), response
    if hasattr(model, "chat"):
        from llama_index.core.llms import ChatMessage

        response = model.chat([ChatMessage(role="user", content=prompt)])
        return str(response.message.content or ""), response
    if hasattr(model, "complete"):
        response = model.complete(prompt)
        return str(response.text), response
    raise TypeError(f"cannot use {type(model).__name__} as a judge: no invoke/chat/complete")


def _usage_of(response: Any) -> Any:
    usage = _usage.from_usage_metadata(getattr(response, "usage_metadata", None))
    return usage or _usage.response_usage(response)


def _model_of(response: Any, model: Any) -> str | None:
    meta = getattr(response, "response_metadata", None) or {}
    name = meta.get("model_name") or _usage.response_model(response)
    return name or getattr(model, "model_name", None) or getattr(model, "model", None)


class Judge:
    """Post-run hook that asks a model to score each answer of a trace.

    Args:
        model: a LangChain chat model or a LlamaIndex LLM.
        criteria: any of ``accuracy`` (needs a reference answer), ``relevance``,
            ``groundedness`` (judged only when the trace retrieved documents).
        references: reference answers for ``accuracy``: a mapping from question to answer,
            or a callable ``(question, trace) -> answer | None``.
        max_concurrency: judge calls in flight at once.
        max_calls_per_trace: the budget; answers beyond it are not judged.
    """

    name = "judge"

    def __init__(
        self,
        model: Any,
        *,
        criteria: Sequence[str] = ("relevance", "groundedness"),
        references: Mapping[str, str] | Callable[[str | None, Trace], str | None] | None = None,
        max_concurrency: int = 4,
        max_calls_per_trace: int = 10,
    ) -> None:
        unknown = [c for c in criteria if c not in CRITERIA]
        if unknown:
            raise ValueError(f"unknown judge criteria {unknown}; choose from {CRITERIA}")
        if max_concurrency < 1 or max_calls_per_trace < 1:
            raise ValueError("max_concurrency and max_calls_per_trace must be at least 1")
        if not any(hasattr(model, m) for m in ("invoke", "chat", "complete")):
            raise TypeError("a judge model needs invoke (LangChain) or chat/complete (LlamaIndex)")
        self.model = model
        self.criteria = tuple(criteria)
        self.references = references
        self.max_calls_per_trace = max_calls_per_trace
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="chainwatch-judge")
        self.calls = 0
        self.skipped = 0

    def _reference(self, question: str | None, trace: Trace) -> str | None:
        if self.references is None:
            return None
        if callable(self.references):
            return self.references(question, trace)
        return self.references.get(question or "")

    def __call__(self, trace: Trace, store: Store) -> list[JudgeScore]:
        """Judge the trace's answers and store one `judgements` row per answer and criterion."""
        documents = retrieved_documents(trace)
        context = "\n\n".join(documents) if documents else None
        tasks: list[tuple[Any, str, str]] = []
        for span in trace.spans:
            if span.kind != "llm" or span.status != "ok" or not span.counts_usage:
                continue
            answer = answer_text(span.outputs)
            if not answer:
                continue
            question = question_text(span.inputs)
            for criterion in self.criteria:
                reference = self._reference(question, trace) if criterion == "accuracy" else None
                if criterion == "accuracy" and reference is None:
                    continue
                if criterion == "groundedness" and context is None:
                    continue
                prompt = build_prompt(
                    criterion, question, answer,
                    context if criterion == "groundedness" else None, reference,
                )
                tasks.append((span, criterion, prompt))
        if len(tasks) > self.max_calls_per_trace:
            self.skipped += len(tasks) - self.max_calls_per_trace
            tasks = tasks[: self.max_calls_per_trace]
        if not tasks:
            return []
        writer = _writer.writer_for(store.path)
        rec = Recorder(writer.put, lambda trace_id: writer.trace_done(trace_id), RowSettings())
        root_id = str(uuid.uuid4())
        rec.start(root_id, None, "judge", "evaluator", "chainwatch",
                  {"judged_trace_id": trace.trace_id, "criteria": list(self.criteria)},
                  metadata={"judged_trace_id": trace.trace_id})
        futures = [self._pool.submit(self._judge_one, rec, root_id, *task) for task in tasks]
        scores = [f.result() for f in futures]
        rec.end(root_id, {"judged": len(scores)})
        now = iso_time(time.time_ns())
        store.write(
            "INSERT INTO judgements (span_id, trace_id, criterion, score, reason, raw, "
            "judge_model, judge_trace_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (span.span_id, trace.trace_id, score.criterion, score.score, score.reason,
                 score.raw[:20000], model, root_id, now)
                for (span, _, _), (score, model) in zip(tasks, scores, strict=True)
            ],
        )
        return [score for score, _ in scores]

    def _judge_one(
        self, rec: Recorder, root_id: str, span: Any, criterion: str, prompt: str
    ) -> tuple[JudgeScore, str | None]:
        call_id = str(uuid.uuid4())
        record = rec.start(call_id, root_id, f"judge.{criterion}", "evaluator", "chainwatch",
                           prompt, metadata={"judged_span_id": span.span_id})
        self.calls += 1
        try:
            text, response = _call(self.model, prompt)
        except Exception as exc:
            rec.end(call_id, error=exc)
            return JudgeScore(criterion, None, None, f"judge call failed: {exc!r}"), None
        record.usage = _usage_of(response)
        record.model = _model_of(response, self.model)
        rec.end(call_id, text)
        return parse_reply(criterion, text), record.model


def evaluate_factual_accuracy(
    answer: str, reference: str, model: Any, question: str | None = None
) -> JudgeScore:
    """Ask `model` how factually accurate `answer` is against `reference` (not recorded)."""
    text, _ = _call(model, build_prompt("accuracy", question, answer, None, reference))
    return parse_reply("accuracy", text)
