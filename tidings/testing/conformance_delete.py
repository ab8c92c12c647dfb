"""The conformance suite's tests of ``Transport.delete_topic`` (part of
:class:`~tidings.testing.TransportConformance`, which every transport runs)."""

from __future__ import annotations

try:
    import pytest
except ImportError as exc:  # pytest is a test dependency, not one of tidings'
    raise ImportError("tidings.testing needs pytest: pip install pytest (or tidings[dev])") from exc

from tidings.errors import TopicNotFound
from tidings.testing.conformance_base import ConformanceBase
from tidings.testing.helpers import drain
from tidings.transport import Consumer, Transport, positions

__all__ = ["TopicDeletionConformance"]


class TopicDeletionConformance(ConformanceBase):
    """Deleting a topic: its records and the groups' offsets on it go; nothing else."""

    async def _names(self, transport: Transport) -> set[str]:
        return {t.name for t in await transport.topics()}

    async def test_a_deleted_topic_and_its_records_are_gone(self, transport: Transport) -> None:
        await self._fill(transport, 30)
        await transport.create_topic("other", 2)
        await transport.append("other", [("k", b"kept")])
        await transport.delete_topic("t")
        assert "t" not in await self._names(transport)
        with pytest.raises(TopicNotFound):
            await transport.read("t", 0, 0, 10)
        with pytest.raises(TopicNotFound):
            await transport.offsets_for_time("t", 0)
        [other] = [t for t in await transport.topics() if t.name == "other"]
        assert other.events == 1

    async def test_deleting_a_missing_topic_raises_topic_not_found(
        self, transport: Transport
    ) -> None:
        with pytest.raises(TopicNotFound):
            await transport.delete_topic("never-made")
        await self._fill(transport, 3)
        await transport.delete_topic("t")
        with pytest.raises(TopicNotFound):
            await transport.delete_topic("t")  # deleted already

    async def test_an_append_after_a_delete_makes_the_topic_again_empty(
        self, transport: Transport
    ) -> None:
        await self._fill(transport, 30)
        await transport.delete_topic("t")
        [(partition, offset)] = await transport.append("t", [("k", b"new")])
        [info] = [t for t in await transport.topics() if t.name == "t"]
        assert info.events == 1
        assert [r.value for r in await transport.read("t", partition, 0, 100)] == [b"new"]
        [record] = await transport.read("t", partition, offset, 1)
        assert record.value == b"new"

    async def test_a_delete_drops_the_groups_offsets_on_it_and_only_those(
        self, transport: Transport, consumers: list[Consumer]
    ) -> None:
        await self._fill(transport, 30)
        await transport.create_topic("other", 1)
        await transport.append("other", [("k", f"o{i}".encode()) for i in range(5)])
        c = transport.consumer("g", ["t", "other"])
        consumers.append(c)
        await c.start()
        got = await drain(c, 35)
        await c.commit(positions(got))
        before = await self._committed(transport, "g")
        await c.close()
        consumers.remove(c)
        await transport.delete_topic("t")
        after = await self._committed(transport, "g")
        assert not [tp for tp in after if tp[0] == "t"], f"offsets left on t: {after}"
        assert after[("other", 0)] == before[("other", 0)]
        # Made again: the group starts there afresh (start_from), not at its old offsets.
        await self._fill(transport, 12)
        again = await self._member(transport, consumers, "g")
        assert sorted(r.value for r in await drain(again, 12)) == sorted(
            f"v{i}".encode() for i in range(12)
        )
