"""SQLite connection helpers shared by the SQLite log and the inbox: waiting out
another process's lock where SQLite's own busy handler does not.

SQLite answers SQLITE_BUSY ("database is locked") at once, without calling its busy
handler, when waiting could deadlock: a connection that holds a read lock and wants to
write while another connection writes. The switch of a fresh file to WAL mode is such
a case (it reads the file, then changes it), so processes that open one new file
together fail there however long their busy timeout; ``use_wal`` tries again instead.
"""

from __future__ import annotations

import sqlite3
import time

__all__ = ["execute_when_free", "is_busy", "use_wal"]


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's "database is locked" (SQLITE_BUSY, or one of its
    extended codes such as SQLITE_BUSY_RECOVERY)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF == sqlite3.SQLITE_BUSY
    )


def execute_when_free(
    conn: sqlite3.Connection, sql: str, timeout: float, pause: float, longest: float
) -> None:
    """Execute ``sql``, trying again while SQLite answers SQLITE_BUSY, for at most
    ``timeout`` seconds: pauses of ``pause`` seconds, doubling up to ``longest``.

    For the statements SQLite's own busy handler does not serve: the switch to WAL
    (``use_wal``), and BEGIN IMMEDIATE in the log's group-commit writer, whose handler
    would sleep 1, 2, 5, 10... ms.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute(sql)
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, longest)


def use_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Put the file of ``conn`` in WAL mode, waiting
    up to ``timeout`` seconds for other connections' writes; a no-op once it is."""
    execute_when_free(conn, "PRAGMA journal_mode=WAL", timeout, 0.001, 0.05)
