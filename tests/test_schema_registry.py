"""The schema registry that lives with the log (tidings.schema.registry): registration
at start, the refusal of a break, declared major versions, the first writer winning a
conflict, modes, and look-ups, on every transport."""

from __future__ import annotations

import logging
import uuid
from datetime import date
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from tests.conftest import log_url
from tidings import Tidings
from tidings.errors import ConfigError, SchemaIncompatible, UnknownEventType
from tidings.schema import Mode
from tidings.schema.registry import SCHEMAS_TOPIC, SchemaRegistry, offered
from tidings.transport import Transport
from tidings.transports import open_transport


class OrderV1(BaseModel):
    order_id: str
    total: float


class OrderV1Renamed(BaseModel):
    """The same fields under another class name and a docstring: annotations only."""

    order_id: str
    total: float


class OrderTotalInt(BaseModel):  # v2 narrowing total: breaks BACKWARD
    order_id: str
    total: int


class OrderNoteDropped(BaseModel):  # v1 with total dropped: compatible BACKWARD (open)
    order_id: str


class OrderV3(BaseModel):  # after a breaking v2 (total: int), widens it again
    order_id: str
    total: float


def app_with(
    url: str, service: str, *models: tuple[type[BaseModel], int, bool], **kw: Any
) -> Tidings:
    app = Tidings(url, service=service, **kw)
    for model, version, breaking in models:
        app.event("order.placed", version, breaking=breaking)(model)
    return app


async def entries(
    transport: Transport, kinds: tuple[str, ...] = ("schema", "mode", "about")
) -> list[dict[str, Any]]:
    """The registry's records of ``kinds`` as written (default: registrations, mode
    changes and notes; the service records of decision 0022 are tested in
    tests/test_schema_services.py)."""
    records = await transport.read(SCHEMAS_TOPIC, 0, 0, 1000)
    return [doc for r in records if (doc := orjson.loads(r.value))["kind"] in kinds]


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("kafka", marks=pytest.mark.integration),
        pytest.param("nats", marks=pytest.mark.integration),
    ]
)
def any_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://schemas-{uuid.uuid4().hex}"
    return log_url(request, partitions=2)


@pytest.fixture
def url() -> str:
    return f"memory://schemas-{uuid.uuid4().hex}"


# -- on every transport --------------------------------------------------------------


async def test_the_registry_on_every_transport(any_url: str) -> None:
    """One broker per transport: registration, the no-op restart, the refusal, a
    declared major version, a mode, and a worker's look-up, in one story."""
    v1 = app_with(any_url, "billing", (OrderV1, 1, False))
    async with v1:
        [first] = await v1.schema_registry.versions("order.placed")
        assert (first.version, first.service, first.breaking) == (1, "billing", False)
        assert first.schema == OrderV1.model_json_schema()
        assert first.fingerprint == offered(v1.registry.lookup("order.placed", 1)).fingerprint  # type: ignore[arg-type]
    async with app_with(any_url, "billing", (OrderV1Renamed, 1, False)) as again:
        assert len(await entries(again.transport)) == 1  # the same version: nothing written

    broken = app_with(any_url, "billing", (OrderV1, 1, False), (OrderTotalInt, 2, False))
    with pytest.raises(SchemaIncompatible) as refused:
        await broken.start()
    assert "order.placed v2: breaks BACKWARD" in str(refused.value)
    assert "data.total: number -> integer narrows the type" in str(refused.value)

    major = app_with(any_url, "billing", (OrderV1, 1, False), (OrderTotalInt, 2, True))
    async with major:
        versions = await major.schema_registry.versions("order.placed")
        assert [(v.version, v.breaking) for v in versions] == [(1, False), (2, True)]
        assert await major.schema_registry.set_mode("order.placed", "full", service="ops") is (
            Mode.FULL
        )
        assert len(await entries(major.transport)) == 3

    transport = open_transport(any_url)
    await transport.start()
    try:
        worker = SchemaRegistry(transport)  # a fresh reader of the log
        found = await worker.lookup("order.placed", 2)
        assert found is not None
        assert found.schema == OrderTotalInt.model_json_schema()
        assert await worker.lookup("order.placed", 9) is None
        assert await worker.mode("order.placed") is Mode.FULL
    finally:
        await transport.close()


# -- registering ---------------------------------------------------------------------


