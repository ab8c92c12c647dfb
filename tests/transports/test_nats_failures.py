"""How the NATS transport fails, against real nats-servers: no server, no JetStream,
wrong credentials, a stream it did not create, bad arguments, a busy group, a server
killed while appending. Each failure is a tidings error that says what to do, and
arrives in bounded time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import nats
import orjson
import pytest

import tidings.transports.nats.client as nats_client
from devservers.nats import NatsServer, free_port
from tidings.errors import ConfigError, GroupBusy, TopicNotFound, TransportError
from tidings.testing import drain, eventually
from tidings.transports.nats import NatsTransport

pytestmark = pytest.mark.integration

BOUND = 4.0  # seconds a start() refused by the server may take (connect_timeout=1s)


@asynccontextmanager
async def started(url: str) -> AsyncIterator[NatsTransport]:
    transport = NatsTransport(url)
    await transport.start()
    try:
        yield transport
    finally:
        await transport.close()


@pytest.fixture
def servers(nats_binary: str) -> Iterator[Callable[..., NatsServer]]:
    """Start nats-servers configured by the test; each is stopped by its PID after it."""
    running: list[NatsServer] = []

    def start(*, jetstream: bool = True, conf: str = "") -> NatsServer:
        server = NatsServer(nats_binary, jetstream=jetstream, conf=conf)
        running.append(server)
        server.start()
        return server

    yield start
    for server in running:
        server.stop()


def event(i: int) -> bytes:
    """An encoded event's bytes as far as the transport looks: an id and a type."""
    return orjson.dumps(
        {"specversion": "1.0", "id": f"e{i}", "type": "t.made", "source": "t", "data": {"i": i}}
    )


async def read_all(transport: NatsTransport, topic: str, partitions: int) -> list[int]:
    """The ``i`` of every event stored in ``topic``."""
    out: list[int] = []
    for p in range(partitions):
        offset = 0
        for _ in range(100):  # pages of up to 1000
            records = await transport.read(topic, p, offset, 1000)
            if not records:
                break
            out += [orjson.loads(r.value)["data"]["i"] for r in records]
            offset = records[-1].offset + 1
    return out


# -- connecting ---------------------------------------------------------------------------


async def test_nothing_listening_is_a_transport_error_at_start() -> None:
    address = f"127.0.0.1:{free_port()}"
    transport = NatsTransport(f"nats://{address}?connect_timeout=1s")
    began = time.monotonic()
    with pytest.raises(TransportError) as info:
        await asyncio.wait_for(transport.start(), BOUND)
    assert time.monotonic() - began < BOUND
    assert address in str(info.value)
    assert "is nats-server running" in str(info.value)
    assert transport.client.nc is None


async def test_a_server_without_jetstream_is_a_clear_transport_error(
    servers: Callable[..., NatsServer],
) -> None:
    server = servers(jetstream=False)
    transport = NatsTransport(f"nats://{server.address}")
    for _ in range(2):  # a failed start leaves nothing behind: trying again fails again
        with pytest.raises(TransportError) as info:
            await asyncio.wait_for(transport.start(), BOUND)
        assert f"nats://{server.address}: JetStream is not enabled" in str(info.value)
        assert "start nats-server with -js" in str(info.value)
        assert transport.client.nc is None
    with pytest.raises(TransportError, match="not started"):
        await transport.append("t", [(None, b"x")])


AUTH = {
    "user": 'authorization { user: "alice", password: "s3cret-pw" }\n',
    "token": 'authorization { token: "s3cret-tok" }\n',
}


@pytest.mark.parametrize(
    ("auth", "credentials"),
    [
        ("user", "alice:s3cret-pw@{address}"),
        ("user", "{address}?user=alice&password=s3cret-pw"),
        ("token", "s3cret-tok@{address}"),
        ("token", "{address}?token=s3cret-tok"),
    ],
)
async def test_the_right_credentials_are_let_in(
    servers: Callable[..., NatsServer], auth: str, credentials: str
) -> None:
    server = servers(conf=AUTH[auth])
    url = "nats://" + credentials.format(address=server.address)
    async with started(url + ("&" if "?" in url else "?") + "partitions=1") as transport:
        assert "s3cret" not in transport.url
        await transport.create_topic("t")
        assert await transport.append("t", [("k", event(1))]) == [(0, 0)]
        assert await read_all(transport, "t", 1) == [1]


@pytest.mark.parametrize(
    ("auth", "credentials"),
    [
        ("user", "alice:wrong-s3cret@{address}"),
        ("user", "{address}"),  # none at all
        ("token", "wrong-s3cret@{address}"),
    ],
)
async def test_wrong_credentials_are_a_clear_transport_error(
    servers: Callable[..., NatsServer], auth: str, credentials: str
) -> None:
    server = servers(conf=AUTH[auth])
    url = "nats://" + credentials.format(address=server.address) + "?connect_timeout=1s"
    transport = NatsTransport(url)
    with pytest.raises(TransportError) as info:
        await asyncio.wait_for(transport.start(), BOUND)
    assert server.address in str(info.value)
    assert "authorization" in str(info.value).lower()
    assert "s3cret" not in str(info.value)


