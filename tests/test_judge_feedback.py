"""LLM-as-judge (opt-in hook) and user feedback, read back from the real SQLite file.

Judges are real LangChain chat models (fake ones, and small BaseChatModel subclasses) or a
LlamaIndex CustomLLM; the judged apps are real LangChain runnables.
"""

from __future__ import annotations

import json
import math
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel, FakeListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough
from pydantic import PrivateAttr

import chainwatch
from chainwatch import ChainWatchHandler
from chainwatch.judge import Judge, JudgeScore, evaluate_factual_accuracy, parse_reply
from conftest import pop_span, read_spans, rows
from langchain_support import KeywordRetriever
from llama_support import llama_settings

Row = dict[str, Any]
DOC = "The Eiffel Tower was completed in 1889. It stands on the Champ de Mars in Paris."
GOOD = '{"score": 8, "reason": "Directly answers the question."}'


# -- helpers ----------------------------------------------------------------------------------


def judgements(db_path: Path) -> list[Row]:
    return rows(db_path, "SELECT * FROM judgements ORDER BY id")


def settle(handler: ChainWatchHandler) -> None:
    """handler.flush() (which now also writes the judge's spans), then the writer once more."""
    assert handler.flush()
    assert handler._writer.flush()


def qa_chain(model: BaseChatModel) -> Runnable[str, str]:
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    return {"question": RunnablePassthrough()} | prompt | model | StrOutputParser()


def rag_chain(model: BaseChatModel) -> Runnable[str, str]:
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Context:\n{context}"), ("human", "{question}")]
    )
    retriever = KeywordRetriever(docs=[DOC])

    def join(docs: list[Document]) -> str:
        return "\n".join(d.page_content for d in docs)

    return (
        {"context": retriever | RunnableLambda(join), "question": RunnablePassthrough()}
        | prompt
        | model
        | StrOutputParser()
    )


def two_answer_chain(model: BaseChatModel) -> Runnable[str, str]:
    """Two model calls in one trace: answer, then a follow-up question about the answer."""
    follow_up = ChatPromptTemplate.from_messages([("human", "Is this right? {answer}")])
    return (
        qa_chain(model)
        | RunnableLambda(lambda answer: {"answer": answer})
        | follow_up
        | model
        | StrOutputParser()
    )


def ai(content: str, tokens: tuple[int, int] | None = None, model: str | None = None) -> AIMessage:
    usage = None
    if tokens is not None:
        usage = {
            "input_tokens": tokens[0],
            "output_tokens": tokens[1],
            "total_tokens": tokens[0] + tokens[1],
        }
    meta = {"model_name": model} if model else {}
    return AIMessage(content=content, usage_metadata=usage, response_metadata=meta)


class RecordingChatModel(BaseChatModel):
    """A judge that answers from a script and remembers every prompt it got."""

    replies: list[str]
    _prompts: list[str] = PrivateAttr(default_factory=list)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "recording"

    @property
    def prompts(self) -> list[str]:
        return list(self._prompts)

    def _generate(self, messages: list[BaseMessage], stop: Any = None, **kw: Any) -> ChatResult:
        with self._lock:
            self._prompts.append(str(messages[-1].content))
            reply = self.replies[(len(self._prompts) - 1) % len(self.replies)]
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=reply))])


class BrokenChatModel(BaseChatModel):
    @property
    def _llm_type(self) -> str:
        return "broken"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, **kw: Any) -> ChatResult:
        raise ConnectionError("judge provider unreachable")


class ProbeChatModel(BaseChatModel):
    """Holds each call at a two-party barrier and records how many calls were in flight."""

    _lock: Any = PrivateAttr(default_factory=threading.Lock)
    _barrier: Any = PrivateAttr(default_factory=lambda: threading.Barrier(2, timeout=30))
    _in_flight: int = PrivateAttr(default=0)
    _peak: int = PrivateAttr(default=0)

    @property
    def _llm_type(self) -> str:
        return "probe"

    @property
    def peak(self) -> int:
        return self._peak

    def _generate(self, messages: list[BaseMessage], stop: Any = None, **kw: Any) -> ChatResult:
        with self._lock:
            self._in_flight += 1
            self._peak = max(self._peak, self._in_flight)
        try:
            self._barrier.wait()
        finally:
            with self._lock:
                self._in_flight -= 1
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=GOOD))])


