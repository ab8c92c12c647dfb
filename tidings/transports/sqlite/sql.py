"""The SQL of the embedded log that is not on the append and fetch path: schema,
topics, retention, offsets by time, group descriptions and offset resets.

Each function runs inside a transaction (or read) that the transport opens.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from tidings.errors import GroupBusy, TopicNotFound
from tidings.transport import GroupInfo, GroupPartition, MemberInfo, PartitionInfo, TopicInfo
from tidings.transports.sqlite.samples import TABLE as LAG_SAMPLES
from tidings.transports.sqlite.samples import read_samples

__all__ = [
    "RETENTION_BATCH",
    "SCHEMA",
    "create_schema",
    "delete_below",
    "delete_topic",
    "describe_groups",
    "ensure_topic",
    "generation_base",
    "in_one_snapshot",
    "now_ms",
    "offsets_for_time",
    "require_topic",
    "retention_cuts",
    "set_group_offsets",
    "topic_info",
    "unread_kept",
]

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL,
    retention_ms INTEGER,
    retention_bytes INTEGER,
    created_ms INTEGER NOT NULL,
    keep_unread INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS partitions (
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    start_offset INTEGER NOT NULL DEFAULT 0,
    next_offset INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    last_ts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (topic_id, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    key TEXT,
    value BLOB NOT NULL,
    PRIMARY KEY (topic_id, partition, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets (
    grp TEXT NOT NULL,
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (grp, topic_id, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    grp TEXT NOT NULL,
    member TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    beat INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (grp, member)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    grp TEXT NOT NULL,
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    member TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (grp, topic_id, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deleted_topics (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    deleted_ms INTEGER NOT NULL
);
"""

# Columns added since the first release: a log made by an older tidings gets them.
_ADDED_COLUMNS = (
    ("topics", "keep_unread", "INTEGER NOT NULL DEFAULT 0"),
    ("group_offsets", "generation", "INTEGER NOT NULL DEFAULT 0"),
    ("group_offsets", "lost", "INTEGER NOT NULL DEFAULT 0"),
    ("members", "beat", "INTEGER NOT NULL DEFAULT 0"),
    ("leases", "generation", "INTEGER NOT NULL DEFAULT 0"),
)


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the log's tables, or add the columns an older log lacks."""
    conn.executescript(SCHEMA + LAG_SAMPLES)  # IF NOT EXISTS: an older log gets new tables
    for table, column, kind in _ADDED_COLUMNS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            try:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):  # another process added it first
                    raise


def ensure_topic(
    conn: sqlite3.Connection,
    topic: str,
    partitions: int,
    retention_ms: int | None,
    retention_bytes: int | None,
    keep_unread: bool,
    now: int,
) -> tuple[int, int]:
    """Create ``topic`` with ``partitions`` unless it exists; return its (id, partition
    count)."""
    row = conn.execute("SELECT id, partitions FROM topics WHERE name=?", (topic,)).fetchone()
    if row is None:
        # Never the id of a deleted topic: another process may still have it cached.
        (tid,) = conn.execute(
            "SELECT 1 + max(coalesce((SELECT max(id) FROM topics), 0),"
            " coalesce((SELECT max(id) FROM deleted_topics), 0))"
        ).fetchone()
        conn.execute(
            "INSERT INTO topics(id, name, partitions, retention_ms, retention_bytes,"
            " created_ms, keep_unread) VALUES (?,?,?,?,?,?,?)",
            (tid, topic, partitions, retention_ms, retention_bytes, now, keep_unread),
        )
        conn.executemany(
            "INSERT INTO partitions(topic_id, partition) VALUES (?,?)",
            [(tid, p) for p in range(partitions)],
        )
        row = (tid, partitions)
    return int(row[0]), int(row[1])