# -- topics -------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["audit", "task.events"])
async def test_a_stream_tidings_did_not_create_is_a_config_error(
    nats_server: str, topic: str
) -> None:
    theirs = topic.replace(".", "~")  # the stream tidings would give the topic
    nc = await nats.connect(f"nats://{nats_server}")
    try:
        js = nc.jetstream()
        await js.add_stream(name=theirs, subjects=["theirs.>"])
        await js.publish("theirs.x", b"their event")
        async with started(f"nats://{nats_server}") as transport:
            attempts: list[Callable[[], Awaitable[object]]] = [
                lambda: transport.create_topic(topic),
                lambda: transport.append(topic, [("k", event(1))]),
                lambda: transport.read(topic, 0, 0, 10),
                lambda: transport.offsets_for_time(topic, 0),
                lambda: transport.consumer("g", [topic]).start(),
                lambda: transport.delete_topic(topic),
            ]
            for attempt in attempts:
                with pytest.raises(ConfigError) as info:
                    await attempt()
                assert f"the stream {theirs!r} exists but tidings did not create it" in str(
                    info.value
                )
                assert "rename one of them" in str(info.value)
            assert [t.name for t in await transport.topics()] == []
        stream = await js.stream_info(theirs)
        assert stream.state.messages == 1  # untouched
        assert stream.config.subjects == ["theirs.>"]
    finally:
        await nc.close()


@pytest.mark.parametrize("partitions", [0, -1])
async def test_a_topic_of_no_partitions_is_refused_not_given_the_default(
    nats_url: str, partitions: int
) -> None:
    async with started(nats_url) as transport:
        with pytest.raises(ConfigError, match=f"needs at least 1 partition, got {partitions}"):
            await transport.create_topic("t", partitions)
        assert await transport.topics() == []


async def test_an_unknown_topic_is_not_found_and_not_created(nats_url: str) -> None:
    async with started(nats_url) as transport:
        attempts: list[Callable[[], Awaitable[object]]] = [
            lambda: transport.read("nowhere", 0, 0, 10),
            lambda: transport.offsets_for_time("nowhere", 0),
            lambda: transport.set_offsets("g", "nowhere", {0: 0}),
        ]
        for attempt in attempts:
            with pytest.raises(TopicNotFound, match="topic 'nowhere' does not exist in nats://"):
                await attempt()
        assert await transport.topics() == []


@pytest.mark.parametrize(
    ("options", "retention_ms"), [("&max_age=1m", None), ("", 30_000)], ids=["url", "argument"]
)
async def test_a_retention_shorter_than_the_duplicate_window_is_taken(
    nats_url: str, options: str, retention_ms: int | None
) -> None:
    async with started(nats_url + options) as transport:
        info = await transport.create_topic("t", 1, retention_ms=retention_ms)
        assert info.retention_ms == (retention_ms or 60_000)
        assert await transport.append("t", [("k", event(1))]) == [(0, 0)]


# -- groups -------------------------------------------------------------------------------


async def test_offsets_are_not_set_under_a_live_member(nats_url: str) -> None:
    async with started(nats_url) as transport:
        await transport.create_topic("t", 1)
        await transport.append("t", [("k", event(i)) for i in range(5)])
        member = transport.consumer("g", ["t"])
        await member.start()
        try:
            with pytest.raises(GroupBusy, match="group 'g' has 1 live member"):
                await transport.set_offsets("g", "t", {0: 3})
        finally:
            await member.close()
        await transport.set_offsets("g", "t", {0: 3})  # no member now
        member = transport.consumer("g", ["t"])
        await member.start()
        try:
            assert [r.offset for r in await drain(member, 2)] == [3, 4]
            with pytest.raises(GroupBusy):
                await transport.set_offsets("g", "t", {0: 0})
            await transport.set_offsets("g", "t", {0: 0}, force=True)  # forced: allowed
        finally:
            await member.close()


# -- a server killed while appending --------------------------------------------------


async def test_a_server_killed_mid_append_fails_the_append_and_keeps_what_it_accepted(
    servers: Callable[..., NatsServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nats_client, "TIMEOUT", 2.0)
    server = servers()
    batch = 20
    async with started(f"nats://{server.address}?partitions=2") as transport:
        await transport.create_topic("t")
        accepted: list[int] = []

        async def append_until_it_fails() -> None:
            for first in range(0, 1_000_000, batch):
                numbers = range(first, first + batch)
                await transport.append("t", [(f"k{i}", event(i)) for i in numbers])
                accepted.extend(numbers)

        writer = asyncio.create_task(append_until_it_fails())
        await eventually(lambda: len(accepted) >= 200 or writer.done(), timeout=5)
        server.kill()
        killed = time.monotonic()
        with pytest.raises(TransportError, match="not acknowledged in 2s; appending them again"):
            await asyncio.wait_for(writer, nats_client.TIMEOUT + 3)
        assert time.monotonic() - killed < nats_client.TIMEOUT + 1
        failed = [(f"k{i}", event(i)) for i in range(len(accepted), len(accepted) + batch)]

        server.start()  # the same store: file storage survives

        async def appended_again() -> bool:
            try:
                await transport.append("t", failed)
            except TransportError:
                return False
            return True

        await eventually(appended_again, timeout=8, what="an append after the restart")
        stored = await read_all(transport, "t", 2)
    assert set(accepted) <= set(stored), "an acknowledged append was lost"
    assert len(stored) == len(set(stored)), "appending again stored an event twice"
    assert set(stored) == set(range(len(accepted) + batch))
