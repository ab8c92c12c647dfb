"""One group membership per tidings group on Kafka (issue 17, decision 0011): a worker's
group reads its topics and ``<group>.retry`` through one librdkafka consumer, joined
once, and the ``range`` assignor shares each topic evenly among the members."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from tidings import Tidings, Worker
from tidings.testing import eventually
from tidings.transports import open_transport
from tidings.transports.kafka import KafkaConsumer

pytestmark = pytest.mark.integration


@pytest.fixture
def librdkafka_consumers(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The settings of every librdkafka group consumer made while the test runs."""
    import confluent_kafka

    made: list[dict[str, Any]] = []

    class Counted(confluent_kafka.Consumer):  # type: ignore[misc]
        def __init__(self, conf: dict[str, Any]) -> None:
            made.append(dict(conf))
            super().__init__(conf)

    monkeypatch.setattr(confluent_kafka, "Consumer", Counted)
    return made


async def test_a_group_with_a_retry_topic_is_one_member_assigned_both_topics(
    kafka_url: str, librdkafka_consumers: list[dict[str, Any]]
) -> None:
    app = Tidings(kafka_url + "&partitions=2", service="test")

    @app.subscriber("orders", group="billing")
    async def handle(event: Any) -> None:
        pass

    async with app:
        worker = Worker(app)
        run = asyncio.ensure_future(worker.run())
        try:
            await asyncio.wait_for(worker.ready.wait(), 30)
            (runner,) = worker._runners
            consumer = runner.consumer
            assert isinstance(consumer, KafkaConsumer)
            assert consumer.topics == ["orders", "billing.retry"]
            mine = [c for c in librdkafka_consumers if c.get("group.id") == "billing"]
            assert len(mine) == 1, f"{len(mine)} librdkafka members joined group billing"
            both = {(t, p) for t in ("orders", "billing.retry") for p in range(2)}
            assert consumer.assignment() == both
            # ... and librdkafka's own view of its assignment, asked on its thread.
            member = consumer._member
            native = await member._call(lambda: member._consumer.assignment())
            assert {(tp.topic, tp.partition) for tp in native} == both
        finally:
            worker.stop()
            await asyncio.wait_for(run, 30)
    assert len([c for c in librdkafka_consumers if c.get("group.id") == "billing"]) == 1


async def test_each_topic_is_shared_evenly_among_the_members(kafka_url: str) -> None:
    # cooperative-sticky balanced the count over all topics: a newcomer could be given
    # every partition of the (idle) retry topic and none of the group's topic.
    transport = open_transport(kafka_url + "&partitions=4")
    await transport.start()
    for topic in ("t", "g.retry"):
        await transport.create_topic(topic, 4)
    a = transport.consumer("g", ["t", "g.retry"])
    b = transport.consumer("g", ["t", "g.retry"])
    try:
        await a.start()
        assert len(a.assignment()) == 8
        await b.start()

        def shared() -> bool:
            return all(
                len([tp for tp in c.assignment() if tp[0] == topic]) == 2
                for c in (a, b)
                for topic in ("t", "g.retry")
            )

        await eventually(shared, timeout=30, what="each topic shared 2 and 2")
        assert a.assignment().isdisjoint(b.assignment())
    finally:
        for c in (a, b):
            with contextlib.suppress(Exception):
                await c.close()
        await transport.close()


async def test_a_stopped_worker_leaves_its_group_at_once(kafka_url: str) -> None:
    # Empty means the member sent LeaveGroup: on Tansu a member that goes silent
    # without one keeps the group Stable (seen for 12 s at a 6 s session), and on
    # Apache Kafka until its session expires; its partitions wait for it meanwhile.
    from confluent_kafka import ConsumerGroupState

    app = Tidings(kafka_url + "&partitions=2", service="test")

    @app.subscriber("orders", group="billing")
    async def handle(event: Any) -> None:
        pass

    async with app:
        worker = Worker(app)
        run = asyncio.ensure_future(worker.run())
        await asyncio.wait_for(worker.ready.wait(), 30)
        admin = app.transport._admin  # type: ignore[attr-defined]
        assert (await admin.describe("billing")).state == ConsumerGroupState.STABLE
        worker.stop()
        await asyncio.wait_for(run, 30)

        async def empty() -> bool:
            return bool((await admin.describe("billing")).state == ConsumerGroupState.EMPTY)

        await eventually(empty, timeout=10, what="group billing Empty: its member left")


async def test_joining_a_group_of_older_cooperative_members_says_to_stop_them(
    kafka_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Eager (range) and cooperative members cannot share a group: the broker refuses
    # the newcomer's JoinGroup (INCONSISTENT_GROUP_PROTOCOL) while workers of the older
    # tidings (cooperative-sticky) hold it. The warning says what to do.
    import logging

    from confluent_kafka import Consumer

    transport = open_transport(kafka_url + "&partitions=2")
    await transport.start()
    await transport.create_topic("t", 2)
    conf = transport.config.consumer("g", "earliest")  # type: ignore[attr-defined]
    conf.pop("logger")
    conf["partition.assignment.strategy"] = "cooperative-sticky"
    older = Consumer(conf)
    older.subscribe(["t"])
    newer = transport.consumer("g", ["t"])
    joining: asyncio.Future[None] | None = None
    try:
        for _ in range(400):  # the older member joins (its poll serves the join)
            if older.assignment():
                break
            await asyncio.to_thread(older.poll, 0.05)
        assert len(older.assignment()) == 2
        caplog.set_level(logging.WARNING, logger="tidings.kafka")
        joining = asyncio.ensure_future(newer.start())

        async def warned() -> bool:
            await asyncio.to_thread(older.poll, 0.05)  # keep the older member alive
            return "stop the older workers of the group" in caplog.text

        await eventually(warned, timeout=30, what="the warning naming what to do")
        assert not joining.done()
        assert len(older.assignment()) == 2
    finally:
        if joining is not None:
            joining.cancel()
            with contextlib.suppress(BaseException):
                await joining
        await newer.close()
        await asyncio.to_thread(older.close)
        await transport.close()
