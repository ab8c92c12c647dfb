"""Leases, generations and fencing on NATS, against a real nats-server (issue 15):
a forced reset fences a live member (finding 2), a member whose renewals fail fences
itself (finding 8), leases expire by the observer's monotonic clock (finding 9); and
the publish and topic guarantees found with them (findings 3, 6 and 10)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats.errors
import orjson
import pytest

from tidings import Tidings, TransportError
from tidings.testing import drain, eventually, running
from tidings.transport import FOREVER, Clock, TopicPartition, positions
from tidings.transports.nats import NatsConsumer, NatsTransport
from tidings.transports.nats.errors import NoAnswer

pytestmark = pytest.mark.integration

TP: TopicPartition = ("t", 0)


class ManualClock(Clock):
    """Monotonic time that moves only when the test says so; wall time is the system's."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Beats:
    """Counts a member's heartbeats, so that a test waits for the next one instead of
    sleeping; as a fault hook, fails the renewals while ``failing``."""

    def __init__(self) -> None:
        self.failing = False
        self.done = 0
        self.changed = asyncio.Event()

    async def __call__(self, point: str) -> None:
        if self.failing:
            raise TransportError(f"injected failure at {point}")

    def watch(self, member: NatsConsumer) -> None:
        beat = member._heartbeat

        async def counted() -> None:
            try:
                await beat()
            finally:
                self.done += 1
                self.changed.set()

        member._heartbeat = counted  # type: ignore[method-assign]

    async def wait_beats(self, member: NatsConsumer, count: int = 1) -> None:
        """Kick ``member``'s heartbeat until ``count`` more have run to their end."""
        target = self.done + count
        async with asyncio.timeout(30):
            while self.done < target:
                self.changed.clear()
                member._kick.set()
                await self.changed.wait()


def event(i: int, key: str = "k") -> tuple[str, bytes]:
    doc = {"specversion": "1.0", "id": f"e{i}", "type": "t.made", "source": "t", "data": {"i": i}}
    return key, orjson.dumps(doc)


@pytest.fixture
async def transports(nats_url: str) -> AsyncIterator[list[NatsTransport]]:
    made: list[NatsTransport] = []
    yield made
    for t in made:
        await t.close()


async def started(made: list[NatsTransport], url: str, clock: Clock | None = None) -> NatsTransport:
    t = NatsTransport(url)
    if clock is not None:
        t.clock = clock
    await t.start()
    made.append(t)
    return t


async def committed(t: NatsTransport, group: str = "g") -> dict[int, int | None]:
    for info in await t.groups():
        if info.group == group:
            return {p.partition: p.committed for p in info.partitions}
    return {}


# -- finding 2: a forced reset fences a live member -----------------------------------


async def test_a_forced_reset_fences_a_live_members_stale_commit_and_replays(
    nats_url: str, transports: list[NatsTransport]
) -> None:
    url = nats_url + "&partitions=1"
    t, cli = await started(transports, url), await started(transports, url)
    revoked: list[frozenset[TopicPartition]] = []

    async def on_revoke(tps: frozenset[TopicPartition]) -> None:
        revoked.append(tps)

    await t.append("t", [event(i) for i in range(20)])
    c = t.consumer("g", ["t"], on_revoke=on_revoke)
    await c.start()
    held = await drain(c, 20)
    await c.commit(positions(held[:10]))
    assert await committed(cli) == {0: 10}
    # The operator resets the group to its start while the member is live and its
    # worker still holds 10..19: the member lets go first (its worker told), then
    # claims the partition again under a new generation.
    await cli.set_offsets("g", "t", {0: 0}, force=True)
    assert revoked == [frozenset({TP})]
    await c.commit(positions(held))  # what the worker held: fenced, not acknowledged
    again = await drain(c, 20)
    assert [r.offset for r in again] == [r.offset for r in held]  # replayed, all of it
    assert {r.generation for r in again} != {r.generation for r in held}
    assert await committed(cli) == {0: 0}


