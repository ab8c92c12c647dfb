"""Following one topic outside any group: what a worker reads of tidings' own control
topics (``_tidings.cancellations``, ``_tidings.erasures``) to learn what other processes
did. Written once for every transport, on the protocol's ``read``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from tidings.codec import DEFAULT_MAX_EVENT_BYTES, decode
from tidings.envelope import Event
from tidings.errors import DecodeError
from tidings.transport import Transport

__all__ = ["Follower"]

log = logging.getLogger("tidings.worker")

PAGE = 500  # records per read
MAX_PAGES = 10_000  # per partition and read: the rest waits for the next read


class Follower:
    """Reads ``topic`` from ``positions`` (partition -> next offset, set before the
    first read) and gives each event to ``learn``; records that do not decode are
    passed over (nothing to learn from them)."""

    def __init__(
        self, transport: Transport, topic: str, learn: Callable[[Event], None], poll: float
    ) -> None:
        self.transport = transport
        self.topic = topic
        self.learn = learn
        self.poll = poll
        self.positions: dict[int, int] = {}

    async def read(self) -> int:
        """Read what was appended since the last read; return how many records."""
        count = 0
        for partition, offset in list(self.positions.items()):
            for _ in range(MAX_PAGES):
                records = await self.transport.read(self.topic, partition, offset, PAGE)
                if not records:
                    break
                for record in records:
                    try:
                        event = decode(
                            record.value, max(len(record.value), DEFAULT_MAX_EVENT_BYTES)
                        )
                    except DecodeError:
                        continue
                    self.learn(event)
                offset = records[-1].offset + 1
                self.positions[partition] = offset
                count += len(records)
        return count

    async def follow(self, stop: asyncio.Event) -> None:
        """Read every ``poll`` seconds until ``stop`` is set (a read that fails is
        logged and tried again at the next)."""
        while not stop.is_set():  # as long as its owner runs
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll)
            if stop.is_set():
                return
            try:
                await self.read()
            except Exception:
                log.warning("reading %s failed; trying again", self.topic, exc_info=True)