def the_llm_span(db_path: Path, question_fragment: str = "") -> Row:
    found = [
        s
        for s in read_spans(db_path)
        if s["kind"] == "llm" and question_fragment in (s["inputs"] or "")
    ]
    assert len(found) == 1, [s["inputs"] for s in found]
    return found[0]


# -- parsing replies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "score", "reason"),
    [
        ('{"score": 8, "reason": "on topic"}', 0.8, "on topic"),
        ('```json\n{"score": 6, "reason": "partly"}\n```', 0.6, "partly"),
        ('{"score": 0, "reason": "wrong"}', 0.0, "wrong"),
        ("Score: 7/10", 0.7, None),
        ("Score: 10/10", 1.0, None),
        ("Score: 4/5", 0.8, None),
        ("score 85/100", 0.85, None),
        ("I think it's pretty good", None, None),
        ("Score: 15", None, None),
        ('{"score": 11, "reason": "great"}', None, "great"),
        ('{"score": true}', None, None),
        ('{"score": NaN}', None, None),
        ("Score: -3", None, None),
        ("", None, None),
    ],
)
def test_parse_reply(raw: str, score: float | None, reason: str | None) -> None:
    parsed = parse_reply("relevance", raw)
    assert parsed.criterion == "relevance"
    assert parsed.raw == raw
    assert parsed.reason == reason
    if score is None:
        assert parsed.score is None
    else:
        assert parsed.score == pytest.approx(score)


def test_evaluate_factual_accuracy_asks_with_the_reference() -> None:
    judge = RecordingChatModel(replies=['{"score": 9, "reason": "same facts"}'])
    result = evaluate_factual_accuracy(
        "Paris is France's capital.", "Paris", judge, question="What is the capital of France?"
    )
    reply = '{"score": 9, "reason": "same facts"}'
    assert result == JudgeScore("accuracy", 0.9, "same facts", reply)
    (prompt,) = judge.prompts
    assert "Reference answer:\nParis" in prompt
    assert "Answer to judge:\nParis is France's capital." in prompt
    assert "Question:\nWhat is the capital of France?" in prompt


# -- the judge hook ---------------------------------------------------------------------------


