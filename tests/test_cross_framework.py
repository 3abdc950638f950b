"""LlamaIndex inside LangChain and LangChain inside LlamaIndex, through one handler: one trace."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.callbacks import CallbackManager
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai import OpenAI
from pydantic import PrivateAttr

import chainwatch
from chainwatch import ChainWatchHandler
from chainwatch.fake_provider import FakeOpenAI, Reply
from conftest import pop_span, read_spans
from llama_support import llama_settings

Row = dict[str, Any]
DOCS = {
    "paris": "Paris is the capital of France.",
    "berlin": "Berlin is the capital of Germany.",
}
# LlamaIndex's workflows run inspect.getmembers() over pydantic models when an agent is built,
# which trips pydantic's deprecation warnings (not chainwatch's).
IGNORE_WORKFLOW_FIELDS = "ignore::pydantic.warnings.PydanticDeprecatedSince20:inspect"
IGNORE_WORKFLOW_MODEL_FIELDS = "ignore::pydantic.warnings.PydanticDeprecatedSince211:inspect"
dispatcher = get_dispatcher("chainwatch_cross_tests")


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(autouse=True)
def li_settings(handler: ChainWatchHandler) -> Iterator[None]:
    """Mock models in LlamaIndex's global Settings for the test; everything restored after."""
    with llama_settings(handler):
        yield


@pytest.fixture(params=["legacy", "dispatcher"])
def path(request: pytest.FixtureRequest, handler: ChainWatchHandler) -> str:
    """Attach the handler to LlamaIndex one way or the other; the index is built after."""
    if request.param == "legacy":
        Settings.callback_manager = CallbackManager([handler])
    return str(request.param)


@pytest.fixture
def chat_model(fake_openai: FakeOpenAI) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=fake_openai.base_url, api_key="sk-fake", max_retries=0, model="gpt-4o-mini"
    )


def build_index() -> VectorStoreIndex:
    return VectorStoreIndex.from_documents([Document(text=t, id_=k) for k, t in DOCS.items()])


def query_engine(handler: ChainWatchHandler, path: str) -> Any:
    """A real query engine; with the dispatcher path, instrumented after the index is built."""
    engine = build_index().as_query_engine(similarity_top_k=2)
    if path == "dispatcher":
        chainwatch.instrument_llama_index(handler)
    return engine


def spans_of(handler: ChainWatchHandler, db_path: Path) -> list[Row]:
    assert handler.flush()
    spans = read_spans(db_path)
    construction = {s["span_id"] for s in spans if s["name"] == "index_construction"}
    return [s for s in spans if s["trace_id"] not in construction]


def child(spans: list[Row], name: str, parent: Row, **expected: Any) -> Row:
    return pop_span(
        spans, name, parent_id=parent["span_id"], trace_id=parent["trace_id"], **expected
    )


def pop_legacy_query(spans: list[Row], parent: Row) -> Row:
    """The legacy spans of a MockLLM query over DOCS, nested under `parent`."""
    root = child(spans, "query", parent, kind="chain", framework="llama_index")
    query = child(spans, "query", root, kind="chain")
    retrieve = child(spans, "retrieve", query, kind="retriever")
    child(spans, "MockEmbedding", retrieve, kind="embedding")
    synthesize = child(spans, "synthesize", query, kind="chain")
    child(spans, "chunking", synthesize, kind="chain")
    child(spans, "chunking", synthesize, kind="chain")
    child(spans, "templating", synthesize, kind="prompt")
    child(spans, "MockLLM", synthesize, kind="llm")
    return root


def pop_dispatcher_query(spans: list[Row], parent: Row, prefix: str = "") -> Row:
    """The dispatcher spans of a MockLLM query over DOCS, nested under `parent`."""
    a = "a" if prefix else ""
    root = child(spans, f"RetrieverQueryEngine.{a}query", parent, framework="llama_index")
    query = child(spans, f"RetrieverQueryEngine._{a}query", root)
    retrieve = child(spans, f"VectorIndexRetriever.{a}retrieve", query, kind="retriever")
    inner = child(spans, f"VectorIndexRetriever._{a}retrieve", retrieve, kind="retriever")
    embed = child(spans, f"MockEmbedding.{a}get_query_embedding", inner, kind="embedding")
    child(spans, f"MockEmbedding._{a}get_query_embedding", embed, kind="embedding")
    synthesize = child(spans, f"CompactAndRefine.{a}synthesize", query)
    outer = child(spans, f"CompactAndRefine.{a}get_response", synthesize)
    child(spans, "TokenTextSplitter.split_text", outer)
    refine = child(spans, f"CompactAndRefine.{a}get_response", outer)
    child(spans, "TokenTextSplitter.split_text", refine)
    if a:
        predict = child(spans, "MockLLM.apredict", refine, kind="llm")
        acomplete = child(spans, "MockLLM.acomplete", predict, kind="llm")
        child(spans, "MockLLM.complete", acomplete, kind="llm")
    else:
        program = child(spans, "DefaultRefineProgram.__call__", refine)
        predict = child(spans, "MockLLM.predict", program, kind="llm")
        child(spans, "MockLLM.complete", predict, kind="llm")
    return root


