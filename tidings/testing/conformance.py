"""The transport conformance suite: what every transport must do.

A transport is done when :class:`TransportConformance` passes against it::

    import pytest
    from tidings.testing import TransportConformance

    class TestMyTransport(TransportConformance):
        @pytest.fixture
        def url(self, tmp_path):
            return "mine://..."

        def open(self, url):  # only if open_transport() does not know the scheme
            return MyTransport(url)

What a transport guarantees beyond the common core is declared in its
:class:`~tidings.transport.Capabilities`; the suite reads them (a non-persistent
transport is not asked to survive a reopen).

The suite is one class in four modules: the fixtures and helpers
(``conformance_base``), the tests of where a new group starts (``conformance_start``),
of deleting a topic (``conformance_delete``), and the rest, here.
"""

from __future__ import annotations

import asyncio
import time

try:
    import pytest
except ImportError as exc:  # pytest is a test dependency, not one of tidings'
    raise ImportError("tidings.testing needs pytest: pip install pytest (or tidings[dev])") from exc

from tidings.errors import ConfigError, GroupBusy, TopicNotFound
from tidings.testing.conformance_delete import TopicDeletionConformance
from tidings.testing.conformance_start import GroupStartConformance
from tidings.testing.helpers import drain, eventually
from tidings.transport import Consumer, Record, TopicPartition, Transport, positions

__all__ = ["TransportConformance"]


