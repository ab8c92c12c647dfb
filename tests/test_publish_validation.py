"""A plain value published as a registered type is validated by the type's model before
anything is written (decision 0052): through app.publish, publish_many, build, a
handler's ctx.publish (the outbox's add: tests/outbox/test_outbox.py). A refusal is an
InvalidPayload naming the type, version, field and fix, and nothing is appended; what
is written is the model's JSON form, the data of the same event built from the model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, model_validator

from tidings import Context, Event, EventError, Tidings
from tidings.codec import decode, encode
from tidings.dead_letters import open_log
from tidings.errors import InvalidPayload
from tidings.middleware import Retry
from tidings.testing import eventually, running
from tidings.testing import stored as records_of
from tidings.transport import Transport

TOPIC = "task-events"
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

built: list[str] = []  # the task_id of each TaskCreated the model validated


class TaskCreated(BaseModel):
    task_id: str
    title: str
    points: int = 1
    due: datetime | None = None

    @model_validator(mode="after")
    def counted(self) -> TaskCreated:
        built.append(self.task_id)
        return self


class TaskCreatedV2(BaseModel):
    task_id: str
    name: str


def make_app() -> Tidings:
    app = Tidings("memory://", service="taskapi")
    app.event("task.created", subject="task_id")(TaskCreated)
    app.event("task.created", version=2, subject="task_id", breaking=True)(TaskCreatedV2)
    return app


async def stored(transport: Transport, topic: str = TOPIC) -> list[Event]:
    """Every event of ``topic`` as a consumer reads it: decoded from the log's bytes."""
    return [decode(r.value) for r in await records_of(transport, topic)]


def data_on_the_wire(event: Event) -> Any:
    return orjson.loads(encode(event))["data"]


# -- refused ---------------------------------------------------------------------------


async def test_a_dict_its_registered_model_refuses_is_not_published() -> None:
    app = make_app()
    async with app:
        with pytest.raises(InvalidPayload) as info:
            await app.publish(TOPIC, {"task_id": "t1", "title": 1}, type="task.created", version=1)
        assert await stored(app.transport) == []
    assert isinstance(info.value, EventError)
    assert str(info.value) == (
        "cannot publish task.created v1: the payload does not match TaskCreated: 1 error(s): "
        "title: Input should be a valid string (got int); fix the field(s), or publish a "
        "TaskCreated instance (checked where it is built)"
    )
    assert info.value.item is None
    assert [(e["loc"], e["type"]) for e in info.value.errors] == [(("title",), "string_type")]


async def test_a_dict_is_checked_against_the_latest_version_without_version() -> None:
    app = make_app()
    async with app:
        with pytest.raises(InvalidPayload) as info:
            await app.publish(TOPIC, {"task_id": "t1", "title": "x"}, type="task.created")
        assert await stored(app.transport) == []
    message = str(info.value)
    assert message.startswith("cannot publish task.created v2: the payload does not match ")
    assert "TaskCreatedV2: 1 error(s): name: Field required;" in message  # no "(got ...)"


async def test_a_value_that_is_not_an_object_is_refused_at_the_root() -> None:
    app = make_app()
    with pytest.raises(InvalidPayload, match=r"\(root\): Input should be a valid dictionary"):
        app.build(["t1"], type="task.created", version=1)


async def test_publish_many_refuses_the_whole_batch_and_names_the_payload() -> None:
    app = make_app()
    good = {"task_id": "t1", "title": "ok"}
    async with app:
        with pytest.raises(InvalidPayload) as info:
            await app.publish_many(
                TOPIC,
                [good, good, {"task_id": "t3", "title": "x", "points": "many"}, good],
                type="task.created",
                version=1,
            )
        assert await stored(app.transport) == []
    assert info.value.item == 2
    message = str(info.value)
    assert message.startswith("payload 2 of the batch (counting from 0): cannot publish ")
    assert "points: Input should be a valid integer" in message
    assert message.endswith("; nothing of the batch was published")


