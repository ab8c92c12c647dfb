"""Anchoring the audit files' heads outside them (decision 0032): the audit service
publishes ``audit.checkpointed`` (a day, its file's line count and newest MAC) to the
topic ``audit-checkpoints``, and ``taskapi audit verify`` reads them back.

A keyed chain shows a changed line, but not lines cut from the end of a file or a file
deleted: nothing in the files is left to miss them. A checkpoint in the log is: the
verifier finds a file shorter than a checkpoint of its day, or a line whose MAC is not
the one its checkpoint recorded, or a day with checkpoints and no file.

When: every ``every`` lines of a day's file (``TASKAPI_AUDIT_CHECKPOINT``), for every
file with lines not yet anchored when the UTC day (of ``today()``) changes (seen at the
next append, or within ``tick`` seconds), when the service stops, and when it starts
(the files' heads on disk past their day's last checkpoint in the log: what a killed
service left unanchored). Lines written after the last checkpoint of their day are
covered by the keyed chain only; the verifier reports them as not yet anchored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from taskapi.audit_log import Head, heads_on_disk
from taskapi.events import CHECKPOINTS, AuditCheckpointed
from tidings import DecodeError, Tidings, TopicNotFound, Transport, decode

__all__ = ["Checkpoint", "Checkpoints", "read_checkpoints"]

log = logging.getLogger(__name__)
_BATCH = 500


def _utc_today() -> date:
    return datetime.now(UTC).date()


class Checkpoints:
    """Publishes the audit files' heads on ``app`` (a component of the audit service:
    :meth:`run` publishes the last heads when the worker stops)."""

    name = "audit-checkpoints"

    def __init__(
        self,
        app: Tidings,
        kid: str,
        every: int,
        today: Callable[[], date] = _utc_today,
        *,
        folder: Path | None = None,
        tick: float = 60.0,
    ) -> None:
        self.app = app
        self.kid = kid
        self.every = every
        self.today = today
        self.tick = tick
        # The heads on disk before this process appends anything (read when the service
        # is built, before its worker runs): what :meth:`resume` anchors.
        self.on_disk = heads_on_disk(folder) if folder is not None else []
        self._day = today()
        self.heads: dict[str, Head] = {}  # day -> the newest head this process wrote
        self.anchored: dict[str, int] = {}  # day -> the lines of its last checkpoint
        self._writing = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        """Around an append and :meth:`appended`: the checkpoints at stop wait for it."""
        self._writing += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._writing -= 1
            if not self._writing:
                self._idle.set()

    async def appended(self, head: Head) -> list[Head]:
        """Note a file's new head; publish the checkpoints now due. Returns them."""
        known = self.heads.get(head.day)
        if known is None or head.lines > known.lines:
            self.heads[head.day] = head
        rolled = await self.roll()
        if rolled:
            return rolled
        if head.lines - self.anchored.get(head.day, 0) >= self.every:
            return await self.publish([self.heads[head.day]])
        return []

    async def roll(self) -> list[Head]:
        """If the UTC day rolled over since the last look, anchor every file's last
        lines; the checkpoints published."""
        today = self.today()
        if today == self._day:
            return []
        self._day = today
        return await self.publish(self.pending())

    async def resume(self) -> list[Head]:
        """At start: take each day's last checkpoint from the log, and anchor the heads
        that were on disk past it (lines a killed service left unanchored); the
        checkpoints published."""
        for checkpoint in await read_checkpoints(self.app.transport):
            if checkpoint.lines > self.anchored.get(checkpoint.day, 0):
                self.anchored[checkpoint.day] = checkpoint.lines
        return await self.publish(self.on_disk)

    def pending(self) -> list[Head]:
        """The heads with lines after their day's last checkpoint."""
        return [h for d, h in sorted(self.heads.items()) if h.lines > self.anchored.get(d, 0)]

    async def publish(self, heads: list[Head]) -> list[Head]:
        """Publish a checkpoint of each head past its day's last one; those published."""
        done = []
        for head in heads:
            before = self.anchored.get(head.day, 0)
            if head.lines <= before:
                continue  # published meanwhile
            # Claimed before the await, so that a concurrent handler does not publish
            # the same head; given back if the publish fails (the next one covers it).
            self.anchored[head.day] = head.lines
            payload = AuditCheckpointed(day=head.day, lines=head.lines, mac=head.mac, kid=self.kid)
            try:
                await self.app.publish(CHECKPOINTS, payload)
            except BaseException:
                if self.anchored.get(head.day) == head.lines:
                    self.anchored[head.day] = before
                raise
            log.info("checkpoint of audit-%s.jsonl: %d lines", head.day, head.lines)
            done.append(head)
        return done

    async def run(self, stop: asyncio.Event) -> None:
        """:meth:`resume`; then look at the day every ``tick`` seconds until the worker
        stops; then wait for the appends under way and anchor what is not anchored.
        A failed publish is logged and left to the next checkpoint: the audit goes on."""
        await self._logged(self.resume(), "at start")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.tick)
            await self._logged(self.roll(), "at the day roll")
        await self._idle.wait()
        await self.publish(self.pending())

    async def _logged(self, work: Awaitable[list[Head]], when: str) -> None:
        try:
            await work
        except Exception:
            log.exception("audit checkpoints %s failed; the next checkpoint covers them", when)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One ``audit.checkpointed`` event as read from the log, with its offset."""

    day: str
    lines: int
    mac: str
    kid: str
    offset: int


async def read_checkpoints(transport: Transport) -> list[Checkpoint]:
    """Every checkpoint in the log ``transport`` (started) holds, in log order; none if
    the topic does not exist. An event that is not a checkpoint is skipped, logged."""
    found: list[Checkpoint] = []
    offset = 0
    while True:
        try:
            records = await transport.read(CHECKPOINTS, 0, offset, _BATCH)
        except TopicNotFound:
            return found
        if not records:
            return found
        for record in records:
            offset = record.offset + 1
            try:
                event = decode(record.value)
                if event.type != "audit.checkpointed":
                    continue
                data = AuditCheckpointed.model_validate(event.data)
            except (DecodeError, ValueError) as exc:
                log.warning("%s@%d is not a checkpoint: %s", CHECKPOINTS, record.offset, exc)
                continue
            found.append(Checkpoint(data.day, data.lines, data.mac, data.kid, record.offset))
