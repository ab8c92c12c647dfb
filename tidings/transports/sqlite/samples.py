"""Lag samples in the log file: where each group stood in each partition at each
heartbeat of the member that holds it, the last :data:`KEPT` per partition, so that
``tidings groups`` in any process judges lag health (``tidings.lag_health``).

Written in the heartbeat's own transaction (every third of a lease; nothing per event),
read with the groups' description. Stamped with the writer's wall clock: a reader
compares it with its own only to see how long ago the last sample was (``STOP``).
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict

from tidings.transport import LagSample

__all__ = ["KEPT", "TABLE", "read_samples", "record_samples"]

KEPT = 10
"""Samples kept per group and partition (``tidings.lag_health.WINDOW``)."""

TABLE = """
CREATE TABLE IF NOT EXISTS lag_samples (
    grp TEXT NOT NULL,
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    committed INTEGER NOT NULL,
    lag INTEGER NOT NULL,
    PRIMARY KEY (grp, topic_id, partition, slot)
) WITHOUT ROWID;
"""

# A ring of KEPT slots per partition: sample number ``seq`` goes to slot ``seq % KEPT``,
# replacing the sample KEPT before it, so the table never needs pruning. One row per
# partition whose lease this member holds: its committed offset and lag.
_RECORD = (
    "INSERT OR REPLACE INTO lag_samples"
    "(grp, topic_id, partition, slot, seq, ts, committed, lag)"
    " SELECT l.grp, l.topic_id, l.partition, coalesce(n.seq, 0) % ?, coalesce(n.seq, 0), ?,"
    "  o.offset, max(p.next_offset - max(o.offset, p.start_offset), 0)"
    " FROM leases l JOIN group_offsets o"
    "  ON o.grp=l.grp AND o.topic_id=l.topic_id AND o.partition=l.partition"
    " JOIN partitions p ON p.topic_id=l.topic_id AND p.partition=l.partition"
    " LEFT JOIN (SELECT topic_id, partition, max(seq) + 1 AS seq FROM lag_samples"
    "  WHERE grp=? GROUP BY topic_id, partition) n"
    "  ON n.topic_id=l.topic_id AND n.partition=l.partition"
    " WHERE l.grp=? AND l.member=?"
)


def record_samples(conn: sqlite3.Connection, group: str, member: str, now_ms: int) -> None:
    """Sample every partition ``member`` of ``group`` holds, at ``now_ms``."""
    conn.execute(_RECORD, (KEPT, now_ms, group, group, member))


def read_samples(
    conn: sqlite3.Connection, group: str
) -> dict[tuple[int, int], tuple[LagSample, ...]]:
    """``group``'s samples per (topic id, partition), oldest first."""
    out: dict[tuple[int, int], list[LagSample]] = defaultdict(list)
    for tid, p, ts, committed, lag in conn.execute(
        "SELECT topic_id, partition, ts, committed, lag FROM lag_samples WHERE grp=?"
        " ORDER BY topic_id, partition, seq",
        (group,),
    ):
        out[(tid, p)].append(LagSample(ts, committed, lag))
    return {key: tuple(rows) for key, rows in out.items()}
