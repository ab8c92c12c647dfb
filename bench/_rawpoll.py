"""The consumer side of the latency baseline: raw sqlite3, polling every millisecond.

``python -m bench._rawpoll DB OUT COUNT SECONDS``: waits for the table ``q`` in DB,
then every 1 ms selects the rows after the last one seen and stamps each with its
receive time, until COUNT rows arrived or SECONDS passed; writes ``sent_ns recv_ns
warmup`` lines to OUT at the end. Creates ``OUT.ready`` once it polls.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time


def main(db: str, out: str, count: int, seconds: float) -> int:
    end = time.monotonic() + seconds
    conn = None
    while conn is None and time.monotonic() < end:
        try:
            conn = sqlite3.connect(db, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("SELECT 1 FROM q LIMIT 1").fetchall()
        except sqlite3.Error:
            conn = None
            time.sleep(0.01)
    if conn is None:
        return 1
    with open(out + ".ready", "w"):
        pass
    last = 0
    lines: list[bytes] = []
    while len(lines) < count and time.monotonic() < end:
        rows = conn.execute(
            "SELECT id, sent_ns, warmup FROM q WHERE id > ? ORDER BY id", (last,)
        ).fetchall()
        received = time.time_ns()
        for rowid, sent_ns, warmup in rows:
            lines.append(b"%d %d %d\n" % (sent_ns, received, warmup))
            last = rowid
        time.sleep(0.001)
    with open(out + ".tmp", "wb") as f:
        f.writelines(lines)
    os.replace(out + ".tmp", out)
    return 0


if __name__ == "__main__":
    db, out, count, seconds = sys.argv[1:5]
    sys.exit(main(db, out, int(count), float(seconds)))