async def test_a_compatible_new_version_is_registered_with_who_and_when(url: str) -> None:
    async with app_with(url, "billing", (OrderV1, 1, False)):
        pass
    app = app_with(url, "shipping", (OrderV1, 1, False), (OrderNoteDropped, 2, False))
    async with app:
        v2 = await app.schema_registry.schema("order.placed")
        assert (v2.version, v2.service, v2.breaking) == (2, "shipping", False)
        assert v2.host
        assert v2.at > 0
        assert [e["version"] for e in await entries(app.transport)] == [1, 2]


async def test_a_refused_start_writes_nothing_and_leaves_the_app_stopped(url: str) -> None:
    async with app_with(url, "billing", (OrderV1, 1, False)):
        pass
    broken = app_with(url, "billing", (OrderV1, 1, False), (OrderTotalInt, 2, False))
    with pytest.raises(SchemaIncompatible) as refused:
        await broken.start()
    assert isinstance(refused.value, ConfigError)
    assert "breaking=True" in refused.value.report  # and what to do about it
    with pytest.raises(ConfigError, match="not started"):
        await broken.publish("orders", OrderV1(order_id="o", total=1))
    async with app_with(url, "billing", (OrderV1, 1, False)) as app:
        assert len(await entries(app.transport)) == 1


async def test_a_changed_schema_under_a_registered_version_is_a_conflict(url: str) -> None:
    async with app_with(url, "billing", (OrderV1, 1, False)):
        pass
    with pytest.raises(SchemaIncompatible, match="v1 is registered with another schema") as exc:
        await app_with(url, "billing", (OrderTotalInt, 1, False)).start()
    assert "order.placed v1: conflict" in str(exc.value)
    assert "data.total: number -> integer" in str(exc.value)  # what changed


async def test_versions_after_a_breaking_one_are_checked_against_it_only(url: str) -> None:
    models = [(OrderV1, 1, False), (OrderTotalInt, 2, True), (OrderV3, 3, False)]
    async with app_with(url, "billing", *models) as app:  # v3 widens v2's int: compatible
        assert [v.version for v in await app.schema_registry.versions("order.placed")] == [1, 2, 3]

    class Narrowed(BaseModel):
        order_id: str
        total: bool

    async with app_with(url, "billing", *models) as app:
        findings = await app.schema_registry.check([*app.registry.contracts()])
        assert findings == {}
        app.event("order.placed", 4)(Narrowed)
        findings = await app.schema_registry.check(app.registry.contracts())
        assert list(findings) == ["order.placed"]
        assert list(findings["order.placed"]) == [4]


async def test_the_first_writer_in_log_order_wins_a_concurrent_registration(url: str) -> None:
    """B checks the registry (nothing there), then A registers v1, then B appends its own
    v1: B is refused on its re-read, naming both fingerprints; every reader agrees."""
    a = app_with(url, "alpha", (OrderV1, 1, False))
    b = app_with(url, "beta", (OrderTotalInt, 1, False))
    await a.transport.start()
    real_append = b.transport.append

    async def a_goes_first(topic: str, records: Any) -> Any:
        if topic == SCHEMAS_TOPIC:
            async with a:
                pass
        return await real_append(topic, records)

    b.transport.append = a_goes_first  # type: ignore[method-assign]
    with pytest.raises(SchemaIncompatible) as refused:
        await b.start()
    b.transport.append = real_append  # type: ignore[method-assign]
    a_print = offered(a.registry.lookup("order.placed", 1)).fingerprint  # type: ignore[arg-type]
    b_print = offered(b.registry.lookup("order.placed", 1)).fingerprint  # type: ignore[arg-type]
    assert a_print[:16] in str(refused.value)
    assert b_print[:16] in str(refused.value)
    assert "alpha@" in str(refused.value)
    async with a:
        assert len(await entries(a.transport)) == 2  # both written, one registered
        fresh = SchemaRegistry(a.transport)
        [v1] = await fresh.versions("order.placed")
        assert (v1.fingerprint, v1.service) == (a_print, "alpha")


async def test_registering_what_is_registered_writes_nothing(url: str) -> None:
    app = app_with(url, "billing", (OrderV1, 1, False))
    async with app:
        registry = SchemaRegistry(app.transport)
        assert await registry.register(app.registry.contracts(), service="billing") == []
        assert len(await entries(app.transport)) == 1


