"""Rendering a report: terminal text, markdown, and one self-contained HTML page."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

from . import charts
from .report_models import Breakdown, ReportData, TraceRow


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def _usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:,.2f}" if value >= 100 else f"${value:.6f}".rstrip("0").rstrip(".")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def _summary_rows(d: ReportData) -> list[tuple[str, str]]:
    s = d.summary
    cost = _usd(s.total_cost_usd)
    if s.unpriced_calls:
        cost += f" ({s.unpriced_calls} calls unpriced)"
    return [
        ("traces", _num(s.traces)),
        ("LLM calls", _num(s.llm_calls)),
        ("latency p50 / p95 / p99",
         f"{_ms(s.latency_p50_ms)} / {_ms(s.latency_p95_ms)} / {_ms(s.latency_p99_ms)}"),
        ("time to first token p50 / p95", f"{_ms(s.ttft_p50_ms)} / {_ms(s.ttft_p95_ms)}"),
        ("tokens avg / total", f"{_num(s.avg_tokens)} / {_num(s.total_tokens)}"),
        ("total cost", cost),
        ("error rate (calls)", f"{_pct(s.error_rate)} ({s.errors} errors)"),
        ("failed traces", _pct(s.trace_error_rate)),
    ]


def _breakdown_rows(items: list[Breakdown]) -> list[list[str]]:
    return [[b.key, _num(b.calls), _num(b.total_tokens), _usd(b.cost_usd),
             _ms(b.latency_p95_ms), _num(b.errors)] for b in items]


_BREAKDOWN_HEAD = ["", "calls", "tokens", "cost", "p95 latency", "errors"]
_TRACE_HEAD = ["trace", "name", "status", "started", "duration", "tokens", "cost"]


def _trace_rows(items: list[TraceRow]) -> list[list[str]]:
    return [[t.trace_id, t.name, t.status, t.start_time[:19], _ms(t.duration_ms),
             _num(t.total_tokens), _usd(t.cost_usd)] for t in items]


def _quality_rows(d: ReportData) -> list[tuple[str, str]]:
    q = d.quality
    if q is None:
        return []
    rows = [("answers analysed", _num(q.answers)), ("refusal rate", _pct(q.refusal_rate)),
            ("hedging rate", _pct(q.hedging_rate)),
            ("avg sentiment", "-" if q.avg_sentiment is None else f"{q.avg_sentiment:+.2f}"),
            ("avg groundedness", "-" if q.avg_groundedness is None
             else f"{q.avg_groundedness:.2f}")]
    rows += [(f"judge: {k}", "-" if v is None else f"{v:.2f}") for k, v in q.judge_scores.items()]
    if q.feedback_count:
        rows.append(("feedback", f"{q.feedback_count} scores, avg {q.avg_feedback:.2f}"))
    return rows


def _sections(d: ReportData) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table section that has data."""
    out: list[tuple[str, list[str], list[list[str]]]] = []
    if d.by_model:
        out.append(("Cost and tokens by model", _BREAKDOWN_HEAD, _breakdown_rows(d.by_model)))
    if d.by_chain:
        out.append(("Cost and tokens by chain", _BREAKDOWN_HEAD, _breakdown_rows(d.by_chain)))
    if d.slowest:
        out.append(("Slowest traces", _TRACE_HEAD, _trace_rows(d.slowest)))
    if d.most_expensive:
        out.append(("Most expensive traces", _TRACE_HEAD, _trace_rows(d.most_expensive)))
    if d.failed:
        out.append(("Failed traces", _TRACE_HEAD + ["error"],
                    [r + [(t.error or "")[:80]] for r, t in zip(_trace_rows(d.failed), d.failed,
                                                                 strict=True)]))
    if d.errors:
        out.append(("Errors by type", ["type", "count", "example"],
                    [[e.type, str(e.count), e.example[:100]] for e in d.errors]))
    quality = _quality_rows(d)
    if quality:
        out.append(("Quality", ["", ""], [list(r) for r in quality]))
    if d.drift is not None:
        out.append(("Drift", ["baseline", "checked", "status", "drifted"],
                    [[d.drift.baseline, d.drift.created_at[:19], d.drift.status,
                      ", ".join(d.drift.drifted) or "-"]]))
    if d.alerts:
        out.append(("Alerts", ["rule", "labels", "severity", "state", "fired", "value"],
                    [[a.rule, json.dumps(a.labels), a.severity, a.state,
                      (a.fired_at or "")[:19], _num(a.value)] for a in d.alerts]))
    return out


def _cut(line: str, width: int) -> str:
    line = line.rstrip()
    return line if len(line) <= width else line[: max(1, width - 1)].rstrip() + "…"


def _table_text(head: list[str], rows: list[list[str]], width: int) -> list[str]:
    """Aligned columns; columns that do not fit are left out whole, never cut mid-number."""
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    keep = len(widths)
    while keep > 1 and sum(widths[:keep]) + 2 * (keep - 1) > width:
        keep -= 1
    lines = []
    for row in [head, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row[:keep], widths[:keep], strict=True)]
        lines.append(_cut("  ".join(cells), width))
    return lines


def to_text(d: ReportData, width: int | None = None) -> str:
    """The report for a terminal, cut to its width."""
    width = width or shutil.get_terminal_size((100, 24)).columns
    lines = [_cut(f"chainwatch report: {d.scope.description}", width),
             _cut(f"database: {d.scope.db}", width), ""]
    lines += _table_text(["summary", ""], [list(r) for r in _summary_rows(d)], width)
    for title, head, rows in _sections(d):
        lines += ["", title]
        lines += _table_text(head, rows, width)
    return "\n".join(lines)


