"""``sqlite:///path/events.db``: the embedded, durable log in one SQLite file.

URL options (query string): ``partitions`` (default partition count of new topics,
8), ``synchronous`` (``FULL``, the default: an acknowledged append survives a power
loss; ``NORMAL``: it survives a crash of the process or of the OS, but the last
commits before a power loss may be lost), ``lease`` (seconds a worker's partition
lease lasts without a heartbeat, 10), ``busy_timeout`` (seconds to wait for another
process's write, 30).

All writes of a process go through one writer thread that puts every write that
arrives while the previous transaction commits into the next one (group commit), each
in its own savepoint, so one failing write never fails its neighbours (``writer.py``).
The transport and its consumers reach the file through one ``LogClient``
(``client.py``), which also translates sqlite3's errors.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

from tidings.errors import ConfigError, TopicNotFound
from tidings.transport import (
    Capabilities,
    Clock,
    Consumer,
    FaultHook,
    GroupInfo,
    Record,
    RevokeCallback,
    StartFrom,
    TopicInfo,
    Transport,
)
from tidings.transports.sqlite.client import LogClient
from tidings.transports.sqlite.consumer import SQLiteConsumer
from tidings.transports.sqlite.sql import (
    delete_below,
    delete_topic,
    describe_groups,
    in_one_snapshot,
    offsets_for_time,
    require_topic,
    retention_cuts,
    set_group_offsets,
    topic_info,
)

__all__ = ["SQLiteTransport"]

log = logging.getLogger("tidings.sqlite")


def _parse_url(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc:
        raise ConfigError(
            f"not a SQLite log URL: {url!r}; write sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not path:
        raise ConfigError(f"SQLite log URL {url!r} names no file, e.g. sqlite:///./tidings.db")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    known = {"partitions", "synchronous", "lease", "busy_timeout"}
    unknown = set(query) - known
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(sorted(unknown))} in {url!r}; "
            f"known: {', '.join(sorted(known))}"
        )
    return path, query


def _number(query: dict[str, str], name: str, default: float, url: str) -> float:
    try:
        value = float(query.get(name, default))
    except ValueError:
        raise ConfigError(f"option {name}={query[name]!r} in {url!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"option {name} in {url!r} must be > 0, got {value}")
    return value


class SQLiteTransport(Transport):
    """The log in one SQLite file (see the module doc); its statements run through a
    :class:`~tidings.transports.sqlite.client.LogClient`, shared with its consumers."""

    capabilities = Capabilities(persistent=True, multi_process=True)

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.create = create
        self.path, query = _parse_url(url)
        self.default_partitions = int(_number(query, "partitions", 8, url))
        self.synchronous = query.get("synchronous", "FULL").upper()
        if self.synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ConfigError(
                f"option synchronous={self.synchronous!r} in {url!r}: use FULL (survives "
                "power loss, the default) or NORMAL (faster; survives process crashes only)"
            )
        self.lease_ms = int(_number(query, "lease", 10, url) * 1000)
        self.busy_timeout = _number(query, "busy_timeout", 30, url)
        self._client = LogClient(
            url,
            self.path,
            create=create,
            synchronous=self.synchronous,
            busy_timeout=self.busy_timeout,
            lease_ms=self.lease_ms,
            default_partitions=self.default_partitions,
        )
        self._last_retention = 0.0
        self._retention: asyncio.Task[None] | None = None
        self._retaining = asyncio.Lock()
        self.retention_interval = 30.0

    # The client judges leases and stamps records by the transport's clock, and calls
    # its fault hook: both live there, so that replacing them here reaches it.

    @property
    def clock(self) -> Clock:
        return self._client.clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        self._client.clock = clock

    @property
    def fault_hook(self) -> FaultHook | None:
        return self._client.fault_hook

    @fault_hook.setter
    def fault_hook(self, hook: FaultHook | None) -> None:
        self._client.fault_hook = hook

    async def start(self) -> None:
        await self._client.start()

    async def close(self) -> None:
        if not self._client.started:
            return
        # Let background writes end while the transport still accepts them.
        if self._retention is not None:
            await asyncio.gather(self._retention, return_exceptions=True)
        await self._client.close()

    async def wait_for_appends(self, timeout: float) -> None:
        await self._client.appended.wait(timeout)

    # -- topics ---------------------------------------------------------------

    async def create_topic(
        self,
        topic: str,
        partitions: int | None = None,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        keep_unread: bool = False,
    ) -> TopicInfo:
        await self._client.create_topic(
            topic,
            partitions,
            retention_ms=retention_ms,
            retention_bytes=retention_bytes,
            keep_unread=keep_unread,
        )
        return await self._client.read(lambda c: topic_info(c, topic, self.url))

    async def delete_topic(self, topic: str) -> None:
        """In one transaction (see :func:`~tidings.transports.sqlite.sql.delete_topic`);
        then the WAL, grown by the deleted pages, is checkpointed back to its limit."""
        now = self.clock.time_ms()
        tid = await self._client.write(lambda c: delete_topic(c, topic, self.url, now))
        self._client.forget(topic, tid)
        self._client.appended.notify()  # members in this process let go of it sooner
        await self._client.run_alone(
            lambda c: c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall() and None
        )

    async def topics(self) -> list[TopicInfo]:
        def job(conn: sqlite3.Connection) -> list[TopicInfo]:
            names = [r[0] for r in conn.execute("SELECT name FROM topics ORDER BY name")]
            return [topic_info(conn, n, self.url) for n in names]

        # In one snapshot: a topic deleted meanwhile is not listed and then not found.
        return await self._client.read(lambda c: in_one_snapshot(c, lambda: job(c)))

    # -- append ---------------------------------------------------------------

    async def append(
        self, topic: str, records: Sequence[tuple[str | None, bytes]]
    ) -> list[tuple[int, int]]:
        client = self._client
        ids = client.topic_ids.get(topic)
        if ids is None:
            ids = await client.create_topic(topic)
        try:
            result = await client.append(ids, records)
        except TopicNotFound:  # deleted since its id was cached: made again, as missing
            client.forget(topic, ids[0])
            result = await client.append(await client.create_topic(topic), records)
        if time.monotonic() - self._last_retention > self.retention_interval:
            # In the background: the publish that happens to trigger it must not wait.
            self._last_retention = time.monotonic()
            self._retention = asyncio.get_running_loop().create_task(self._retain_quietly())
        return result

    async def _retain_quietly(self) -> None:
        try:
            await self.enforce_retention()
        except Exception:
            log.exception("enforcing retention on %s failed; will try again", self.url)

    async def enforce_retention(self) -> int:
        """Delete records past their topic's age or size limit; return how many.

        In transactions of at most RETENTION_BATCH records, so that appends, commits
        and heartbeats of every process get the write lock in between (one transaction
        for 400,000 records held it 2.4 s; a lease-length hold expires every lease).
        Records a group had not read yet are reported (a WARNING, and the group's
        ``lost`` count in ``tidings groups``); a topic made with ``keep_unread`` keeps
        them while the group is live. Then the WAL is checkpointed, back to its limit.
        """
        async with self._retaining:  # one run at a time (the background one, a caller's)
            return await self._enforce_retention()

    async def _enforce_retention(self) -> int:
        client = self._client
        live = await client.read(self._live_groups)
        now = self.clock.time_ms()
        cuts = await client.read(lambda c: in_one_snapshot(c, lambda: retention_cuts(c, now, live)))
        removed = 0
        skipped: dict[tuple[str, int, int], list[int]] = {}  # (group, topic id, p) -> span
        for tid, p, cut, keep_unread in cuts:
            done = False
            while not done:
                keep_for = live if keep_unread else None
                job = functools.partial(delete_below, tid=tid, p=p, cut=cut, keep_for=keep_for)
                count, done, lost = await client.write(job, durable=False)
                removed += count
                for group, first, last in lost:
                    span = skipped.setdefault((group, tid, p), [first, last, 0])
                    span[1] = last
                    span[2] += last - first + 1
        names = {tid: name for name, (tid, _) in client.topic_ids.items()}
        for (group, tid, p), (first, last, count) in skipped.items():
            log.warning(
                "retention removed %d record(s) of %s[%d] that group %s had not read "
                "(offsets %d..%d); they are skipped (see 'tidings groups', column lost)",
                count, names.get(tid, f"topic #{tid}"), p, group, first, last,
            )  # fmt: skip
        if removed:
            await client.run_alone(
                lambda c: c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall() and None
            )
        return removed

    def _live_groups(self, conn: sqlite3.Connection) -> set[str]:
        """Groups with a member whose beat this process has not seen stand still for a
        lease length (a process that just started counts every member live)."""
        rows = conn.execute("SELECT grp, member, beat FROM members").fetchall()
        return {g for g, m, beat in rows if not self._client.leases.expired((g, m), beat)}

    # -- reading outside groups -----------------------------------------------

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        tid, count = await self._client.ids(topic)
        if not 0 <= partition < count:
            raise ConfigError(f"topic {topic!r} has partitions 0..{count - 1}, not {partition}")

        def job(conn: sqlite3.Connection) -> list[tuple[int, int, str | None, bytes]]:
            rows = conn.execute(
                "SELECT offset, ts, key, value FROM events WHERE topic_id=? AND partition=?"
                " AND offset >= ? ORDER BY offset LIMIT ?",
                (tid, partition, offset, limit),
            ).fetchall()
            if not rows:
                require_topic(conn, tid)  # empty, or deleted since its id was cached?
            return rows

        try:
            rows = await self._client.read(job)
        except TopicNotFound:
            raise self._deleted(topic, tid) from None
        return [Record(topic, partition, o, ts, k, v) for o, ts, k, v in rows]

    async def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        tid, count = await self._client.ids(topic)
        try:
            return await self._client.read(lambda c: offsets_for_time(c, tid, count, timestamp_ms))
        except TopicNotFound:
            raise self._deleted(topic, tid) from None

    def _deleted(self, topic: str, tid: int) -> TopicNotFound:
        """The error for ``topic``, deleted (by another process) since this one cached its
        id ``tid``, which is forgotten: the next use looks it up, or makes it, again."""
        self._client.forget(topic, tid)
        return TopicNotFound(f"topic {topic!r} does not exist in {self.url}; see 'tidings topics'")

    # -- groups ---------------------------------------------------------------

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        start_from: StartFrom = "earliest",
        on_revoke: RevokeCallback | None = None,
    ) -> Consumer:
        return SQLiteConsumer(self._client, group, list(topics), start_from, on_revoke)

    async def groups(self) -> list[GroupInfo]:
        return await self._client.read(describe_groups)

    async def set_offsets(
        self, group: str, topic: str, offsets: Mapping[int, int], *, force: bool = False
    ) -> None:
        tid, count = await self._client.ids(topic)
        bad = [p for p in offsets if not 0 <= p < count]
        if bad:
            raise ConfigError(f"topic {topic!r} has partitions 0..{count - 1}, not {bad}")

        try:
            await self._client.write(lambda c: set_group_offsets(c, group, tid, offsets, force))
        except TopicNotFound:
            raise self._deleted(topic, tid) from None
