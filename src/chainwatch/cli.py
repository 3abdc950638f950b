"""The `chainwatch` command: demo, traces, show, summary, report, schema."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chainwatch", description="Local-first observability for LangChain and LlamaIndex."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="record a realistic run (no API key, no network)")
    demo.add_argument("--db", default="chainwatch-demo.db", help="database file to (re)create")

    traces = sub.add_parser("traces", help="list recent traces")
    traces.add_argument("--db", default=None)
    traces.add_argument("--since", default=None, help="e.g. 1h, 30m, 2026-11-27T10:00:00Z")
    traces.add_argument("--status", choices=["ok", "error"], default=None)
    traces.add_argument("--name", default=None)
    traces.add_argument("--limit", type=int, default=20)
    traces.add_argument("--json", action="store_true", help="print JSON lines")

    show = sub.add_parser("show", help="show one trace as a tree")
    show.add_argument("trace_id")
    show.add_argument("--db", default=None)

    summary = sub.add_parser("summary", help="summary of model calls in a window")
    summary.add_argument("--db", default=None)
    summary.add_argument("--window-minutes", type=float, default=60)
    summary.add_argument("--json", action="store_true")

    report = sub.add_parser("report", help="a report of recent runs")
    report.add_argument("--db", default=None)
    report.add_argument("--since", default="24h", help="e.g. 1h, 7d, 2026-11-27T10:00:00Z")
    report.add_argument("--until", default=None)
    report.add_argument("--tag", action="append", dest="tags", default=None)
    report.add_argument("--model", default=None)
    report.add_argument("--name", default=None, help="root span name")
    report.add_argument("--html", metavar="FILE", default=None, help="write the HTML report")
    report.add_argument("--markdown", action="store_true", help="print markdown")

    sub.add_parser("schema", help="print the schema documentation (markdown)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `chainwatch` command."""
    args = _parser().parse_args(argv)
    import chainwatch

    try:
        if args.command == "demo":
            from .demo import run_demo

            run_demo(Path(args.db).absolute())
        elif args.command == "traces":
            rows = chainwatch.traces(
                db=args.db, since=args.since, status=args.status, name=args.name,
                limit=args.limit,
            )
            if args.json:
                for row in rows:
                    print(json.dumps(row))
            else:
                print(rows)
        elif args.command == "show":
            print(chainwatch.trace(args.trace_id, db=args.db))
        elif args.command == "summary":
            result = chainwatch.summary(args.window_minutes, db=args.db)
            print(json.dumps(result, indent=2) if args.json else result)
        elif args.command == "report":
            made = chainwatch.report(
                db=args.db, since=args.since, until=args.until, tags=args.tags,
                model=args.model, name=args.name,
            )
            if args.html:
                print(f"report written to {made.save(args.html)}")
            else:
                print(made.to_markdown() if args.markdown else made)
        elif args.command == "schema":
            from .store.schema_doc import schema_markdown

            print(schema_markdown())
    except (FileNotFoundError, LookupError, ValueError) as exc:
        print(f"chainwatch: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
