"""The application object: registration, publishing, causality, configuration, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from tidings import (
    DEFAULT_URL,
    ConfigError,
    Context,
    Event,
    EventTooLarge,
    InvalidEventType,
    Tidings,
    correlation_scope,
    current_scope,
    decode,
)
from tidings.context import Scope
from tidings.schema.registry import SCHEMAS_TOPIC
from tidings.testing import running
from tidings.testing import stored as records_of
from tidings.transport import Transport
from tidings.transports.memory import MemoryTransport

TOPIC = "task-events"


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def stored(transport: Transport, topic: str = TOPIC) -> list[Event]:
    """Every event of ``topic``, partition by partition, in offset order."""
    return [decode(r.value) for r in await records_of(transport, topic)]


def make_app(**options: Any) -> Tidings:
    app = Tidings("memory://", service="taskapi", **options)

    @app.event("task.created", subject="task_id")
    class TaskCreated(BaseModel):
        task_id: str
        title: str

    @app.event("task.completed", version=2)
    class TaskCompleted(BaseModel):
        task_id: str

    app.TaskCreated = TaskCreated  # type: ignore[attr-defined]
    app.TaskCompleted = TaskCompleted  # type: ignore[attr-defined]
    return app


# -- construction and configuration ---------------------------------------------


def test_service_name_is_required() -> None:
    with pytest.raises(ConfigError, match="service"):
        Tidings("memory://", service="")


def test_event_size_limit_below_1024_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_event_bytes must be at least 1024"):
        Tidings("memory://", service="s", max_event_bytes=100)


def test_tidings_url_environment_variable_is_used_when_no_url_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TIDINGS_URL", "memory://from-env?partitions=3")
    app = Tidings(service="s")
    assert app.url == "memory://from-env?partitions=3"
    assert isinstance(app.transport, MemoryTransport)
    assert app.transport.default_partitions == 3


def test_explicit_url_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_URL", "sqlite:///nowhere/x.db")
    assert Tidings("memory://", service="s").url == "memory://"


async def test_default_url_is_tidings_db_in_the_working_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert DEFAULT_URL == "sqlite:///./tidings.db"
    monkeypatch.chdir(tmp_path)
    app = Tidings(service="s")
    assert app.url == DEFAULT_URL
    async with app:
        await app.publish(TOPIC, {"a": 1}, type="task.created")
    assert (tmp_path / "tidings.db").exists()


def test_unknown_url_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown transport URL"):
        Tidings("redis://localhost", service="s")


# -- publishing -------------------------------------------------------------------


async def test_publish_before_start_is_a_clear_error() -> None:
    app = make_app()
    with pytest.raises(ConfigError, match=r"not started.*async with app"):
        await app.publish(TOPIC, {"a": 1}, type="note.added")
    async with app:
        await app.publish(TOPIC, {"a": 1}, type="note.added")
    with pytest.raises(ConfigError, match="not started"):
        await app.publish(TOPIC, {"a": 1}, type="note.added")


async def test_publish_of_a_model_takes_type_version_schema_and_subject_from_registration() -> None:
    app = make_app()
    async with app:
        created = await app.publish(TOPIC, app.TaskCreated(task_id="t1", title="x"))  # type: ignore[attr-defined]
        completed = await app.publish(TOPIC, app.TaskCompleted(task_id="t1"))  # type: ignore[attr-defined]
        events = {e.id: e for e in await stored(app.transport)}
    assert created.type == "task.created"
    assert created.dataversion == 1
    assert created.dataschema == "urn:tidings:schema:task.created:1"
    assert created.subject == "t1"
    assert created.source == "taskapi"
    assert completed.type == "task.completed"
    assert completed.dataversion == 2
    assert completed.dataschema == "urn:tidings:schema:task.completed:2"
    assert completed.subject is None
    # What the log holds is what publish returned (the payload as JSON).
    on_log = events[created.id]
    assert on_log.type == "task.created"
    assert on_log.dataversion == 1
    assert on_log.dataschema == created.dataschema
    assert on_log.subject == "t1"
    assert on_log.data == {"task_id": "t1", "title": "x"}


async def test_an_explicit_subject_wins_over_the_model_field() -> None:
    app = make_app()
    async with app:
        event = await app.publish(
            TOPIC,
            app.TaskCreated(task_id="t1", title="x"),  # type: ignore[attr-defined]
            subject="other",
        )
    assert event.subject == "other"


async def test_a_model_published_under_another_type_is_refused() -> None:
    app = make_app()
    async with app:
        with pytest.raises(ConfigError, match=r"is registered as task\.created, not task\.deleted"):
            await app.publish(TOPIC, app.TaskCreated(task_id="t", title="x"), type="task.deleted")  # type: ignore[attr-defined]


async def test_an_unregistered_model_is_refused() -> None:
    class Stray(BaseModel):
        a: int

    app = make_app()
    async with app:
        with pytest.raises(ConfigError, match="Stray is not registered"):
            await app.publish(TOPIC, Stray(a=1))


async def test_publish_of_a_plain_value_needs_type() -> None:
    app = make_app()
    async with app:
        with pytest.raises(ConfigError, match=r"needs type=\.\.\."):
            await app.publish(TOPIC, {"task_id": "t1"})
        event = await app.publish(TOPIC, {"task_id": "t1"}, type="task.archived", version=3)
        assert [e.id for e in await stored(app.transport)] == [event.id]
    assert event.type == "task.archived"
    assert event.dataversion == 3
    assert event.dataschema is None


async def test_publish_options_reach_the_log() -> None:
    app = make_app()
    when = datetime(2024, 1, 1, tzinfo=UTC)
    async with app:
        event = await app.publish(
            TOPIC,
            {"n": 1},
            type="note.added",
            subject="t1",
            key="tenant-1",
            time=when,
            traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            extensions={"tenant": "acme"},
        )
        (on_log,) = await stored(app.transport)
    assert on_log == event
    assert on_log.partitionkey == "tenant-1"
    assert on_log.key == "tenant-1"
    assert on_log.time == when
    assert on_log.extensions == {"tenant": "acme"}


async def test_a_key_equal_to_the_subject_is_not_repeated_as_partitionkey() -> None:
    app = make_app()
    event = app.build({"n": 1}, type="note.added", subject="t1", key="t1")
    assert event.partitionkey is None
    assert event.key == "t1"


async def test_an_event_over_the_limit_is_refused_at_publish_and_nothing_is_appended() -> None:
    app = make_app(max_event_bytes=2048)
    async with app:
        with pytest.raises(EventTooLarge, match="the limit is 2,048"):
            await app.publish_many(
                TOPIC,
                [{"small": 1}, {"big": "x" * 4000}],
                type="note.added",
            )
        assert await stored(app.transport) == []


async def test_publish_of_a_ready_event_sends_it_unchanged() -> None:
    app = make_app()
    event = app.build({"a": 1}, type="note.added", subject="s")
    async with app:
        assert await app.publish(TOPIC, event) is event
        assert await stored(app.transport) == [event]


# -- correlation and causation ----------------------------------------------------


async def test_correlationid_defaults_to_the_events_own_id_outside_any_scope() -> None:
    app = make_app()
    async with app:
        event = await app.publish(TOPIC, {"a": 1}, type="note.added")
        (on_log,) = await stored(app.transport)
    assert event.correlationid == event.id
    assert event.causationid is None
    assert on_log.correlationid == event.id


async def test_events_published_inside_a_correlation_scope_share_its_id() -> None:
    app = make_app()
    async with app:
        with correlation_scope("c1") as scope:
            first = await app.publish(TOPIC, {"a": 1}, type="note.added")
            more = await app.publish_many(TOPIC, [{"b": 2}, {"c": 3}], type="task.updated")
        after = await app.publish(TOPIC, {"d": 4}, type="note.added")
        on_log = {e.id: e for e in await stored(app.transport)}
    assert scope.correlationid == "c1"
    for event in (first, *more):
        assert event.correlationid == "c1"
        assert on_log[event.id].correlationid == "c1"
        assert event.causationid is None
    assert after.correlationid == after.id


async def test_a_correlation_scope_without_an_id_makes_a_new_one() -> None:
    app = make_app()
    with correlation_scope() as scope:
        a = app.build({}, type="note.added")
        b = app.build({}, type="note.added")
    assert a.correlationid == b.correlationid == scope.correlationid
    assert scope.correlationid not in (a.id, b.id)


async def test_explicit_correlation_and_causation_win_over_the_scope() -> None:
    app = make_app()
    with correlation_scope("c1", "cause-1"):
        event = app.build({}, type="note.added", correlation_id="c2", causation_id="x")
        scoped = app.build({}, type="note.added")
    assert (event.correlationid, event.causationid) == ("c2", "x")
    assert (scoped.correlationid, scoped.causationid) == ("c1", "cause-1")


async def test_correlation_scopes_are_isolated_between_concurrent_tasks() -> None:
    app = make_app()

    async def publish_in(scope_id: str) -> Event:
        with correlation_scope(scope_id):
            await asyncio.sleep(0.01)
            return app.build({}, type="note.added")

    a, b = await asyncio.gather(publish_in("a"), publish_in("b"))
    assert (a.correlationid, b.correlationid) == ("a", "b")


PublishVia = Callable[[Tidings, Context, Any], Awaitable[Any]]


async def _via_ctx(app: Tidings, ctx: Context, payload: Any) -> Any:
    return await ctx.publish(TOPIC, payload, type="task.notified")


async def _via_app(app: Tidings, ctx: Context, payload: Any) -> Any:
    return await app.publish(TOPIC, payload, type="task.notified")


async def _via_app_many(app: Tidings, ctx: Context, payload: Any) -> Any:
    return await app.publish_many(TOPIC, [payload], type="task.notified")


@pytest.mark.parametrize("via", [_via_ctx, _via_app, _via_app_many])
async def test_events_published_in_a_handler_inherit_correlation_and_take_causation(
    via: PublishVia,
) -> None:
    app = make_app()
    seen: list[tuple[Event, Context]] = []

    @app.subscriber(TOPIC, group="reactor", types=["task.created"])
    async def react(payload: Any, ctx: Context) -> None:
        await via(app, ctx, {"about": payload.task_id})

    @app.subscriber(TOPIC, group="observer", types=["task.notified"])
    async def observe(payload: Any, ctx: Context) -> None:
        seen.append((ctx.event, ctx))

    async with app, running(app):
        with correlation_scope("req-1"):
            origin = await app.publish(TOPIC, app.TaskCreated(task_id="t1", title="x"))  # type: ignore[attr-defined]
        await eventually(lambda: len(seen) == 1)
    (notified, ctx) = seen[0]
    assert origin.correlationid == "req-1"
    assert notified.correlationid == "req-1"
    assert notified.causationid == origin.id
    assert notified.data == {"about": "t1"}
    assert ctx.correlationid == "req-1"


async def test_a_sync_handler_publishes_with_causality_through_publish_sync() -> None:
    app = make_app()
    seen: list[Event] = []

    @app.subscriber(TOPIC, group="reactor", types=["task.created"])
    def react(payload: Any, ctx: Context) -> None:
        ctx.publish_sync(TOPIC, {"about": payload.task_id}, type="task.notified")

    @app.subscriber(TOPIC, group="observer", types=["task.notified"])
    async def observe(payload: Any, ctx: Context) -> None:
        seen.append(ctx.event)

    async with app, running(app):
        origin = await app.publish(TOPIC, app.TaskCreated(task_id="t1", title="x"))  # type: ignore[attr-defined]
        await eventually(lambda: len(seen) == 1)
    assert seen[0].correlationid == origin.id  # the origin had no scope: its own id
    assert seen[0].causationid == origin.id


async def test_current_scope_inside_a_handler_is_the_handled_events() -> None:
    app = make_app()
    scopes: list[Scope | None] = []

    @app.subscriber(TOPIC, group="g")
    async def handle(payload: Any) -> None:
        scopes.append(current_scope())

    async with app, running(app):
        with correlation_scope("req-9"):
            origin = await app.publish(TOPIC, {}, type="task.opened", subject="t")
        await eventually(lambda: len(scopes) == 1)
    assert scopes == [Scope("req-9", origin.id)]
    assert current_scope() is None  # nothing leaks out of the handler


async def test_a_chain_of_handlers_keeps_one_correlation_and_links_each_cause() -> None:
    app = make_app()
    chain: list[Event] = []

    @app.subscriber(TOPIC, group="step1", types=["task.opened"])
    async def step1(payload: Any, ctx: Context) -> None:
        await ctx.publish(TOPIC, {}, type="task.step_one")

    @app.subscriber(TOPIC, group="step2", types=["task.step_one"])
    async def step2(payload: Any, ctx: Context) -> None:
        await app.publish(TOPIC, {}, type="task.step_two")

    @app.subscriber(TOPIC, group="log")
    async def record(payload: Any, ctx: Context) -> None:
        chain.append(ctx.event)

    async with app, running(app):
        origin = await app.publish(TOPIC, {}, type="task.opened", subject="t")
        await eventually(lambda: len(chain) == 3)
    by_type = {e.type: e for e in chain}
    assert by_type["task.opened"].id == origin.id
    assert {e.correlationid for e in chain} == {origin.id}
    assert by_type["task.step_one"].causationid == origin.id
    assert by_type["task.step_two"].causationid == by_type["task.step_one"].id


# -- publish_many -----------------------------------------------------------------


async def test_publish_many_appends_in_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app()
    calls: list[int] = []
    append = app.transport.append

    async def counting_append(topic: str, records: Any) -> Any:
        calls.append(len(records))
        return await append(topic, records)

    async with app:  # (its start registers the app's schemas: an append of its own)
        monkeypatch.setattr(app.transport, "append", counting_append)
        events = await app.publish_many(
            TOPIC,
            [app.TaskCreated(task_id=f"t{i}", title="x") for i in range(50)],  # type: ignore[attr-defined]
        )
        on_log = await stored(app.transport)
    assert calls == [50]
    assert len(events) == 50
    assert len({e.id for e in events}) == 50
    assert sorted(e.id for e in on_log) == sorted(e.id for e in events)
    assert [e.subject for e in events] == [f"t{i}" for i in range(50)]


async def test_publish_many_keeps_the_order_of_one_key() -> None:
    app = make_app()
    async with app:
        events = await app.publish_many(
            TOPIC, [{"n": i} for i in range(20)], type="task.x_y", key="k"
        )
        on_log = await stored(app.transport)
    assert [e.data["n"] for e in on_log] == list(range(20))
    assert [e.id for e in on_log] == [e.id for e in events]


async def test_publish_many_of_nothing_appends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app()

    async def no_append(topic: str, records: Any) -> Any:
        raise AssertionError("append called")

    async with app:  # (its start registers the app's schemas: an append of its own)
        monkeypatch.setattr(app.transport, "append", no_append)
        assert await app.publish_many(TOPIC, []) == []


async def test_publish_many_takes_one_subject_for_every_plain_payload() -> None:
    app = make_app()
    async with app:
        events = await app.publish_many(TOPIC, [{"n": 1}, {"n": 2}], type="task.x_y", subject="s")
    assert [e.subject for e in events] == ["s", "s"]


async def test_publish_many_gives_each_plain_payload_its_subject_from_a_function() -> None:
    app = make_app()
    app.topic(TOPIC, partitions=4)
    rows = [{"task_id": f"t{i % 3}", "n": i} for i in range(9)]
    async with app:
        events = await app.publish_many(
            TOPIC, rows, type="task.imported", subject=lambda row: row["task_id"]
        )
        on_log = await stored(app.transport)
    assert [e.subject for e in events] == [row["task_id"] for row in rows]
    assert all(e.partitionkey is None for e in events)  # the subject is the key
    # Each subject's events are in one partition, in the order given.
    for subject in ("t0", "t1", "t2"):
        assert [e.data["n"] for e in on_log if e.subject == subject] == [
            row["n"] for row in rows if row["task_id"] == subject
        ]


async def test_publish_many_takes_a_key_function_beside_one_subject() -> None:
    app = make_app()
    async with app:
        events = await app.publish_many(
            TOPIC, [{"tenant": "a"}, {"tenant": "b"}], type="task.x_y",
            subject="batch-1", key=lambda p: f"tenant-{p['tenant']}",
        )  # fmt: skip
    assert [e.subject for e in events] == ["batch-1", "batch-1"]
    assert [e.key for e in events] == ["tenant-a", "tenant-b"]


async def test_a_subject_function_overrides_a_models_subject_unless_it_returns_none() -> None:
    app = make_app()
    created = app.TaskCreated  # type: ignore[attr-defined]
    async with app:
        events = await app.publish_many(
            TOPIC,
            [created(task_id="t1", title="x"), created(task_id="t2", title="other")],
            subject=lambda task: "renamed" if task.title == "other" else None,
        )
    assert [e.subject for e in events] == ["t1", "renamed"]


async def test_publish_many_sends_built_events_as_they_are_beside_per_payload_subjects() -> None:
    app = make_app()
    seen: list[Any] = []

    def subject_of(payload: Any) -> str:
        seen.append(payload)
        return str(payload["n"])

    async with app:
        built = app.build({"n": 0}, type="task.x_y", subject="as-built")
        events = await app.publish_many(
            TOPIC, [built, {"n": 1}], type="task.x_y", subject=subject_of
        )
    assert events[0] is built
    assert [e.subject for e in events] == ["as-built", "1"]
    assert seen == [{"n": 1}]  # the function is not called for a built event


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"subject": ["t1", "t2"]}, r"subject=\.\.\.\) takes a string or a function .* got list"),
        ({"key": 7}, r"key=\.\.\.\) takes a string or a function .* got int"),
        ({"subject": lambda p: p["n"]}, r"subject=\.\.\.\) returned 2 for payload 1; it must"),
        ({"key": lambda p: ["k"]}, r"key=\.\.\.\) returned \['k'\] for payload 0"),
        ({"time": lambda p: None}, r"publish_many\(time=\.\.\.\) takes one value .* not a"),
    ],
    ids=["a list of subjects", "a key that is no string", "a subject function's int",
         "a key function's list", "a function for another option"],
)  # fmt: skip
async def test_publish_many_refuses_bad_subjects_and_keys_and_publishes_nothing(
    options: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()

    async def no_append(topic: str, records: Any) -> Any:
        raise AssertionError("append called")

    payloads = [{"n": "1"}, {"n": 2}] if "subject" in options else [{"n": 1}, {"n": 2}]
    async with app:  # (its start registers the app's schemas: an append of its own)
        monkeypatch.setattr(app.transport, "append", no_append)
        with pytest.raises(ConfigError, match=message):
            await app.publish_many(TOPIC, payloads, type="task.x_y", **options)


# -- subscribers ------------------------------------------------------------------


def test_subscriber_with_no_parameters_is_refused() -> None:
    app = make_app()
    with pytest.raises(ConfigError, match=r"must take \(payload\) or \(payload, ctx\).*takes 0"):

        @app.subscriber(TOPIC, group="g")
        def handler() -> None:
            pass


def test_subscriber_with_three_parameters_is_refused() -> None:
    app = make_app()
    with pytest.raises(ConfigError, match="takes 3 positional parameters"):

        @app.subscriber(TOPIC, group="g")
        async def handler(payload: Any, ctx: Any, extra: Any) -> None:
            pass

    assert app.subscribers == []


def test_subscriber_records_its_handler_kind() -> None:
    app = make_app()

    @app.subscriber(TOPIC, group="g", types=["task.created"])
    async def with_ctx(payload: Any, ctx: Context) -> None:
        pass

    @app.subscriber(TOPIC, group="g")
    def payload_only(payload: Any) -> None:
        pass

    a, b = app.subscribers
    assert (a.is_async, a.takes_context, a.types) == (True, True, frozenset({"task.created"}))
    assert (b.is_async, b.takes_context, b.types) == (False, False, None)
    assert a.wants("task.created")
    assert not a.wants("task.deleted")
    assert b.wants("anything.at_all")
    assert app.groups() == ["g"]


def test_subscriber_needs_a_group_a_valid_topic_and_valid_types() -> None:
    app = make_app()
    with pytest.raises(ConfigError, match="group"):
        app.subscriber(TOPIC, group="")
    with pytest.raises(ConfigError, match="topic name"):
        app.subscriber("bad topic", group="g")
    with pytest.raises(InvalidEventType, match="event type 'Bad'"):
        app.subscriber(TOPIC, group="g", types=["Bad"])
    with pytest.raises(ConfigError, match="start_from"):
        app.subscriber(TOPIC, group="g", start_from="middle")  # type: ignore[arg-type]


def test_one_group_cannot_start_in_two_places() -> None:
    app = make_app()

    @app.subscriber(TOPIC, group="g", start_from="latest")
    def a(payload: Any) -> None:
        pass

    with pytest.raises(ConfigError, match="a group starts in one place"):

        @app.subscriber("other-events", group="g", start_from="earliest")
        def b(payload: Any) -> None:
            pass


# The symptom of the bug, silenced so that the test reports the missing call instead.
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
async def test_an_object_with_an_async_call_method_is_awaited() -> None:
    app = make_app()

    class Handler:
        def __init__(self) -> None:
            self.seen: list[Any] = []

        async def __call__(self, payload: Any) -> None:
            self.seen.append(payload)

    handler = Handler()
    app.subscriber(TOPIC, group="g")(handler)
    async with app, running(app):
        await app.publish(TOPIC, {"n": 1}, type="note.added")
        with contextlib.suppress(AssertionError):
            await eventually(lambda: bool(handler.seen), timeout=1)
    assert handler.seen == [{"n": 1}]


# -- lifecycle ----------------------------------------------------------------------


async def test_start_and_close_nest() -> None:
    app = make_app()
    async with app:
        async with app:
            await app.publish(TOPIC, {}, type="note.added")
        await app.publish(TOPIC, {}, type="note.added")  # still started
    with pytest.raises(ConfigError, match="not started"):
        await app.publish(TOPIC, {}, type="note.added")


async def test_declared_topics_are_created_on_start() -> None:
    app = make_app()
    app.topic("audit-events", partitions=3)
    async with app:
        (info,) = [t for t in await app.transport.topics() if t.name != SCHEMAS_TOPIC]
    assert info.name == "audit-events"
    assert len(info.partitions) == 3


@asynccontextmanager
async def asgi_lifespan(asgi_app: Any) -> AsyncIterator[None]:
    """Drive an ASGI app's lifespan protocol, as a server (uvicorn) does."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.create_task(asgi_app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    message = await asyncio.wait_for(outbox.get(), 5)
    assert message["type"] == "lifespan.startup.complete", message
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        message = await asyncio.wait_for(outbox.get(), 5)
        assert message["type"] == "lifespan.shutdown.complete", message
        await asyncio.wait_for(task, 5)