class LangChainEngine(CustomQueryEngine):
    """A LlamaIndex query engine whose body is a LangChain runnable."""

    _runnable: Any = PrivateAttr()
    _handler: Any = PrivateAttr()

    def custom_query(self, query_str: str) -> str:
        return str(self._runnable.invoke(query_str, config={"callbacks": [self._handler]}))


# -- LlamaIndex inside LangChain --------------------------------------------------------------


def test_langchain_tool_running_a_query_engine_is_one_trace(
    handler: ChainWatchHandler, db_path: Path, path: str
) -> None:
    engine = query_engine(handler, path)

    @tool
    def lookup(question: str) -> str:
        """Look the answer up in the documents."""
        return str(engine.query(question))

    chain = RunnableLambda(lambda q: {"question": q}, name="prepare") | lookup
    answer = chain.invoke("What is the capital of France?", config={"callbacks": [handler]})
    assert answer == "text text text text text text text text"

    spans = spans_of(handler, db_path)
    root = pop_span(spans, "RunnableSequence", parent_id=None, framework="langchain")
    assert root["trace_id"] == root["span_id"]
    child(spans, "prepare", root, framework="langchain")
    lookup_span = child(spans, "lookup", root, kind="tool", framework="langchain")
    if path == "legacy":
        li_root = pop_legacy_query(spans, lookup_span)
    else:
        li_root = pop_dispatcher_query(spans, lookup_span)
    assert spans == []
    if path == "dispatcher":
        assert "What is the capital of France?" in li_root["inputs"]
    assert answer in lookup_span["outputs"]


def test_parallel_async_langchain_tools_running_aqueries(
    handler: ChainWatchHandler, db_path: Path, path: str
) -> None:
    engine = query_engine(handler, path)

    @tool
    async def lookup(question: str) -> str:
        """Look the answer up in the documents."""
        return str(await engine.aquery(question))

    chain = RunnableLambda(lambda q: {"question": q}, name="prepare") | lookup
    questions = [f"question number {i}" for i in range(3)]

    async def run_all() -> list[Any]:
        config: Any = {"callbacks": [handler]}
        return await asyncio.gather(*(chain.ainvoke(q, config=config) for q in questions))

    assert len(asyncio.run(run_all())) == len(questions)

    spans = spans_of(handler, db_path)
    roots = [s for s in spans if s["parent_id"] is None]
    assert [r["name"] for r in roots] == ["RunnableSequence"] * len(questions)
    seen = set()
    for root in roots:
        trace = [s for s in spans if s["trace_id"] == root["span_id"]]
        pop_span(trace, "RunnableSequence", parent_id=None)
        question = next(q for q in questions if q in root["inputs"])
        seen.add(question)
        lookup_span = child(trace, "lookup", root, kind="tool")
        child(trace, "prepare", root)
        li_root = pop_span(trace, "query" if path == "legacy" else "RetrieverQueryEngine.aquery")
        assert li_root["parent_id"] == lookup_span["span_id"]
        retrieve = pop_span(
            trace, "retrieve" if path == "legacy" else "VectorIndexRetriever.aretrieve"
        )
        assert question in retrieve["inputs"]
        for span in trace:
            assert not any(q in (span["inputs"] or "") for q in questions if q != question)
    assert seen == set(questions)


# -- LangChain inside LlamaIndex --------------------------------------------------------------


def test_langchain_runnable_in_a_function_tool_nests_under_it(
    handler: ChainWatchHandler, db_path: Path
) -> None:
    chainwatch.instrument_llama_index(handler)
    chain = RunnableLambda(lambda s: s.upper(), name="shout") | RunnableLambda(
        lambda s: s + "!", name="exclaim"
    )

    def shout(text: str) -> str:
        """Shout the text."""
        return chain.invoke(text, config={"callbacks": [handler]})

    output = FunctionTool.from_defaults(shout).call(text="hello")
    assert output.content == "HELLO!"

    spans = spans_of(handler, db_path)
    root = pop_span(spans, "FunctionTool.call", parent_id=None, kind="tool")
    sequence = child(spans, "RunnableSequence", root, framework="langchain")
    child(spans, "shout", sequence, framework="langchain")
    child(spans, "exclaim", sequence, framework="langchain")
    assert spans == []