async def test_a_reset_to_earliest_under_load_hands_everything_again(nats_url: str) -> None:
    app = Tidings(nats_url + "&partitions=2", service="test")
    handled: list[int] = []
    after: set[int] = set()  # handled after the reset returned
    reset = asyncio.Event()

    @app.subscriber("t", group="g")
    async def handle(data: dict[str, int]) -> None:
        await asyncio.sleep(0.002)  # the worker holds fetched events in its lanes
        handled.append(data["n"])
        if reset.is_set():
            after.add(data["n"])

    async with app:
        for n in range(300):
            await app.publish("t", {"n": n}, type="t.made", subject=f"k{n % 10}")
        async with running(app):
            await eventually(lambda: len(handled) >= 100, what="a third handled")
            await app.transport.set_offsets("g", "t", {0: 0, 1: 0}, force=True)
            reset.set()
            await eventually(
                lambda: after == set(range(300)),
                timeout=30,
                what="every event handled again after the reset",
            )


# -- finding 8: a member whose renewals fail fences itself ----------------------------


@pytest.mark.parametrize("inject", ["fault_hook", "bucket_writes"])
async def test_a_member_whose_renewals_fail_for_a_lease_fences_itself(
    nats_url: str, transports: list[NatsTransport], inject: str
) -> None:
    url = nats_url + "&partitions=1"
    clock, beats = ManualClock(), Beats()
    t = await started(transports, url, clock)
    if inject == "fault_hook":
        t.fault_hook = beats
    else:  # every write to the groups bucket fails, as with the bucket's leader gone
        put = t.group_client.put_entry

        async def put_entry(*args: object, **kwargs: object) -> int | None:
            if beats.failing:
                raise TransportError("injected: groups bucket write failed")
            return await put(*args, **kwargs)  # type: ignore[arg-type]

        t.group_client.put_entry = put_entry  # type: ignore[method-assign]
    cli = await started(transports, url)
    revoked = asyncio.Event()
    holder: dict[str, NatsConsumer] = {}
    held: list = []

    async def on_revoke(tps: frozenset[TopicPartition]) -> None:
        assert tps == frozenset({TP})
        await holder["c"].commit(positions(held))  # the worker's last commit: fenced
        revoked.set()

    await t.append("t", [event(i) for i in range(10)])
    c = t.consumer("g", ["t"], on_revoke=on_revoke)
    assert isinstance(c, NatsConsumer)
    holder["c"] = c
    beats.watch(c)
    await c.start()
    held += await drain(c, 10)
    beats.failing = True
    await beats.wait_beats(c)  # a renewal failed: not yet a lease length
    clock.advance(t.config.lease)
    await beats.wait_beats(c)
    async with asyncio.timeout(10):
        await revoked.wait()
    assert c.assignment() == frozenset()
    assert c.generation(TP) is None
    await c.commit(positions(held))
    assert await c.fetch(10, timeout=0.05) == []
    assert await committed(cli) == {0: 0}


# -- joining while the servers do not answer (CI, a busy 3-node cluster) --------------


def failing_writes(t: NatsTransport, errors: list[TransportError]) -> list[TransportError]:
    """Make ``t``'s next groups-bucket writes raise ``errors`` in turn; what is left of
    the list is returned (the same list)."""
    put = t.group_client.put_entry

    async def put_entry(*args: object, **kwargs: object) -> int | None:
        if errors:
            raise errors.pop(0)
        return await put(*args, **kwargs)  # type: ignore[arg-type]

    t.group_client.put_entry = put_entry  # type: ignore[method-assign]
    return errors


async def test_a_member_whose_first_heartbeats_get_no_answer_tries_again_and_joins(
    nats_url: str, transports: list[NatsTransport]
) -> None:
    t = await started(transports, nats_url + "&partitions=1")
    left = failing_writes(t, [NoAnswer("injected: no answer in 10s")] * 2)
    c = t.consumer("g", ["t"])
    await c.start()
    assert left == []
    assert c.assignment() == frozenset({TP})
    await c.close()


async def test_a_member_answered_with_an_error_at_its_first_heartbeat_fails_at_once(
    nats_url: str, transports: list[NatsTransport]
) -> None:
    t = await started(transports, nats_url + "&partitions=1")
    failing_writes(t, [TransportError("injected: refused; JetStream error 10999")])
    c = t.consumer("g", ["t"])
    with pytest.raises(TransportError, match="injected: refused"):
        await c.start()
    await c.close()


async def test_a_member_that_never_gets_an_answer_fails_after_a_few_request_timeouts(
    nats_url: str, transports: list[NatsTransport]
) -> None:
    t = await started(transports, nats_url + "&partitions=1")
    t.client.timeout = 0.2  # the tries end after JOIN_TRIES_FOR of these
    failing_writes(t, [NoAnswer(f"injected {i}") for i in range(100)])
    c = t.consumer("g", ["t"])
    with pytest.raises(NoAnswer, match="injected"):
        await c.start()
    await c.close()