async def test_fastapi_lifespan_starts_the_app_for_endpoints_that_publish(sqlite_url: str) -> None:
    import httpx
    from fastapi import FastAPI

    events = Tidings(sqlite_url, service="taskapi")

    @events.event("task.created", subject="task_id")
    class TaskCreated(BaseModel):
        task_id: str
        title: str

    api = FastAPI(lifespan=events.lifespan)

    @api.post("/tasks/{task_id}")
    async def create(task_id: str) -> dict[str, str]:
        with correlation_scope("http-1"):
            event = await events.publish(TOPIC, TaskCreated(task_id=task_id, title="t"))
        return {"event_id": event.id}

    transport = httpx.ASGITransport(app=api)
    async with (
        asgi_lifespan(api),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        first = await client.post("/tasks/t1")
        second = await client.post("/tasks/t2")
    assert first.status_code == second.status_code == 200
    published = {first.json()["event_id"], second.json()["event_id"]}

    # The lifespan closed the app: publishing now is refused.
    with pytest.raises(ConfigError, match="not started"):
        await events.publish(TOPIC, TaskCreated(task_id="t3", title="t"))
    # And the events are durable: a new app on the same file reads them.
    async with Tidings(sqlite_url, service="reader") as reader:
        on_log = await stored(reader.transport)
    assert {e.id for e in on_log} == published
    assert {e.subject for e in on_log} == {"t1", "t2"}
    assert {e.correlationid for e in on_log} == {"http-1"}


async def test_endpoints_without_the_lifespan_cannot_publish() -> None:
    import httpx
    from fastapi import FastAPI

    events = Tidings("memory://", service="taskapi")
    api = FastAPI()

    @api.post("/publish")
    async def publish() -> dict[str, str]:
        try:
            await events.publish(TOPIC, {}, type="task.created")
        except ConfigError as exc:
            return {"error": str(exc)}
        return {"error": ""}

    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/publish")
    assert "lifespan" in response.json()["error"]


async def test_extension_names_must_be_cloudevents_attribute_names() -> None:
    app = Tidings("memory://", service="s")
    with pytest.raises(ConfigError, match="tenantid"):
        app.build({}, type="thing.happened", extensions={"Tenant-ID": "x"})
    event = app.build({}, type="thing.happened", extensions={"tenantid": "x"})
    assert event.extensions == {"tenantid": "x"}


async def test_a_model_cannot_be_published_as_another_version() -> None:
    app = Tidings("memory://", service="s")

    @app.event("thing.happened", version=2)
    class ThingV2(BaseModel):
        n: int

    with pytest.raises(ConfigError, match=r"version 2 of thing\.happened, not 1"):
        app.build(ThingV2(n=1), version=1)
    assert app.build(ThingV2(n=1), version=2).dataversion == 2


def test_a_service_name_with_spaces_is_refused() -> None:
    with pytest.raises(ConfigError, match="without spaces"):
        Tidings("memory://", service="task api")
    assert Tidings("memory://", service="/services/task-api").service == "/services/task-api"


def test_publishes_declares_types_per_topic_and_checks_them() -> None:
    app = Tidings("memory://", service="s")
    app.publishes("orders", ["order.placed"])
    app.publishes("orders", "order.cancelled")  # one type alone
    app.publishes("invoices", ("invoice.sent",))
    assert app.published == {
        "orders": {"order.placed", "order.cancelled"},
        "invoices": {"invoice.sent"},
    }
    with pytest.raises(InvalidEventType, match="event type 'Placed'"):
        app.publishes("orders", ["Placed"])
    with pytest.raises(ConfigError, match="topic name 'a b'"):
        app.publishes("a b", ["order.placed"])