def delete_topic(conn: sqlite3.Connection, topic: str, url: str, now: int) -> int:
    """Delete ``topic``: its records, partitions, and every group's offsets and leases
    on it; return its id, kept in ``deleted_topics`` so that no new topic takes it."""
    row = conn.execute("SELECT id FROM topics WHERE name=?", (topic,)).fetchone()
    if row is None:
        raise TopicNotFound(f"topic {topic!r} does not exist in {url}; see 'tidings topics'")
    tid = int(row[0])
    for table in ("events", "partitions", "group_offsets", "leases", "lag_samples"):
        conn.execute(f"DELETE FROM {table} WHERE topic_id=?", (tid,))
    conn.execute("DELETE FROM topics WHERE id=?", (tid,))
    conn.execute(
        "INSERT INTO deleted_topics(id, name, deleted_ms) VALUES (?,?,?)", (tid, topic, now)
    )
    return tid


def require_topic(conn: sqlite3.Connection, tid: int) -> None:
    """TopicNotFound unless topic ``tid`` exists: an id cached before another process
    deleted the topic (the caller forgets it and names the topic)."""
    if conn.execute("SELECT 1 FROM topics WHERE id=?", (tid,)).fetchone() is None:
        raise TopicNotFound(f"topic #{tid} was deleted")


def generation_base(tid: int) -> int:
    """The lease generation a group's first claim of a partition of topic ``tid`` starts
    above: a topic deleted and made again has a new id, so a record fetched from the
    old one never carries a generation of the new one (fencing holds across a delete)."""
    return tid << 32


def topic_info(conn: sqlite3.Connection, topic: str, url: str) -> TopicInfo:
    """``topic`` of the log at ``url``, with its partitions' offsets and sizes."""
    row = conn.execute(
        "SELECT id, retention_ms, retention_bytes FROM topics WHERE name=?", (topic,)
    ).fetchone()
    if row is None:
        raise TopicNotFound(f"topic {topic!r} does not exist in {url}")
    parts = conn.execute(
        "SELECT partition, start_offset, next_offset, bytes FROM partitions"
        " WHERE topic_id=? ORDER BY partition",
        (row[0],),
    ).fetchall()
    return TopicInfo(topic, tuple(PartitionInfo(*p) for p in parts), row[1], row[2])


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def in_one_snapshot(conn: sqlite3.Connection, read: Callable[[], T]) -> T:
    """Run ``read``'s statements in one read transaction: they all see the same state,
    not each the state of its own moment (a connection in autocommit mode)."""
    conn.execute("BEGIN")
    try:
        return read()
    finally:
        conn.execute("COMMIT")


RETENTION_BATCH = 1000  # records one retention transaction deletes at most


def retention_cuts(
    conn: sqlite3.Connection, now: int, live_groups: set[str]
) -> list[tuple[int, int, int, bool]]:
    """(topic id, partition, cut, keep_unread) for every partition holding records past
    its topic's age or size limit: the records below ``cut`` are to go. A topic that
    keeps unread records never cuts past the committed offset of a group in
    ``live_groups`` (``delete_below`` checks it again in each transaction)."""
    out = []
    limits = conn.execute(
        "SELECT id, retention_ms, retention_bytes, keep_unread FROM topics"
        " WHERE retention_ms IS NOT NULL OR retention_bytes IS NOT NULL"
    ).fetchall()
    for tid, max_age, max_bytes, keep_unread in limits:
        parts = conn.execute(
            "SELECT partition, start_offset, next_offset, bytes FROM partitions WHERE topic_id=?",
            (tid,),
        ).fetchall()
        for p, start, end, size in parts:
            cut = start
            if max_age is not None:
                row = conn.execute(
                    "SELECT min(offset) FROM events WHERE topic_id=? AND partition=? AND ts >= ?",
                    (tid, p, now - max_age),
                ).fetchone()
                cut = max(cut, end if row[0] is None else row[0])
            freed = 0
            if cut > start:
                freed = conn.execute(
                    "SELECT coalesce(sum(length(value)), 0) FROM events"
                    " WHERE topic_id=? AND partition=? AND offset < ?",
                    (tid, p, cut),
                ).fetchone()[0]
            if max_bytes is not None and size - freed > max_bytes:
                surplus = size - freed - max_bytes
                for off, length in conn.execute(
                    "SELECT offset, length(value) FROM events WHERE topic_id=?"
                    " AND partition=? AND offset >= ? ORDER BY offset",
                    (tid, p, cut),
                ):
                    if surplus <= 0:
                        break
                    surplus -= length
                    cut = off + 1
            if keep_unread:
                cut = unread_kept(conn, tid, p, cut, live_groups)
            if cut > start:
                out.append((tid, p, cut, bool(keep_unread)))
    return out


