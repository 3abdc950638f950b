"""The hook process: portable hooks run outside the app's process, in order, and nothing is lost.

Hooks here record the process they ran in (a `pids` table), so each test reads where a hook
ran from the database, next to what the hooks stored.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from chainwatch import ChainWatchHandler, Trace
from chainwatch.baselines import DriftHook
from chainwatch.hook_runner import runner
from chainwatch.hooks import Store
from chainwatch.quality import QualityHook
from conftest import rows


class PidHook:
    """Stores, per trace, the process it ran in and how many `pids` rows it could already see."""

    portable = True

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, trace: Trace, store: Store) -> None:
        store.conn.execute(
            "CREATE TABLE IF NOT EXISTS pids (hook TEXT, trace_id TEXT, pid INTEGER, seen INTEGER)"
        )
        seen = store.conn.execute(
            "SELECT count(*) FROM pids WHERE trace_id = ?", [trace.trace_id]
        ).fetchone()[0]
        store.write("INSERT INTO pids VALUES (?, ?, ?, ?)",
                    [(self.name, trace.trace_id, os.getpid(), seen)])


class HomeHook(PidHook):
    """The same, but it stays on the hook thread (not marked portable)."""

    portable = False


class Unpicklable(PidHook):
    """Marked portable, but holds a lambda, which does not pickle."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.key = lambda trace: trace.trace_id


def pids(db_path: Path) -> list[dict[str, Any]]:
    return rows(db_path, "SELECT hook, trace_id, pid, seen FROM pids ORDER BY rowid")


def record(handler: ChainWatchHandler, n: int, answer: str = "Paris is the capital.") -> None:
    chain = (
        ChatPromptTemplate.from_messages([("human", "{q}")])
        | FakeListChatModel(responses=[answer])
        | StrOutputParser()
    )
    for i in range(n):
        chain.invoke({"q": f"question {i}"}, config={"callbacks": [handler]})


@pytest.fixture
def fresh_process() -> Iterator[None]:
    """A test that breaks the hook process leaves a working one to the next test."""
    runner.flush()
    yield
    runner.flush()
    runner.process.close()
    runner.process.failed = False


def test_default_hooks_run_in_the_hook_process(make_handler: Any, db_path: Path) -> None:
    handler = make_handler()
    assert [type(h) for h in handler.hooks] == [QualityHook, DriftHook] and handler.hook_process
    record(handler, 3)
    assert handler.flush()
    worker = runner.process.pid
    assert worker is not None and worker != os.getpid()
    # the quality hook's rows landed, one per answer, and every run is in hook_runs
    assert len(rows(db_path, "SELECT * FROM quality")) == 3
    runs = rows(db_path, "SELECT hook, status FROM hook_runs ORDER BY id")
    assert sorted((r["hook"], r["status"]) for r in runs) == [("drift", "ok")] * 3 + [
        ("quality", "ok")
    ] * 3
    # the drift hook's counter came back from the worker to the handler's own hook object
    assert handler.hooks[1].seen == 3