async def test_two_writers_of_the_same_schema_at_once_both_start(url: str) -> None:
    """Identical registrations racing: both are written, the first is the one kept,
    and neither writer is refused."""
    a = app_with(url, "alpha", (OrderV1, 1, False))
    b = app_with(url, "beta", (OrderV1Renamed, 1, False))
    await a.transport.start()
    real_append = b.transport.append

    async def a_goes_first(topic: str, records: Any) -> Any:
        if topic == SCHEMAS_TOPIC:
            async with a:
                pass
        return await real_append(topic, records)

    b.transport.append = a_goes_first  # type: ignore[method-assign]
    async with b:
        b.transport.append = real_append  # type: ignore[method-assign]
        assert [e["service"] for e in await entries(b.transport)] == ["alpha", "beta"]
        [v1] = await b.schema_registry.versions("order.placed")
        assert v1.service == "alpha"


# -- modes and settings --------------------------------------------------------------


async def test_set_mode_then_a_check_that_failed_passes_and_one_that_passed_fails(
    url: str,
) -> None:
    async with app_with(url, "billing", (OrderNoteDropped, 1, False)) as app:
        registry = app.schema_registry
        with_total = app_with(url, "x", (OrderNoteDropped, 1, False), (OrderV1, 2, False))
        # Adding a required property breaks BACKWARD, not FORWARD (an open model).
        assert await registry.check(with_total.registry.contracts())
        await registry.set_mode("order.placed", Mode.FORWARD, service="ops")
        assert await registry.check(with_total.registry.contracts()) == {}
        dropped_id = app_with(url, "y", (OrderNoteDropped, 1, False), (OrderV3, 2, False))
        assert await registry.check(dropped_id.registry.contracts()) == {}
        await registry.set_mode("order.placed", "FULL", service="ops")
        findings = await registry.check(with_total.registry.contracts())
        assert "breaks BACKWARD" in str(findings["order.placed"][2][0])
        await registry.set_mode("order.placed", "none", service="ops")
        assert await registry.check(with_total.registry.contracts()) == {}


async def test_schemas_check_refuses_without_writing_and_off_does_nothing(url: str) -> None:
    async with app_with(url, "billing", (OrderV1, 1, False), schemas="check") as app:
        assert await app.schema_registry.types() == []
        assert SCHEMAS_TOPIC not in {t.name for t in await app.transport.topics()}
    async with app_with(url, "billing", (OrderV1, 1, False)):
        pass
    with pytest.raises(SchemaIncompatible):
        await app_with(url, "b", (OrderTotalInt, 1, False), schemas="check").start()
    async with app_with(url, "b", (OrderTotalInt, 1, False), schemas="off") as app:
        assert len(await entries(app.transport)) == 1


async def test_the_policy_is_lenient_until_set_strict(url: str) -> None:
    """Adding an optional field to a default (open) pydantic model: compatible under the
    lenient policy, a BACKWARD break under Confluent's strict one."""

    class WithNote(BaseModel):
        order_id: str
        total: float
        note: str | None = None

    async with app_with(url, "billing", (OrderV1, 1, False)) as app:
        registry = app.schema_registry
        noted = app_with(url, "x", (OrderV1, 1, False), (WithNote, 2, False))
        assert await registry.check(noted.registry.contracts()) == {}
        await registry.set_mode("order.placed", "BACKWARD", service="ops", policy="strict")
        [brk] = (await registry.check(noted.registry.contracts()))["order.placed"][2]
        assert "data.note" in str(brk)
        assert "open content model" in str(brk)
        await registry.set_mode("order.placed", "BACKWARD", service="ops")  # keeps STRICT
        assert registry.state.policy("order.placed").value == "STRICT"
        with pytest.raises(ConfigError, match="'loose' is not a compatibility policy"):
            await registry.set_mode("order.placed", "NONE", service="ops", policy="loose")


async def test_a_model_without_a_json_schema_is_left_out_with_a_warning(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    class Opaque:
        pass

    class Holder(BaseModel):
        model_config = {"arbitrary_types_allowed": True}
        thing: Opaque

    app = app_with(url, "billing", (OrderV1, 1, False))
    app.event("thing.held")(Holder)
    with caplog.at_level(logging.WARNING, "tidings.schema"):
        async with app:
            assert await app.schema_registry.types() == ["order.placed"]
    assert "thing.held v1 (Holder) has no JSON Schema" in caplog.text


def test_a_bad_schemas_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match="register, check, off"):
        Tidings("memory://x", service="s", schemas="always")


async def test_an_app_without_contracts_leaves_the_log_alone(url: str) -> None:
    async with Tidings(url, service="plain") as app:
        assert SCHEMAS_TOPIC not in {t.name for t in await app.transport.topics()}


# -- failure paths -------------------------------------------------------------------