class TransportConformance(GroupStartConformance, TopicDeletionConformance):
    """What every transport must do. Subclass it with a ``url`` fixture."""

    # -- topics and appends -------------------------------------------------------

    async def test_create_topic_is_idempotent_and_keeps_its_partition_count(
        self, transport: Transport
    ) -> None:
        info = await transport.create_topic("t", 3)
        assert [p.partition for p in info.partitions] == [0, 1, 2]
        again = await transport.create_topic("t", 7)
        assert len(again.partitions) == 3

    async def test_append_gives_consecutive_offsets_per_partition(
        self, transport: Transport
    ) -> None:
        await transport.create_topic("t", self.partitions)
        placed = await transport.append("t", [(f"k{i % 7}", b"x") for i in range(100)])
        by_partition: dict[int, list[int]] = {}
        for partition, offset in placed:
            by_partition.setdefault(partition, []).append(offset)
        for offsets in by_partition.values():
            if transport.capabilities.dense_offsets:
                assert offsets == list(range(len(offsets)))
            else:  # growing in append order, numbered with the other partitions
                assert offsets == sorted(set(offsets))
        if not transport.capabilities.dense_offsets:
            assert sorted(o for _, o in placed) == list(range(100))

    async def test_one_key_goes_to_one_partition_in_order(self, transport: Transport) -> None:
        if not transport.capabilities.ordered_per_key:
            pytest.skip("transport declares ordered_per_key=False")
        await transport.create_topic("t", self.partitions)
        placed = await transport.append("t", [("same", str(i).encode()) for i in range(50)])
        assert len({p for p, _ in placed}) == 1
        partition = placed[0][0]
        got = await transport.read("t", partition, 0, 100)
        assert [r.value for r in got] == [str(i).encode() for i in range(50)]
        assert all(r.key == "same" for r in got)

    async def test_read_returns_the_bytes_appended(self, transport: Transport) -> None:
        payload = bytes(range(256)) * 10
        [(partition, offset)] = await transport.append("t", [("k", payload)])
        [record] = await transport.read("t", partition, offset, 1)
        assert record.value == payload
        assert record.topic == "t"
        assert record.timestamp > 0

    async def test_append_creates_a_missing_topic(self, transport: Transport) -> None:
        await transport.append("fresh", [(None, b"x")])
        assert "fresh" in [t.name for t in await transport.topics()]

    async def test_concurrent_appends_all_land_with_unique_offsets(
        self, transport: Transport
    ) -> None:
        await transport.create_topic("t", self.partitions)
        results = await asyncio.gather(
            *(transport.append("t", [(f"k{i}", b"v")]) for i in range(200))
        )
        positions = [pos for batch in results for pos in batch]
        assert len(set(positions)) == 200
        info = await transport.create_topic("t")
        assert info.events == 200

    async def test_topics_report_end_offsets_and_sizes(self, transport: Transport) -> None:
        await self._fill(transport, 40)
        [info] = [t for t in await transport.topics() if t.name == "t"]
        assert info.events == 40
        if transport.capabilities.dense_offsets:
            assert sum(p.end for p in info.partitions) == 40
        assert info.size == sum(len(f"v{i}") for i in range(40))

    async def test_unknown_topic_is_reported(self, transport: Transport) -> None:
        with pytest.raises(TopicNotFound):
            await transport.offsets_for_time("missing", 0)

    async def test_offsets_for_time_finds_the_first_record_at_or_after(
        self, transport: Transport
    ) -> None:
        if not transport.capabilities.seek_by_time:
            pytest.skip("transport declares seek_by_time=False")
        await transport.create_topic("t", 1)
        await transport.append("t", [("k", b"early")])
        await asyncio.sleep(0.05)
        middle = time.time_ns() // 1_000_000
        await asyncio.sleep(0.05)
        await transport.append("t", [("k", b"late")])
        assert await transport.offsets_for_time("t", middle) == {0: 1}
        assert await transport.offsets_for_time("t", 0) == {0: 0}
        assert await transport.offsets_for_time("t", middle + 3_600_000) == {0: 2}

    # -- groups ---------------------------------------------------------------------

    async def test_a_group_reads_everything_once_in_order_per_partition(
        self, transport: Transport, consumers: list[Consumer]
    ) -> None:
        await self._fill(transport, 300)
        c = await self._member(transport, consumers, "g")
        records = await drain(c, 300)
        assert sorted(r.value for r in records) == sorted(f"v{i}".encode() for i in range(300))
        for partition in range(self.partitions):
            offsets = [r.offset for r in records if r.partition == partition]
            assert offsets == sorted(offsets)
        assert await c.fetch(10, timeout=0.1) == []

    async def test_a_new_member_resumes_at_the_committed_offset(
        self, transport: Transport, consumers: list[Consumer]
    ) -> None:
        await self._fill(transport, 100)
        first = await self._member(transport, consumers, "g")
        got = await drain(first, 100)
        done = got[:40]
        await first.commit(positions(done))
        await first.close()
        second = await self._member(transport, consumers, "g")
        rest = await drain(second, 60)
        assert {(r.partition, r.offset) for r in rest} == {
            (r.partition, r.offset) for r in got[40:]
        }

    async def test_groups_are_independent(
        self, transport: Transport, consumers: list[Consumer]
    ) -> None:
        await self._fill(transport, 50)
        for group in ("a", "b", "c"):
            c = await self._member(transport, consumers, group)
            assert len(await drain(c, 50)) == 50

    async def test_a_consumer_needs_a_group_name_and_valid_topics(
        self, transport: Transport
    ) -> None:
        with pytest.raises(ConfigError, match="group needs a non-empty name"):
            transport.consumer("", ["t"])
        with pytest.raises(ConfigError, match="topic name"):
            transport.consumer("g", ["no spaces allowed"])

    async def test_fetch_wakes_promptly_on_append(
        self, transport: Transport, consumers: list[Consumer]
    ) -> None:
        await transport.create_topic("t", self.partitions)
        c = await self._member(transport, consumers, "g")

        async def later() -> None:
            await asyncio.sleep(0.2)
            await transport.append("t", [("k", b"x")])

        task = asyncio.create_task(later())
        started = time.monotonic()
        records = await c.fetch(10, timeout=5.0)
        waited = time.monotonic() - started
        await task
        assert [r.value for r in records] == [b"x"]
        assert waited < 1.0, f"fetch took {waited:.3f}s to see an append"

    async def test_fetch_returns_empty_after_the_timeout(
        self, transport: Transport, consumers: list[Consumer]
    ) -> None:
        await transport.create_topic("t", self.partitions)
        c = await self._member(transport, consumers, "g")
        started = time.monotonic()
        assert await c.fetch(10, timeout=0.3) == []
        assert 0.2 <= time.monotonic() - started < 2.0

    async def test_two_members_share_the_partitions_without_overlap(
        self, transport: Transport, consumers: list[Consumer]
    ) -> None:
        await self._fill(transport, 200)
        a = await self._member(transport, consumers, "g")
        b = await self._member(transport, consumers, "g")
        await eventually(lambda: self._balanced([a, b], self.partitions), what="a balanced group")
        assert not a.assignment() & b.assignment()

    async def test_a_leaving_members_partitions_move_to_the_others(
        self, transport: Transport, consumers: list[Consumer]
    ) -> None:
        await self._fill(transport, 10)
        a = await self._member(transport, consumers, "g")
        b = await self._member(transport, consumers, "g")
        await eventually(lambda: self._balanced([a, b], self.partitions), what="a balanced group")
        await a.close()
        consumers.remove(a)
        await eventually(
            lambda: len(b.assignment()) == self.partitions, what="the survivor owning everything"
        )

    async def test_revocation_lets_the_owner_commit_before_handing_over(
        self, transport: Transport, consumers: list[Consumer]
    ) -> None:
        await self._fill(transport, 100)
        holder: dict[str, Consumer] = {}
        got: list[Record] = []
        revoked: list[frozenset[TopicPartition]] = []

        async def on_revoke(tps: frozenset[TopicPartition]) -> None:
            revoked.append(tps)
            mine = [r for r in got if (r.topic, r.partition) in tps]
            await holder["a"].commit(positions(mine))

        a = await self._member(transport, consumers, "g", on_revoke=on_revoke)
        holder["a"] = a
        got += await drain(a, 100)
        b = await self._member(transport, consumers, "g")
        await eventually(lambda: self._balanced([a, b], self.partitions), what="a balanced group")
        assert revoked, "the first member was never asked to give partitions up"
        # Everything a handed over was committed in its callback: b sees nothing old.
        assert await b.fetch(100, timeout=0.3) == []

    async def test_commits_from_a_former_owner_are_ignored(
        self, transport: Transport, consumers: list[Consumer]
    ) -> None:
        await self._fill(transport, 40)
        a = await self._member(transport, consumers, "g")
        records = await drain(a, 40)
        b = await self._member(transport, consumers, "g")
        await eventually(lambda: self._balanced([a, b], self.partitions), what="a balanced group")
        lost = b.assignment()
        late = {tp: off for tp, off in positions(records).items() if tp in lost}
        await a.commit(late)  # a no longer owns these: the commit must not count
        rows = {
            (p.topic, p.partition): p.committed
            for g in await transport.groups()
            if g.group == "g"
            for p in g.partitions
        }
        for tp in lost:
            assert rows[tp] in (None, 0), f"a former owner moved {tp} to {rows[tp]}"

    async def test_groups_report_committed_end_lag_and_members(
        self, transport: Transport, consumers: list[Consumer]
    ) -> None:
        await self._fill(transport, 60)
        c = await self._member(transport, consumers, "g")
        records = await drain(c, 60)
        await c.commit(positions(records[:20]))
        [info] = [g for g in await transport.groups() if g.group == "g"]
        if transport.capabilities.dense_offsets:
            assert sum(p.end for p in info.partitions) == 60
            assert info.lag == 60 - sum(p.committed or 0 for p in info.partitions)
            assert info.lag >= 40
        else:  # the transport counts what is left: 20 of 60 were committed
            assert info.lag == 40
        assert [m.member for m in info.members] == [c.member]
        assert {p.member for p in info.partitions} == {c.member}

    async def test_offsets_cannot_be_reset_under_live_members_unless_forced(
        self, transport: Transport, consumers: list[Consumer]
    ) -> None:
        await self._fill(transport, 30)
        c = await self._member(transport, consumers, "g")
        await drain(c, 30)
        with pytest.raises(GroupBusy):
            await transport.set_offsets("g", "t", {0: 0})
        await transport.set_offsets("g", "t", dict.fromkeys(range(self.partitions), 0), force=True)
        await c.close()
        consumers.remove(c)
        again = await self._member(transport, consumers, "g")
        assert len(await drain(again, 30)) == 30

    async def test_a_forced_reset_moves_a_live_member_too(
        self, transport: Transport, consumers: list[Consumer]
    ) -> None:
        await transport.create_topic("t", 1)
        await transport.append("t", [("k", f"v{i}".encode()) for i in range(5)])
        c = await self._member(transport, consumers, "g")
        await c.commit(positions(await drain(c, 5)))
        await transport.set_offsets("g", "t", {0: 2}, force=True)
        again = await drain(c, 3)  # without leaving the group
        assert [r.value for r in again] == [b"v2", b"v3", b"v4"]

    async def test_a_forced_reset_fences_commits_of_records_fetched_before_it(
        self, transport: Transport, consumers: list[Consumer]
    ) -> None:
        await transport.create_topic("t", 1)
        await transport.append("t", [("k", f"v{i}".encode()) for i in range(5)])
        c = await self._member(transport, consumers, "g")
        before = await drain(c, 5)
        start = before[0].offset
        await transport.set_offsets("g", "t", {0: start}, force=True)
        # The member reads the partition again from the reset offset, without leaving.
        again = await drain(c, 5, timeout=30)
        assert [r.value for r in again] == [f"v{i}".encode() for i in range(5)]
        # Handled before the reset: its commit is refused, now that the member holds
        # the partition again, as it would be at any moment after the reset.
        await c.commit(positions(before))
        assert (await self._committed(transport, "g")).get(("t", 0)) == start
        await c.commit(positions(again))
        assert (await self._committed(transport, "g"))[("t", 0)] == again[-1].offset + 1

    async def test_a_former_owners_old_generation_is_refused_after_it_owns_again(
        self, transport: Transport, consumers: list[Consumer]
    ) -> None:
        await self._fill(transport, 40)
        a = await self._member(transport, consumers, "g")
        records = await drain(a, 40)
        b = await self._member(transport, consumers, "g")
        await eventually(
            lambda: self._balanced([a, b], self.partitions), timeout=30, what="a balanced group"
        )
        moved = b.assignment()
        await b.close()
        consumers.remove(b)
        await eventually(
            lambda: a.assignment() >= moved, timeout=30, what="the partitions back with a"
        )
        before = await self._committed(transport, "g")
        old = {tp: pos for tp, pos in positions(records).items() if tp in moved}
        await a.commit(old)  # fetched under the lease a lost in between: refused
        after = await self._committed(transport, "g")
        for tp in moved:
            assert after.get(tp) == before.get(tp), f"an old generation moved {tp}"

    async def test_reset_offsets_of_a_stopped_group_replays_from_there(
        self, transport: Transport, consumers: list[Consumer]
    ) -> None:
        await transport.create_topic("t", 1)
        await transport.append("t", [("k", f"v{i}".encode()) for i in range(10)])
        c = await self._member(transport, consumers, "g")
        await c.commit(positions(await drain(c, 10)))
        await c.close()
        consumers.remove(c)
        await transport.set_offsets("g", "t", {0: 7})
        again = await self._member(transport, consumers, "g")
        assert [r.value for r in await drain(again, 3)] == [b"v7", b"v8", b"v9"]

    # -- durability ----------------------------------------------------------------

    async def test_records_and_offsets_survive_a_reopen(self, url: str) -> None:
        first = self.open(url)
        if not first.capabilities.persistent:
            pytest.skip("transport declares persistent=False")
        await first.start()
        await first.create_topic("t", self.partitions)
        await first.append("t", [(f"k{i}", f"v{i}".encode()) for i in range(25)])
        c = first.consumer("g", ["t"])
        await c.start()
        records = await drain(c, 25)
        await c.commit(positions(records[:10]))
        await c.close()
        await first.close()

        second = self.open(url)
        await second.start()
        try:
            [info] = [t for t in await second.topics() if t.name == "t"]
            assert info.events == 25
            [group] = [g for g in await second.groups() if g.group == "g"]
            assert group.lag == 15
        finally:
            await second.close()
