"""The conformance suite's tests of where a group starts (part of
:class:`~tidings.testing.TransportConformance`, which every transport runs).

The promise: a group's start is fixed the first time it joins (for ``latest`` the end
of each partition at that moment, for ``earliest`` its beginning); from then on the
group resumes from its offsets, whatever restarts happen, and ``start_from`` no longer
counts. A member that stops before anything came must not move the start to a later
end when it comes back: the events in between would be lost to the group.
"""

from __future__ import annotations

import asyncio
import operator

try:
    import pytest
except ImportError as exc:  # pytest is a test dependency, not one of tidings'
    raise ImportError("tidings.testing needs pytest: pip install pytest (or tidings[dev])") from exc

from tidings.testing.conformance_base import ConformanceBase
from tidings.testing.helpers import drain, eventually
from tidings.transport import Consumer, StartFrom, Transport

__all__ = ["GroupStartConformance"]


class GroupStartConformance(ConformanceBase):
    """Where a new group starts, and that it starts there once only."""

    async def test_a_new_group_can_start_at_the_latest_offset(
        self, transport: Transport, consumers: list[Consumer]
    ) -> None:
        await self._fill(transport, 20)
        c = await self._member(transport, consumers, "late", start_from="latest")
        # Appended as soon as the member is started: after its start, so it is read
        # (on Kafka librdkafka looked the end up later, at its first fetch, and
        # skipped it now and then).
        await transport.append("t", [("k", b"new")])
        [record] = await drain(c, 1)
        assert record.value == b"new"
        assert await c.fetch(100, timeout=0.2) == []  # and none of the 20 before it

    async def test_a_latest_group_keeps_the_start_of_its_first_join_across_restarts(
        self, transport: Transport, consumers: list[Consumer]
    ) -> None:
        await self._fill(transport, 20)
        first = await self._member(transport, consumers, "late", start_from="latest")
        assert len(first.assignment()) == self.partitions
        await first.close()  # nothing came, so its worker would have committed nothing
        await transport.append("t", [(f"k{i}", f"after-{i}".encode()) for i in range(8)])
        # Back, as latest again: from where it first joined, so the 8 are not lost.
        again = await self._member(transport, consumers, "late", start_from="latest")
        got = await drain(again, 8)
        assert sorted(r.value for r in got) == [f"after-{i}".encode() for i in range(8)]
        assert await again.fetch(100, timeout=0.2) == []  # and none of the 20 before

    async def test_members_joining_a_new_group_together_fix_every_partitions_start(
        self, transport: Transport, consumers: list[Consumer]
    ) -> None:
        await self._fill(transport, 20)
        pair = [transport.consumer("pair", ["t"], start_from="latest") for _ in range(2)]
        consumers.extend(pair)
        await asyncio.gather(*(m.start() for m in pair))
        await eventually(
            lambda: len(pair[0].assignment() | pair[1].assignment()) == self.partitions,
            what="every partition given to one of the two",
        )
        for m in pair:
            await m.close()
        await transport.append("t", [(f"k{i}", f"after-{i}".encode()) for i in range(8)])
        again = await self._member(transport, consumers, "pair", start_from="latest")
        got = await drain(again, 8)
        assert sorted(r.value for r in got) == [f"after-{i}".encode() for i in range(8)]
        assert await again.fetch(100, timeout=0.2) == []

    @pytest.mark.parametrize("start_from", ["latest", "earliest"])
    async def test_a_new_groups_start_is_its_offsets_from_its_first_join(
        self, transport: Transport, consumers: list[Consumer], start_from: StartFrom
    ) -> None:
        await self._fill(transport, 20)
        first = await self._member(transport, consumers, "g", start_from=start_from)
        # Shown before it handled anything (lag counts from there) and kept when it goes.
        [info] = [t for t in await transport.topics() if t.name == "t"]
        pick = operator.attrgetter("end" if start_from == "latest" else "start")
        start = {("t", p.partition): pick(p) for p in info.partitions}
        assert await self._committed(transport, "g") == start
        await first.close()
        # The other start_from changes nothing now: the group resumes from its offsets.
        other: StartFrom = "earliest" if start_from == "latest" else "latest"
        again = await self._member(transport, consumers, "g", start_from=other)
        await transport.append("t", [("k", b"new")])
        want = [f"v{i}".encode() for i in range(20)] if start_from == "earliest" else []
        want.append(b"new")
        got = await drain(again, len(want))
        assert sorted(r.value for r in got) == sorted(want)
        assert await again.fetch(100, timeout=0.2) == []
