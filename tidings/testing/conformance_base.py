"""What the conformance suite's classes share: the transport and consumer fixtures, and
helpers to fill a topic and start group members (see :mod:`tidings.testing.conformance`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

try:
    import pytest
except ImportError as exc:  # pytest is a test dependency, not one of tidings'
    raise ImportError("tidings.testing needs pytest: pip install pytest (or tidings[dev])") from exc

from tidings.transport import Consumer, TopicPartition, Transport
from tidings.transports import open_transport

__all__ = ["ConformanceBase"]


class ConformanceBase:
    """The fixtures (``url``, ``transport``, ``consumers``) and helpers of the suite."""

    partitions = 4

    def open(self, url: str) -> Transport:
        return open_transport(url)

    @pytest.fixture
    def url(self) -> str:
        raise NotImplementedError("a conformance test class must define a url fixture")

    @pytest.fixture
    async def transport(self, url: str) -> AsyncIterator[Transport]:
        t = self.open(url)
        await t.start()
        try:
            yield t
        finally:
            await t.close()

    @pytest.fixture
    async def consumers(self, transport: Transport) -> AsyncIterator[list[Consumer]]:
        made: list[Consumer] = []
        yield made
        for c in made:
            await c.close()

    async def _member(
        self, transport: Transport, consumers: list[Consumer], group: str, **kw: Any
    ) -> Consumer:
        c = transport.consumer(group, ["t"], **kw)
        consumers.append(c)
        await c.start()
        return c

    async def _fill(self, transport: Transport, n: int, keys: int = 10) -> None:
        await transport.create_topic("t", self.partitions)
        await transport.append("t", [(f"k{i % keys}", f"v{i}".encode()) for i in range(n)])

    async def _balanced(self, members: list[Consumer], total: int) -> bool:
        owned = [m.assignment() for m in members]
        union = frozenset().union(*owned)
        return len(union) == total and sum(len(o) for o in owned) == total and all(owned)

    async def _committed(self, transport: Transport, group: str) -> dict[TopicPartition, int]:
        return {
            (p.topic, p.partition): p.committed
            for g in await transport.groups()
            if g.group == group
            for p in g.partitions
            if p.committed is not None
        }