# -- finding 9: leases expire by the observer's monotonic clock -----------------------


async def test_a_stalled_members_lease_expires_by_the_observers_own_clock(
    nats_url: str, transports: list[NatsTransport]
) -> None:
    url = nats_url + "&partitions=1"
    a_t = await started(transports, url)
    clock, beats = ManualClock(), Beats()
    b_t = await started(transports, url, clock)
    a = a_t.consumer("g", ["t"])
    assert isinstance(a, NatsConsumer)
    await a.start()
    assert a.assignment() == frozenset({TP})
    assert a._task is not None
    a._task.cancel()  # a stalls: no more renewals, and it keeps its lease key
    b = b_t.consumer("g", ["t"])
    assert isinstance(b, NatsConsumer)
    beats.watch(b)
    await b.start()
    # More than a lease of real time passes, none of b's clock: a's lease is not
    # expired for b (a time to live on the server would have removed it by now).
    await asyncio.sleep(a_t.config.lease * 1.5)
    await beats.wait_beats(b)
    assert b.assignment() == frozenset()
    clock.advance(b_t.config.lease)
    await beats.wait_beats(b)
    assert b.assignment() == frozenset({TP})
    assert a.generation(TP) is None  # a's own clock: it has not renewed for a lease


# -- finding 10: per-key order survives a failed publish in a pipelined batch ---------


async def test_a_failed_publish_never_leaves_a_later_event_of_its_key_stored_before_it(
    nats_url: str, transports: list[NatsTransport]
) -> None:
    t = await started(transports, nats_url + "&partitions=1")
    await t.create_topic("t", 1)
    records = [event(i, "k" if i % 2 == 0 else f"o{i}") for i in range(12)]
    real = t.client.nc.publish
    broken = {"e4"}

    async def publish(subject: str, payload: bytes = b"", reply: str = "", headers=None) -> None:
        if headers and headers.get("Nats-Msg-Id") in broken:
            subject = "nowhere." + subject  # no stream stores it: "no responders"
        await real(subject, payload, reply=reply, headers=headers)

    t.client.nc.publish = publish
    with pytest.raises(TransportError):
        await t.append("t", records)
    broken.clear()
    await t.append("t", records)  # the caller appends the batch again
    stored = [orjson.loads(r.value)["id"] for r in await t.read("t", 0, 0, 100) if r.key == "k"]
    assert stored == [f"e{i}" for i in range(0, 12, 2)]


# -- finding 3: dead letters and retries never expire ---------------------------------


async def test_a_topic_created_to_keep_forever_ignores_the_urls_retention(
    nats_server: str, transports: list[NatsTransport]
) -> None:
    t = await started(transports, f"nats://{nats_server}?max_age=1h&max_bytes=1MB")
    await t.create_topic("g.dlq", 1, retention_ms=FOREVER, retention_bytes=FOREVER)
    await t.create_topic("events", 1)
    config = (await t.client.stream_info("g~dlq"))["config"]
    assert (config["max_age"], config["max_bytes"]) == (0, -1)
    info = {i.name: i for i in await t.topics()}
    assert (info["g.dlq"].retention_ms, info["g.dlq"].retention_bytes) == (None, None)
    assert (info["events"].retention_ms, info["events"].retention_bytes) == (3_600_000, 1 << 20)


# -- finding 6: what the dead-letter refresh calls fails as TransportError ------------


@pytest.mark.parametrize("broken", ["subscribe", "publish", "request"])
async def test_reads_and_topic_listings_fail_as_transport_errors(
    nats_url: str, transports: list[NatsTransport], broken: str
) -> None:
    t = await started(transports, nats_url + "&partitions=1")
    await t.append("t", [event(0)])

    async def fail(*args: object, **kwargs: object) -> None:
        raise nats.errors.ConnectionReconnectingError

    setattr(t.client.nc, broken, fail)
    if broken != "request":  # a read is a direct get: a subscription and a publish
        with pytest.raises(TransportError):
            await t.read("t", 0, 0, 10)
    if broken != "subscribe":  # requests share one long-lived reply subscription
        with pytest.raises(TransportError):
            await t.topics()
