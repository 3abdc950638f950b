"""Read-side speed: `chainwatch.report()` over 1,000,000 spans and `chainwatch.trace()` of 500.

Builds a database of 100,000 traces of 10 spans each (a chain, a retriever, a prompt, two model
calls, a tool, a parser, ...), with quality rows for the answers, through the store's own row
builder, then times the read API. Baseline in the same run: a plain `SELECT COUNT(*), SUM(...)`
over the same spans, the least any report must do.

    python benchmarks/bench_report.py [--traces 100000] [--keep DB]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import chainwatch
from chainwatch.spans import SpanRecord, Usage
from chainwatch.store import database
from chainwatch.store.rows import SPAN_INSERT, RowSettings, span_row

KINDS = ["chain", "retriever", "prompt", "llm", "parser", "tool", "chain", "llm", "chain", "parser"]
MODELS = ["gpt-4o-mini", "gpt-4o", "claude-3-5-sonnet-latest"]
QUALITY = (
    "INSERT INTO quality (span_id, trace_id, has_refusal, has_hedging, sentiment_score, "
    "response_length, analyzed_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def build(path: Path, traces: int, spans_per_trace: int = 10, seed: int = 7) -> int:
    rng = random.Random(seed)
    db = database.connect(path)
    conn = db.conn
    settings = RowSettings()
    start = time.time_ns() - traces * 50_000_000
    count = 0
    conn.execute("BEGIN")
    for t in range(traces):
        trace_id = f"trace-{t:07d}"
        base = start + t * 50_000_000
        rows, quality = [], []
        for i in range(spans_per_trace):
            kind = KINDS[i % len(KINDS)]
            span_id = trace_id if i == 0 else f"{trace_id}-{i:03d}"
            rec = SpanRecord(span_id, trace_id, None if i == 0 else trace_id,
                             f"step_{kind}" if i else f"chain_{t % 7}", kind, "langchain",
                             base + i * 1_000_000, inputs={"q": "question"},
                             outputs={"a": "answer"}, tags=["bench"])
            duration = rng.lognormvariate(6.5, 0.6) if kind == "llm" else rng.uniform(1, 20)
            rec.end_ns = rec.start_ns + int(duration * 1_000_000)
            if i == 0:
                rec.end_ns = base + 45_000_000
                rec.status = "error" if rng.random() < 0.03 else "ok"
            if kind == "llm":
                rec.model = MODELS[rng.randrange(len(MODELS))]
                rec.provider = "openai" if rec.model.startswith("gpt") else "anthropic"
                prompt, completion = rng.randint(50, 800), rng.randint(20, 400)
                rec.usage = Usage(prompt, completion, prompt + completion, 0, 0, "bench")
                quality.append((span_id, trace_id, int(rng.random() < 0.03),
                                int(rng.random() < 0.1), rng.uniform(-1, 1),
                                rng.randint(50, 2000), "2026-11-27T00:00:00.000000+00:00"))
            rows.append(span_row(rec, settings))
        conn.executemany(SPAN_INSERT, rows)
        conn.executemany(QUALITY, quality)
        count += len(rows)
        if t % 5000 == 4999:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
    conn.execute("COMMIT")
    conn.close()
    return count


def big_trace(path: Path, spans: int = 500) -> str:
    handler = chainwatch.ChainWatchHandler(path, hooks=[])
    rec = handler.recorder
    root = rec.start("big-root", None, "agent_run", "agent", "manual", {"task": "x"})
    for i in range(spans - 1):
        parent = root.span_id if i % 10 == 0 else f"big-{i - i % 10:04d}"
        child = rec.start(f"big-{i:04d}", parent, f"step_{i}", "tool", "manual", {"i": i})
        rec.end(child.span_id, {"ok": True})
    rec.end(root.span_id, {"done": True})
    handler.flush()
    return root.span_id


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--traces", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="reuse/keep this database")
    args = parser.parse_args()
    path = args.keep or Path(tempfile.mkdtemp()) / "bench.db"
    if not path.exists():
        t0 = time.perf_counter()
        spans = build(path, args.traces)
        print(f"built {spans:,} spans in {time.perf_counter() - t0:.1f} s ({path})")
    root = big_trace(path)
    conn = sqlite3.connect(path)
    baseline = timed(lambda: conn.execute(
        "SELECT COUNT(*), SUM(total_tokens), SUM(cost_usd) FROM spans WHERE kind = 'llm'"
    ).fetchone(), args.repeats)
    report = timed(lambda: chainwatch.report(db=path, since="30d").to_dict(), args.repeats)
    html = timed(lambda: chainwatch.report(db=path, since="30d").to_html(), 1)
    trace = timed(lambda: chainwatch.trace(root, db=path), args.repeats * 3)
    one = timed(lambda: chainwatch.trace("trace-0000042", db=path), args.repeats * 3)
    spans_total = conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
    print(f"spans in database                 {spans_total:,}")
    print(f"baseline: one aggregate SELECT    {baseline * 1000:8.1f} ms")
    print(f"report() data over all traces     {report * 1000:8.1f} ms  (target < 2000 ms; "
          f"{report / baseline:.1f}x the baseline)")
    print(f"report() with HTML and charts     {html * 1000:8.1f} ms")
    print(f"trace() of a 500-span trace       {trace * 1000:8.1f} ms  (target < 100 ms)")
    print(f"trace() of a 10-span trace        {one * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
