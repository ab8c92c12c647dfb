"""What a service records of itself in the schema registry (tidings.schema.services,
decision 0022): written at start, again only when it changed; the versions each group
reads; SLAs; who says what of a version; who still uses a deprecated one."""

from __future__ import annotations

import uuid
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from tidings import Tidings
from tidings.errors import ConfigError
from tidings.schema.registry import SCHEMAS_TOPIC, SchemaRegistry
from tidings.schema.services import (
    Held,
    Publication,
    ServiceRecord,
    Subscription,
    about,
    deprecations,
    describe,
    retirement,
)
from tidings.transport import Transport


class OrderV1(BaseModel):
    order_id: str


class Order(BaseModel):
    order_id: str
    total: float = 0


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://services-{uuid.uuid4().hex}"
    return f"sqlite:///{tmp_path / 'events.db'}"


def billing(url: str, **kw: Any) -> Tidings:
    app = Tidings(url, service="billing", **kw)
    app.event("order.placed", 1, sunset="2030-01-31")(OrderV1)
    app.event("order.placed", 2)(Order)
    app.publishes("orders", ["order.placed"])

    @app.subscriber("orders", group="ledger", types=["order.placed"])
    async def book(order: Order) -> None:
        pass

    return app


async def service_entries(transport: Transport) -> list[dict[str, Any]]:
    records = await transport.read(SCHEMAS_TOPIC, 0, 0, 1000)
    return [d for r in records if (d := orjson.loads(r.value))["kind"] == "service"]


async def test_a_restart_records_nothing_and_a_change_records_once(url: str) -> None:
    async with billing(url) as app:
        [first] = await service_entries(app.transport)
        assert first["service"] == "billing"
        assert first["publishes"] == [
            {"topic": "orders", "type": "order.placed", "versions": [1, 2]}
        ]
    async with billing(url) as app:
        assert len(await service_entries(app.transport)) == 1  # the same: nothing written
    changed = billing(url)
    changed.group("ledger", sla=12)
    async with changed as app:
        entries = await service_entries(app.transport)
        assert [e["slas"] for e in entries] == [{}, {"ledger": 12.0}]
        fresh = SchemaRegistry(app.transport)  # the latest record in log order counts
        assert (await fresh.services())["billing"].slas == {"ledger": 12.0}


async def test_only_a_registering_app_that_declares_something_records_itself(url: str) -> None:
    for setting in ("check", "off"):
        async with billing(url, schemas=setting) as app:
            assert not await _has_topic(app)
    plain = Tidings(url, service="audit")

    @plain.subscriber("orders", group="audit")
    async def audit(event: object) -> None:
        pass

    async with plain as app:  # no contract, a subscriber: recorded
        [entry] = await service_entries(app.transport)
        assert entry["subscriptions"][0]["types"] is None


async def _has_topic(app: Tidings) -> bool:
    return SCHEMAS_TOPIC in {t.name for t in await app.transport.topics()}


def test_a_record_reads_back_as_written_and_its_fingerprint_ignores_who_and_when() -> None:
    record = describe(billing("memory://x"))
    stamped = ServiceRecord(**{**_fields(record), "host": "h", "at": 5})
    again = ServiceRecord.from_entry(orjson.loads(orjson.dumps(stamped.entry())), offset=3)
    assert again.body() == record.body()
    assert (again.host, again.at, again.offset) == ("h", 5, 3)
    assert again.fingerprint == record.fingerprint
    assert again.contracts[0] == Held(
        "order.placed", 1, "event", "billing", None, True, date(2030, 1, 31), None
    )


