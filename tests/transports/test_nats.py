"""The NATS JetStream transport against a real nats-server: the conformance suite,
and what is particular to JetStream (docs/nats.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tidings.partitioning import partition_for
from tidings.testing import TransportConformance, eventually
from tidings.transport import Transport
from tidings.transports import open_transport
from tidings.transports.nats import KEY_HEADER, NatsTransport
from tidings.transports.nats.consumer import NatsConsumer, _ack_fields, _Partition

pytestmark = pytest.mark.integration


class TestNatsTransport(TransportConformance):
    @pytest.fixture
    def url(self, nats_url: str) -> str:
        return nats_url + "&partitions=4"

    async def test_topics_report_end_offsets_and_sizes(self, transport: Transport) -> None:
        # NATS counts a stream's stored bytes with each message's subject, headers and
        # framing, so a topic's size is more than its payloads.
        await self._fill(transport, 40)
        [info] = [t for t in await transport.topics() if t.name == "t"]
        assert info.events == 40
        assert [p.events for p in info.partitions] == [
            len([i for i in range(40) if partition_for(f"k{i % 10}", 4) == p]) for p in range(4)
        ]
        assert info.size > sum(len(f"v{i}") for i in range(40))
        assert {p.end for p in info.partitions} == {40}  # the stream's last sequence


# -- deliveries: what a member does with each message of a pull ------------------------


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.S_t.g-0.3.41.40.1700000000000000041.7",
        # with a JetStream domain and an account hash before the stream, and a token after
        "$JS.ACK.hub.ACCHASH.S_t.g-0.3.41.40.1700000000000000041.7.x9Zq",
    ],
)
def test_the_stream_sequence_delivery_and_time_are_read_from_either_ack_subject(
    reply: str,
) -> None:
    assert _ack_fields(reply) == (41, 40, 1_700_000_000_000_000_041)


class _Msg:
    """A JetStream message as nats-py hands it to the member's pull subscription."""

    def __init__(self, sseq: int, cseq: int, data: bytes = b"x") -> None:
        self.reply = f"$JS.ACK.t.g-0.1.{sseq}.{cseq}.{1_700_000_000_000_000_000 + sseq}.0"
        self.data = data
        self.headers = {KEY_HEADER: "k"}


@pytest.fixture
async def member(nats_url: str) -> AsyncIterator[tuple[NatsConsumer, _Partition, list[str]]]:
    """A started member owning partition 0 of ``t``, fed messages by hand; the acks it
    sends again are recorded instead of sent."""
    transport = open_transport(nats_url + "&partitions=1")
    await transport.start()
    consumer = transport.consumer("g", ["t"])
    assert isinstance(consumer, NatsConsumer)
    await consumer.start()
    part = consumer._parts[("t", 0)]
    acked: list[str] = []
    resyncs: list[int] = []

    async def ack_again(reply: str) -> None:
        acked.append(reply)

    async def resync(p: _Partition) -> None:
        resyncs.append(p.partition)

    consumer._ack_again = ack_again  # type: ignore[method-assign]
    consumer._resync = resync  # type: ignore[method-assign]
    part.sub = object()  # deliveries are accepted; no pull is sent from here on
    part.remaining = 10**6
    try:
        yield consumer, part, acked
    finally:
        part.sub = None
        await consumer.close()
        await transport.close()


async def test_deliveries_become_records_in_offset_order(member) -> None:
    consumer, part, _ = member
    for sseq, cseq in ((1, 1), (3, 2), (4, 3)):
        consumer._deliver(part, _Msg(sseq, cseq))
    records = await consumer.fetch(10, timeout=0.1)
    assert [(r.offset, r.key) for r in records] == [(0, "k"), (2, "k"), (3, "k")]
    assert records[0].timestamp == 1_700_000_000_000


async def test_a_redelivery_of_a_committed_event_is_acknowledged_again_not_handled(
    member,
) -> None:
    consumer, part, acked = member
    consumer._deliver(part, _Msg(1, 1))
    consumer._deliver(part, _Msg(2, 2))
    assert len(await consumer.fetch(10, timeout=0.1)) == 2
    part.acks.clear()  # as after a commit whose acks the server never got
    late = _Msg(1, 3)  # ack_wait ran out: the server sends sequence 1 again
    consumer._deliver(part, late)
    await asyncio.sleep(0)
    assert acked == [late.reply]
    assert await consumer.fetch(10, timeout=0.1) == []


async def test_a_redelivery_of_a_held_event_only_renews_its_ack_subject(member) -> None:
    consumer, part, acked = member
    consumer._deliver(part, _Msg(1, 1))
    again = _Msg(1, 2)
    consumer._deliver(part, again)
    assert [r.offset for r in await consumer.fetch(10, timeout=0.1)] == [0]
    assert part.acks[0][0] == again.reply
    assert acked == []


