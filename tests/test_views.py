"""Trace views: the waterfall, the span tree as text, sortable trace lists, and `to_pandas()`.

A hand-recorded trace with exact times checks the waterfall's nesting and bars to the pixel; a
real LangChain run (retriever, model, a failing step) checks the views against plain SQL.
"""

from __future__ import annotations

import dataclasses
import html
import pickle
import re
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda, RunnablePassthrough

import chainwatch
from chainwatch import ChainWatchHandler, Span, Trace, TraceList, Usage

MS = 1_000_000
SECOND = 1_000 * MS
T0 = 1_780_000_000 * SECOND  # 2026-05-28T20:26:40Z
PRICES = {"house-mini": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}
ERROR = "TimeoutError: slow <backend> & friends"


class Clock:
    def __init__(self, now_ns: int) -> None:
        self.now = now_ns

    def __call__(self) -> int:
        return self.now


class ClockedChatModel(BaseChatModel):
    """Answers after `latency_ms` on the clock, with token usage."""

    model: str = "house-mini"
    latency_ms: float = 300.0
    clock: Any = None

    @property
    def _llm_type(self) -> str:
        return "clocked"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self.clock.now += int(self.latency_ms * MS)
        message = AIMessage(
            content="SQLite keeps the whole database in one file.",
            usage_metadata={"input_tokens": 90, "output_tokens": 12, "total_tokens": 102},
            response_metadata={"model_name": self.model},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


class NotesRetriever(BaseRetriever):
    clock: Any = None

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        self.clock.now += 40 * MS
        return [Document(page_content="SQLite keeps a database in one file.")]


# -- recorded traces ----------------------------------------------------------------------------


@dataclass
class Recorded:
    db: Path
    manual: str
    manual_ids: dict[str, str]
    langchain: str
    ok: str


def _record_manual(handler: ChainWatchHandler) -> tuple[str, dict[str, str]]:
    """root 0-1000 ms > search 0-250, answer 250-750 > inner 300-700, notify 750-1000 (fails)."""
    rec = handler.recorder
    ids = {k: str(uuid.uuid4()) for k in ("root", "search", "answer", "inner", "notify")}

    def at(ms: int) -> int:
        return T0 + ms * MS

    rec.start(ids["root"], None, "pipeline <v2>", "chain", "manual", {"question": "Q?"},
              start_ns=at(0))
    rec.start(ids["search"], ids["root"], "search & rank", "retriever", "manual",
              "What is <b>bold</b>?", start_ns=at(0))
    rec.end(ids["search"], [{"content": "doc one"}], end_ns=at(250))
    answer = rec.start(ids["answer"], ids["root"], "answer", "llm", "manual",
                       "What is <b>bold</b>?", start_ns=at(250))
    answer.model = "house-mini"
    answer.usage = Usage(prompt_tokens=120, completion_tokens=30)
    inner = rec.start(ids["inner"], ids["answer"], "answer.inner", "llm", "manual", "again",
                      start_ns=at(300))
    inner.model = "house-mini"
    inner.usage = Usage(prompt_tokens=120, completion_tokens=30)
    rec.end(ids["inner"], "inner text", end_ns=at(700))
    rec.end(ids["answer"], "Bold text is <b>heavier</b>.", end_ns=at(750))
    rec.start(ids["notify"], ids["root"], "notify", "tool", "manual", {"to": "ops"},
              start_ns=at(750))
    rec.end(ids["notify"], error=ERROR, end_ns=at(1000))
    rec.end(ids["root"], error=ERROR, end_ns=at(1000))
    return ids["root"], ids


def _fail(_: Any) -> str:
    raise TimeoutError("search backend did not answer in 2s")


@pytest.fixture
def recorded(db_path: Path) -> Iterator[Recorded]:
    clock = Clock(T0 + 10 * SECOND)
    handler = ChainWatchHandler(db_path, clock=clock, prices=PRICES, hooks=[])
    manual, manual_ids = _record_manual(handler)
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Context: {context}"), ("human", "{question}")]
    )
    rag = (
        {"context": NotesRetriever(clock=clock), "question": RunnablePassthrough()}
        | prompt | ClockedChatModel(clock=clock) | StrOutputParser()
    )
    ok = uuid.uuid4()
    clock.now += SECOND
    rag.with_config(run_name="rag").invoke("Where is the data?",
                                           config={"callbacks": [handler], "run_id": ok})
    failing = uuid.uuid4()
    clock.now += SECOND
    with pytest.raises(TimeoutError):
        (rag | RunnableLambda(_fail)).with_config(run_name="rag_then_search").invoke(
            "Where is the data?", config={"callbacks": [handler], "run_id": failing}
        )
    assert handler.flush()
    yield Recorded(db_path, manual, manual_ids, str(failing), str(ok))
    handler.shutdown()