def test_portable_and_home_hooks_keep_their_order(make_handler: Any, db_path: Path) -> None:
    handler = make_handler(hooks=[PidHook("a"), HomeHook("b"), PidHook("c"), PidHook("d")])
    record(handler, 4)
    assert handler.flush()
    found = pids(db_path)
    assert len(found) == 16
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for row in found:
        by_trace.setdefault(row["trace_id"], []).append(row)
    for trace_rows in by_trace.values():
        # each hook saw what the hooks before it stored for the trace, across processes
        assert [(r["hook"], r["seen"]) for r in trace_rows] == [
            ("a", 0), ("b", 1), ("c", 2), ("d", 3)
        ]
        where = {r["hook"]: r["pid"] for r in trace_rows}
        assert where["b"] == os.getpid()
        assert where["a"] == where["c"] == where["d"] == runner.process.pid != os.getpid()


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_hook_process_off_runs_hooks_here(
    make_handler: Any, db_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "argument":
        handler = make_handler(hooks=[PidHook("a")], hook_process=False)
    else:
        monkeypatch.setenv("CHAINWATCH_HOOK_PROCESS", "0")
        handler = make_handler(hooks=[PidHook("a")])
    assert not handler.hook_process
    record(handler, 2)
    assert handler.flush()
    assert {r["pid"] for r in pids(db_path)} == {os.getpid()}


def test_a_hook_that_does_not_pickle_runs_here(
    make_handler: Any, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler = make_handler(hooks=[Unpicklable("u"), HomeHook("h"), PidHook("p")])
    with caplog.at_level(logging.WARNING, logger="chainwatch"):
        record(handler, 3)
        assert handler.flush()
    assert [r["pid"] == os.getpid() for r in pids(db_path) if r["hook"] == "u"] == [True] * 3
    # the portable group after the home hook still went to the worker; one warning in all
    assert {r["pid"] for r in pids(db_path) if r["hook"] == "p"} == {runner.process.pid}
    assert sum("do not pickle" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_hook_process_loses_no_trace(
    make_handler: Any, db_path: Path, fresh_process: None, caplog: pytest.LogCaptureFixture
) -> None:
    handler = make_handler(hooks=[PidHook("a"), QualityHook()])
    record(handler, 2)
    assert handler.flush()
    worker = runner.process.pid
    assert worker is not None
    os.kill(worker, signal.SIGKILL)
    with caplog.at_level(logging.WARNING, logger="chainwatch"):
        record(handler, 3)
        assert handler.flush()
    # the batch the dead worker could not take ran on the hook thread, and so did the rest
    where = [r["pid"] for r in pids(db_path)]
    assert where == [worker, worker, os.getpid(), os.getpid(), os.getpid()]
    assert len(rows(db_path, "SELECT * FROM quality")) == 5
    assert runner.process.failed
    assert any("hook thread from now on" in r.getMessage() for r in caplog.records)


class GateHook:
    """Portable; waits (up to 30 s) until its gate file exists, so batches stay unanswered."""

    portable = True
    name = "gate"

    def __init__(self, gate: Path) -> None:
        self.gate = gate

    def __call__(self, trace: Trace, store: Store) -> None:
        deadline = time.monotonic() + 30
        while not self.gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_batches_in_flight_when_the_worker_dies_run_here(
    make_handler: Any, db_path: Path, tmp_path: Path, fresh_process: None
) -> None:
    gate = tmp_path / "gate"
    handler = make_handler(hooks=[GateHook(gate), PidHook("a")])
    record(handler, 3)
    deadline = time.monotonic() + 30
    while runner.process.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # the hook thread sends without waiting for the answer
    assert runner.process.in_flight > 0
    worker = runner.process.pid
    assert worker is not None
    os.kill(worker, signal.SIGKILL)
    gate.touch()
    assert handler.flush()
    # every trace's hooks ran exactly once, here, in order
    found = pids(db_path)
    assert [r["pid"] for r in found] == [os.getpid()] * 3
    assert len({r["trace_id"] for r in found}) == 3
    runs = rows(db_path, "SELECT hook, trace_id, status FROM hook_runs ORDER BY id")
    assert sorted((r["trace_id"], r["hook"], r["status"]) for r in runs) == sorted(
        (r["trace_id"], hook, "ok") for r in found for hook in ("gate", "a")
    )


def test_an_executable_that_is_not_python_falls_back_to_the_hook_thread(
    make_handler: Any,
    db_path: Path,
    tmp_path: Path,
    fresh_process: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An embedding server's `sys.executable` may start and never answer: it is given up on."""
    from chainwatch import hook_process

    silent = tmp_path / "not-python"
    silent.write_text("#!/bin/sh\nexec sleep 30\n")
    silent.chmod(0o755)
    runner.process.close()
    monkeypatch.setattr(sys, "executable", str(silent))
    monkeypatch.setattr(hook_process, "_READY_S", 0.5)
    handler = make_handler(hooks=[PidHook("a")])
    with caplog.at_level(logging.WARNING, logger="chainwatch"):
        record(handler, 2)
        assert handler.flush()
    assert [r["pid"] for r in pids(db_path)] == [os.getpid()] * 2
    assert runner.process.failed and runner.process.pid is None
    assert any("did not start a hook process" in r.getMessage() for r in caplog.records)


def test_the_hook_process_ends_with_the_app(tmp_path: Path) -> None:
    """A script that never flushes: at exit its last traces are analysed, then the worker ends."""
    db = tmp_path / "exit.db"
    script = textwrap.dedent(
        """
        import sys
        from langchain_core.language_models import FakeListChatModel
        from chainwatch import ChainWatchHandler
        from test_hook_process import PidHook
        handler = ChainWatchHandler(sys.argv[1], hooks=[PidHook("a")])
        model = FakeListChatModel(responses=["fine"])
        for i in range(5):
            model.invoke(f"q{i}", config={"callbacks": [handler]})
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script, str(db)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = pids(db)
    assert len(found) == 5
    worker = found[0]["pid"]
    assert {r["pid"] for r in found} == {worker}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(worker):
        time.sleep(0.05)
    assert not _alive(worker), "the hook process outlived the app"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers signal 0; its parent (the script) is gone, so init reaps it soon.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


# -- failures found in review: each of these once lost, duplicated or hung hook work ----------


class StateHook(PidHook):
    """Portable; names a `portable_state` attribute it never sets."""

    portable_state = ("never_set",)


def test_a_batch_whose_state_cannot_be_read_is_not_run_twice(
    make_handler: Any, db_path: Path, fresh_process: None
) -> None:
    """The worker has committed the batch by then: the answer must still be "ok"."""
    handler = make_handler(hooks=[StateHook("s")])
    record(handler, 3)
    assert handler.flush()
    found = pids(db_path)
    assert len(found) == 3 and len({r["trace_id"] for r in found}) == 3
    assert {r["pid"] for r in found} == {runner.process.pid} and not runner.process.failed


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_dead_worker_with_portable_and_home_hooks_runs_each_hook_once(
    make_handler: Any, db_path: Path, fresh_process: None
) -> None:
    """A batch the dead worker could not take runs here once, not here and in the redo list."""
    handler = make_handler(hooks=[PidHook("a"), HomeHook("h")])
    record(handler, 2)
    assert handler.flush()
    worker = runner.process.pid
    assert worker is not None
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.01)  # dead before the next batch is sent: sending is what fails
    record(handler, 3)
    assert handler.flush()
    found = pids(db_path)
    runs = [(r["hook"], r["trace_id"]) for r in found]
    assert len(runs) == 10 and len(set(runs)) == 10, "each hook once per trace"
    hook_runs = rows(db_path, "SELECT hook, trace_id FROM hook_runs")
    assert len(hook_runs) == 10
    assert [r["pid"] for r in found if r["hook"] == "a"][:2] == [worker, worker]


class BigStateHook(GateHook):
    """Carries 30 KB back with every answer: a few answers fill the pipe to the app."""

    portable_state = ("blob",)

    def __init__(self, gate: Path) -> None:
        super().__init__(gate)
        self.blob = "x" * 30_000


class FatHook:
    """Portable and large (300 KB pickled), like a hook holding a lookup table."""

    portable = True
    name = "fat"

    def __init__(self) -> None:
        self.table = b"y" * 300_000

    def __call__(self, trace: Trace, store: Store) -> None:
        pass


def test_full_pipes_both_ways_do_not_stop_the_hooks(tmp_path: Path, fresh_process: None) -> None:
    """Answers waiting to be read while a large message is being sent: nothing may block."""
    opened = tmp_path / "open"
    opened.touch()
    warm = ChainWatchHandler(tmp_path / "warm.db", hooks=[PidHook("w")])
    gate = tmp_path / "gate"
    slow = ChainWatchHandler(tmp_path / "slow.db", hooks=[BigStateHook(gate)])
    fat = ChainWatchHandler(tmp_path / "fat.db", hooks=[FatHook()])
    try:
        record(warm, 1)
        assert warm.flush()
        for _ in range(6):  # six batches, each answered with 30 KB once the gate opens
            record(slow, 1)
            assert slow._writer.flush()
            time.sleep(0.05)
        record(fat, 1)
        assert fat._writer.flush()
        time.sleep(0.3)
        gate.touch()
        assert slow.flush(timeout=60) and fat.flush(timeout=60)
        assert len(rows(tmp_path / "slow.db", "SELECT * FROM hook_runs")) == 6
        assert len(rows(tmp_path / "fat.db", "SELECT * FROM hook_runs")) == 1
    finally:
        for handler in (warm, slow, fat):
            handler.shutdown()


def test_hooks_the_worker_cannot_import_run_here_and_the_worker_stays(
    make_handler: Any,
    db_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fresh_process: None,
) -> None:
    """A hook class from a module the worker cannot import (not on its path at its start)."""
    first = make_handler(hooks=[PidHook("before")])
    record(first, 1)
    assert first.flush()
    worker = runner.process.pid
    assert worker is not None
    folder = tmp_path / "late_modules"
    folder.mkdir()
    (folder / "late_hooks.py").write_text(
        "from test_hook_process import PidHook\n\nclass LateHook(PidHook):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    import late_hooks  # type: ignore[import-not-found]

    late = make_handler(hooks=[late_hooks.LateHook("late")])
    with caplog.at_level(logging.WARNING, logger="chainwatch"):
        record(late, 2)
        assert late.flush()
    after = make_handler(hooks=[PidHook("after")])
    record(after, 1)
    assert after.flush()
    where = {(r["hook"], r["pid"]) for r in pids(db_path)}
    assert where == {("before", worker), ("late", os.getpid()), ("after", worker)}
    assert not runner.process.failed and runner.process.pid == worker
    assert any("do not unpickle" in r.getMessage() for r in caplog.records)


def test_hook_classes_of_the_apps_main_module_stay_here() -> None:
    """The worker's `__main__` is not the app's: such a class could not be found there."""
    from chainwatch.hook_process import is_portable

    class Mine(PidHook):
        pass

    assert is_portable(Mine("m"))
    Mine.__module__ = "__main__"
    assert not is_portable(Mine("m"))


class StuckHook:
    """Portable, and never returns: a network call without a timeout, say."""

    portable = True
    name = "stuck"

    def __call__(self, trace: Trace, store: Store) -> None:
        time.sleep(3600)


def test_an_app_whose_hook_never_returns_still_exits(tmp_path: Path) -> None:
    """At exit the hooks get a few seconds; a stuck worker is then killed, not waited for."""
    script = textwrap.dedent(
        """
        import sys
        from langchain_core.language_models import FakeListChatModel
        from chainwatch import ChainWatchHandler
        from test_hook_process import StuckHook
        handler = ChainWatchHandler(sys.argv[1], hooks=[StuckHook()])
        FakeListChatModel(responses=["fine"]).invoke("q", config={"callbacks": [handler]})
        handler._writer.flush()
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "stuck.db")], env=env,
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
