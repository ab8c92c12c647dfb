"""Issue 18, items 3 and 6: events and commands (names, one owning group), owners,
deprecation; upcasters on live delivery (SQLite worker), on replay from the dead
letters and in ``tail --upcast``."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from tidings import Context, Tidings, Worker
from tidings.asyncapi import _about
from tidings.contracts import Registry
from tidings.dead_letters import DeadLetter, Filter, open_log, replay
from tidings.errors import ConfigError, DecodeError, TopicNotFound, UnknownEventType
from tidings.naming import check_name, past_of
from tidings.tail import tail
from tidings.testing import eventually, running

TOPIC = "orders"

# -- names -----------------------------------------------------------------------------

NAMES: list[tuple[str, str, str | None]] = [
    # (type, kind, the suggested name, or None if it reads right)
    ("task.created", "event", None),
    ("order.placed", "event", None),
    ("task.completed", "event", None),
    ("task.reminder_due", "event", None),
    ("billing.invoice.paid", "event", None),
    ("thing.held", "event", None),
    ("mail.sent", "event", None),
    ("task.happened", "event", None),  # a regular past tense not in the list
    ("cart.checked_out", "event", None),  # a phrasal verb
    ("report.written", "event", None),
    ("file.read", "event", None),  # the same word in both forms
    ("task.create", "event", "task.created"),
    ("order.place", "event", "order.placed"),
    ("invoice.pay", "event", "invoice.paid"),
    ("order.ship", "event", "order.shipped"),
    ("user.notify", "event", "user.notified"),
    ("mail.send", "event", "mail.sent"),
    ("task.due_date_change", "event", "task.due_date_changed"),
    ("cart.check_out", "event", "cart.checked_out"),
    ("report.write", "event", "report.written"),
    ("task.assign", "command", None),
    ("mail.send", "command", None),
    ("task.send_reminder", "command", None),
    ("user.sign_up", "command", None),
    ("cache.reset", "command", None),
    ("task.assigned", "command", "task.assign"),
    ("order.cancelled", "command", "order.cancel"),
    ("order.canceled", "command", "order.cancel"),
    ("invoice.paid", "command", "invoice.pay"),
    ("mail.sent_reminder", "command", "mail.send_reminder"),
    ("task.created", "command", "task.create"),
]


@pytest.mark.parametrize(("name", "kind", "better"), NAMES)
def test_names_read_as_their_kind_or_the_right_form_is_suggested(
    name: str, kind: str, better: str | None
) -> None:
    problem = check_name(name, kind)
    if better is None:
        assert problem is None
    else:
        assert problem is not None
        assert f"did you mean {better}?" in problem


@pytest.mark.parametrize(
    ("name", "kind", "says"),
    [
        ("task.foo", "event", "'foo' is not a past form"),
        ("task.creating", "event", "'creating' is not a past form"),
        ("task.assigning", "command", "not 'assigning'"),
        ("task.frobnicated", "command", "not 'frobnicated'"),
    ],
)
def test_names_that_cannot_be_told_say_why_and_how_to_override(
    name: str, kind: str, says: str
) -> None:
    problem = check_name(name, kind)
    assert problem is not None
    assert says in problem
    assert "name_check=False" in problem


@pytest.mark.parametrize(
    ("verb", "past"),
    [("create", "created"), ("copy", "copied"), ("stop", "stopped"), ("play", "played")],
)
def test_past_of_regular_verbs(verb: str, past: str) -> None:
    assert past_of(verb) == past


def test_a_misnamed_registration_is_refused_with_the_right_form() -> None:
    app = Tidings("memory://", service="tasks")

    class Payload(BaseModel):
        task_id: str

    with pytest.raises(ConfigError, match=r"task\.create: .*did you mean task\.created\?"):
        app.event("task.create")(Payload)
    with pytest.raises(ConfigError, match=r"did you mean task\.assign\?"):
        app.command("task.assigned")(Payload)
    with pytest.raises(ConfigError, match="kind must be 'event' or 'command'"):
        app.event("task.created", kind="query")(Payload)
    app.event("task.frobnicate", name_check=False)(Payload)  # the explicit override
    assert app.registry.lookup("task.frobnicate", 1) is not None


# -- what a contract says of itself ----------------------------------------------------


def test_kind_owner_description_and_sunset_are_kept_and_shown_in_asyncapi() -> None:
    app = Tidings("memory://", service="tasks")

    @app.command("task.assign", subject="task_id")
    class AssignTask(BaseModel):
        """Give a task to someone.

        Handled by the tasks service alone."""

        task_id: str

    @app.event("task.assigned", owner="planning", deprecated=True)
    class TaskAssigned(BaseModel):
        task_id: str

    @app.event("task.assigned", version=2, owner="planning", sunset="2027-06-30")
    class TaskAssignedV2(BaseModel):
        task_id: str

    command = app.registry.lookup("task.assign", 1)
    assert command is not None
    assert (command.kind, command.owner, command.deprecated) == ("command", "tasks", False)
    assert command.description == "Give a task to someone.\n\nHandled by the tasks service alone."
    v1, v2 = app.registry.lookup("task.assigned", 1), app.registry.lookup("task.assigned", 2)
    assert v1 is not None
    assert v2 is not None
    assert (v1.kind, v1.owner, v1.deprecated, v1.sunset) == ("event", "planning", True, None)
    assert (v2.deprecated, v2.sunset) == (True, date(2027, 6, 30))  # a sunset deprecates
    assert v1.description is None
    assert _about(command) == {
        "summary": "Give a task to someone.",
        "description": "Give a task to someone.\n\nHandled by the tasks service alone.",
        "x-tidings-kind": "command",
        "x-tidings-owner": "tasks",
        "x-tidings-subject-field": "task_id",
    }
    assert _about(v2) == {
        "deprecated": True,
        "x-tidings-kind": "event",
        "x-tidings-owner": "planning",
        "x-tidings-sunset": "2027-06-30",
    }


def test_kind_and_owner_are_one_per_type_and_a_bad_sunset_is_refused() -> None:
    app = Tidings("memory://", service="tasks")

    class P(BaseModel):
        task_id: str

    class Q(BaseModel):
        task_id: str

    app.event("task.created")(P)
    with pytest.raises(ConfigError, match="has owner 'other', version 1 'tasks'"):
        app.event("task.created", version=2, owner="other")(Q)
    with pytest.raises(ConfigError, match="has kind 'command', version 1 'event'"):
        app.event("task.created", version=2, kind="command", name_check=False)(Q)
    with pytest.raises(ConfigError, match="sunset must be a date or 'YYYY-MM-DD'"):
        app.event("task.created", version=2, sunset="next year")(Q)


# -- commands: one owning group --------------------------------------------------------


def _command_app() -> Tidings:
    app = Tidings("memory://", service="tasks")

    @app.command("task.assign")
    class AssignTask(BaseModel):
        task_id: str

    return app


def test_a_second_group_subscribing_to_a_command_is_refused_at_worker_start() -> None:
    app = _command_app()

    @app.subscriber("tasks", group="planner", types=["task.assign"])
    async def plan(payload: Any) -> None: ...

    @app.subscriber("tasks", group="planner", types=["task.assign"])
    async def also_in_the_owning_group(payload: Any) -> None: ...

    @app.subscriber("tasks", group="audit")  # every type: it observes, it does not own
    async def audit(payload: Any) -> None: ...

    Worker(app)  # one owning group, and a catch-all: fine

    @app.subscriber("tasks", group="mailer", types=["task.assign", "task.created"])
    async def mail(payload: Any) -> None: ...

    with pytest.raises(ConfigError) as raised:
        Worker(app, ["planner"])
    assert "command task.assign is subscribed to by groups 'planner' and 'mailer'" in str(
        raised.value
    )


def test_an_event_may_be_subscribed_to_by_any_number_of_groups() -> None:
    app = Tidings("memory://", service="tasks")

    @app.event("task.created")
    class TaskCreated(BaseModel):
        task_id: str

    for group in ("a", "b", "c"):
        app.subscriber("tasks", group=group, types=["task.created"])(lambda payload: None)
    Worker(app)


# -- deprecation -----------------------------------------------------------------------


async def test_publishing_a_deprecated_version_warns_once_per_type_and_version(
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = f"dep{uuid.uuid4().hex[:12]}.placed"  # the warning is once per process
    app = Tidings("memory://", service="shop")

    @app.event(name, sunset=date(2027, 1, 31))
    class Old(BaseModel):
        n: int

    @app.event(name, version=2)
    class New(BaseModel):
        n: int

    caplog.set_level(logging.WARNING, logger="tidings.contracts")
    async with app:
        await app.publish(TOPIC, Old(n=1))
        await app.publish(TOPIC, Old(n=2))
        await app.publish(TOPIC, {"n": 3}, type=name, version=1)
        await app.publish(TOPIC, New(n=4))
        await app.publish(TOPIC, {"n": 5}, type=name, version=2)
    warned = [r for r in caplog.records if r.name == "tidings.contracts"]
    assert [r.getMessage() for r in warned] == [
        f"publishing {name} version 1, which is deprecated (sunset 2027-01-31); "
        "the latest is version 2"
    ]
    assert warned[0].levelno == logging.WARNING


# -- upcasters: decoding ---------------------------------------------------------------


class OrderPlacedV3(BaseModel):
    order_id: str
    amount_cents: int
    currency: str


def to_v2(v1: dict[str, Any]) -> dict[str, Any]:
    """v1 had ``amount`` in whole units; v2 has cents."""
    return {"order_id": v1["order_id"], "amount_cents": v1.pop("amount") * 100}


def to_v3(v2: dict[str, Any]) -> dict[str, Any]:
    """v3 adds the currency; everything before was in euros."""
    return {**v2, "currency": "EUR"}


def order_registry(*, with_v3: bool = True, steps: int = 2) -> Registry:
    registry = Registry()
    if with_v3:
        registry.register(OrderPlacedV3, "order.placed", 3, subject="order_id")
    for version, function in [(1, to_v2), (2, to_v3)][:steps]:
        registry.add_upcaster("order.placed", version, function)
    return registry


def test_a_chain_of_upcasters_reads_old_versions_as_the_registered_one() -> None:
    registry = order_registry()
    v1 = {"order_id": "o-1", "amount": 12}
    got = registry.decode_payload("order.placed", 1, v1)
    assert got == OrderPlacedV3(order_id="o-1", amount_cents=1200, currency="EUR")
    assert v1 == {"order_id": "o-1", "amount": 12}  # shared: the upcasters had a copy
    assert registry.decode_payload("order.placed", 2, {"order_id": "o-2", "amount_cents": 5}) == (
        OrderPlacedV3(order_id="o-2", amount_cents=5, currency="EUR")
    )
    assert [registry.read_version("order.placed", v) for v in (1, 2, 3, None)] == [3, 3, 3, None]
    assert registry.read_version("task.created", 1) == 1


def test_an_upcaster_from_a_version_with_a_model_takes_precedence() -> None:
    registry = order_registry()

    class OrderPlacedV2(BaseModel):
        order_id: str
        amount_cents: int

    registry.register(OrderPlacedV2, "order.placed", 2)
    got = registry.decode_payload("order.placed", 2, {"order_id": "o", "amount_cents": 1})
    assert isinstance(got, OrderPlacedV3)


def test_a_version_with_neither_model_nor_path_and_a_path_to_nowhere_are_unknown() -> None:
    registry = order_registry(steps=1)  # 1 -> 2, and version 2 has no model
    with pytest.raises(UnknownEventType, match="upcast to version 2, which has neither"):
        registry.decode_payload("order.placed", 1, {"order_id": "o", "amount": 1})
    with pytest.raises(UnknownEventType, match=r"version 2 of order\.placed is not registered"):
        registry.decode_payload("order.placed", 2, {"order_id": "o", "amount_cents": 1})


def test_an_upcaster_that_raises_or_returns_no_dict_is_a_decode_error_naming_it() -> None:
    registry = order_registry()
    with pytest.raises(DecodeError, match=r"upcaster to_v2 \(order.placed v1 -> v2\) raised Key"):
        registry.decode_payload("order.placed", 1, {"order_id": "o"})
    registry = Registry()
    registry.register(OrderPlacedV3, "order.placed", 3)
    registry.add_upcaster("order.placed", 2, lambda v2: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(DecodeError, match=r"v2 -> v3\) returned NoneType, not a dict"):
        registry.decode_payload("order.placed", 2, {})


def test_one_upcaster_per_version() -> None:
    registry = order_registry()
    with pytest.raises(ConfigError, match="already has an upcaster from version 1: to_v2"):
        registry.add_upcaster("order.placed", 1, to_v3)
    registry.add_upcaster("order.placed", 1, to_v2)  # the same one again: fine
    with pytest.raises(ConfigError, match="from_version must be an integer >= 1"):
        registry.add_upcaster("order.placed", 0, to_v2)


# -- upcasters: a worker on SQLite, live and on replay ---------------------------------


def order_app(url: str, *, upcasters: bool = True) -> Tidings:
    app = Tidings(url, service="shop")
    app.event("order.placed", version=3, subject="order_id")(OrderPlacedV3)
    if upcasters:
        app.upcaster("order.placed", from_version=1)(to_v2)
        app.upcaster("order.placed", from_version=2)(to_v3)
    return app


async def publish_versions(app: Tidings, *, by: Tidings | None = None) -> None:
    """A v1, a v2 and a v3 order; the old ones built by ``by`` (default: ``app``)."""
    by = by or app
    old = [(1, {"order_id": "o-1", "amount": 7}), (2, {"order_id": "o-2", "amount_cents": 250})]
    for version, data in old:
        event = by.build(data, type="order.placed", version=version, subject=str(data["order_id"]))
        await app.publish_events(TOPIC, [event])
    await app.publish(TOPIC, OrderPlacedV3(order_id="o-3", amount_cents=99, currency="USD"))


WANT = [
    (OrderPlacedV3(order_id="o-1", amount_cents=700, currency="EUR"), 1, 3),
    (OrderPlacedV3(order_id="o-2", amount_cents=250, currency="EUR"), 2, 3),
    (OrderPlacedV3(order_id="o-3", amount_cents=99, currency="USD"), 3, 3),
]


async def dead_letters(app: Tidings, group: str, count: int) -> list[DeadLetter]:
    found: list[DeadLetter] = []

    async def enough() -> bool:
        nonlocal found
        try:
            log = await open_log(app.transport, group)
        except TopicNotFound:
            return False
        found = [e for e, _ in log.listing()]
        return len(found) >= count

    await eventually(enough, what=f"{count} dead letter(s)")
    return found


@pytest.mark.parametrize("handler_kind", ["def", "async def"])
async def test_a_v3_subscriber_gets_v1_and_v2_events_upcast_live(
    sqlite_url: str, handler_kind: str
) -> None:
    app = order_app(sqlite_url)
    seen: list[tuple[OrderPlacedV3, int | None, int | None]] = []

    def handle(order: OrderPlacedV3, ctx: Context) -> None:
        seen.append((order, ctx.event.dataversion, ctx.read_version))

    async def handle_async(order: OrderPlacedV3, ctx: Context) -> None:
        handle(order, ctx)

    app.subscriber(TOPIC, group="billing")(handle if handler_kind == "def" else handle_async)
    async with app, running(app):
        await publish_versions(app)
        await eventually(lambda: len(seen) == 3, what="three orders")
    assert sorted(seen, key=lambda s: s[0].order_id) == WANT


async def test_dead_letters_of_old_versions_are_read_upcast_on_replay(sqlite_url: str) -> None:
    before = order_app(sqlite_url, upcasters=False)  # v3 deployed, the upcasters not yet
    seen: list[tuple[OrderPlacedV3, int | None, int | None]] = []

    async def handle(order: OrderPlacedV3, ctx: Context) -> None:
        seen.append((order, ctx.event.dataversion, ctx.read_version))

    before.subscriber(TOPIC, group="billing")(handle)
    async with before, running(before):
        # Built by a service that still publishes v1 and v2 (this one refuses to).
        await publish_versions(before, by=Tidings("memory://", service="old-shop"))
        dead = await dead_letters(before, "billing", 2)
        await eventually(lambda: len(seen) == 1, what="the v3 order")
    assert [d.reason for d in dead] == ["poison", "poison"]
    assert {d.error_type for d in dead} == {"tidings.errors.UnknownEventType"}
    assert all("is not registered in this service" in d.error_message for d in dead)

    after = order_app(sqlite_url)  # the upcasters deployed
    after.subscriber(TOPIC, group="billing")(handle)
    async with after, running(after):
        assert await replay(after.transport, "billing", Filter()) == 2
        await eventually(lambda: len(seen) == 3, what="the replayed orders")
    assert sorted(seen, key=lambda s: s[0].order_id) == WANT


async def test_no_path_and_a_failing_upcaster_are_dead_letters_with_their_reason(
    sqlite_url: str,
) -> None:
    app = Tidings(sqlite_url, service="shop")
    app.event("order.placed", version=3)(OrderPlacedV3)
    handled: list[str] = []

    @app.upcaster("order.placed", from_version=2)  # and none from 1
    def broken(v2: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("no currency known")

    @app.subscriber(TOPIC, group="billing")
    async def handle(order: OrderPlacedV3) -> None:
        handled.append(order.order_id)

    async with app, running(app):
        other = Tidings(sqlite_url, service="old-shop")  # a producer that knows v1
        for version, data in [(1, {"order_id": "o-1", "amount": 1}), (2, {"order_id": "o-2"})]:
            event = other.build(data, type="order.placed", version=version)
            await app.publish_events(TOPIC, [event])
        await app.publish(TOPIC, OrderPlacedV3(order_id="o-3", amount_cents=1, currency="EUR"))
        dead = await dead_letters(app, "billing", 2)
        await eventually(lambda: handled == ["o-3"], what="the good order after them")
    by_id = {d.event_id: d for d in dead}
    assert len(by_id) == 2
    reasons = sorted(f"{d.reason} {d.error_type}: {d.error_message}" for d in dead)
    assert reasons[0].startswith("poison tidings.errors.DecodeError: upcaster ")
    assert "broken (order.placed v2 -> v3) raised ValueError: no currency known" in reasons[0]
    assert reasons[1].startswith("poison tidings.errors.UnknownEventType: version 1 of order")
    assert "is not registered in this service" in reasons[1]


# -- tail --upcast ---------------------------------------------------------------------


async def test_tail_with_upcast_shows_events_at_todays_version(sqlite_url: str) -> None:
    # One partition: events of one millisecond on different partitions have no one order.
    app = order_app(f"{sqlite_url}?partitions=1")
    async with app:
        await publish_versions(app)
        await app.publish(TOPIC, {"order_id": "o-4"}, type="order.placed", version=1)  # bad
        plain = [e async for e in tail(app.transport, TOPIC)]
        upcast = [e async for e in tail(app.transport, TOPIC, upcast=app.registry)]
    assert [e.event.dataversion for e in plain if e.event] == [1, 2, 3, 1]
    assert [(e.upcast_from, e.event.dataversion if e.event else None) for e in upcast] == [
        (1, 3), (2, 3), (None, 3), (None, None)
    ]  # fmt: skip
    first = upcast[0].event
    assert first is not None
    assert first.data == {"order_id": "o-1", "amount_cents": 700, "currency": "EUR"}
    assert first.dataschema == "urn:tidings:schema:order.placed:3"
    assert plain[0].event is not None
    assert first.id == plain[0].event.id
    assert upcast[3].error is not None
    assert "cannot be upcast" in upcast[3].error
    assert "to_v2" in upcast[3].error


def test_the_tail_command_with_upcast_prints_events_as_the_app_reads_them(
    sqlite_url: str, tmp_path: Path
) -> None:
    (tmp_path / "shop.py").write_text(
        "from tests.test_contracts_evolution import order_app\napp = order_app('memory://')\n"
    )

    async def seed() -> None:
        # One partition: events of one millisecond on different partitions have no one order.
        async with order_app(f"{sqlite_url}?partitions=1") as app:
            await publish_versions(app)

    asyncio.run(seed())

    env = {k: v for k, v in os.environ.items() if k != "TIDINGS_URL"}
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{Path(__file__).resolve().parent.parent}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tidings", "tail", TOPIC, *args, "--url", sqlite_url],
            capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False,
            env=env,
        )  # fmt: skip

    text = run("--upcast", "shop:app")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == 3
    assert "order.placed  v1->v3  o-1" in lines[0]
    assert '"amount_cents":700,"currency":"EUR"' in lines[0]
    assert "order.placed  v2->v3  o-2" in lines[1]
    assert "order.placed  v3  o-3" in lines[2]  # written as v3: read as written
    as_json = run("--upcast", "shop:app", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert '"dataversion":3' in as_json.stdout.splitlines()[0]
    assert '"amount_cents":700' in as_json.stdout.splitlines()[0]
    unchanged = run("--json")
    assert '"dataversion":1' in unchanged.stdout.splitlines()[0]
