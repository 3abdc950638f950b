"""`chainwatch demo`: a realistic LangChain workload against a local fake provider.

No API key and no network: the demo starts an OpenAI-compatible server on 127.0.0.1 and
points the real `langchain_openai.ChatOpenAI` at it, so every span, token count and cost is
produced exactly as it would be against the real service.
"""

from __future__ import annotations

import random
import zlib
from pathlib import Path
from typing import Any

from .fake_provider import FakeOpenAI, Reply, demo_responder

QUESTIONS = [
    "What is the capital of France?",
    "How do LangChain agents choose a tool?",
    "Why do prompt tokens cost less than completion tokens?",
    "Summarize the retrieved notes about SQLite in one sentence.",
    "Tell me a joke about caching.",
    "What does the forecast say for tomorrow?",
    "How should I budget tokens for a chatbot?",
    "Is SQLite a good place to keep traces?",
    "Explain what a retriever does in a RAG chain.",
    "What is time to first token?",
    "Hello there!",
    "How does LlamaIndex build a vector index?",
    "Why did my chain get slower this week? [flaky]",
    "What is the price of gpt-4o-mini per million tokens?",
    "Give me a summary of the design document.",
    "Which database does chainwatch use?",
    "What is the weather like in Paris?",
    "How many tokens is a typical answer?",
    "Can you compare LangChain and LlamaIndex? [flaky]",
    "What are cached tokens?",
]

NOTES = [
    ("SQLite keeps a whole database in one file and supports many readers with WAL.", "sqlite"),
    ("Time to first token measures how long a user waits before text starts streaming.", "ttft"),
    ("Prompt tokens usually cost less than completion tokens; cached ones less still.", "cost"),
    ("A retriever returns the documents most similar to the question.", "rag"),
    ("LangGraph agents loop between a model call and tool calls until the model answers.", "agent"),
]


def _responder(body: dict[str, Any]) -> Reply:
    """Demo behaviour: realistic latency, tool calls for agents, a flaky question that fails."""
    messages = body.get("messages") or []
    text = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    seed = zlib.crc32(text.encode("utf-8", "replace"))
    rng = random.Random(seed)
    delay = rng.uniform(0.02, 0.12)
    if "[flaky]" in text:
        return Reply(status=500, error_message="upstream model overloaded", delay_s=delay)
    if body.get("tools") and not any(
        isinstance(m, dict) and m.get("role") == "tool" for m in messages
    ):
        city = "Paris" if "paris" in text.lower() else "Lisbon"
        return Reply(
            tool_calls=[{"name": "get_weather", "arguments": {"city": city}}], delay_s=delay
        )
    reply = demo_responder(body)
    return Reply(
        content=reply.content,
        delay_s=delay,
        chunk_delay_s=0.004 if body.get("stream") else 0.0,
        cached_tokens=rng.choice([0, 0, 8]),
    )


def _require_extras() -> None:
    try:
        import langchain_openai  # noqa: F401
        import langgraph  # noqa: F401
    except ImportError as exc:
        raise SystemExit(
            f"the demo needs LangChain, langchain-openai and LangGraph ({exc.name} is missing): "
            "pip install 'chainwatch[demo]'"
        ) from None


def run_demo(db: Path, *, quiet: bool = False) -> dict[str, Any]:
    """Run the workload into a fresh database at `db` and return its summary.

    Returns:
        ``{"db": path, "summary": Summary, "traces": int, "report": Report, "alerts": [...]}``.
    """
    _require_extras()
    from langchain_core.documents import Document
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.runnables import RunnableLambda, RunnablePassthrough
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from langgraph.prebuilt import create_react_agent
    from pydantic import SecretStr

    import chainwatch

    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)

    class NotesRetriever(BaseRetriever):
        """Word-overlap retrieval over a few notes."""

        def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
            words = set(query.lower().split())
            scored = sorted(
                NOTES, key=lambda note: -len(words & set(note[0].lower().split()))
            )
            return [Document(page_content=t, metadata={"id": i}) for t, i in scored[:2]]

    @tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return f"{city}: 18°C, light wind, 10% chance of rain"

    @tool
    def word_count(text: str) -> int:
        """Count the words of a text."""
        return len(text.split())

    from chainwatch.alerts import AlertHook, Rule
    from chainwatch.quality import QualityHook

    fired: list[str] = []
    alerting = AlertHook(
        [Rule("errors", "error_rate > 0.05", severity="warning",
              description="More than 5 % of model calls failed")],
        [lambda alerts: fired.extend(a.summary() for a in alerts)],
        min_interval_s=0.5,
    )
    handler = chainwatch.ChainWatchHandler(
        db, tags=["demo"], session_id="demo-session", hooks=[QualityHook(), alerting]
    )
    with FakeOpenAI(_responder) as server:
        key = SecretStr("sk-demo")
        model = ChatOpenAI(
            model="gpt-4o-mini", base_url=server.base_url, api_key=key, max_retries=0,
            stream_usage=True,
        )
        prompt = ChatPromptTemplate.from_messages(
            [
                ("system", "Answer using the context.\n\nContext:\n{context}"),
                ("human", "{question}"),
            ]
        )

        def format_docs(docs: list[Document]) -> str:
            return "\n".join(d.page_content for d in docs)

        rag = (
            {
                "context": NotesRetriever() | RunnableLambda(format_docs),
                "question": RunnablePassthrough(),
            }
            | prompt
            | model
            | StrOutputParser()
        ).with_config(run_name="rag_answer")
        config: Any = {"callbacks": [handler], "metadata": {"user_id": "demo-user"}}

        rag.invoke("Is SQLite a good place to keep traces?", config=config)
        counted = rag | RunnableLambda(lambda answer: word_count.invoke({"text": answer}))
        counted.with_config(run_name="rag_with_tool").invoke(
            "What are cached tokens?", config=config
        )
        "".join(rag.stream("What is time to first token?", config=config))

        agent = create_react_agent(
            ChatOpenAI(
                model="gpt-4o", base_url=server.base_url, api_key=key, max_retries=0
            ),
            [get_weather],
        )
        agent.invoke(
            {"messages": [("human", "What is the weather like in Paris?")]}, config=config
        )

        answers = rag.batch(
            QUESTIONS, config=config, return_exceptions=True, max_concurrency=4
        )
        failures = sum(isinstance(a, Exception) for a in answers)

        def broken_tool(_: Any) -> str:
            raise TimeoutError("search backend did not answer in 2s")

        try:
            (rag | RunnableLambda(broken_tool)).with_config(run_name="rag_then_search").invoke(
                "Which database does chainwatch use?", config=config
            )
        except TimeoutError:
            failures += 1
    handler.flush()
    chainwatch.alerts.evaluate(alerting.rules, alerting.notifiers, db=db, wait=True)
    summary = chainwatch.summary(window_minutes=None, db=db)
    count = len(chainwatch.traces(db=db, limit=None))
    report = chainwatch.report(db=db)
    if not quiet:
        print(f"chainwatch demo: {count} traces recorded ({failures} failed on purpose)")
        for line in fired:
            print(f"alert sent: {line}")
        print()
        print(report.to_text())
        print(f"\ndatabase: {db}")
        print(f"try:      sqlite3 {db} 'SELECT name, kind, duration_ms FROM spans LIMIT 10'")
        print(f"          chainwatch traces --db {db}")
        print(f"          chainwatch report --db {db} --html report.html")
    handler.shutdown()
    return {"db": db, "summary": summary, "traces": count, "report": report, "alerts": fired}