def unread_kept(conn: sqlite3.Connection, tid: int, p: int, cut: int, live: set[str]) -> int:
    """``cut``, moved back to the lowest offset a group in ``live`` has committed."""
    for grp, offset in conn.execute(
        "SELECT grp, offset FROM group_offsets WHERE topic_id=? AND partition=?", (tid, p)
    ):
        if grp in live:
            cut = min(cut, offset)
    return cut


def delete_below(
    conn: sqlite3.Connection, tid: int, p: int, cut: int, keep_for: set[str] | None = None
) -> tuple[int, bool, list[tuple[str, int, int]]]:
    """Delete up to RETENTION_BATCH records of one partition below ``cut`` (and below
    what the groups of ``keep_for`` have committed, as of this transaction: an offset
    reset backwards since the plan counts); return how many, whether the partition is
    done, and per group that had not read them (committed below them) the first and
    last offset it lost, also added to its ``lost`` count."""
    if keep_for is not None:
        cut = unread_kept(conn, tid, p, cut, keep_for)
    row = conn.execute(
        "SELECT start_offset FROM partitions WHERE topic_id=? AND partition=?", (tid, p)
    ).fetchone()
    if row is None:  # the topic was deleted since the plan
        return 0, True, []
    start = row[0]
    if start >= cut:
        return 0, True, []
    upto = min(cut, start + RETENTION_BATCH)
    freed = conn.execute(
        "SELECT coalesce(sum(length(value)), 0) FROM events"
        " WHERE topic_id=? AND partition=? AND offset < ?",
        (tid, p, upto),
    ).fetchone()[0]
    removed = conn.execute(
        "DELETE FROM events WHERE topic_id=? AND partition=? AND offset < ?", (tid, p, upto)
    ).rowcount
    conn.execute(
        "UPDATE partitions SET start_offset=?, bytes=bytes-? WHERE topic_id=? AND partition=?",
        (upto, freed, tid, p),
    )
    skipped = []
    for grp, offset in conn.execute(
        "SELECT grp, offset FROM group_offsets WHERE topic_id=? AND partition=? AND offset < ?",
        (tid, p, upto),
    ).fetchall():
        first = max(offset, start)
        conn.execute(
            "UPDATE group_offsets SET lost=lost+? WHERE grp=? AND topic_id=? AND partition=?",
            (upto - first, grp, tid, p),
        )
        skipped.append((grp, first, upto - 1))
    return removed, upto >= cut, skipped


def offsets_for_time(
    conn: sqlite3.Connection, tid: int, count: int, timestamp_ms: int
) -> dict[int, int]:
    """Per partition, the first offset appended at or after ``timestamp_ms``."""
    require_topic(conn, tid)
    out = {}
    for p in range(count):
        start, end = conn.execute(
            "SELECT start_offset, next_offset FROM partitions WHERE topic_id=? AND partition=?",
            (tid, p),
        ).fetchone()
        # Timestamps rise with offsets within a partition (append keeps them
        # monotonic), so a binary search over the primary key finds the spot.
        lo, hi = start, end
        while lo < hi:
            mid = (lo + hi) // 2
            row = conn.execute(
                "SELECT ts FROM events WHERE topic_id=? AND partition=? AND offset>=?"
                " ORDER BY offset LIMIT 1",
                (tid, p, mid),
            ).fetchone()
            if row is None or row[0] >= timestamp_ms:
                hi = mid
            else:
                lo = mid + 1
        out[p] = lo
    return out


