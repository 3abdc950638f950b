"""What the read API returns: a trace as a span tree, a list of traces, a summary.

Each renders as text in a terminal (`str`) and as HTML in Jupyter (`_repr_html_`).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from .spans import Span


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f}s" if value >= 1000 else f"{value:.1f}ms"


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:.6f}".rstrip("0").rstrip(".")


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


class Trace:
    """One trace: its spans in start order, with the tree they form."""

    def __init__(self, spans: list[Span], events: list[dict[str, Any]] | None = None) -> None:
        if not spans:
            raise ValueError("a trace has at least one span")
        self.spans = spans
        self.events = events or []
        self.trace_id = spans[0].trace_id
        by_id = {s.span_id: s for s in spans}
        self._children: dict[str | None, list[Span]] = {}
        for span in spans:
            parent = span.parent_id if span.parent_id in by_id else None
            if span.span_id == self.trace_id:
                parent = None
            self._children.setdefault(parent, []).append(span)
        roots = self._children.get(None, [])
        self.root = next((s for s in roots if s.span_id == self.trace_id), roots[0])

    def children(self, span: Span | str) -> list[Span]:
        """Direct children of a span, by start time."""
        span_id = span if isinstance(span, str) else span.span_id
        return list(self._children.get(span_id, []))

    def walk(self) -> Iterator[tuple[int, Span]]:
        """Depth-first (depth, span) pairs from the root(s)."""
        stack = [(0, s) for s in reversed(self._children.get(None, []))]
        while stack:
            depth, span = stack.pop()
            yield depth, span
            for child in reversed(self._children.get(span.span_id, [])):
                stack.append((depth + 1, child))

    @property
    def status(self) -> str:
        """The root span's status."""
        return self.root.status

    @property
    def duration_ms(self) -> float:
        """The root span's duration."""
        return self.root.duration_ms

    def totals(self) -> dict[str, Any]:
        """Tokens and cost of the trace's model calls, each counted once."""
        counted = [s for s in self.spans if s.kind in ("llm", "embedding") and s.counts_usage]
        prompt = [s.prompt_tokens for s in counted if s.prompt_tokens is not None]
        completion = [s.completion_tokens for s in counted if s.completion_tokens is not None]
        costs = [s.cost_usd for s in counted if s.cost_usd is not None]
        return {
            "spans": len(self.spans),
            "llm_calls": sum(1 for s in self.spans if s.kind == "llm" and s.counts_usage),
            "prompt_tokens": sum(prompt) if prompt else None,
            "completion_tokens": sum(completion) if completion else None,
            "cost_usd": sum(costs) if costs else None,
        }

    def __len__(self) -> int:
        return len(self.spans)

    def __str__(self) -> str:
        lines = [
            f"trace {self.trace_id}  {self.root.name}  {self.status}  {_ms(self.duration_ms)}"
        ]
        for depth, span in self.walk():
            detail = [span.kind, _ms(span.duration_ms)]
            if span.total_tokens is not None:
                detail.append(f"{span.total_tokens} tok")
            if span.cost_usd is not None:
                detail.append(_usd(span.cost_usd))
            if span.model:
                detail.append(span.model)
            mark = "✗" if span.status == "error" else "•"
            line = f"{'  ' * depth}{mark} {span.name}  [{', '.join(detail)}]"
            if span.error:
                line += f"  {span.error[:120]}"
            lines.append(line)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Trace {self.trace_id} {self.root.name!r} spans={len(self.spans)}>"

    def _repr_html_(self) -> str:
        """A waterfall: nested spans, timing bars, tokens, cost; inputs/outputs expandable."""
        t0 = datetime.fromisoformat(min(s.start_time for s in self.spans))
        total = max(self.duration_ms, 1e-6)
        rows = []
        for depth, span in self.walk():
            offset = (datetime.fromisoformat(span.start_time) - t0).total_seconds() * 1000
            left = max(0.0, min(100.0, offset / total * 100))
            width = max(0.5, min(100.0 - left, span.duration_ms / total * 100))
            colour = "#d9534f" if span.status == "error" else _KIND_COLOURS.get(span.kind,
                                                                                "#5b8def")
            detail = (
                f"<details><summary>{html.escape(span.name)}</summary>"
                f"<pre>inputs: {html.escape(_preview(span.inputs))}</pre>"
                f"<pre>outputs: {html.escape(_preview(span.outputs))}</pre></details>"
            )
            error = f"<span class='cw-err'>{html.escape(span.error)}</span>" if span.error else ""
            rows.append(
                f"<tr><td style='padding-left:{depth * 16 + 4}px'>{detail}</td>"
                f"<td>{span.kind}</td><td>{_ms(span.duration_ms)}</td>"
                f"<td>{_num(span.total_tokens)}</td><td>{_usd(span.cost_usd)}</td>"
                f"<td class='cw-bar'><div style='margin-left:{left:.1f}%;width:{width:.1f}%;"
                f"background:{colour}'></div></td><td>{error}</td></tr>"
            )
        title = html.escape(f"trace {self.trace_id}: {self.root.name} ({self.status}, "
                            f"{_ms(self.duration_ms)})")
        return (
            f"<div class='cw-trace' id='trace-{html.escape(self.trace_id)}'>{_TRACE_CSS}"
            f"<b>{title}</b><table><tr><th>span</th><th>kind</th><th>time</th><th>tokens</th>"
            "<th>cost</th><th style='width:35%'>timeline</th><th>error</th></tr>"
            + "".join(rows) + "</table></div>"
        )

    def to_pandas(self) -> Any:
        """The spans as a pandas DataFrame (the `notebook` extra)."""
        return _dataframe([s.to_dict() for s in self.spans],
                          columns=Span.fields)