async def test_a_delayed_publish_is_refused_before_it_is_scheduled(sqlite_url: str) -> None:
    app = Tidings(sqlite_url, service="taskapi")
    app.event("task.created", subject="task_id")(TaskCreated)
    async with app:
        with pytest.raises(InvalidPayload, match=r"title: Field required"):
            await app.publish(TOPIC, {"task_id": "t1"}, type="task.created", delay=60)
        await app.publish(TOPIC, {"task_id": "t2", "title": "x"}, type="task.created", delay=60)
        status = await app.scheduler.status()  # type: ignore[union-attr]
        assert status.pending == 1  # only the good one
        assert await stored(app.transport) == []


async def test_a_handler_whose_publish_is_refused_fails_its_call_and_appends_nothing() -> None:
    # The refusal is about the event the handler built, not the one it was given: the
    # call failed (retried, then dead-lettered as "failed"), the event is not poison.
    # Fix the handler, then replay.
    app = make_app()

    @app.subscriber(
        "in", group="g", types=["task.created"], retry=Retry(max_attempts=2, base_delay=0.01)
    )
    async def react(task: Any, ctx: Context) -> None:
        await ctx.publish(TOPIC, {"task_id": task.task_id}, type="task.created", version=1)

    async with app, running(app) as worker:
        await app.publish("in", TaskCreatedV2(task_id="t1", name="x"))
        log = await open_log(app.transport, "g")

        async def dead_lettered() -> bool:
            await log.refresh()
            return bool(log.listing())

        await eventually(dead_lettered, what="a dead letter")
        ((entry, _),) = log.listing()
        assert await stored(app.transport) == []
    assert (entry.reason, entry.attempts, entry.error_type) == (
        "failed",
        2,
        "tidings.errors.InvalidPayload",
    )
    assert "cannot publish task.created v1" in entry.error_message
    assert "title: Field required" in entry.error_message
    assert (worker.stats.undecodable, worker.stats.failed_attempts) == (0, 2)


# -- written ---------------------------------------------------------------------------


async def test_a_dict_is_written_as_the_model_built_event_would_be() -> None:
    app = make_app()
    given = {"task_id": "t1", "title": "x", "points": "3", "due": "2026-01-02T03:04:05Z"}
    given["extra"] = "not in the model"
    async with app:
        event = await app.publish(TOPIC, given, type="task.created", version=1)
        (on_log,) = await stored(app.transport)
    model = app.build(TaskCreated(task_id="t1", title="x", points=3, due=WHEN))
    assert data_on_the_wire(event) == data_on_the_wire(model)
    assert on_log.data == {
        "task_id": "t1",
        "title": "x",
        "points": 3,
        "due": "2026-01-02T03:04:05Z",
    }
    assert type(event.data) is dict  # a dict in, a dict in the event returned
    # The attributes a model-built event takes from its contract.
    assert (on_log.dataversion, on_log.dataschema, on_log.subject) == (
        1,
        "urn:tidings:schema:task.created:1",
        "t1",
    )
    assert given["points"] == "3"  # the caller's dict is left as it was


async def test_a_model_instance_is_not_validated_again() -> None:
    app = make_app()
    task = TaskCreated(task_id="once", title="x")
    async with app:
        await app.publish(TOPIC, task)
        await app.publish_many(TOPIC, [task, task])
    assert built.count("once") == 1


async def test_check_false_writes_the_value_as_given() -> None:
    app = make_app()
    given = {"task_id": "t1", "title": 1}
    async with app:
        event = await app.publish(TOPIC, given, type="task.created", subject="t1", check=False)
        (on_log,) = await stored(app.transport)
    assert event.data is given
    assert (on_log.data, on_log.dataversion, on_log.dataschema) == (given, None, None)


async def test_a_type_without_a_model_is_written_as_given() -> None:
    app = make_app()
    given = {"anything": ["goes"]}
    async with app:
        event = await app.publish(TOPIC, given, type="task.noted")
        (on_log,) = await stored(app.transport)
    assert event.data is given
    assert (on_log.data, on_log.dataversion) == (given, None)
