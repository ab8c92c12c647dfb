"""``tidings trace``: the causal tree of a correlation id or an event id, with each
group's status, on a real SQLite file (and once on memory://), from the library and
through the command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import pytest
from pydantic import BaseModel

from tests.conftest import LOGS, fresh_log, log_url
from tests.test_cli import assert_one_error_line
from tests.test_cli import tidings_in_process as cli
from tidings import Context, Tidings
from tidings.dead_letters import Filter, open_log, purge, replay
from tidings.middleware import Retry
from tidings.testing import eventually, running
from tidings.trace import Change, Trace, TraceNode, Tracer, changes, follow, trace


class Order(BaseModel):
    order_id: str
    n: int


class Payment(BaseModel):
    order_id: str


@dataclass
class Shop:
    """Group ``billing`` takes a payment for each order (an event caused by it), group
    ``mail`` fails for the orders in ``failing`` (dead-lettered at the first failure),
    group ``ship`` reads the payments."""

    app: Tidings
    failing: set[int] = field(default_factory=set)
    shipped: list[str] = field(default_factory=list)
    mailed: list[str] = field(default_factory=list)


def shop(url: str) -> Shop:
    app = Tidings(url, service="shop")
    app.event("order.placed", subject="order_id")(Order)
    app.event("payment.taken", subject="order_id")(Payment)
    s = Shop(app)

    @app.subscriber("orders", group="billing")
    async def bill(order: Order, ctx: Context) -> None:
        await ctx.publish("payments", Payment(order_id=order.order_id))

    @app.subscriber("orders", group="mail", retry=Retry(max_attempts=1))
    async def mail(order: Order) -> None:
        if order.n in s.failing:
            raise TimeoutError(f"mail server down for {order.order_id}")
        s.mailed.append(order.order_id)

    @app.subscriber("payments", group="ship")
    async def ship(payment: Payment) -> None:
        s.shipped.append(payment.order_id)

    return s


async def settled(s: Shop, correlation: str) -> Trace:
    """The trace of ``correlation`` once every group's status with every event is known
    (nothing pending)."""
    found: list[Trace] = []

    async def done() -> bool:
        t = await trace(s.app.transport, correlation)
        found[:] = [t]
        nodes = t.nodes()
        return len(nodes) >= 2 and all(g.status != "pending" for n in nodes for g in n.groups)

    await eventually(done, timeout=30, what=f"the trace of {correlation} settled")
    return found[0]


def groups(node: TraceNode) -> dict[str, str]:
    return {g.group: g.status for g in node.groups}


@pytest.fixture(params=LOGS)
def url(request: pytest.FixtureRequest) -> str:
    return log_url(request, partitions=2)


async def seed(s: Shop) -> None:
    """Order o-0 (correlation req-ok) handled everywhere; order o-1 (req-bad)
    dead-lettered by ``mail``. Nothing runs afterwards."""
    s.failing.add(1)
    async with running(s.app):
        await s.app.publish("orders", Order(order_id="o-0", n=0), correlation_id="req-ok")
        await s.app.publish("orders", Order(order_id="o-1", n=1), correlation_id="req-bad")
        await settled(s, "req-ok")
        await settled(s, "req-bad")


@pytest.fixture
async def seeded(url: str) -> AsyncIterator[Shop]:
    """A log of its own, seeded (:func:`seed`), for a test that changes it."""
    s = shop(url)
    async with s.app:
        await seed(s)
        yield s


@pytest.fixture(scope="module", params=LOGS)
def seeded_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A log seeded once (:func:`seed`) and shared by the tests of this module that only
    read it: on Kafka a seeding is ~3 s (three groups join, settle and leave)."""

    async def seed_once(url: str) -> None:
        s = shop(url)
        async with s.app:
            await seed(s)

    with fresh_log(request, tmp_path_factory.mktemp("trace"), partitions=2) as url:
        asyncio.run(seed_once(url))
        yield url


@pytest.fixture
async def seen(seeded_url: str) -> AsyncIterator[Shop]:
    """The shared seeded log (``seeded_url``), to read only: no test may change it."""
    s = shop(seeded_url)
    async with s.app:
        yield s


