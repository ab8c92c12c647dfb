"""What a relay logs about its lease: at INFO by default (a relay an operator runs);
a quiet relay (the delayed-event relay every worker runs) at DEBUG until it finds
something to relay, and a takeover is a warning only if due rows waited for it.

On SQLite files only, with :class:`StepClock` s: nothing waits for a lease to run out
in real time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tidings import Tidings, TransportError
from tidings.outbox import Outbox
from tidings.testing import eventually

from .conftest import TOPIC, StepClock, TaskCreated

LEASE = 4.0


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    app = Tidings(f"sqlite:///{tmp_path / 'log.db'}", service="task-api")
    app.event("task.created", subject="task_id")(TaskCreated)
    box = Outbox(app, f"sqlite:///{tmp_path / 'app.db'}", topic=TOPIC)
    box.create_table()
    async with app:
        yield box
    await box.dispose()


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, "tidings.outbox")
    return caplog


def add(outbox: Outbox, n: int) -> None:
    engine = outbox.engine
    assert isinstance(engine, sa.Engine)
    with Session(engine) as session, session.begin():
        outbox.add(session, TaskCreated(task_id=f"t-{n}", n=n))


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    """The relays' messages logged at exactly ``level``, without the table's name."""
    return [
        r.getMessage().removeprefix("outbox-relay:tidings_outbox: ")
        for r in caplog.records
        if r.name == "tidings.outbox" and r.levelno == level
    ]


async def test_a_relay_by_default_logs_its_lease_at_info(
    outbox: Outbox, logged: pytest.LogCaptureFixture
) -> None:
    relay = outbox.relay(lease=LEASE, holder="one", clock=StepClock())
    standby = outbox.relay(lease=LEASE, holder="two", clock=StepClock())
    assert await relay.relay_once() == 0  # nothing to relay: told all the same
    assert await standby.relay_once() == 0
    await standby.close()
    await relay.close()
    assert lines(logged, logging.INFO) == [
        "one holds the lease; relaying",
        "one holds the lease; standing by until it is released, or unchanged for 4.0s",
        "released the lease",
    ]
    assert lines(logged, logging.DEBUG) == []


async def test_a_quiet_relay_with_nothing_to_relay_logs_its_lease_at_debug(
    outbox: Outbox, logged: pytest.LogCaptureFixture
) -> None:
    relay = outbox.relay(lease=LEASE, holder="one", clock=StepClock(), quiet=True)
    standby = outbox.relay(lease=LEASE, holder="two", clock=StepClock(), quiet=True)
    assert await relay.relay_once() == 0
    assert await standby.relay_once() == 0
    await standby.close()
    await relay.close()
    assert [r for r in logged.records if r.levelno >= logging.INFO] == []
    assert lines(logged, logging.DEBUG) == [
        "one holds the lease; relaying",
        "one holds the lease; standing by until it is released, or unchanged for 4.0s",
        "released the lease",
    ]


async def test_a_quiet_relay_speaks_up_at_info_once_it_has_something_to_relay(
    outbox: Outbox, logged: pytest.LogCaptureFixture
) -> None:
    relay = outbox.relay(lease=LEASE, holder="one", clock=StepClock(), quiet=True)
    assert await relay.relay_once() == 0
    add(outbox, 1)
    assert await relay.relay_once() == 1
    add(outbox, 2)
    assert await relay.relay_once() == 1  # said once
    await relay.close()
    assert lines(logged, logging.DEBUG) == ["one holds the lease; relaying"]
    assert lines(logged, logging.INFO) == ["one holds the lease; relaying", "released the lease"]


async def test_a_quiet_takeover_is_a_warning_only_if_due_rows_waited(
    outbox: Outbox, logged: pytest.LogCaptureFixture
) -> None:
    first = outbox.relay(lease=LEASE, holder="first", clock=StepClock(), quiet=True)
    assert await first.relay_once() == 0
    await first.close(release=False)  # dies holding the lease
    clock = StepClock()
    second = outbox.relay(lease=LEASE, holder="second", clock=clock, quiet=True)
    assert await second.relay_once() == 0  # it sees first's lease
    clock.advance(LEASE)
    assert await second.relay_once() == 0  # takes it over: nothing waited
    assert second.holding
    assert [r for r in logged.records if r.levelno >= logging.INFO] == []
    assert "second took over the lease from first, which it saw unchanged for 4.0s" in (
        lines(logged, logging.DEBUG)
    )
    await second.close(release=False)  # dies too; due rows wait for the next one
    add(outbox, 1)
    third_clock = StepClock()
    third = outbox.relay(lease=LEASE, holder="third", clock=third_clock, quiet=True)
    assert await third.relay_once() == 0
    third_clock.advance(LEASE)
    assert await third.relay_once() == 1
    await third.close()
    assert lines(logged, logging.WARNING) == [
        "third took over the lease from second, which it saw unchanged for 4.0s; "
        "1 due event(s) waited"
    ]
    assert lines(logged, logging.INFO) == ["released the lease"]


async def test_losing_the_lease_is_a_warning_unless_the_relay_is_quiet_and_idle(
    outbox: Outbox, logged: pytest.LogCaptureFixture
) -> None:
    for quiet in (True, False):
        logged.clear()
        holder_clock, standby_clock = StepClock(), StepClock()
        holder = outbox.relay(lease=LEASE, holder="holder", clock=holder_clock, quiet=quiet)
        standby = outbox.relay(lease=LEASE, holder="standby", clock=standby_clock)
        assert await holder.relay_once() == 0
        assert await standby.relay_once() == 0
        standby_clock.advance(LEASE)  # the holder is stalled for a lease length
        assert await standby.relay_once() == 0
        assert standby.holding
        holder_clock.advance(LEASE)
        assert await holder.relay_once() == 0
        assert not holder.holding
        lost = "lost the lease to standby; standing by"
        assert (lost in lines(logged, logging.DEBUG)) is quiet
        assert (lost in lines(logged, logging.WARNING)) is not quiet
        await holder.close()
        await standby.close()


async def test_each_relayed_row_is_a_debug_line_with_its_row_topic_and_event(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "tidings.outbox.rows")
    engine = outbox.engine
    assert isinstance(engine, sa.Engine)
    with Session(engine) as session, session.begin():
        events = [outbox.add(session, TaskCreated(task_id=f"t-{n}", n=n)) for n in range(2)]
    relay = outbox.relay(lease=LEASE, holder="one", clock=StepClock())
    assert await relay.relay_once() == 2
    await relay.close()
    rows = [r for r in caplog.records if r.name == "tidings.outbox.rows"]
    fields = [r.tidings for r in rows]  # type: ignore[attr-defined]
    assert [(f["topic"], f["event_id"]) for f in fields] == [(TOPIC, e.id) for e in events]
    assert fields[1]["outbox_id"] > fields[0]["outbox_id"]
    assert (
        rows[0].getMessage()
        == f"outbox-relay:tidings_outbox: relayed row {fields[0]['outbox_id']} to {TOPIC}"
    )


async def test_a_failed_pass_names_the_rows_it_was_relaying(
    outbox: Outbox, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, "tidings.outbox")
    engine = outbox.engine
    assert isinstance(engine, sa.Engine)
    with Session(engine) as session, session.begin():
        first = outbox.add(session, TaskCreated(task_id="t-1"))
        outbox.add(session, TaskCreated(task_id="t-2"))
    transport = outbox.app.transport
    real = transport.append
    failed: list[str] = []

    async def failing_once(topic: str, records: list[tuple[str | None, bytes]]) -> Any:
        if not failed:
            failed.append(topic)
            raise TransportError("the log is busy")
        return await real(topic, records)

    monkeypatch.setattr(transport, "append", failing_once)
    relay = outbox.relay(lease=LEASE, holder="one", poll_interval=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await eventually(lambda: relay.relayed == 2, timeout=20, what="both relayed")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    (line,) = [r for r in caplog.records if "pass failed" in r.getMessage()]
    assert line.tidings == {  # type: ignore[attr-defined]
        "outbox_id": line.tidings["outbox_id"],  # type: ignore[attr-defined]
        "topic": TOPIC,
        "event_id": first.id,
        "rows": 2,
    }
    assert isinstance(line.tidings["outbox_id"], int)  # type: ignore[attr-defined]