def _fields(record: ServiceRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


def test_the_versions_a_group_reads_follow_its_upcasters() -> None:
    app = Tidings("memory://x", service="ledger")
    app.event("order.placed", 2)(Order)
    app.upcaster("order.placed", from_version=1)(lambda v1: {**v1, "total": 0})

    @app.subscriber("orders", group="ledger", types=["order.placed"])
    async def book(order: Order) -> None:
        pass

    @app.subscriber("orders", group="audit")
    async def audit(event: object) -> None:
        pass

    app.group("audit", sla=2.5)
    record = describe(app)
    audit_sub, ledger_sub = record.subscriptions
    assert ledger_sub.reads == {"order.placed": {1: 2, 2: 2}}
    assert (audit_sub.types, audit_sub.reads) == (None, {"order.placed": {1: 2, 2: 2}})
    assert record.slas == {"audit": 2.5}
    assert ledger_sub.handlers == (book.__qualname__,)


@pytest.mark.parametrize("sla", [0, -1, "10s", True, float("inf")])
def test_a_bad_sla_is_refused(sla: Any) -> None:
    with pytest.raises(ConfigError, match="sla must be a number of seconds > 0"):
        Tidings("memory://x", service="s").group("g", sla=sla)


def test_the_owner_says_what_a_version_is_even_when_another_spoke_later() -> None:
    owner = ServiceRecord(
        "billing", contracts=(Held("order.placed", 1, owner="billing", deprecated=True),), at=1
    )
    other = ServiceRecord("ledger", contracts=(Held("order.placed", 1, owner="billing"),), at=2)
    said = about([owner, other], "order.placed", 1)
    assert said is not None
    assert said.deprecated
    said = about([other], "order.placed", 1)  # the owner recorded nothing: the latest
    assert said is not None
    assert not said.deprecated


def test_a_deprecated_version_lists_only_who_depends_on_it() -> None:
    """A producer holding the model and declaring the type still produces it; a group
    reading it upcast to v2 no longer consumes it; one reading it as it is does."""
    v1 = Held("order.placed", 1, owner="billing", deprecated=True, sunset=date(2026, 1, 1))
    records = [
        ServiceRecord(
            "billing", publishes=(Publication("orders", "order.placed", (1, 2)),), contracts=(v1,)
        ),
        ServiceRecord("shop", publishes=(Publication("orders", "order.placed", (2,)),)),
        ServiceRecord("ledger", subscriptions=(
            Subscription("ledger", "orders", ("order.placed",), {"order.placed": {1: 2, 2: 2}}),
            Subscription("late", "orders", ("order.placed",), {"order.placed": {1: 1}}),
        )),
    ]  # fmt: skip
    [found] = deprecations(records)
    assert found.producers == ("billing (orders)",)
    assert found.consumers == ("ledger/late (orders)",)
    assert found.overdue(date(2026, 1, 2))
    assert not found.overdue(date(2026, 1, 1))
    assert found.lines(date(2025, 12, 31))[0] == (
        "order.placed v1: deprecated, sunset 2026-01-01 (in 1 day(s))"
    )


# -- a command has one owning group, across services ------------------------------------


class ChargeCard(BaseModel):
    order_id: str


def charging(url: str, service: str, group: str) -> Tidings:
    app = Tidings(url, service=service)
    app.command("payment.charge")(ChargeCard)

    @app.subscriber("payments", group=group, types=["payment.charge"])
    async def charge(command: ChargeCard) -> None:
        pass

    return app


async def test_a_second_services_group_subscribing_to_a_command_is_refused_at_start(
    url: str,
) -> None:
    async with charging(url, "payments", "charger"):
        pass
    shop = charging(url, "shop", "checkout")
    with pytest.raises(ConfigError) as refused:
        await shop.start()
    await shop.close()
    message = str(refused.value)
    assert "command payment.charge is subscribed to by group 'checkout' of shop" in message
    assert "by group 'charger' of service 'payments'" in message
    assert "tidings schema forget-service payments" in message
    async with Tidings(url, service="reader") as reader:
        records = await reader.schema_registry.services()
    assert sorted(records) == ["payments"]  # the refused service recorded nothing
    # The same group in another service (a second deployment of it) owns it too; and
    # the owner itself starts again, whatever its older record said.
    async with charging(url, "payments-eu", "charger"), charging(url, "payments", "charger"):
        pass


async def test_a_forgotten_services_command_may_be_owned_by_another_group(url: str) -> None:
    async with charging(url, "payments", "charger"):
        pass
    async with Tidings(url, service="ops") as ops:
        registry = ops.schema_registry
        forgotten = await registry.forget_service("payments")
        assert forgotten.groups() == ["charger"]
        assert "payments" not in await registry.services()
        with pytest.raises(ConfigError, match=r"no service 'nobody' .*\(recorded: none\)"):
            await registry.forget_service("nobody")
    async with charging(url, "shop", "checkout") as shop:
        assert sorted(await shop.schema_registry.services()) == ["shop"]


def test_a_retirement_reads_as_a_service_that_declares_nothing() -> None:
    # What a reader that does not know the "retired" mark makes of it.
    entry = retirement("payments", "host-1", 1_700_000_000_000)
    record = ServiceRecord.from_entry(entry)
    assert (record.service, record.subscriptions, record.publishes) == ("payments", (), ())
