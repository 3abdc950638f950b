"""One place that swallows chainwatch's own failures, logs them (rate-limited) and counts them.

Nothing chainwatch does may raise into the user's application (DESIGN.md invariant 2). Under
pytest, or with CHAINWATCH_RAISE_INTERNAL_ERRORS=1, internal errors are re-raised so tests see
the bug; tests that inject faults turn that off.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

logger = logging.getLogger("chainwatch")

_lock = threading.Lock()
_counts: dict[str, int] = {}
_last_logged: dict[str, float] = {}
_LOG_EVERY_S = 60.0


def _raise_default() -> bool:
    flag = os.environ.get("CHAINWATCH_RAISE_INTERNAL_ERRORS")
    if flag is not None:
        return flag not in ("", "0", "false", "no")
    return "pytest" in sys.modules


class _State:
    raise_internal = _raise_default()


state = _State()


def internal_error(where: str, exc: BaseException) -> None:
    """Record an internal failure at `where`; re-raise only in test mode."""
    with _lock:
        _counts[where] = _counts.get(where, 0) + 1
        now = time.monotonic()
        due = now - _last_logged.get(where, -_LOG_EVERY_S) >= _LOG_EVERY_S
        if due:
            _last_logged[where] = now
    if due:
        logger.warning(
            "chainwatch internal error in %s (logged once a minute per place): %r", where, exc
        )
    if state.raise_internal:
        raise exc


def error_counts() -> dict[str, int]:
    """Internal errors by place since the process started."""
    with _lock:
        return dict(_counts)


def total_errors() -> int:
    """All internal errors since the process started."""
    with _lock:
        return sum(_counts.values())


def on_own_thread() -> bool:
    """True on chainwatch's own threads (writer, hooks, judges, notifiers).

    Model calls made there (an LLM judge) are chainwatch's work, not the app's: integrations
    skip them even when the framework's callbacks are global.
    """
    return threading.current_thread().name.startswith("chainwatch-")
