"""The public surface: a pinned `__all__`, and `import chainwatch` without any framework."""

from __future__ import annotations
import __future__

import importlib.metadata
import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

from langchain_core.runnables import RunnableLambda

import chainwatch

EXPECTED_ALL = [
    "ChainWatchHandler",
    "Report",
    "Span",
    "SpanKind",
    "Status",
    "Summary",
    "Trace",
    "TraceList",
    "Usage",
    "__version__",
    "analyze",
    "check_drift",
    "feedback",
    "flush",
    "instrument_llama_index",
    "report",
    "set_baseline",
    "summary",
    "trace",
    "traces",
    "uninstrument_llama_index",
]


def test_all_is_pinned_and_sorted() -> None:
    assert chainwatch.__all__ == EXPECTED_ALL
    assert chainwatch.__all__ == sorted(chainwatch.__all__)
    assert len(set(chainwatch.__all__)) == len(chainwatch.__all__)


def test_every_exported_name_exists() -> None:
    missing = [name for name in chainwatch.__all__ if not hasattr(chainwatch, name)]
    assert missing == []
    namespace: dict[str, object] = {}
    exec("from chainwatch import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(chainwatch.__all__)


def test_every_public_attribute_is_exported() -> None:
    # httpx's rule: a public name of the package is in __all__; submodules are not names, and
    # neither are `from __future__` compiler flags.
    public = sorted(
        name
        for name, value in vars(chainwatch).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and not isinstance(value, __future__._Feature)
    )
    assert public == [name for name in EXPECTED_ALL if not name.startswith("_")]


def test_version_matches_the_distribution() -> None:
    assert chainwatch.__version__ == importlib.metadata.version("chainwatch")


def test_the_designed_call_shape_works(tmp_path: Path) -> None:
    handler = chainwatch.ChainWatchHandler(
        db=str(tmp_path / "runs.db"), tags=["batch-7"], user_id=None, session_id=None
    )
    step = RunnableLambda(lambda x: x * 2, name="designed")
    assert step.invoke(21, config={"callbacks": [handler]}) == 42
    assert handler.flush() is True
    assert chainwatch.flush() is True
    [row] = chainwatch.traces(db=tmp_path / "runs.db")
    assert (row["name"], row["tags"]) == ("designed", ["batch-7"])
    handler.shutdown()


_NO_FRAMEWORK = textwrap.dedent(
    """
    import importlib.abc
    import json
    import sys
    import tempfile
    from pathlib import Path

    BLOCKED = {"langchain_core", "langchain", "langchain_openai", "langgraph",
               "llama_index", "openai"}

    class NoFrameworks(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed here")
            return None

    sys.meta_path.insert(0, NoFrameworks())
    for name in list(sys.modules):
        assert name.split(".")[0] not in BLOCKED, name
    try:
        import langchain_core  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the import blocker does not work")

    import chainwatch

    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "plain.db"
        handler = chainwatch.ChainWatchHandler(db)
        rec = handler.recorder
        rec.start("root", None, "no-framework", "chain", "manual", {"q": "hi"}, tags=["t"])
        llm = rec.start("call", "root", "call", "llm", "manual", "hi")
        llm.model = "gpt-4o-mini"
        llm.usage = chainwatch.Usage(prompt_tokens=10, completion_tokens=2)
        rec.end("call", "hello")
        rec.end("root", {"a": "hello"})
        assert handler.flush()
        [row] = chainwatch.traces(db=db)
        tree = chainwatch.trace("call", db=db)
        summary = chainwatch.summary(db=db)
        handler.shutdown()
    print(json.dumps({
        "name": row["name"],
        "span_count": row["span_count"],
        "tags": row["tags"],
        "total_tokens": row["total_tokens"],
        "priced": row["cost_usd"] is not None,
        "tree": [s.span_id for _, s in tree.walk()],
        "calls": summary["count"],
        "framework_modules": sorted(
            n for n in sys.modules if n.split(".")[0] in BLOCKED
        ),
    }))
    """
)


def test_chainwatch_works_without_any_framework() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _NO_FRAMEWORK],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {
        "name": "no-framework",
        "span_count": 2,
        "tags": ["t"],
        "total_tokens": 12,
        "priced": True,
        "tree": ["root", "call"],
        "calls": 1,
        "framework_modules": [],
    }


def test_import_chainwatch_imports_no_framework() -> None:
    # Nor sqlite-utils (which imports pandas when it is installed) before the first database
    # is opened: `import chainwatch` stays quick in a notebook.
    script = (
        "import sys, json; import chainwatch; "
        "print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] in "
        "{'langchain_core', 'langchain', 'langgraph', 'llama_index', 'openai', "
        "'sqlite_utils', 'pandas', 'numpy', 'matplotlib'})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