async def test_a_gap_in_delivery_sequences_resyncs_instead_of_skipping_ahead(member) -> None:
    consumer, part, _ = member
    consumer._deliver(part, _Msg(1, 1))
    consumer._deliver(part, _Msg(5, 3))  # delivery 2 was lost on the way
    await asyncio.sleep(0)
    assert part.resync
    consumer._deliver(part, _Msg(6, 4))  # sent before the reset: dropped
    assert [r.offset for r in await consumer.fetch(10, timeout=0.1)] == [0]
    # After the reset, deliveries restart at 1 from the ack floor: the held event only
    # renews its subject, the lost ones come in order.
    for sseq, cseq in ((1, 1), (3, 2), (5, 3), (6, 4)):
        consumer._deliver(part, _Msg(sseq, cseq))
    assert not part.resync
    assert [r.offset for r in await consumer.fetch(10, timeout=0.1)] == [2, 4, 5]


async def test_a_reset_under_the_member_fences_it_and_it_claims_again(member) -> None:
    consumer, part, _ = member
    for sseq, cseq in ((1, 1), (2, 2), (3, 3)):
        consumer._deliver(part, _Msg(sseq, cseq))
    held = await consumer.fetch(10, timeout=0.1)
    old = consumer.generation(("t", 0))
    assert old is not None
    assert {r.generation for r in held} == {old}
    # The group was reset to offset 0 under this member (not by set_offsets, which
    # takes the lease first): what it held is void, and so are its positions.
    consumer._deliver(part, _Msg(1, 1))
    assert consumer.generation(("t", 0)) is None
    assert await consumer.fetch(10, timeout=0.05) == []
    # It claims the partition again, under a new generation.
    await eventually(lambda: consumer.generation(("t", 0)) is not None, what="a new claim")
    assert consumer.generation(("t", 0)) > old  # type: ignore[operator]


async def test_stream_settings_come_from_the_url_and_per_topic_options(nats_server: str) -> None:
    url = (
        f"nats://{nats_server}?partitions=3&storage=memory&max_age=1h&duplicate_window=30s"
        "&topic.audit.storage=file&topic.audit.max_age=30d&topic.audit.max_bytes=1MB"
        "&topic.audit.partitions=2"
    )
    transport = open_transport(url)
    await transport.start()
    try:
        assert not transport.capabilities.persistent  # memory storage by default
        await transport.create_topic("events")
        await transport.create_topic("audit")
        await transport.create_topic("short", retention_ms=60_000, retention_bytes=4096)
        info = {t.name: t for t in await transport.topics()}
        configs = {
            name: (await transport.client.stream_info(name))["config"]  # type: ignore[attr-defined]
            for name in ("events", "audit", "short")
        }
    finally:
        await transport.close()
    assert len(info["events"].partitions) == 3
    assert len(info["audit"].partitions) == 2
    assert configs["events"]["storage"] == "memory"
    assert configs["events"]["max_age"] == 3600 * 10**9
    assert configs["events"]["duplicate_window"] == 30 * 10**9
    assert configs["audit"]["storage"] == "file"
    assert configs["audit"]["max_age"] == 30 * 86400 * 10**9
    assert configs["audit"]["max_bytes"] == 1 << 20
    assert (info["audit"].retention_ms, info["audit"].retention_bytes) == (30 * 86_400_000, 1 << 20)
    assert configs["short"]["max_age"] == 60 * 10**9
    assert configs["short"]["max_bytes"] == 4096
    assert configs["short"]["duplicate_window"] <= configs["short"]["max_age"]
    assert configs["events"]["subjects"] == ["events.*.>"]


async def test_a_dotted_topic_is_a_stream_with_a_tilde_and_subjects_by_type(
    nats_url: str,
) -> None:
    transport = open_transport(nats_url + "&partitions=2")
    events = [
        (f"k{i}", b'{"specversion":"1.0","id":"e%d","type":"task.created","source":"s"}' % i)
        for i in range(4)
    ]
    await transport.start()
    try:
        placed = await transport.append("email.dlq", events)
        assert "email.dlq" in [t.name for t in await transport.topics()]
        stream = await transport.client.stream_info("email~dlq", "email~dlq.*.>")  # type: ignore[attr-defined]
        again = await transport.append("email.dlq", events[:1])  # the same event id
    finally:
        await transport.close()
    subjects = stream["state"]["subjects"]
    assert set(subjects) <= {"email~dlq.0.task.created", "email~dlq.1.task.created"}
    assert sum(subjects.values()) == 4
    assert again == placed[:1]  # deduplicated: the original's position


async def test_deleting_a_dotted_topic_deletes_its_stream_and_only_its_lease_keys(
    nats_url: str,
) -> None:
    transport = open_transport(nats_url + "&partitions=2")
    assert isinstance(transport, NatsTransport)
    await transport.start()
    try:
        await transport.append("email.dlq", [("k", b"x")])
        await transport.append("email", [("k", b"y")])
        groups = transport.group_client
        await groups.ensure_bucket()
        # Lease keys as a member that died holding them leaves them.
        for key in ("g.l.email~dlq.0", "g.l.email.dlq.0", "g.l.email.0", "h.l.email.dlq.1"):
            await groups.put_entry(key, b"gone-member", ttl=60)
        await transport.delete_topic("email.dlq")
        streams = {s["config"]["name"] for s in await transport.client.streams()}
        assert "email~dlq" not in streams
        assert "email" in streams
        held = {k for k, (_, v) in (await groups.entries()).items() if v is not None}
        assert held == {"g.l.email~dlq.0", "g.l.email.0"}  # not the deleted topic's
    finally:
        await transport.close()