_KIND_COLOURS = {"llm": "#8e6bd8", "retriever": "#2a9d8f", "tool": "#e0a030",
                 "embedding": "#4aa3df", "evaluator": "#999999"}
_TRACE_CSS = (
    "<style>.cw-trace table{border-collapse:collapse}.cw-trace td,.cw-trace th{padding:2px 8px;"
    "border-bottom:1px solid #eee;text-align:left;vertical-align:top}.cw-bar div{height:10px}"
    ".cw-err{color:#b52a2a}.cw-trace pre{white-space:pre-wrap;max-width:60em;margin:2px 0}"
    "</style>"
)
_SORT_JS = (
    "<script>function cwSort(th,i){var t=th.closest('table'),rows=Array.from(t.rows).slice(1),"
    "asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';rows.sort(function(a,b){"
    "var x=a.cells[i].dataset.v,y=b.cells[i].dataset.v,nx=parseFloat(x),ny=parseFloat(y);"
    "var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return asc?c:-c});"
    "rows.forEach(function(r){t.appendChild(r)})}</script>"
)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _preview(value: Any, limit: int = 2000) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=1)
    return text if len(text) <= limit else text[:limit] + "…"


TRACE_COLUMNS = (
    "trace_id", "name", "kind", "framework", "status", "error", "start_time", "end_time",
    "duration_ms", "span_count", "llm_calls", "error_spans", "prompt_tokens",
    "completion_tokens", "total_tokens", "cost_usd", "unpriced_calls", "user_id", "session_id",
    "tags",
)


def _dataframe(rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None) -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("to_pandas() needs pandas: pip install 'chainwatch[notebook]'") from None
    if not rows and columns:
        return pd.DataFrame(columns=list(columns))
    return pd.DataFrame(rows)


class TraceList(list[dict[str, Any]]):
    """Rows of the `traces` query: one dict per trace, newest first."""

    _COLUMNS = ("trace_id", "name", "status", "start_time", "duration_ms", "span_count",
                "llm_calls", "total_tokens", "cost_usd")

    def __str__(self) -> str:
        if not self:
            return "no traces"
        lines = []
        for row in self:
            lines.append(
                f"{row['trace_id']}  {row['start_time'][:19]}  {row['status']:<5}  "
                f"{_ms(row['duration_ms']):>9}  spans={row['span_count']:<4} "
                f"tokens={_num(row['total_tokens'])}  cost={_usd(row['cost_usd'])}  {row['name']}"
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """A table sortable by clicking a column header."""
        head = "".join(
            f"<th onclick='cwSort(this,{i})' style='cursor:pointer'>{c}</th>"
            for i, c in enumerate(self._COLUMNS)
        )
        body = "".join(
            "<tr>" + "".join(
                f"<td data-v='{html.escape(str(r.get(c)))}'>{html.escape(_cell(r.get(c)))}</td>"
                for c in self._COLUMNS
            ) + "</tr>"
            for r in self
        )
        return f"{_SORT_JS}<table class='cw-traces'><tr>{head}</tr>{body}</table>"

    def to_pandas(self) -> Any:
        """The rows as a pandas DataFrame (the `notebook` extra); columns even when empty."""
        return _dataframe([dict(r) for r in self], columns=TRACE_COLUMNS)


class Summary(dict[str, Any]):
    """The seed's summary of model calls in a window (a dict, readable when printed)."""

    def __str__(self) -> str:
        unpriced = f"  ({self['unpriced_calls']} calls unpriced)" if self["unpriced_calls"] else ""
        return "\n".join(
            [
                f"LLM calls          {self['count']}",
                f"latency p50/95/99  {_ms(self['latency_p50_ms'])} / "
                f"{_ms(self['latency_p95_ms'])} / {_ms(self['latency_p99_ms'])}",
                f"avg tokens         {_num(self['avg_tokens'])}",
                f"total cost         {_usd(self['total_cost_usd'])}" + unpriced,
                "error rate         "
                + ("-" if self["error_rate"] is None else f"{self['error_rate']:.1%}")
                + f"  ({self['errors']} errors)",
            ]
        )

    def _repr_html_(self) -> str:
        return "<pre>" + html.escape(str(self)) + "</pre>"