def describe_groups(conn: sqlite3.Connection) -> list[GroupInfo]:
    """Every group with committed and end offsets, owners and live members."""
    now = now_ms()
    names = [
        r[0]
        for r in conn.execute(
            "SELECT grp FROM group_offsets UNION SELECT grp FROM members"
            " WHERE expires_ms >= ? ORDER BY 1",
            (now,),
        )
    ]
    topic_names = dict(conn.execute("SELECT id, name FROM topics").fetchall())
    return [_describe_group(conn, group, topic_names, now) for group in names]


def _describe_group(
    conn: sqlite3.Connection, group: str, topic_names: dict[int, str], now: int
) -> GroupInfo:
    owners = {
        (tid, p): m
        for tid, p, m in conn.execute(
            "SELECT l.topic_id, l.partition, l.member FROM leases l JOIN members m"
            " ON m.grp = l.grp AND m.member = l.member"
            " WHERE l.grp=? AND m.expires_ms >= ?",
            (group, now),
        )
    }
    rows = conn.execute(
        "SELECT p.topic_id, p.partition, o.offset, p.next_offset, p.start_offset,"
        " coalesce(o.lost, 0) FROM partitions p LEFT JOIN group_offsets o"
        " ON o.grp=? AND o.topic_id=p.topic_id AND o.partition=p.partition"
        " WHERE p.topic_id IN (SELECT topic_id FROM group_offsets WHERE grp=?"
        "   UNION SELECT topic_id FROM leases WHERE grp=?)"
        " ORDER BY p.topic_id, p.partition",
        (group, group, group),
    ).fetchall()
    samples = read_samples(conn, group)
    parts = tuple(
        GroupPartition(
            group,
            topic_names[tid],
            p,
            committed,
            end,
            start,
            owners.get((tid, p)),
            lost=lost,
            samples=samples.get((tid, p), ()),
        )
        for tid, p, committed, end, start, lost in rows
    )
    members = tuple(
        MemberInfo(
            m,
            host,
            pid,
            tuple(sorted((topic_names[tid], p) for (tid, p), o in owners.items() if o == m)),
        )
        for m, host, pid in conn.execute(
            "SELECT member, host, pid FROM members WHERE grp=? AND expires_ms >= ? ORDER BY member",
            (group, now),
        )
    )
    return GroupInfo(group, tuple(sorted(parts, key=lambda r: (r.topic, r.partition))), members)


def set_group_offsets(
    conn: sqlite3.Connection, group: str, tid: int, offsets: Mapping[int, int], force: bool
) -> None:
    """Move a group's committed offsets (clamped to what is stored)."""
    require_topic(conn, tid)
    now = now_ms()
    live = conn.execute(
        "SELECT count(*) FROM members WHERE grp=? AND expires_ms >= ?", (group, now)
    ).fetchone()[0]
    if live and not force:
        raise GroupBusy(
            f"group {group!r} has {live} live member(s); stop its workers first, "
            "or pass --force (they will reload the new offsets)"
        )
    for p, offset in offsets.items():
        start, end = conn.execute(
            "SELECT start_offset, next_offset FROM partitions WHERE topic_id=? AND partition=?",
            (tid, p),
        ).fetchone()
        # A new generation: whatever was fetched before the reset can no longer be
        # committed, even by a member that takes the partition again at once.
        conn.execute(
            "INSERT INTO group_offsets(grp, topic_id, partition, offset, updated_ms, generation)"
            " VALUES (?,?,?,?,?,?) ON CONFLICT(grp, topic_id, partition)"
            " DO UPDATE SET offset=excluded.offset, updated_ms=excluded.updated_ms,"
            " generation=generation+1",
            (group, tid, p, min(max(offset, start), end), now, generation_base(tid) + 1),
        )
        # Live members lose these leases, so they drop what they hold in memory,
        # claim again, and start from the new offsets under the new generation.
        conn.execute(
            "DELETE FROM leases WHERE grp=? AND topic_id=? AND partition=?", (group, tid, p)
        )
