from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chainwatch import ChainWatchHandler, _errors
from chainwatch.fake_provider import FakeOpenAI


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_internal_errors: the test injects faults into chainwatch on purpose"
    )


@pytest.fixture(autouse=True)
def _no_internal_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """chainwatch swallows its own errors in production; a test must not have any."""
    before = _errors.error_counts()
    yield
    if request.node.get_closest_marker("allow_internal_errors") is None:
        after = _errors.error_counts()
        assert after == before, f"chainwatch internal errors during the test: {after}"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "chainwatch.db"


@pytest.fixture
def handler(db_path: Path) -> Iterator[ChainWatchHandler]:
    h = ChainWatchHandler(db_path)
    yield h
    h.shutdown()


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def make_handler(db_path: Path) -> Iterator[Callable[..., ChainWatchHandler]]:
    """Handlers on the test's database, shut down after the test."""
    made: list[ChainWatchHandler] = []

    def make(**kwargs: Any) -> ChainWatchHandler:
        h = ChainWatchHandler(db_path, **kwargs)
        made.append(h)
        return h

    yield make
    for h in made:
        h.shutdown()


def rows(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """The rows of any query, as dicts, through a plain sqlite3 connection."""
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def read_spans(path: Path) -> list[dict[str, Any]]:
    """All span rows through plain SQL, as a user would read them."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM spans ORDER BY start_time, rowid")]
    finally:
        conn.close()


def read_events(path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM span_events ORDER BY id")]
    finally:
        conn.close()


def pop_span(spans: list[dict[str, Any]], name: str, **expected: Any) -> dict[str, Any]:
    """Remove and return the one span called `name` that matches `expected`.

    Tests pop every expected span and then assert the list is empty, so an extra span fails.
    """
    matches = [
        s for s in spans if s["name"] == name and all(s[k] == v for k, v in expected.items())
    ]
    assert matches, f"no span {name!r} with {expected}; left: {[s['name'] for s in spans]}"
    span = matches[0]
    spans.remove(span)
    return span
