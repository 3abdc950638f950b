"""What the benchmark scripts share: figures and their table, profiling, the machine's state."""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import chainwatch


@dataclass
class Figure:
    """One printed row: a measured value, and its target when it has one."""

    name: str
    value: float
    unit: str
    target: str = ""
    passed: bool | None = None

def at_most(name: str, value: float, unit: str, limit: float, *, strict: bool = False) -> Figure:
    """A figure whose target is an upper bound (`< limit` when strict, else `<= limit`)."""
    passed = value < limit if strict else value <= limit
    return Figure(name, value, unit, f"{'<' if strict else '<='} {limit:,g}", passed)

def finish_chainwatch(handler: chainwatch.ChainWatchHandler, label: str = "chainwatch") -> None:
    """End a timed block of chainwatch: `flush()`, spans and hook results included."""
    if not handler.flush(60.0):
        print(f"warning: {label}: chainwatch flush timed out", file=sys.stderr)


checkpoint_ms: dict[str, list[float]] = {}


def checkpoint_chainwatch(handler: chainwatch.ChainWatchHandler, label: str) -> None:
    """Between timed blocks (untimed): copy the WAL into the database file now.

    The writer does this itself on its own thread once the app is idle (and SQLite does it
    every 8,000 pages under load), so it is background I/O, not the app's time; done here,
    it cannot spill into the next configuration's timed block. Its duration is kept in
    `checkpoint_ms` and printed beside the figures.
    """
    start = time.perf_counter()
    conn = sqlite3.connect(handler.db_path, timeout=10)
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        conn.close()
    checkpoint_ms.setdefault(label, []).append((time.perf_counter() - start) * 1000)


def cpu_ns() -> int:
    """CPU time of this process (all threads) plus chainwatch's hook process, if it runs.

    The built-in hooks run in a helper process; its CPU is chainwatch's cost all the same.
    """
    total = time.process_time_ns()
    from chainwatch.hook_runner import runner

    pid = runner.process.pid
    if pid is not None:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            ticks = int(fields[11]) + int(fields[12])
            total += ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            pass
    return total


def _rss_kb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024
    except (OSError, ValueError):
        return None

def _describe(stat: tracemalloc.StatisticDiff) -> str:
    """Where the kept bytes were allocated, and the innermost chainwatch frame that led there."""
    frames = list(stat.traceback)
    allocated = frames[-1]
    ours = next((f for f in reversed(frames) if "chainwatch" in f.filename), None)
    via = f" via {_short(ours)}" if ours is not None and ours is not allocated else ""
    size = f"+{stat.size_diff / 1024:.1f} KB in {stat.count_diff:+,} blocks"
    return f"{size} at {_short(allocated)}{via}"

def _short(frame: tracemalloc.Frame) -> str:
    return f"{'/'.join(Path(frame.filename).parts[-3:])}:{frame.lineno}"

class AllThreadsProfile:
    """cProfile on this thread and on every thread started while it is on.

    Frameworks run branches on pool threads, and chainwatch writes and runs hooks on threads
    of its own; each new thread gets its own profiler, merged by thread group. Python 3.11
    cannot profile threads that already exist, so this runs in a fresh process.
    """

    def __init__(self) -> None:
        self.profiles: list[tuple[str, cProfile.Profile]] = []
        self._lock = threading.Lock()

    def _hook(self, frame: Any, event: str, arg: Any) -> None:
        profile = cProfile.Profile()
        with self._lock:
            self.profiles.append((threading.current_thread().name, profile))
        profile.enable()

    def __enter__(self) -> AllThreadsProfile:
        threading.setprofile(self._hook)
        self._main = cProfile.Profile()
        self._main.enable()
        return self

    def __exit__(self, *exc: object) -> None:
        self._main.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
        self.profiles.append(("main", self._main))

    def stats(self, group: Callable[[str], bool]) -> pstats.Stats | None:
        """The merged profile of the threads whose name `group` accepts."""
        chosen = [profile for name, profile in self.profiles if group(name)]
        if not chosen:
            return None
        merged = pstats.Stats(chosen[0], stream=io.StringIO())
        for profile in chosen[1:]:
            merged.add(profile)
        return merged

