"""Opening a chainwatch database: path resolution, file mode, pragmas and migrations."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlite_utils import Database

# sqlite-utils (and the pandas it imports when installed) loads on the first connection, not
# with `import chainwatch`: a handler's first connection is on its writer thread.

DEFAULT_PATH = "chainwatch.db"
BUSY_TIMEOUT_MS = 10_000


def resolve_path(db: str | os.PathLike[str] | None) -> Path:
    """The database a handler or a read uses: `db`, else $CHAINWATCH_DB, else ./chainwatch.db."""
    chosen = db if db is not None else os.environ.get("CHAINWATCH_DB") or DEFAULT_PATH
    path = Path(chosen).expanduser()
    if str(chosen) == ":memory:":
        raise ValueError("chainwatch needs a database file; ':memory:' cannot be shared")
    return path.absolute()


def _create_private(path: Path) -> None:
    """Create the file with mode 0600 before SQLite does, so spans are not world-readable."""
    if path.exists():
        return
    if not path.parent.is_dir():
        raise FileNotFoundError(f"chainwatch database folder does not exist: {path.parent}")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def connect(path: Path, *, migrate: bool = True) -> Database:
    """Open `path` for this thread: WAL, synchronous=NORMAL, busy timeout, newest schema.

    The connection uses explicit transactions (`isolation_level=None`), so writers can take
    the write lock up front with `BEGIN IMMEDIATE` instead of upgrading a read lock.
    """
    from sqlite_utils import Database

    _create_private(path)
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db = Database(conn, execute_plugins=False)
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        if migrate:
            _migrate(db)
    except BaseException:
        conn.close()
        raise
    return db


def _migrate(db: Database) -> None:
    from . import migrations

    # Two processes opening a new file at once both see the same pending migrations; the
    # loser of that race finds the tables made and simply re-reads what is applied.
    for attempt in range(5):
        if not migrations.migrations.pending(db):
            return
        try:
            migrations.apply(db)
            return
        except sqlite3.OperationalError:
            if attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))


def begin_immediate(conn: sqlite3.Connection, timeout_s: float = BUSY_TIMEOUT_MS / 1000) -> None:
    """`BEGIN IMMEDIATE`, waiting for another writer in short steps.

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ms... between tries, so two
    connections that commit every few milliseconds (the writer and the hook process) would
    often wait 10-30 ms for a lock that was free after one. Here the wait starts at 0.2 ms
    and doubles up to 5 ms, until `timeout_s`. Each try takes the interpreter lock, so this
    is for the hook process and hook thread, not for the app's writer thread.

    Raises:
        sqlite3.OperationalError: the lock stayed taken for `timeout_s`, or another error.
    """
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = time.monotonic() + timeout_s
        pause = 0.0002
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.005)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