async def test_a_correlation_id_is_one_tree_with_every_groups_handling(seen: Shop) -> None:
    t = await trace(seen.app.transport, "req-ok")
    assert (t.kind, t.correlationid, len(t.roots)) == ("correlation", "req-ok", 1)
    (order,) = t.roots
    assert (order.event.type, order.record.topic, order.cause_seen) == (
        "order.placed",
        "orders",
        True,
    )
    assert groups(order) == {"billing": "handled", "mail": "handled"}
    (payment,) = order.children
    assert payment.event.type == "payment.taken"
    assert payment.event.causationid == order.event.id
    assert groups(payment) == {"ship": "handled"}
    assert payment.after_cause is not None
    assert payment.after_cause >= 0
    assert t.span >= payment.after_cause


async def test_a_dead_letter_shows_its_reason_then_replaying_then_replayed(seeded: Shop) -> None:
    transport = seeded.app.transport
    (order,) = (await trace(transport, "req-bad")).roots
    mail = next(g for g in order.groups if g.group == "mail")
    assert mail.status == "dead-lettered"
    assert mail.reason == "TimeoutError: mail server down for o-1"
    assert mail.attempts == 1
    assert mail.entry is not None
    assert mail.dead_at is not None
    assert groups(order)["billing"] == "handled"

    assert await replay(transport, "mail", Filter()) == 1
    (order,) = (await trace(transport, "req-bad")).roots
    assert groups(order)["mail"] == "replaying"

    seeded.failing.clear()
    async with running(seeded.app):
        await eventually(lambda: "o-1" in seeded.mailed, what="the replay handled")

        async def resolved() -> bool:
            return not (await open_log(transport, "mail", resolved=False)).entries

        await eventually(resolved, what="the entry resolved")
    (order,) = (await trace(transport, "req-bad")).roots
    mail = next(g for g in order.groups if g.group == "mail")
    assert (mail.status, mail.reason) == ("replayed", "TimeoutError: mail server down for o-1")


async def test_a_purged_dead_letter_says_so(seeded: Shop) -> None:
    assert await purge(seeded.app.transport, "mail", Filter()) == 1
    (order,) = (await trace(seeded.app.transport, "req-bad")).roots
    mail = next(g for g in order.groups if g.group == "mail")
    assert (mail.status, mail.reason) == ("purged", "TimeoutError: mail server down for o-1")
    assert mail.text.startswith("purged: TimeoutError: mail server down for o-1 (entry ")


async def test_an_event_no_group_has_reached_is_pending_with_its_place(seeded: Shop) -> None:
    app = seeded.app
    first = await app.publish("orders", Order(order_id="o-2", n=2), correlation_id="req-late")
    second = await app.publish("orders", Order(order_id="o-2", n=3), correlation_id="req-late")
    t = await trace(app.transport, "req-late")
    assert [n.event.id for n in t.roots] == [first.id, second.id]  # nothing ran: no payment
    dense = app.transport.capabilities.dense_offsets  # NATS numbers the whole stream
    first_behind, second_behind = (0, 1) if dense else (None, None)
    assert [{g.group: (g.status, g.behind) for g in n.groups} for n in t.roots] == [
        {"billing": ("pending", first_behind), "mail": ("pending", first_behind)},
        {"billing": ("pending", second_behind), "mail": ("pending", second_behind)},
    ]
    if dense:
        assert [g.text for n in t.roots for g in n.groups] == [
            "pending (next)", "pending (next)", "pending (1 before it)", "pending (1 before it)"
        ]  # fmt: skip


async def test_an_event_id_is_the_tree_of_what_it_caused(seen: Shop) -> None:
    (order,) = (await trace(seen.app.transport, "req-ok")).roots
    (payment,) = order.children
    t = await trace(seen.app.transport, order.event.id)
    assert (t.kind, t.correlationid) == ("event", "req-ok")
    assert [n.event.id for n in t.nodes()] == [order.event.id, payment.event.id]
    leaf = await trace(seen.app.transport, payment.event.id)
    assert [n.event.type for n in leaf.nodes()] == ["payment.taken"]
    assert leaf.roots[0].cause_seen  # its cause is not in this tree, but was seen