def test_well_formed_reply_is_stored_as_a_normalised_score(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    judge_model = GenericFakeChatModel(messages=iter([ai(GOOD, (120, 15), "judge-model")]))
    h = make_handler(hooks=[Judge(judge_model, criteria=("relevance",))])
    qa_chain(FakeListChatModel(responses=["Paris is the capital of France."])).invoke(
        "What is the capital of France?", config={"callbacks": [h]}
    )
    assert h.flush()
    llm = the_llm_span(db_path)
    (row,) = judgements(db_path)
    assert row["span_id"] == llm["span_id"]
    assert row["trace_id"] == llm["trace_id"]
    assert row["criterion"] == "relevance"
    assert row["score"] == pytest.approx(0.8)
    assert row["reason"] == "Directly answers the question."
    assert row["raw"] == GOOD
    assert row["judge_model"] == "judge-model"
    assert row["judge_trace_id"] and row["judge_trace_id"] != llm["trace_id"]
    assert row["created_at"].endswith("+00:00")
    runs = rows(db_path, "SELECT hook, status FROM hook_runs")
    assert runs == [{"hook": "judge", "status": "ok"}]


def test_malformed_reply_is_null_with_the_raw_reply_kept(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    judge_model = FakeListChatModel(responses=["I think it's pretty good"])
    judge = Judge(judge_model, criteria=("relevance",))
    h = make_handler(hooks=[judge])
    qa_chain(FakeListChatModel(responses=["Paris."])).invoke(
        "Capital of France?", config={"callbacks": [h]}
    )
    assert h.flush()
    (row,) = judgements(db_path)
    assert row["score"] is None
    assert row["reason"] is None
    assert row["raw"] == "I think it's pretty good"


def test_score_in_text_reply(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    h = make_handler(hooks=[Judge(FakeListChatModel(responses=["Score: 7/10"]),
                                  criteria=("relevance",))])
    qa_chain(FakeListChatModel(responses=["Paris."])).invoke(
        "Capital of France?", config={"callbacks": [h]}
    )
    assert h.flush()
    (row,) = judgements(db_path)
    assert row["score"] == pytest.approx(0.7)
    assert row["raw"] == "Score: 7/10"


def test_accuracy_needs_a_reference_from_the_mapping(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    judge_model = RecordingChatModel(replies=['{"score": 3, "reason": "contradicts"}'])
    judge = Judge(
        judge_model,
        criteria=("accuracy",),
        references={"What is the capital of Australia?": "Canberra"},
    )
    h = make_handler(hooks=[judge])
    app = qa_chain(FakeListChatModel(responses=["Sydney.", "Blue."]))
    app.invoke("What is the capital of Australia?", config={"callbacks": [h]})
    app.invoke("What colour is the sky?", config={"callbacks": [h]})
    assert h.flush()

    judged = the_llm_span(db_path, "Australia")
    (row,) = judgements(db_path)
    assert row["span_id"] == judged["span_id"]
    assert row["criterion"] == "accuracy"
    assert row["score"] == pytest.approx(0.3)
    assert row["reason"] == "contradicts"
    (prompt,) = judge_model.prompts
    assert "Reference answer:\nCanberra" in prompt
    assert "Answer to judge:\nSydney." in prompt


def test_accuracy_reference_from_a_callable(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    asked: list[tuple[str | None, str]] = []

    def reference(question: str | None, trace: chainwatch.Trace) -> str | None:
        asked.append((question, trace.trace_id))
        return "Canberra" if question and "Australia" in question else None

    judge_model = RecordingChatModel(replies=['{"score": 10, "reason": "right"}'])
    h = make_handler(hooks=[Judge(judge_model, criteria=("accuracy",), references=reference)])
    qa_chain(FakeListChatModel(responses=["Canberra."])).invoke(
        "What is the capital of Australia?", config={"callbacks": [h]}
    )
    assert h.flush()
    llm = the_llm_span(db_path)
    assert asked == [("What is the capital of Australia?", llm["trace_id"])]
    assert [r["score"] for r in judgements(db_path)] == [1.0]


def test_groundedness_is_judged_only_when_documents_were_retrieved(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    judge_model = RecordingChatModel(replies=[GOOD])
    h = make_handler(hooks=[Judge(judge_model, criteria=("relevance", "groundedness"))])
    answer = "The Eiffel Tower was completed in 1889."
    rag_chain(FakeListChatModel(responses=[answer])).invoke(
        "When was the Eiffel Tower completed?", config={"callbacks": [h]}
    )
    qa_chain(FakeListChatModel(responses=["Paris."])).invoke(
        "Capital of France?", config={"callbacks": [h]}
    )
    assert h.flush()

    rag = the_llm_span(db_path, "Eiffel")
    plain = the_llm_span(db_path, "France")
    got = sorted((r["span_id"], r["criterion"]) for r in judgements(db_path))
    assert got == sorted(
        [(rag["span_id"], "relevance"), (rag["span_id"], "groundedness"),
         (plain["span_id"], "relevance")]
    )
    grounded_prompts = [p for p in judge_model.prompts if "SUPPORTED BY THE CONTEXT" in p]
    assert len(grounded_prompts) == 1
    assert f"Context:\n{DOC}" in grounded_prompts[0]
    assert all("Context:" not in p for p in judge_model.prompts if p not in grounded_prompts)


def test_judge_calls_are_evaluator_spans_in_their_own_trace(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    judge_model = GenericFakeChatModel(
        messages=iter([ai(GOOD, (100, 10), "judge-model"), ai(GOOD, (100, 10), "judge-model")])
    )
    h = make_handler(hooks=[Judge(judge_model, criteria=("relevance",))])
    two_answer_chain(FakeListChatModel(responses=["Paris.", "Yes."])).invoke(
        "Capital of France?", config={"callbacks": [h]}
    )
    settle(h)

    spans = read_spans(db_path)
    app_llm = [s for s in spans if s["kind"] == "llm"]
    assert len(app_llm) == 2
    judged_trace = app_llm[0]["trace_id"]
    assert all(s["kind"] != "evaluator" for s in spans if s["trace_id"] == judged_trace)

    evaluator = [s for s in spans if s["trace_id"] != judged_trace]
    root = pop_span(evaluator, "judge", kind="evaluator", parent_id=None)
    assert root["trace_id"] == root["span_id"]
    assert json.loads(root["metadata"])["judged_trace_id"] == judged_trace
    judged_spans = set()
    for _ in app_llm:
        call = pop_span(evaluator, "judge.relevance", kind="evaluator",
                        parent_id=root["span_id"], trace_id=root["span_id"], status="ok")
        judged_spans.add(json.loads(call["metadata"])["judged_span_id"])
        assert call["total_tokens"] == 110
        assert call["model"] == "judge-model"
        assert json.loads(call["outputs"]) == GOOD
    assert evaluator == []
    assert judged_spans == {s["span_id"] for s in app_llm}
    assert {r["judge_trace_id"] for r in judgements(db_path)} == {root["span_id"]}


def test_flush_makes_the_judges_evaluator_spans_visible(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    h = make_handler(hooks=[Judge(FakeListChatModel(responses=[GOOD]), criteria=("relevance",))])
    qa_chain(FakeListChatModel(responses=["Paris."])).invoke(
        "Capital of France?", config={"callbacks": [h]}
    )
    assert h.flush()
    # flush() promises every hook result is visible; the judge's spans are part of its result.
    assert len(judgements(db_path)) == 1
    evaluator = sorted(s["name"] for s in read_spans(db_path) if s["kind"] == "evaluator")
    assert evaluator == ["judge", "judge.relevance"]


def test_judge_leaves_the_judged_totals_and_summary_unchanged(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    h = make_handler(hooks=[])
    app = GenericFakeChatModel(messages=iter([ai("Paris.", (7, 3)), ai("Yes.", (5, 2))]))
    two_answer_chain(app).invoke("Capital of France?", config={"callbacks": [h]})
    assert h.flush()
    (before,) = list(chainwatch.traces(db=db_path))
    summary_before = dict(chainwatch.summary(None, db=db_path))
    assert before["total_tokens"] == 17 and before["llm_calls"] == 2

    judge_model = GenericFakeChatModel(
        messages=iter([ai(GOOD, (1000, 100)), ai(GOOD, (1000, 100))])
    )
    judge = Judge(judge_model, criteria=("relevance",))
    assert chainwatch.analyze(db=db_path, hooks=[judge], trace_ids=[before["trace_id"]]) == 1
    assert len(judgements(db_path)) == 2

    after = {r["trace_id"]: r for r in chainwatch.traces(db=db_path)}
    assert len(after) == 2
    judged = after.pop(before["trace_id"])
    for key in ("span_count", "llm_calls", "prompt_tokens", "completion_tokens",
                "total_tokens", "cost_usd", "status", "duration_ms"):
        assert judged[key] == before[key], key
    (judge_trace,) = after.values()
    assert judge_trace["kind"] == "evaluator"
    assert judge_trace["total_tokens"] == 2200
    assert judge_trace["llm_calls"] == 0
    assert dict(chainwatch.summary(None, db=db_path)) == summary_before
    trace = chainwatch.trace(before["trace_id"], db=db_path)
    assert trace.totals()["prompt_tokens"] == 12
    assert all(s.kind != "evaluator" for s in trace.spans)


def test_budget_limits_judge_calls_per_trace(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    judge_model = RecordingChatModel(replies=[GOOD])
    questions = ["Capital of France?", "Capital of Spain?"]
    judge = Judge(
        judge_model,
        criteria=("relevance", "accuracy"),
        references={q: "a reference" for q in questions}
        | {f"Is this right? {a}": "yes" for a in ("Paris.", "Madrid.")},
        max_calls_per_trace=3,
    )
    h = make_handler(hooks=[judge])
    app = two_answer_chain(FakeListChatModel(responses=["Paris.", "Yes.", "Madrid.", "Yes."]))
    for question in questions:
        app.invoke(question, config={"callbacks": [h]})
    assert h.flush()

    got = judgements(db_path)
    per_trace: dict[str, int] = {}
    for row in got:
        per_trace[row["trace_id"]] = per_trace.get(row["trace_id"], 0) + 1
    assert sorted(per_trace.values()) == [3, 3]
    assert len(judge_model.prompts) == 6
    assert judge.calls == 6
    assert judge.skipped == 2


def test_judge_respects_its_concurrency_limit(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    probe = ProbeChatModel()
    h = make_handler(hooks=[Judge(probe, criteria=("relevance",), max_concurrency=2)])
    app = FakeListChatModel(responses=["A.", "B.", "C.", "D."])
    four = two_answer_chain(app) | RunnableLambda(lambda x: x) | two_answer_chain(app)
    four.invoke("Start?", config={"callbacks": [h]})
    assert h.flush()
    got = judgements(db_path)
    assert len(got) == 4
    assert all(r["score"] == pytest.approx(0.8) for r in got), [r["raw"] for r in got]
    assert probe.peak == 2


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_concurrency": 0}, ValueError),
        ({"max_concurrency": -1}, ValueError),
        ({"max_calls_per_trace": 0}, ValueError),
        ({"criteria": ("relevance", "truthiness")}, ValueError),
    ],
)
def test_judge_validates_its_settings(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Judge(FakeListChatModel(responses=[GOOD]), **kwargs)


def test_judge_rejects_something_that_is_not_a_model() -> None:
    with pytest.raises(TypeError):
        Judge(object())


def test_failing_judge_model_gives_null_and_the_hook_stays_ok(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    h = make_handler(hooks=[Judge(BrokenChatModel(), criteria=("relevance",))])
    assert qa_chain(FakeListChatModel(responses=["Paris."])).invoke(
        "Capital of France?", config={"callbacks": [h]}
    ) == "Paris."
    settle(h)
    (row,) = judgements(db_path)
    assert row["score"] is None
    assert row["raw"].startswith("judge call failed")
    assert "judge provider unreachable" in row["raw"]
    assert rows(db_path, "SELECT hook, status, error FROM hook_runs") == [
        {"hook": "judge", "status": "ok", "error": None}
    ]
    (call,) = [s for s in read_spans(db_path) if s["name"] == "judge.relevance"]
    assert call["kind"] == "evaluator"
    assert call["status"] == "error"
    assert call["error"] == "ConnectionError: judge provider unreachable"


# -- a LlamaIndex LLM as judge ----------------------------------------------------------------


@pytest.fixture
def li_settings() -> Iterator[Any]:
    with llama_settings(mock_models=False) as settings:
        yield settings


def scripted_llm(answers: list[str], **kwargs: Any) -> Any:
    """A LlamaIndex CustomLLM answering from a script; it raises once the script runs out."""
    from llama_index.core.llms import (
        CompletionResponse,
        CompletionResponseGen,
        CustomLLM,
        LLMMetadata,
    )
    from llama_index.core.llms.callbacks import llm_completion_callback

    class ScriptedLLM(CustomLLM):
        script: list[str]
        prompts: list[str] = []

        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata(model_name="scripted-judge")

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kw: Any) -> CompletionResponse:
            self.prompts.append(prompt)
            if not self.script:
                raise RuntimeError("script exhausted")
            return CompletionResponse(text=self.script.pop(0))

        @llm_completion_callback()
        def stream_complete(
            self, prompt: str, formatted: bool = False, **kw: Any
        ) -> CompletionResponseGen:
            raise NotImplementedError

    return ScriptedLLM(script=list(answers), prompts=[], **kwargs)


def test_llama_index_llm_as_judge(
    li_settings: Any, make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    from llama_index.core.callbacks import CallbackManager

    judge_llm = scripted_llm(['{"score": 9, "reason": "fine"}'],
                             callback_manager=CallbackManager([]))
    h = make_handler(hooks=[Judge(judge_llm, criteria=("relevance",))])
    qa_chain(FakeListChatModel(responses=["Paris."])).invoke(
        "Capital of France?", config={"callbacks": [h]}
    )
    settle(h)
    (row,) = judgements(db_path)
    assert row["score"] == pytest.approx(0.9)
    assert row["reason"] == "fine"
    (prompt,) = judge_llm.prompts
    assert "Answer to judge:\nParis." in prompt
    assert "Question:\nCapital of France?" in prompt
    evaluator = sorted(s["name"] for s in read_spans(db_path) if s["kind"] == "evaluator")
    assert evaluator == ["judge", "judge.relevance"]


def test_llama_index_judge_under_a_global_callback_manager_is_not_an_app_call(
    li_settings: Any, make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    """The documented LlamaIndex setup puts the handler in Settings; the judge's calls stay out."""
    from llama_index.core.callbacks import CallbackManager

    h = make_handler(hooks=[])
    li_settings.callback_manager = CallbackManager([h])
    judge_llm = scripted_llm(['{"score": 9, "reason": "fine"}'] * 2)
    judge = Judge(judge_llm, criteria=("relevance",), max_calls_per_trace=1)
    qa_chain(FakeListChatModel(responses=["Paris."])).invoke(
        "Capital of France?", config={"callbacks": [h]}
    )
    assert h.flush()
    (app_trace,) = list(chainwatch.traces(db=db_path))
    assert chainwatch.analyze(db=db_path, hooks=[judge], trace_ids=[app_trace["trace_id"]]) == 1
    assert [r["score"] for r in judgements(db_path)] == [0.9]

    assert chainwatch.summary(None, db=db_path)["count"] == 1
    llm_spans = [s for s in read_spans(db_path) if s["kind"] == "llm"]
    assert [s["trace_id"] for s in llm_spans] == [app_trace["trace_id"]]


# -- feedback ---------------------------------------------------------------------------------


def feedback_rows(db_path: Path) -> list[Row]:
    return rows(db_path, "SELECT * FROM feedback ORDER BY id")


def run_app(h: ChainWatchHandler) -> tuple[str, str]:
    """One trace; returns (trace id, llm span id). The root run id is the trace id."""
    run_id = uuid.uuid4()
    qa_chain(FakeListChatModel(responses=["Paris."])).invoke(
        "Capital of France?", config={"callbacks": [h], "run_id": run_id}
    )
    assert h.flush()
    return str(run_id), the_llm_span(h.db_path)["span_id"]


def test_feedback_on_a_trace(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    h = make_handler(hooks=[])
    trace_id, _ = run_app(h)
    feedback_id = chainwatch.feedback(trace_id, 1, "great", db=db_path)
    (row,) = feedback_rows(db_path)
    assert row["id"] == feedback_id
    assert row["trace_id"] == trace_id
    assert row["span_id"] is None
    assert row["score"] == 1.0
    assert row["comment"] == "great"
    assert row["source"] == "user"
    assert row["created_at"].endswith("+00:00")


def test_feedback_right_after_a_run_without_an_explicit_flush(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    h = make_handler(hooks=[])
    run_id = uuid.uuid4()
    qa_chain(FakeListChatModel(responses=["Paris."])).invoke(
        "Capital of France?", config={"callbacks": [h], "run_id": run_id}
    )
    chainwatch.feedback(str(run_id), 0, db=db_path)
    assert [(r["trace_id"], r["score"], r["comment"]) for r in feedback_rows(db_path)] == [
        (str(run_id), 0.0, None)
    ]


def test_feedback_on_a_span(make_handler: Callable[..., ChainWatchHandler], db_path: Path) -> None:
    h = make_handler(hooks=[])
    trace_id, span_id = run_app(h)
    first = chainwatch.feedback(span_id, 4.5, "good answer", source="reviewer", db=db_path)
    second = chainwatch.feedback(trace_id, -1, db=db_path)
    assert second > first
    got = [(r["trace_id"], r["span_id"], r["score"], r["source"]) for r in feedback_rows(db_path)]
    assert got == [(trace_id, span_id, 4.5, "reviewer"), (trace_id, None, -1.0, "user")]


def test_feedback_on_an_unknown_id(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    h = make_handler(hooks=[])
    run_app(h)
    with pytest.raises(LookupError, match="no-such-id"):
        chainwatch.feedback("no-such-id", 1, db=db_path)
    assert feedback_rows(db_path) == []


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf, True, False, "5", None])
def test_feedback_score_must_be_a_finite_number(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path, score: Any
) -> None:
    h = make_handler(hooks=[])
    trace_id, _ = run_app(h)
    with pytest.raises(ValueError):
        chainwatch.feedback(trace_id, score, db=db_path)
    assert feedback_rows(db_path) == []


def test_feedback_source_must_not_be_empty(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    h = make_handler(hooks=[])
    trace_id, _ = run_app(h)
    with pytest.raises(ValueError):
        chainwatch.feedback(trace_id, 1, source="", db=db_path)
    assert feedback_rows(db_path) == []


def test_feedback_comment_with_a_lone_surrogate_is_stored_repaired(
    make_handler: Callable[..., ChainWatchHandler], db_path: Path
) -> None:
    h = make_handler(hooks=[])
    trace_id, _ = run_app(h)
    chainwatch.feedback(trace_id, 1, "bad \ud83d emoji", db=db_path)
    (row,) = feedback_rows(db_path)
    assert row["comment"] == "bad \ufffd emoji"
    row["comment"].encode("utf-8")
