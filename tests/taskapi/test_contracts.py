"""The reference system's contracts: owners and descriptions, ``task.created`` v2 and its
upcaster, the personal-data marks of the latest versions (decision 0032), the schema
registry before and after a start, the audit service reading v1 events as the latest
version on live delivery, after an offset reset and on a dead letter's replay, and the
reminders service scheduling a v1 task by its due date."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from taskapi.audit_log import AuditLog
from taskapi.catalog import write_catalog
from taskapi.contracts import app as contracts
from taskapi.db import make_engine
from taskapi.events import (
    API,
    AUDIT,
    CHECKPOINTS,
    ESCALATION,
    ESCALATION_TYPES,
    REMINDERS,
    TOPIC,
    TYPES,
    UNMARKED,
    VERSIONS,
    TaskCreated,
    TaskCreatedV1,
    register,
    task_created_v1_to_v2,
)
from taskapi.services import base_app, serve
from taskapi.services.reminders import metadata, pending
from taskapi.settings import Settings
from tests.taskapi.helpers import audited, run_until
from tidings import Event, Tidings
from tidings.admin import group_rows, reset_offsets
from tidings.dead_letters import Filter, open_log, replay
from tidings.personal import PersonalField, personal_fields
from tidings.testing import eventually

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
DUE = NOW + timedelta(days=3)


def test_every_type_is_an_event_owned_by_its_publisher_and_described() -> None:
    found = {(c.type, c.version): c for c in contracts.registry.contracts()}
    assert sorted(found) == [
        ("audit.checkpointed", 1), ("notification.failed", 1),
        ("task.assigned", 1), ("task.assigned", 2), ("task.completed", 1), ("task.completed", 2),
        ("task.created", 1), ("task.created", 2), ("task.created", 3),
        ("task.deleted", 1), ("task.deleted", 2), ("task.escalated", 1),
        ("task.escalation_failed", 1), ("task.reminder_due", 1),
        ("task.reminder_due", 2), ("task.updated", 1), ("task.updated", 2),
    ]  # fmt: skip
    owners = {t: c.owner for (t, _), c in found.items()}
    assert owners == {
        **dict.fromkeys(TYPES, API),
        "task.reminder_due": REMINDERS,
        "audit.checkpointed": AUDIT,
        **dict.fromkeys(ESCALATION_TYPES, ESCALATION),
    }
    for contract in found.values():
        assert contract.kind == "event"
        assert contract.description == inspect.cleandoc(contract.model.__doc__ or "")
        assert len(contract.description) > 40, contract.type  # a sentence, not a stub
    # The earlier versions are still registered, deprecated, and read as the latest.
    assert (found[("task.created", 1)].model, found[("task.created", 1)].deprecated) == (
        TaskCreatedV1,
        True,
    )
    assert found[("task.created", 3)].model is TaskCreated
    latest = {(t, VERSIONS[t]) for t in TYPES} | {("audit.checkpointed", 1)}
    assert {key for key, c in found.items() if not c.deprecated} == latest
    assert contracts.registry.read_version("task.created", 1) == 3
    assert contracts.published == {TOPIC: set(TYPES), CHECKPOINTS: {"audit.checkpointed"}}


def test_the_latest_versions_mark_the_assignees_as_personal_and_declare_it_breaking() -> None:
    for type_, (model, _) in TYPES.items():
        if type_ in ESCALATION_TYPES:  # marked from their first version
            continue
        latest = contracts.registry.lookup(type_, VERSIONS[type_])
        before = contracts.registry.lookup(type_, VERSIONS[type_] - 1)
        assert latest is not None
        assert before is not None
        assert (latest.model, latest.breaking) == (model, True), type_
        assert PersonalField("assignee", "assignee") in personal_fields(model), type_
        assert (before.model, personal_fields(before.model)) == (UNMARKED[type_], []), type_
        assert contracts.registry.read_version(type_, VERSIONS[type_] - 1) == VERSIONS[type_]
    assert personal_fields(TYPES["task.escalated"][0]) == [
        PersonalField("assignee", "assignee"),
        PersonalField("manager", "manager"),
    ]
    assert personal_fields(TYPES["task.escalation_failed"][0]) == [
        PersonalField("manager", "manager")
    ]
    assert personal_fields(TYPES["task.assigned"][0]) == [
        PersonalField("assignee", "assignee"),
        PersonalField("previous_assignee", "previous_assignee"),
    ]


def test_every_service_registers_the_same_contracts(tmp_path: Path) -> None:
    settings = Settings.from_env(tmp_path, env={})

    def shape(app: Tidings) -> list[tuple[Any, ...]]:
        return [
            (c.type, c.version, c.model, c.owner, c.description, c.deprecated)
            for c in app.registry.contracts()
        ]

    for name in ("email", "audit", "reminders"):
        app = base_app(name, settings)
        assert shape(app) == shape(contracts), name
        assert app.registry.read_version("task.created", 1) == 3


def test_task_created_v1_is_read_as_v2_with_its_due_date_as_due_at() -> None:
    v1 = TaskCreatedV1(
        task_id="t1", title="Report", assignee="alice", due=DUE, priority="high", created_at=NOW
    ).model_dump(mode="json")
    read = contracts.registry.decode_payload("task.created", 1, v1)
    assert read == TaskCreated(
        task_id="t1", title="Report", assignee="alice", due_at=DUE, priority="high", created_at=NOW
    )
    # Without a due date (or without the key, as v1 allowed), none after the upcast.
    for data in ({**v1, "due": None}, {k: v for k, v in v1.items() if k != "due"}):
        assert contracts.registry.decode_payload("task.created", 1, data).due_at is None
    assert "due" not in task_created_v1_to_v2(v1)
    assert v1["due"] == DUE.isoformat().replace("+00:00", "Z")  # its input is left as it was
    # Without the upcaster, a v2 model would read v1's due date as none at all: the
    # schemas alone say the change is compatible (see test_the_registry_...).
    assert TaskCreated.model_validate(v1).due_at is None


def tidings(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def previous_release(url: str) -> Tidings:
    """The contracts as the release before v2 registered them: every type at v1 (the
    fields of today's models, without their personal-data marks)."""
    app = Tidings(url, service="taskapi")
    app.topic(TOPIC, partitions=4)
    app.event("task.created", subject="task_id")(TaskCreatedV1)
    for type_ in ["task.updated", "task.assigned", "task.completed", "task.deleted"]:
        app.event(type_, subject="task_id")(UNMARKED[type_])
    return app


async def test_the_registry_takes_v2_after_v1_and_holds_both_after_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    async with previous_release(url) as old:
        [v1] = await old.schema_registry.versions("task.created")
    assert v1.version == 1
    check = tidings("schema", "check", "taskapi.contracts:app", "--url", url)
    assert (check.returncode, check.stderr) == (0, "")
    assert check.stdout.startswith("ok: 17 contract(s) of taskapi.contracts:app may be registered")

    service = base_app("email", Settings.from_env(tmp_path, env={"TIDINGS_URL": url}))
    async with service:
        versions = await service.schema_registry.versions("task.created")
        reminder = await service.schema_registry.versions("task.reminder_due")
    assert [(v.version, v.breaking) for v in versions] == [(1, False), (2, False), (3, True)]
    assert versions[1].service == "taskapi-email"  # the first to start with v2 wrote it
    assert [(v.version, v.breaking) for v in reminder] == [(1, False), (2, True)]
    assert personal_fields(versions[2].schema) == [PersonalField("assignee", "assignee")]
    listed = tidings("schema", "list", "--url", url)
    assert listed.returncode == 0
    assert any(line.split()[:2] == ["task.created", "1,2,3"] for line in listed.stdout.splitlines())


async def test_under_a_strict_policy_the_check_refuses_v2(tmp_path: Path) -> None:
    # v2 is compatible under the registry's lenient policy (decision 0018): under
    # Confluent's strict one, due_at (a new optional property of an open model) could
    # hold anything in a v1 event, and the check that passes above fails.
    url = f"sqlite:///{tmp_path / 'events.db'}"
    async with previous_release(url):
        pass
    mode = tidings(
        "schema", "set-mode", "task.created", "BACKWARD", "--policy", "STRICT", "--url", url
    )
    assert mode.returncode == 0, mode.stderr
    check = tidings("schema", "check", "taskapi.contracts:app", "--url", url)
    assert check.returncode == 1
    assert check.stdout.startswith("task.created v2: breaks BACKWARD\n")
    assert "data.due_at: absent -> optional string | null" in check.stdout


async def old_and_new(url: str) -> tuple[Event, Event]:
    """Publish a task.created v1, as the release before v2 did, and a v2, as the API does
    now; return both."""
    async with register(Tidings(url, service="taskapi")) as app:
        v1 = TaskCreatedV1(task_id="t1", title="Old", assignee="alice", due=DUE, created_at=NOW)
        old = app.build(v1.model_dump(mode="json"), type="task.created", version=1, subject="t1")
        await app.publish_events(TOPIC, [old])
        new = await app.publish(
            TOPIC, TaskCreated(task_id="t2", title="New", due_at=DUE, created_at=NOW)
        )
    return old, new


def check_lines(docs: list[dict[str, Any]], old: Event, new: Event) -> None:
    """The audit lines of ``old`` (v1) and ``new`` (v3): each event as written, and the
    v1 one also as read, at v3."""
    lines = {d["event"]["id"]: d for d in docs}
    assert sorted(lines) == sorted([old.id, new.id])
    first, second = lines[old.id], lines[new.id]
    assert (first["event"]["dataversion"], first["event"]["data"]["due"]) == (1, old.data["due"])
    assert first["read"] == {
        "version": 3,
        "data": TaskCreated(
            task_id="t1", title="Old", assignee="alice", due_at=DUE, created_at=NOW
        ).model_dump(mode="json"),
    }
    assert second["event"]["dataversion"] == 3
    assert second["event"]["data"]["due_at"] == first["event"]["data"]["due"]
    assert "read" not in second  # read as written


async def test_the_audit_service_reads_v1_and_v2_events_as_v2_live_and_after_a_reset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    old, new = await old_and_new(url)
    caplog.set_level(logging.INFO, logger="taskapi.services.audit")
    first = Settings.from_env(tmp_path / "node-a", env={"TIDINGS_URL": url})
    async with Tidings(url, service="test") as probe:
        await run_until(first, lambda: done(first, 2, probe))
        check_lines(audited(first), old, new)
        assert f"audited task.created {old.id} (v1 read as v3)" in caplog.text
        assert f"audited task.created {new.id} in" in caplog.text

        # The audit rebuilt from the log on another node: its offsets reset to the start.
        second = Settings.from_env(tmp_path / "node-b", env={"TIDINGS_URL": url})
        await reset_offsets(probe.transport, "audit", "earliest", force=True)
        await run_until(second, lambda: done(second, 2, probe))
        check_lines(audited(second), old, new)


async def done(settings: Settings, lines: int, probe: Tidings) -> bool:
    """Whether the audit files have ``lines`` lines and the group has caught up."""
    if len(audited(settings)) != lines:
        return False
    return all(r.lag == 0 for r in await group_rows(probe.transport, "audit"))


async def test_a_v1_dead_letter_is_read_as_v2_when_replayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    settings = Settings.from_env(tmp_path, env={"TIDINGS_URL": url, "TASKAPI_RETRY_ATTEMPTS": "1"})
    old, new = await old_and_new(url)
    written = AuditLog.append

    async def full_disk(self: AuditLog, event: Event, **options: Any) -> bool:
        if event.id == old.id:
            raise OSError(28, "No space left on device")
        return await written(self, event, **options)

    monkeypatch.setattr(AuditLog, "append", full_disk)
    async with Tidings(url, service="test") as probe:
        await run_until(settings, lambda: done(settings, 1, probe))
        [(dead, state)] = (await open_log(probe.transport, "audit")).listing()
        assert (dead.event_id, dead.type, state) == (old.id, "task.created", "dead")
        assert "No space left on device" in dead.error_message

        monkeypatch.setattr(AuditLog, "append", written)
        assert await replay(probe.transport, "audit", Filter()) == 1
        await run_until(settings, lambda: done(settings, 2, probe))
        check_lines(audited(settings), old, new)
        assert not (await open_log(probe.transport, "audit")).listing()


async def test_the_reminders_service_schedules_a_v1_task_by_its_due_date(tmp_path: Path) -> None:
    # The one reader whose behaviour the rename would change silently: without the
    # upcaster a v1 event's due date would read as none, and no reminder be scheduled.
    lead = timedelta(minutes=10)
    settings = Settings.from_env(tmp_path, env={"TASKAPI_REMINDER_LEAD": "600"}).ensure()
    due = datetime.now(UTC) + timedelta(days=3)
    async with register(Tidings(settings.tidings_url, service="taskapi")) as app:
        v1 = TaskCreatedV1(task_id="t1", title="Old", due=due, created_at=NOW)
        old = app.build(v1.model_dump(mode="json"), type="task.created", version=1, subject="t1")
        await app.publish_events(TOPIC, [old])
    engine = make_engine(settings.state_db("reminders"))
    metadata.create_all(engine)
    stop = asyncio.Event()
    service = asyncio.create_task(serve("reminders", settings, stop))
    try:
        await eventually(lambda: bool(pending(engine)), timeout=20, what="the reminder")
    finally:
        stop.set()
        await asyncio.wait_for(service, 30)
        [row] = pending(engine)
        engine.dispose()
    assert (row["task_id"], row["causation_id"]) == ("t1", old.id)
    assert row["remind_at"] == pytest.approx((due - lead).timestamp())


async def test_the_sites_catalog_shows_every_type_and_every_services_groups(
    tmp_path: Path,
) -> None:
    written = await write_catalog(tmp_path)
    names = {p.relative_to(tmp_path).as_posix() for p in written}
    assert "index.html" in names
    index = (tmp_path / "index.html").read_text()
    for type_ in ("task.created", "task.reminder_due"):
        assert type_ in index
    for group in ("audit", "email", "push", "reminders", "slack"):
        assert f"taskapi-{group}/{group}" in index  # each service's group consumes
