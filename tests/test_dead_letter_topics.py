"""The sizes of a group's ``.dlq`` and ``.retry`` topics (issue 17, item 2): one
partition for the dead letters, the retry topic sized from the topics the group reads;
topics that exist keep theirs; a key's replays share one retry partition, in order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import LOGS, log_url
from tidings import Tidings
from tidings.dead_letters import DeadLetter, DeadLetterLog, Filter, open_log, replay
from tidings.middleware import Retry
from tidings.testing import eventually, running
from tidings.transport import FOREVER, Record, Transport


@pytest.fixture(params=["memory", *LOGS])
def any_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://?partitions=4"
    return log_url(request, partitions=4)


async def sizes(transport: Transport) -> dict[str, int]:
    return {info.name: len(info.partitions) for info in await transport.topics()}


async def test_a_groups_topics_are_sized_from_the_topics_it_reads(any_url: str) -> None:
    app = Tidings(any_url, service="test")
    app.topic("small", partitions=2)
    app.topic("big", partitions=3)

    @app.subscriber("small", group="both")
    @app.subscriber("big", group="both")
    async def both(data: Any) -> None:
        pass

    @app.subscriber("small", group="one")
    async def one(data: Any) -> None:
        pass

    @app.subscriber("fresh", group="new")  # a topic its consumer creates (the URL's 4)
    async def new(data: Any) -> None:
        pass

    async with app, running(app):
        found = await sizes(app.transport)
    assert {name: found[name] for name in sorted(found) if name.endswith((".dlq", ".retry"))} == {
        "both.dlq": 1,
        "both.retry": 3,
        "new.dlq": 1,
        "new.retry": 4,
        "one.dlq": 1,
        "one.retry": 2,
    }
    assert found["fresh"] == 4


async def test_topics_of_an_earlier_version_keep_their_partitions_and_work(any_url: str) -> None:
    app = Tidings(any_url, service="test")
    app.topic("tasks", partitions=2)
    fail = True
    handled: list[int] = []

    @app.subscriber("tasks", group="g", retry=Retry(max_attempts=1))
    async def handler(data: Any) -> None:
        if fail:
            raise OSError("down")
        handled.append(data)

    async with app:
        for name in ("g.dlq", "g.retry"):  # as every group had them before
            await app.transport.create_topic(name, 8, retention_ms=FOREVER, retention_bytes=FOREVER)
        async with running(app):
            await app.publish_many("tasks", [1, 2, 3], type="task.created", subject="k")

            async def dead() -> bool:
                return len((await open_log(app.transport, "g")).listing()) == 3

            await eventually(dead, what="three dead letters")
            fail = False
            assert await replay(app.transport, "g", Filter()) == 3
            await eventually(lambda: handled == [1, 2, 3], what="the replays, in order")
        found = await sizes(app.transport)
    assert (found["g.dlq"], found["g.retry"]) == (8, 8)


async def test_replay_creates_a_missing_retry_topic_sized_from_the_entries_topics(
    any_url: str,
) -> None:
    app = Tidings(any_url, service="test")
    stop = asyncio.Event()
    async with app:
        await app.transport.create_topic("tasks", 3)
        # Only the dead-letter topic, as a writer that never created the retry topic left it.
        await app.transport.create_topic("g.dlq", 1)
        dead = DeadLetterLog(app.transport, "g")
        records = [
            Record("tasks", 0, 0, 0, "k", b"{}"),
            Record("gone", 0, 0, 0, "k", b"{}"),  # a topic that no longer exists
        ]
        for record in records:
            await dead.write(dead.entry(record, OSError("no"), reason="failed"), stop)
        assert await replay(app.transport, "g", Filter()) == 2
        found = await sizes(app.transport)
    assert found["g.retry"] == 3
    assert "gone" not in found  # sized from what exists; nothing created for it


async def test_a_replay_with_nothing_to_send_creates_no_retry_topic(any_url: str) -> None:
    app = Tidings(any_url, service="test")
    async with app:
        await app.transport.create_topic("g.dlq", 1)
        assert await replay(app.transport, "g", Filter()) == 0
        found = await sizes(app.transport)
    assert "g.retry" not in found  # a worker sizes it from the group's topics later


async def test_a_retry_topic_serving_no_existing_topic_has_one_partition(any_url: str) -> None:
    app = Tidings(any_url, service="test")
    async with app:
        await app.transport.create_topic("g.dlq", 1)
        dead = DeadLetterLog(app.transport, "g")
        record = Record("missing", 0, 0, 0, "k", b"{}")
        await dead.write(dead.entry(record, OSError("no"), reason="failed"), asyncio.Event())
        assert await replay(app.transport, "g", Filter()) == 1
        found = await sizes(app.transport)
    assert (found["g.dlq"], found["g.retry"]) == (1, 1)
    assert "missing" not in found


async def test_a_keys_replays_share_one_retry_partition_in_their_original_order(
    any_url: str,
) -> None:
    app = Tidings(any_url, service="test")
    stop = asyncio.Event()
    async with app:
        await app.transport.create_topic("tasks", 4)
        dead = DeadLetterLog(app.transport, "g")
        await dead.create_topics(4)
        # Keyless events rotate over a topic's partitions; a sequenced group parks them
        # all behind the first, so their replays must not rotate over the retry topic.
        records = [Record("tasks", n % 4, n, 0, None, b"{}") for n in range(8)]
        records += [Record("tasks", 1, 100 + n, 0, "k", b"{}") for n in range(4)]
        for record in reversed(records):  # dead-lettered out of order: replayed in order
            await dead.write(dead.entry(record, OSError("no"), reason="failed"), stop)
        assert await replay(app.transport, "g", Filter()) == 12
        placed: dict[str | None, set[int]] = {}
        offsets: dict[str | None, list[int]] = {}
        for p in range(4):
            for record in await app.transport.read("g.retry", p, 0, 100):
                sent = DeadLetter.from_bytes(record.value)
                placed.setdefault(sent.key, set()).add(p)
                offsets.setdefault(sent.key, []).append(sent.offset)
    assert {key: len(ps) for key, ps in placed.items()} == {None: 1, "k": 1}
    # In the order replay_plan sends them (by original partition and offset).
    keyless = sorted((r.partition, r.offset) for r in records if r.key is None)
    assert offsets == {None: [offset for _, offset in keyless], "k": [100, 101, 102, 103]}