def span_rows(db: Path, trace_id: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(
            "SELECT * FROM spans WHERE trace_id = ? ORDER BY start_time, rowid", [trace_id])]
    finally:
        conn.close()


def depths(spans: list[dict[str, Any]]) -> dict[str, int]:
    parent = {s["span_id"]: s["parent_id"] for s in spans}
    out = {}
    for span_id in parent:
        depth, at = 0, parent[span_id]
        while at in parent:
            depth, at = depth + 1, parent[at]
        out[span_id] = depth
    return out


# -- parsing the HTML ---------------------------------------------------------------------------


@dataclass
class Cell:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    tags: list[tuple[str, dict[str, str]]] = dataclasses.field(default_factory=list)


class Table(HTMLParser):
    """The rows of the first table: header cells and body cells, with attributes and text."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.header: list[Cell] = []
        self.rows: list[list[Cell]] = []
        self.scripts: list[str] = []
        self._row: list[Cell] | None = None
        self._cell: Cell | None = None
        self._script = False
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "script":
            self._script = True
            self.scripts.append("")
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = Cell(tag, values)
            self._row.append(self._cell)
        elif self._cell is not None:
            self._cell.tags.append((tag, values))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = False
        elif tag in ("td", "th"):
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row and all(c.tag == "th" for c in self._row):
                self.header = self._row
            else:
                self.rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._script:
            self.scripts[-1] += data
        elif self._cell is not None:
            self._cell.text += data


# -- the waterfall ------------------------------------------------------------------------------


def test_waterfall_has_one_row_per_span_nested_in_tree_order(recorded: Recorded) -> None:
    trace = chainwatch.trace(recorded.manual, db=recorded.db)
    table = Table(trace._repr_html_())
    assert [c.text for c in table.header] == ["span", "kind", "time", "tokens", "cost",
                                              "timeline", "error"]
    ids = recorded.manual_ids
    expected = [  # name, kind, depth, time, tokens, cost, bar left %, bar width %
        ("pipeline <v2>", "chain", 0, "1.00s", "-", "-", 0.0, 100.0),
        ("search & rank", "retriever", 1, "250.0ms", "-", "-", 0.0, 25.0),
        ("answer", "llm", 1, "500.0ms", "150", "$0.00018", 25.0, 50.0),
        ("answer.inner", "llm", 2, "400.0ms", "150", "-", 30.0, 40.0),
        ("notify", "tool", 1, "250.0ms", "-", "-", 75.0, 25.0),
    ]
    assert len(table.rows) == len(trace.spans) == len(ids) == len(expected)
    for row, (name, kind, depth, took, tokens, cost, left, width) in zip(
        table.rows, expected, strict=True
    ):
        span_cell, kind_cell, time_cell, tokens_cell, cost_cell, bar_cell, _ = row
        assert span_cell.attrs["style"] == f"padding-left:{depth * 16 + 4}px"
        assert span_cell.text.startswith(name)
        assert (kind_cell.text, time_cell.text, tokens_cell.text, cost_cell.text) == (
            kind, took, tokens, cost)
        [(tag, attrs)] = bar_cell.tags
        assert tag == "div"
        assert f"margin-left:{left:.1f}%;width:{width:.1f}%;" in attrs["style"]


def test_waterfall_shows_errors_and_escapes_everything(recorded: Recorded) -> None:
    trace = chainwatch.trace(recorded.manual, db=recorded.db)
    page = trace._repr_html_()
    table = Table(page)
    errors = {row[0].text.split("inputs:")[0]: row[-1] for row in table.rows}
    assert errors["notify"].text == ERROR
    assert errors["notify"].tags == [("span", {"class": "cw-err"})]
    assert errors["pipeline <v2>"].text == ERROR
    assert errors["answer"].text == ""
    failed_bars = [row[5].tags[0][1]["style"] for row in table.rows if row[-1].text]
    assert all("background:#d9534f" in style for style in failed_bars) and len(failed_bars) == 2
    assert html.escape(ERROR) in page
    for raw in ("<b>bold</b>", "<v2>", "<backend>", "search & rank"):
        assert raw not in page


def test_waterfall_inputs_and_outputs_are_expandable(recorded: Recorded) -> None:
    trace = chainwatch.trace(recorded.manual, db=recorded.db)
    table = Table(trace._repr_html_())
    for row, span in zip(table.rows, list(s for _, s in trace.walk()), strict=True):
        cell = row[0]
        assert [t for t, _ in cell.tags][:1] == ["details"]
        assert ("summary", {}) in cell.tags
        assert sum(1 for t, _ in cell.tags if t == "pre") == 2
        assert "inputs: " in cell.text and "outputs: " in cell.text
        assert cell.text.startswith(span.name)
    answer = next(r for r in table.rows if r[0].text.startswith("answer"))
    assert "inputs: What is <b>bold</b>?" in answer[0].text
    assert "outputs: Bold text is <b>heavier</b>." in answer[0].text


def test_waterfall_of_a_langchain_run_matches_sql(recorded: Recorded) -> None:
    trace = chainwatch.trace(recorded.langchain, db=recorded.db)
    spans = span_rows(recorded.db, recorded.langchain)
    depth = depths(spans)
    table = Table(trace._repr_html_())
    assert len(table.rows) == len(spans)
    walked = [s for _, s in trace.walk()]
    assert sorted(s.span_id for s in walked) == sorted(s["span_id"] for s in spans)
    for row, span in zip(table.rows, walked, strict=True):
        assert row[0].attrs["style"] == f"padding-left:{depth[span.span_id] * 16 + 4}px"
        assert row[1].text == span.kind
    kinds = [row[1].text for row in table.rows]
    assert {"chain", "retriever", "prompt", "llm", "parser"} <= set(kinds)
    failed = [row for row in table.rows if row[-1].text]
    assert {row[-1].text for row in failed} == {
        "TimeoutError: search backend did not answer in 2s"}
    assert len(failed) == sum(1 for s in spans if s["status"] == "error")
    assert f"id='trace-{recorded.langchain}'" in trace._repr_html_()


# -- the span tree as text ----------------------------------------------------------------------


def test_trace_text_is_an_indented_tree(recorded: Recorded) -> None:
    trace = chainwatch.trace(recorded.manual, db=recorded.db)
    assert str(trace).splitlines() == [
        f"trace {recorded.manual}  pipeline <v2>  error  1.00s",
        f"✗ pipeline <v2>  [chain, 1.00s]  {ERROR}",
        "  • search & rank  [retriever, 250.0ms]",
        "  • answer  [llm, 500.0ms, 150 tok, $0.00018, house-mini]",
        "    • answer.inner  [llm, 400.0ms, 150 tok, house-mini]",
        f"  ✗ notify  [tool, 250.0ms]  {ERROR}",
    ]
    assert repr(trace) == f"<Trace {recorded.manual} 'pipeline <v2>' spans=5>"
    assert trace.totals() == {"spans": 5, "llm_calls": 1, "prompt_tokens": 120,
                              "completion_tokens": 30, "cost_usd": pytest.approx(0.00018)}


def test_trace_text_of_a_langchain_run_matches_sql(recorded: Recorded) -> None:
    trace = chainwatch.trace(recorded.langchain, db=recorded.db)
    spans = {s["span_id"]: s for s in span_rows(recorded.db, recorded.langchain)}
    depth = depths(list(spans.values()))
    lines = str(trace).splitlines()
    assert lines[0].startswith(f"trace {recorded.langchain}  rag_then_search  error  ")
    assert len(lines) == 1 + len(spans)
    for line, (_, span) in zip(lines[1:], trace.walk(), strict=True):
        row = spans[span.span_id]
        mark = "✗" if row["status"] == "error" else "•"
        assert line.startswith("  " * depth[span.span_id] + f"{mark} {row['name']}  [")


def test_a_span_id_finds_its_whole_trace(recorded: Recorded) -> None:
    by_span = chainwatch.trace(recorded.manual_ids["inner"], db=recorded.db)
    assert by_span.trace_id == recorded.manual
    assert len(by_span) == 5
    with pytest.raises(LookupError):
        chainwatch.trace("no-such-id", db=recorded.db)


# -- trace lists --------------------------------------------------------------------------------


def test_trace_list_renders_a_sortable_table(recorded: Recorded) -> None:
    listing = chainwatch.traces(db=recorded.db)
    assert isinstance(listing, TraceList)
    assert [r["trace_id"] for r in listing] == [recorded.langchain, recorded.ok, recorded.manual]
    table = Table(listing._repr_html_())
    columns = list(TraceList._COLUMNS)
    assert [c.text for c in table.header] == columns
    for i, cell in enumerate(table.header):
        assert cell.attrs["onclick"] == f"cwSort(this,{i})"
        assert "cursor:pointer" in cell.attrs["style"]
    assert len(table.scripts) == 1 and "function cwSort(th,i)" in table.scripts[0]
    assert len(table.rows) == len(listing) == 3
    for row, data in zip(table.rows, listing, strict=True):
        assert [c.attrs["data-v"] for c in row] == [str(data[c]) for c in columns]
    first = table.rows[0]
    assert first[columns.index("status")].text == "error"
    assert first[columns.index("name")].text == "rag_then_search"


def test_trace_list_filters_and_text(recorded: Recorded) -> None:
    failed = chainwatch.traces(db=recorded.db, status="error")
    assert [r["trace_id"] for r in failed] == [recorded.langchain, recorded.manual]
    lines = str(failed).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{recorded.langchain}  ") and lines[0].endswith("rag_then_search")
    assert "error" in lines[1] and "tokens=150" in lines[1] and "cost=$0.00018" in lines[1]
    assert str(chainwatch.traces(db=recorded.db, name="nothing")) == "no traces"


def test_trace_list_totals_count_each_call_once(recorded: Recorded) -> None:
    [manual] = [r for r in chainwatch.traces(db=recorded.db) if r["trace_id"] == recorded.manual]
    assert manual["llm_calls"] == 1  # answer.inner is the same call, seen twice
    assert manual["total_tokens"] == 150
    assert manual["cost_usd"] == pytest.approx(0.00018)
    assert manual["span_count"] == 5


# -- to_pandas ----------------------------------------------------------------------------------


def test_trace_to_pandas_has_one_row_per_span(recorded: Recorded) -> None:
    trace = chainwatch.trace(recorded.langchain, db=recorded.db)
    frame = trace.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == list(Span.fields)
    spans = span_rows(recorded.db, recorded.langchain)
    assert len(frame) == len(spans)
    assert list(frame["span_id"]) == [s["span_id"] for s in spans]
    assert list(frame["duration_ms"]) == [s["duration_ms"] for s in spans]
    llm = frame[frame["kind"] == "llm"]
    assert list(llm["total_tokens"]) == [102]
    assert frame["status"].value_counts().to_dict()["error"] == sum(
        1 for s in spans if s["status"] == "error")


def test_trace_list_to_pandas_has_one_row_per_trace(recorded: Recorded) -> None:
    listing = chainwatch.traces(db=recorded.db)
    frame = listing.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == list(listing[0].keys())
    assert set(TraceList._COLUMNS) <= set(frame.columns)
    assert list(frame["trace_id"]) == [recorded.langchain, recorded.ok, recorded.manual]
    assert list(frame["status"]) == ["error", "ok", "error"]
    assert frame.loc[frame["trace_id"] == recorded.manual, "total_tokens"].item() == 150


def test_an_empty_trace_list_keeps_its_columns(recorded: Recorded) -> None:
    """`traces(...).to_pandas()` has the same columns whether or not anything matched.

    Found by this test: an empty list gives a DataFrame with no columns at all, so code such as
    ``traces(status="error").to_pandas()["cost_usd"].sum()`` raises KeyError when nothing failed.
    """
    columns = list(chainwatch.traces(db=recorded.db).to_pandas().columns)
    empty = chainwatch.traces(db=recorded.db, name="nothing")
    assert len(empty) == 0
    assert list(empty.to_pandas().columns) == columns
    assert Table(empty._repr_html_()).rows == []


def test_to_pandas_without_pandas_names_the_extra(
    recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'chainwatch[notebook]'")):
        chainwatch.traces(db=recorded.db).to_pandas()
    with pytest.raises(ImportError, match="chainwatch\\[notebook\\]"):
        chainwatch.trace(recorded.manual, db=recorded.db).to_pandas()


def test_trace_needs_spans() -> None:
    with pytest.raises(ValueError):
        Trace([])


def test_stored_spans_are_read_only_and_decode_json_on_first_read(recorded: Recorded) -> None:
    trace = chainwatch.trace(recorded.manual, db=recorded.db)
    span = trace.spans[0]
    assert span.to_dict() == {name: getattr(span, name) for name in Span.fields}
    with pytest.raises(AttributeError):
        span.name = "renamed"  # type: ignore[misc]
    again = chainwatch.trace(recorded.manual, db=recorded.db).spans[0]
    assert again == span and again is not span
    assert pickle.loads(pickle.dumps(span)) == span
    assert repr(span).startswith(f"Span(span_id={span.span_id!r}, trace_id=")
    # Built by hand, a span takes its fields by position or name, with the table's defaults.
    made = Span(*(getattr(span, f) for f in Span.fields[:-3]))
    assert made.counts_usage == 1 and made.cost_note is None
    with pytest.raises(TypeError, match="missing"):
        Span(span_id="s")
    with pytest.raises(TypeError, match="no field"):
        Span(*(getattr(span, f) for f in Span.fields), colour="red")