async def test_unknown_types_versions_and_modes_are_clear_errors(url: str) -> None:
    async with app_with(url, "billing", (OrderV1, 1, False)) as app:
        registry = app.schema_registry
        with pytest.raises(UnknownEventType, match=r"order\.paid is not in the schema registry"):
            await registry.schema("order.paid")
        with pytest.raises(UnknownEventType, match=r"has no version 7.*registered: v1"):
            await registry.schema("order.placed", 7)
        with pytest.raises(ConfigError, match="'SIDEWAYS' is not a compatibility mode"):
            await registry.set_mode("order.placed", "SIDEWAYS", service="ops")
        with pytest.raises(UnknownEventType, match=r"registered types: order\.placed"):
            await registry.set_mode("order.paid", "NONE", service="ops")


async def test_a_record_that_is_no_registry_entry_is_skipped(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with app_with(url, "billing", (OrderV1, 1, False)) as app:
        await app.transport.append(SCHEMAS_TOPIC, [(None, b"not json"), (None, b'{"kind":"x"}')])
        fresh = SchemaRegistry(app.transport)
        with caplog.at_level(logging.WARNING, "tidings.schema"):
            assert [v.version for v in await fresh.versions("order.placed")] == [1]
        assert caplog.text.count("is not a schema registry entry") == 2


# -- what a contract says of its versions (decision 0021) ----------------------------


async def test_a_registration_records_the_subject_field_and_deprecation(url: str) -> None:
    app = Tidings(url, service="billing")
    app.event("order.placed", 1, subject="order_id", sunset="2027-01-31")(OrderV1)
    app.event("order.placed", 2, subject="order_id")(OrderNoteDropped)
    async with app:
        v1, v2 = await SchemaRegistry(app.transport).versions("order.placed")
        assert (v1.subject, v1.deprecated, v1.sunset) == ("order_id", True, date(2027, 1, 31))
        assert (v2.subject, v2.deprecated, v2.sunset) == ("order_id", False, None)
        [first, _] = await entries(app.transport)
        assert (first["subject"], first["deprecated"], first["sunset"]) == (
            "order_id",
            True,
            "2027-01-31",
        )


async def test_an_entry_written_before_subjects_were_recorded_still_reads(url: str) -> None:
    async with app_with(url, "billing", (OrderV1, 1, False)) as app:
        old = {
            "kind": "schema", "type": "order.paid", "version": 1, "breaking": False,
            "fingerprint": "x", "service": "old", "host": "h", "at": 1,
            "schema": OrderV1.model_json_schema(),
        }  # fmt: skip
        await app.transport.append(SCHEMAS_TOPIC, [(None, orjson.dumps(old))])
        paid = await SchemaRegistry(app.transport).schema("order.paid")
        assert (paid.subject, paid.deprecated, paid.sunset) == (None, False, None)


async def test_a_later_release_notes_a_deprecation_an_older_one_cannot_undo(url: str) -> None:
    """v1 registered without a subject field; a later release deprecates it and names
    its subject field: a note. The older release starting again writes nothing."""
    async with app_with(url, "billing", (OrderV1, 1, False)):
        pass
    later = Tidings(url, service="billing")
    later.event("order.placed", 1, subject="order_id", deprecated=True)(OrderV1)
    async with later:
        [v1] = await later.schema_registry.versions("order.placed")
        assert (v1.subject, v1.deprecated, v1.service) == ("order_id", True, "billing")
        assert [e["kind"] for e in await entries(later.transport)] == ["schema", "about"]
    async with app_with(url, "billing", (OrderV1, 1, False)) as older:
        assert len(await entries(older.transport)) == 2  # nothing taken back
        [v1] = await SchemaRegistry(older.transport).versions("order.placed")
        assert (v1.subject, v1.deprecated) == ("order_id", True)
    again = Tidings(url, service="billing")
    again.event("order.placed", 1, subject="order_id", sunset="2027-03-01")(OrderV1)
    async with again:  # a sunset is news: noted; the fingerprint is the registered one
        [v1] = await SchemaRegistry(again.transport).versions("order.placed")
        assert v1.sunset == date(2027, 3, 1)
        assert len(await entries(again.transport)) == 3


async def test_a_note_on_a_version_never_registered_changes_nothing(url: str) -> None:
    async with app_with(url, "billing", (OrderV1, 1, False)) as app:
        note = {"kind": "about", "type": "order.placed", "version": 5, "deprecated": True}
        await app.transport.append(SCHEMAS_TOPIC, [(None, orjson.dumps(note))])
        registry = SchemaRegistry(app.transport)
        assert [(v.version, v.deprecated) for v in await registry.versions("order.placed")] == [
            (1, False)
        ]