def to_markdown(d: ReportData) -> str:
    """The report as GitHub-flavoured markdown."""

    def table(head: list[str], rows: list[list[str]]) -> list[str]:
        def cell(value: str) -> str:
            return value.replace("|", "\\|").replace("\n", " ")

        return ["| " + " | ".join(cell(h) or " " for h in head) + " |",
                "|" + "---|" * len(head),
                *("| " + " | ".join(cell(c) for c in r) + " |" for r in rows)]

    lines = ["# chainwatch report", "", f"Scope: {d.scope.description}", ""]
    lines += table(["summary", ""], [list(r) for r in _summary_rows(d)])
    for title, head, rows in _sections(d):
        lines += ["", f"## {title}", ""]
        lines += table(head, rows)
    return "\n".join(lines) + "\n"


_PAGE_CSS = "body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em;color:#222}"
_CSS = """
.cw-report{font-family:system-ui,-apple-system,Segoe UI,sans-serif;color:#222}
.cw-report table{border-collapse:collapse;margin:.4em 0 1.2em}
.cw-report th,.cw-report td{border-bottom:1px solid #ddd;padding:3px 10px;text-align:left}
.cw-report th{background:#f4f6fa}
.cw-report h2{font-size:1.1em;margin:1.2em 0 .3em}
.cw-report .err{color:#b52a2a}
.cw-report img{max-width:100%;margin:.3em 0}
"""


def to_html(
    d: ReportData, *, full_page: bool = False, trace_links: bool = True,
    traces: dict[str, Any] | None = None,
) -> str:
    """HTML with inline CSS and embedded PNG charts: one file that works offline."""
    parts = ['<div class="cw-report">', "<h1>chainwatch report</h1>",
             f"<p>Scope: {html.escape(d.scope.description)}<br>Database: "
             f"{html.escape(d.scope.db)}</p>", _html_table(["summary", ""],
                                                          [list(r) for r in _summary_rows(d)])]
    images = [
        charts.latency_histogram(d.series.latencies_ms),
        charts.cost_by_model([b.key for b in d.by_model if b.cost_usd],
                             [b.cost_usd or 0.0 for b in d.by_model if b.cost_usd]),
        charts.over_time(d.series.times, d.series.tokens, d.series.durations_ms),
    ]
    shown = [i for i in images if i]
    if shown:
        parts.append("<h2>Charts</h2>")
        parts += [f'<img alt="chart" src="{src}">' for src in shown]
    for title, head, rows in _sections(d):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if trace_links and head and head[0] == "trace":
            rows = [[f'<a href="#trace-{html.escape(r[0])}" title="chainwatch.trace(\'{r[0]}\')">'
                     f"{html.escape(r[0])}</a>", *(html.escape(c) for c in r[1:])] for r in rows]
            parts.append(_html_table(head, rows, escaped=True))
        else:
            parts.append(_html_table(head, rows))
    if traces:
        parts.append("<h2>Trace views</h2>")
        for trace_id, trace in traces.items():
            parts.append(f"<details><summary>"
                         f"{html.escape(trace_id)} {html.escape(trace.root.name)}</summary>"
                         f"{trace._repr_html_()}</details>")
    parts.append("</div>")
    body = "\n".join(parts)
    if not full_page:
        return f"<style>{_CSS}</style>{body}"
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>chainwatch report"
            f"</title><style>{_PAGE_CSS}{_CSS}</style></head><body>{body}</body></html>")


def _html_table(head: list[str], rows: list[list[str]], *, escaped: bool = False) -> str:
    def cell(value: str) -> str:
        return value if escaped else html.escape(value)

    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{header}</tr>{body}</table>"


def save(d: ReportData, path: str | Path, traces: dict[str, Any] | None = None) -> Path:
    """Write the report: .html (self-contained), .md, or .json, by the file's suffix."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix in (".html", ".htm"):
        target.write_text(to_html(d, full_page=True, traces=traces), encoding="utf-8")
    elif suffix in (".md", ".markdown"):
        target.write_text(to_markdown(d), encoding="utf-8")
    elif suffix == ".json":
        target.write_text(d.model_dump_json(indent=2), encoding="utf-8")
    else:
        raise ValueError(f"save a report as .html, .md or .json, not {suffix or 'no suffix'!r}")
    return target


class Report:
    """A report: HTML in Jupyter, text in a terminal, markdown, a dict, or a saved file."""

    def __init__(self, data: ReportData, traces: dict[str, Any] | None = None) -> None:
        self.data = data
        self.traces = traces or {}

    def __str__(self) -> str:
        return to_text(self.data)

    def __repr__(self) -> str:
        s = self.data.summary
        return f"<Report {s.traces} traces, {s.llm_calls} LLM calls: {self.data.scope.description}>"

    def _repr_html_(self) -> str:
        return to_html(self.data, traces=self.traces)

    def to_text(self, width: int | None = None) -> str:
        """Plain text, cut to `width` columns (default: the terminal's)."""
        return to_text(self.data, width)

    def to_markdown(self) -> str:
        """Markdown tables."""
        return to_markdown(self.data)

    def to_html(self) -> str:
        """A complete, self-contained HTML page."""
        return to_html(self.data, full_page=True, traces=self.traces)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable values (the pydantic models dumped)."""
        return self.data.model_dump(mode="json")

    def save(self, path: str | Path) -> Path:
        """Write .html, .md or .json by the file's suffix."""
        return save(self.data, path, self.traces)