async def test_an_event_whose_cause_was_not_read_hangs_under_the_top(seeded: Shop) -> None:
    app = seeded.app
    await app.publish(
        "payments", Payment(order_id="o-9"), correlation_id="req-ok", causation_id="gone-1"
    )
    t = await trace(app.transport, "req-ok")
    assert [(n.event.type, n.cause_seen) for n in t.roots] == [
        ("order.placed", True),
        ("payment.taken", False),
    ]
    (order, _) = t.roots
    # Six later records in the order's partition: a window of three per partition (on
    # NATS, three times the partition count of the topic) no longer holds the order,
    # so its payment's cause is not seen either.
    for n in range(6):
        await app.publish("orders", Order(order_id="o-0", n=10 + n), correlation_id="other")
    small = await trace(app.transport, "req-ok", scan=3)
    assert [(n.event.causationid, n.cause_seen) for n in small.roots] == [
        (order.event.id, False),
        ("gone-1", False),
    ]


async def test_an_id_that_matches_nothing_is_an_empty_trace_and_exit_1(
    seen: Shop, seeded_url: str
) -> None:
    t = await trace(seen.app.transport, "no-such-request")
    assert (t.roots, t.correlationid) == ((), None)
    assert t.scanned >= 4
    assert t.topics == 2
    result = cli("trace", "no-such-request", url=seeded_url)
    assert_one_error_line(result, 1, "no event with the correlation id or event id")