def _fmt(value: float) -> str:
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"

def print_table(figures: Sequence[Figure]) -> None:
    width = max(len(f.name) for f in figures)
    print(f"\n{'figure':<{width}}  {'value':>12}  {'unit':<8}  {'target':<10}  result")
    print("-" * (width + 46))
    for f in figures:
        result = "" if f.passed is None else ("PASS" if f.passed else "MISS")
        print(f"{f.name:<{width}}  {_fmt(f.value):>12}  {f.unit:<8}  {f.target:<10}  {result}")

def calibration_us() -> float:
    """µs of a fixed pure-Python loop, to compare figures taken on different machines."""
    best = float("inf")
    for _ in range(20):
        start = time.perf_counter_ns()
        sum(range(1_000))
        best = min(best, (time.perf_counter_ns() - start) / 1_000)
    return best

def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"

def environment(**versions: str) -> dict[str, Any]:
    """The machine and versions a run was measured on (load average first: it moves most)."""
    return {
        "load_average_at_start": _load(),
        "calibration_sum_range_1000_us": calibration_us(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        **versions,
        "chainwatch": chainwatch.__version__,
    }


def print_profiles(
    prof: AllThreadsProfile,
    groups: Sequence[tuple[str, Callable[[str], bool]]],
    heading: Callable[[str, int], str],
    top: int,
) -> dict[str, str]:
    """Print the top `top` cumulative entries inside chainwatch for each thread group."""
    out: dict[str, str] = {}
    for title, group in groups:
        stats = prof.stats(group)
        if stats is None:
            continue
        stream = io.StringIO()
        stats.stream = stream  # type: ignore[attr-defined]
        stats.sort_stats("cumulative").print_stats(r"chainwatch[/\\]", top)
        text = stream.getvalue()
        body = text[text.find("   ncalls") :] if "   ncalls" in text else text
        print(f"\n{heading(title, top)}")
        print(body.rstrip())
        out[title] = body
    return out


def base_parser(doc: str, quick_help: str, profile_help: str) -> argparse.ArgumentParser:
    """The flags every benchmark script takes: --quick, --json PATH, --profile."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--profile", action="store_true", help=profile_help)
    return parser


Phase = Callable[[Any, Path, list[Figure], dict[str, Any]], None]


def run_phases(
    args: argparse.Namespace,
    *,
    env: dict[str, Any],
    sizes: Any,
    tmp_prefix: str,
    phases: Sequence[tuple[str, Phase]],
    profile: Callable[[Any, Path], dict[str, str]],
    around: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> int:
    """Run each phase (or only the profile) in a scratch folder, print the table, write JSON.

    `around` wraps the runs (LlamaIndex's Settings, say); the folder and chainwatch's writers
    are cleaned up whatever happens.
    """
    from chainwatch.store import writer as cw_writer

    figures: list[Figure] = []
    details: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix))
    began = time.perf_counter()
    try:
        with around():
            if args.profile:
                details["profile"] = profile(sizes, tmp)
            else:
                for title, phase in phases:
                    gc.collect()
                    t0 = time.perf_counter()
                    print(f"\n{title}")
                    phase(sizes, tmp, figures, details)
                    print(f"  ({time.perf_counter() - t0:.1f} s)")
                print_table(figures)
                print(f"\ntotal {time.perf_counter() - began:.1f} s; load average now {_load()}")
    finally:
        chainwatch.flush(10.0)
        cw_writer._shutdown_all()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        payload = {
            "environment": env,
            "mode": "quick" if args.quick else "full",
            "sizes": asdict(sizes),
            "figures": [asdict(f) for f in figures],
            "details": details,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"results written to {args.json}")
    return 0