def test_langchain_chat_model_in_a_dispatcher_span_nests_and_counts_once(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI, chat_model: ChatOpenAI
) -> None:
    chainwatch.instrument_llama_index(handler)

    @dispatcher.span
    def summarise(text: str) -> str:
        message = chat_model.invoke(f"Summarise: {text}", config={"callbacks": [handler]})
        return str(message.content)

    fake_openai.queue(Reply(content="Short summary", prompt_tokens=17, completion_tokens=2))
    assert summarise("a long text") == "Short summary"
    sent = fake_openai.responses[-1]

    spans = spans_of(handler, db_path)
    root = pop_span(
        spans,
        "test_langchain_chat_model_in_a_dispatcher_span_nests_and_counts_once.<locals>.summarise",
        parent_id=None,
        framework="llama_index",
    )
    llm = child(spans, "ChatOpenAI", root, kind="llm", framework="langchain", status="ok")
    assert spans == []
    usage = sent["usage"]
    expected = (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"])
    assert (llm["prompt_tokens"], llm["completion_tokens"], llm["total_tokens"]) == expected
    summary = chainwatch.summary(None, db=db_path)
    assert (summary["count"], summary["total_tokens"]) == (1, usage["total_tokens"])


def test_langchain_runnable_in_a_legacy_query_nests_under_its_trace(
    handler: ChainWatchHandler, db_path: Path
) -> None:
    Settings.callback_manager = CallbackManager([handler])
    engine = LangChainEngine()
    engine._handler = handler
    engine._runnable = RunnableLambda(lambda s: s[::-1], name="reverse")

    assert str(engine.query("abc")) == "cba"

    spans = spans_of(handler, db_path)
    root = pop_span(spans, "query", parent_id=None, framework="llama_index")
    child(spans, "reverse", root, framework="langchain", status="ok")
    assert spans == []


@pytest.mark.filterwarnings(IGNORE_WORKFLOW_FIELDS)
@pytest.mark.filterwarnings(IGNORE_WORKFLOW_MODEL_FIELDS)
def test_agent_tool_calling_langchain_is_one_trace_with_exact_totals(
    handler: ChainWatchHandler, db_path: Path, fake_openai: FakeOpenAI, chat_model: ChatOpenAI
) -> None:
    chainwatch.instrument_llama_index(handler)

    def translate(text: str) -> str:
        """Translate the text to French."""
        return str(chat_model.invoke(f"Translate: {text}", config={"callbacks": [handler]}).content)

    llm = OpenAI(
        model="gpt-4o-mini",
        api_base=fake_openai.base_url,
        api_key="sk-fake",
        max_retries=0,
        additional_kwargs={"stream_options": {"include_usage": True}},
    )
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(translate)], llm=llm)
    start = len(fake_openai.responses)
    fake_openai.queue(
        Reply(tool_calls=[{"name": "translate", "arguments": {"text": "good morning"}}]),
        Reply(content="bonjour"),
        Reply(content="It is bonjour"),
    )

    async def run() -> Any:
        return await agent.run("How do I say good morning in French?")

    assert str(asyncio.run(run())) == "It is bonjour"
    sent = fake_openai.responses[start:]
    assert len(sent) == 3

    spans = spans_of(handler, db_path)
    everything = list(spans)
    root = pop_span(spans, "FunctionAgent.run", parent_id=None, kind="agent")
    assert all(s["trace_id"] == root["span_id"] for s in everything)
    tool_span = pop_span(spans, "FunctionTool.acall", kind="tool")
    chat = child(spans, "ChatOpenAI", tool_span, kind="llm", framework="langchain")
    assert chat["total_tokens"] == sent[1]["usage"]["total_tokens"]
    assert "bonjour" in chat["outputs"]
    total = sum(r["usage"]["total_tokens"] for r in sent)
    assert chainwatch.summary(None, db=db_path)["total_tokens"] == total
    (row,) = chainwatch.traces(db=db_path)
    assert row["total_tokens"] == total
    assert json.loads(tool_span["inputs"])["kwargs"] == {"text": "good morning"}