async def test_the_command_prints_the_tree_and_its_json(seen: Shop, seeded_url: str) -> None:
    (order,) = (await trace(seen.app.transport, "req-bad")).roots
    (payment,) = order.children
    result = cli("trace", "req-bad", url=seeded_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("correlation id req-bad: 2 event(s) over ")
    p, o = order.record.partition, order.record.offset
    assert lines[1].startswith("└─ ")
    assert f"order.placed  orders@{p}:{o}  …" in lines[1]
    assert lines[2].startswith("   │  billing  handled")
    assert lines[3].startswith("   │  mail     dead-lettered: TimeoutError: mail server down")
    assert lines[4].startswith("   └─ ")
    assert "payment.taken" in lines[4]
    assert "+" in lines[4]
    assert lines[5] == "         ship  handled"

    doc = json.loads(cli("trace", "req-bad", "--json", url=seeded_url).stdout)
    assert set(doc) == {
        "id",
        "kind",
        "correlationid",
        "events",
        "span_ms",
        "scanned",
        "topics",
        "roots",
    }
    assert (doc["kind"], doc["events"]) == ("correlation", 2)
    (root,) = doc["roots"]
    assert set(root) == {
        "id", "type", "source", "subject", "time", "topic", "partition", "offset",
        "causationid", "note", "cause_seen", "after_cause_ms", "copies", "groups",
        "children",
    }  # fmt: skip
    assert (root["id"], root["topic"], root["after_cause_ms"]) == (order.event.id, "orders", None)
    mail = {g["group"]: g for g in root["groups"]}["mail"]
    assert mail["status"] == "dead-lettered"
    assert mail["after_ms"] >= 0
    assert mail["reason"] == "TimeoutError: mail server down for o-1"
    (child,) = root["children"]
    assert (child["id"], child["causationid"]) == (payment.event.id, order.event.id)
    assert [g["status"] for g in child["groups"]] == ["handled"]


async def test_follow_reports_a_late_event_and_its_groups_catching_up(
    seeded: Shop,
) -> None:
    app = seeded.app
    tracer = Tracer(app.transport, "req-ok")
    await tracer.refresh()
    stop = asyncio.Event()
    seen: list[Change] = []

    async def collect() -> None:
        async for _, moved in follow(tracer, stop, poll=0.05):
            seen.extend(moved)

    task = asyncio.create_task(collect())
    try:
        (order,) = tracer.trace().roots
        late = await app.publish(
            "orders",
            Order(order_id="o-0", n=5),
            correlation_id="req-ok",
            causation_id=order.event.id,
        )
        await eventually(
            lambda: any(c.node.event.id == late.id for c in seen), what="the late event"
        )
        new = next(c for c in seen if c.node.event.id == late.id and c.group is None)
        assert new.node.event.type == "order.placed"
        assert {
            c.group.group: c.group.status for c in seen if c.group and c.node.event.id == late.id
        } == {
            "billing": "pending",
            "mail": "pending",
        }

        def moved() -> set[tuple[str, str | None, str]]:
            """(group, status before, status now) of the late order and its payment."""
            return {
                (c.group.group, c.before.status if c.before else None, c.group.status)
                for c in seen
                if c.group is not None and late.id in (c.node.event.id, c.node.event.causationid)
            }

        caught_up = {
            ("billing", "pending", "handled"),
            ("mail", "pending", "handled"),
        }
        async with running(app):
            # (The payment is new when first seen: pending, or already handled.)
            await eventually(
                lambda: (
                    moved() >= caught_up
                    and bool({("ship", None, "handled"), ("ship", "pending", "handled")} & moved())
                ),
                timeout=30,
                what="the late order handled and its payment shipped",
            )
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def test_changes_of_the_same_trace_are_none() -> None:
    empty = Trace("x", "correlation", None, (), 0.0, 0, 0)
    assert changes(empty, empty) == []
    assert changes(None, empty) == []


async def test_the_tree_is_the_same_on_memory() -> None:
    s = shop("memory://")
    async with s.app, running(s.app):
        await s.app.publish("orders", Order(order_id="m-0", n=0), correlation_id="req-m")
        t = await settled(s, "req-m")
    (order,) = t.roots
    assert groups(order) == {"billing": "handled", "mail": "handled"}
    assert [(n.event.type, groups(n)) for n in order.children] == [
        ("payment.taken", {"ship": "handled"})
    ]


def publisher(url: str) -> Callable[..., str]:
    """Publish an order to ``url`` with these options; its id."""

    async def publish(**options: object) -> str:
        s = shop(url)
        async with s.app:
            return (await s.app.publish("orders", Order(order_id="f-0", n=0), **options)).id

    return lambda **options: asyncio.run(publish(**options))


@contextlib.contextmanager
def following(url: str, *args: str) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    """``tidings trace ARGS --url URL`` running; the lines it prints, as they come. On
    leaving, it is sent SIGTERM (if still running) and must exit 0."""
    env = {k: v for k, v in os.environ.items() if k != "TIDINGS_URL"}
    command = [sys.executable, "-m", "tidings", "trace", *args, "--url", url]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        lines: queue.Queue[str] = queue.Queue()
        out = proc.stdout
        reader = threading.Thread(target=lambda: [lines.put(line) for line in out], daemon=True)
        reader.start()
        try:
            yield proc, lines
        finally:
            proc.terminate()
            code = proc.wait(timeout=30)
            reader.join(timeout=30)
            errors = proc.stderr.read()
        assert code == 0, errors


def test_the_command_follows_until_sigterm(sqlite_url: str) -> None:
    publish = publisher(sqlite_url)
    first = publish(correlation_id="req-f")
    with following(sqlite_url, "req-f", "--follow") as (_, lines):
        assert lines.get(timeout=30).startswith("correlation id req-f: 1 event(s)")
        assert first[-12:] in lines.get(timeout=30)
        late = publish(correlation_id="req-f", causation_id=first)
        line = lines.get(timeout=30)
        assert line.startswith("+ ")
        assert late[-12:] in line
        assert " +" in line.split("order.placed")[0]  # its time after its cause


def test_the_command_follows_in_json_lines_until_its_timeout(sqlite_url: str) -> None:
    publish = publisher(sqlite_url)
    first = publish(correlation_id="req-j")
    with following(sqlite_url, "req-j", "--follow", "--json", "--timeout", "60") as (_, lines):
        tree = json.loads(lines.get(timeout=30))
        assert [r["id"] for r in tree["roots"]] == [first]
        late = publish(correlation_id="req-j", causation_id=first)
        change = json.loads(lines.get(timeout=30))
        assert change["change"] == "event"
        assert (change["event"]["id"], change["event"]["causationid"]) == (late, first)
        assert "children" not in change["event"]
    with following(sqlite_url, "req-j", "--follow", "--timeout", "0.2") as (proc, lines):
        assert lines.get(timeout=30).startswith("correlation id req-j: 2 event(s)")
        assert proc.wait(timeout=30) == 0  # it stops by itself


async def test_an_id_json_would_escape_is_found_by_decoding_every_record(seeded: Shop) -> None:
    odd = 'req "quoted" \\ ü'
    placed = await seeded.app.publish("orders", Order(order_id="o-7", n=7), correlation_id=odd)
    t = await trace(seeded.app.transport, odd)
    assert [n.event.id for n in t.nodes()] == [placed.id]
