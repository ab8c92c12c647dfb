"""The relay's lease, on SQLite and on a real PostgreSQL: one relay active per outbox
table, timed by each relay's own monotonic clock (issue 15, finding 9). A wall-clock
step, forwards or back, neither hands a live relay's lease to a standby nor keeps a
dead relay's lease; a relay whose renewals fail stops before a standby may take over.

The relays here run on :class:`StepClock` s: their monotonic time moves only when the
test advances it, so nothing waits for a lease to run out in real time."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tidings import Tidings
from tidings.outbox import Outbox
from tidings.testing import eventually

from .conftest import TOPIC, StepClock, TaskCreated, WallClock, log_events

LEASE = 4.0  # seconds; its halves and quarters are exact in binary


def add(engine: sa.Engine, outbox: Outbox, n: int) -> None:
    with Session(engine) as session, session.begin():
        outbox.add(session, TaskCreated(task_id=f"t-{n % 2}", n=n))


async def numbers(app: Tidings) -> list[int]:
    return sorted(e.data["n"] for e in await log_events(app))


# -- clock steps ----------------------------------------------------------------------------


async def test_a_wall_clock_step_forward_does_not_hand_a_live_relays_lease_to_a_standby(
    app: Tidings, wall: WallClock, engine: sa.Engine
) -> None:
    """Both relays' hosts (and the database server) step 60 s ahead. The standby looks
    before the holder's next renewal (it looks every quarter of the lease, the holder
    renews every third), and later the holder goes on renewing: the standby has never
    seen the row unchanged for a lease length, so it never takes it."""
    outbox = Outbox(app, wall.engine, topic=TOPIC)
    outbox.create_table()
    first_clock, second_clock = StepClock(), StepClock()
    async with app:
        first = outbox.relay(lease=LEASE, holder="first", clock=first_clock)
        second = outbox.relay(lease=LEASE, holder="second", clock=second_clock)
        try:
            add(engine, outbox, 0)
            assert await first.relay_once() == 1
            assert await second.relay_once() == 0  # it sees first's lease
            wall.step(+60)
            for n in range(1, 5):  # two lease lengths; first renews at every pass
                assert await second.relay_once() == 0
                assert not second.holding, f"the standby took a live lease at pass {n}"
                add(engine, outbox, n)
                assert await first.relay_once() == 1
                assert first.holding
                first_clock.advance(LEASE / 2)
                second_clock.advance(LEASE / 2)
            assert (await outbox.status()).holder == "first"
        finally:
            await second.close()
            await first.close()
        assert await numbers(app) == [0, 1, 2, 3, 4]  # each once: one relay at a time


async def test_a_wall_clock_step_back_does_not_keep_a_dead_relays_lease(
    app: Tidings, wall: WallClock, engine: sa.Engine
) -> None:
    """The holder dies; the clocks step 60 s back. The standby takes over once it has
    seen the lease unchanged for one lease length of its own monotonic time, not 60 s
    later."""
    outbox = Outbox(app, wall.engine, topic=TOPIC)
    outbox.create_table()
    async with app:
        first = outbox.relay(lease=LEASE, holder="first", clock=StepClock())
        add(engine, outbox, 0)
        assert await first.relay_once() == 1
        await first.close(release=False)  # dies holding the lease
        wall.step(-60)
        add(engine, outbox, 1)
        clock = StepClock()
        second = outbox.relay(lease=LEASE, holder="second", clock=clock)
        try:
            assert await second.relay_once() == 0  # it sees first's lease
            clock.advance(LEASE - 0.5)
            assert await second.relay_once() == 0
            assert not second.holding
            clock.advance(0.5)  # one lease length since it first saw the row so
            assert await second.relay_once() == 1
            assert second.holding
            assert (await outbox.status()).holder == "second"
        finally:
            await second.close()
        assert await numbers(app) == [0, 1]


# -- renewals that fail ------------------------------------------------------------------


async def test_a_relay_whose_renewals_fail_stops_relaying_before_a_standby_takes_over(
    app: Tidings, outbox: Outbox, engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """The holder's renewals fail (the database refuses its lease writes) while it can
    still read and delete rows. Within its lease it holds on; by a lease length after
    it sent its last good renewal it has let go, and only then does the standby, which
    has seen the row unchanged for a lease length, take over."""
    refuse = {"on": False}
    update_lease = f"UPDATE {outbox.lease_table.name} "

    def refuse_lease_writes(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if refuse["on"] and statement.startswith(update_lease):
            raise RuntimeError("injected: the lease write is refused")

    sa.event.listen(outbox.engine, "before_cursor_execute", refuse_lease_writes)
    holder_clock, standby_clock = StepClock(), StepClock()
    async with app:
        holder = outbox.relay(lease=LEASE, holder="holder", clock=holder_clock)
        standby = outbox.relay(lease=LEASE, holder="standby", clock=standby_clock)
        try:
            add(engine, outbox, 0)
            assert await holder.relay_once() == 1
            assert await standby.relay_once() == 0  # it sees holder's lease
            refuse["on"] = True
            add(engine, outbox, 1)
            holder_clock.advance(LEASE / 2)  # a renewal is due, and fails
            with pytest.raises(RuntimeError, match="injected"):
                await holder.relay_once()
            assert holder.holding  # its lease still runs
            holder_clock.advance(LEASE / 2)  # a lease length since the last good one
            with (
                caplog.at_level(logging.WARNING, logger="tidings.outbox"),
                pytest.raises(RuntimeError, match="injected"),
            ):
                await holder.relay_once()
            assert not holder.holding, "a relay without a renewal for its lease still holds"
            assert "no renewal of the lease has succeeded for 4.0s" in caplog.text
            assert await numbers(app) == [0]
            refuse["on"] = False
            standby_clock.advance(LEASE)
            assert await standby.relay_once() == 1
            assert await holder.relay_once() == 0  # the row is the standby's now
            assert not holder.holding
        finally:
            await standby.close()
            await holder.close()
        assert await numbers(app) == [0, 1]


async def test_a_failed_renewal_within_the_lease_keeps_it(
    app: Tidings, outbox: Outbox, engine: sa.Engine
) -> None:
    """One renewal fails; the next succeeds before the fence: the relay holds on and
    relays, and a standby that watched all along has not taken over."""
    fail_next = {"n": 0}
    update_lease = f"UPDATE {outbox.lease_table.name} "

    def fail_once(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if fail_next["n"] and statement.startswith(update_lease):
            fail_next["n"] -= 1
            raise RuntimeError("injected: the lease write is refused")

    sa.event.listen(outbox.engine, "before_cursor_execute", fail_once)
    clock, standby_clock = StepClock(), StepClock()
    async with app:
        relay = outbox.relay(lease=LEASE, holder="holder", clock=clock)
        standby = outbox.relay(lease=LEASE, holder="standby", clock=standby_clock)
        try:
            add(engine, outbox, 0)
            assert await relay.relay_once() == 1
            assert await standby.relay_once() == 0
            fail_next["n"] = 1
            clock.advance(LEASE / 2)
            standby_clock.advance(LEASE / 2)
            with pytest.raises(RuntimeError, match="injected"):
                await relay.relay_once()
            add(engine, outbox, 1)
            assert await relay.relay_once() == 1  # renewed: the row changed
            assert relay.holding
            standby_clock.advance(LEASE / 2)  # a lease length since its first look
            assert await standby.relay_once() == 0
            assert not standby.holding
        finally:
            await standby.close()
            await relay.close()
        assert await numbers(app) == [0, 1]


async def test_a_renewal_that_returns_after_the_fence_is_not_appended_under(
    app: Tidings, outbox: Outbox, engine: sa.Engine
) -> None:
    """A renewal that succeeds but takes two thirds of the lease to return leaves too
    little of it for an append: the relay renews again first."""
    clock = StepClock()
    update_lease = f"UPDATE {outbox.lease_table.name} "
    slow = {"on": False}

    def slow_renewal(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if slow["on"] and statement.startswith(update_lease):
            slow["on"] = False
            clock.advance(LEASE * 3 / 4)  # the database answered past the fence (2/3)

    sa.event.listen(outbox.engine, "before_cursor_execute", slow_renewal)
    async with app:
        relay = outbox.relay(lease=LEASE, holder="slow", clock=clock)
        try:
            slow["on"] = True
            add(engine, outbox, 0)
            assert await relay.relay_once() == 0  # held, but not for long enough
            assert relay.holding
            assert await log_events(app) == []
            assert await relay.relay_once() == 1  # a prompt renewal, then the append
        finally:
            await relay.close()


# -- taking over ---------------------------------------------------------------------------


async def test_a_standby_takes_over_a_lease_length_after_the_holder_died(
    app: Tidings, outbox: Outbox, engine: sa.Engine
) -> None:
    async with app:
        first = outbox.relay(lease=LEASE, holder="first", clock=StepClock())
        add(engine, outbox, 1)
        assert await first.relay_once() == 1
        assert first.holding
        await first.close(release=False)  # dies holding the lease
        add(engine, outbox, 2)
        clock = StepClock()
        second = outbox.relay(lease=LEASE, holder="second", clock=clock)
        try:
            assert await second.relay_once() == 0
            assert not second.holding
            status = await outbox.status()
            assert status.holder == "first"
            for _ in range(3):  # looking again does not restart the count
                clock.advance(LEASE / 4)
                assert await second.relay_once() == 0
            clock.advance(LEASE / 4)
            assert await second.relay_once() == 1
            assert second.holding
            status = await outbox.status()
            assert status.holder == "second"
        finally:
            await second.close()
        assert (await outbox.status()).holder is None  # released on close
        assert [e.data["n"] for e in await log_events(app)] == [1, 2]


async def test_a_standby_waits_for_the_holders_longer_lease(
    app: Tidings, outbox: Outbox, engine: sa.Engine
) -> None:
    """The holder renews every third of its 12 s lease; a standby configured with 4 s
    must not take over after 4 s without a renewal."""
    async with app:
        first = outbox.relay(lease=3 * LEASE, holder="first", clock=StepClock())
        assert await first.relay_once() == 0
        await first.close(release=False)
        clock = StepClock()
        second = outbox.relay(lease=LEASE, holder="second", clock=clock)
        try:
            assert await second.relay_once() == 0
            clock.advance(2 * LEASE)
            assert await second.relay_once() == 0
            clock.advance(LEASE)
            add(engine, outbox, 0)
            assert await second.relay_once() == 1
        finally:
            await second.close()


async def test_a_stopped_relay_hands_over_at_once(
    app: Tidings, outbox: Outbox, engine: sa.Engine
) -> None:
    async with app:
        stop = asyncio.Event()
        first = outbox.relay(lease=30, holder="first")
        task = asyncio.create_task(first.run(stop))
        second = outbox.relay(lease=30, holder="second", clock=StepClock())
        try:
            await eventually(lambda: first.holding, what="the first relay holding the lease")
            assert await second.relay_once() == 0
            assert not second.holding
            stop.set()
            await asyncio.wait_for(task, 10)
            add(engine, outbox, 0)
            assert await second.relay_once() == 1  # released: no 30 s to wait
        finally:
            await second.close()


async def test_a_relay_that_lost_its_lease_appends_nothing(
    app: Tidings, outbox: Outbox, engine: sa.Engine
) -> None:
    """A relay paused past its lease (a long GC, a stalled VM) finds another holder
    before it appends, and stands by."""
    clock = StepClock()
    async with app:
        relay = outbox.relay(lease=LEASE, holder="paused", clock=clock)
        try:
            assert await relay.relay_once() == 0
            assert relay.holding
            with engine.begin() as conn:
                lease = outbox.lease_table
                conn.execute(sa.update(lease).values(holder="other", renewals=lease.c.renewals + 1))
            add(engine, outbox, 0)
            clock.advance(2 * LEASE)  # paused; the next pass renews first
            assert await relay.relay_once() == 0
            assert not relay.holding
            assert await log_events(app) == []
        finally:
            await relay.close()
        assert (await outbox.status()).holder == "other"  # close releases only its own


# -- tables of an older tidings --------------------------------------------------------


async def test_a_lease_table_without_the_new_columns_gets_them_and_an_old_relay_is_respected(
    app: Tidings, db_url: str, engine: sa.Engine
) -> None:
    """A database made by an older tidings: its lease table has no ``renewals`` and no
    ``lease_s``. Creating the tables adds them, keeping the row. A relay of the older
    version renews ``expires_at`` only: a new standby sees that as a change too."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE events_out_lease (name VARCHAR(255) NOT NULL PRIMARY KEY, "
                "holder VARCHAR(255), expires_at FLOAT NOT NULL)"
            )
        )
        conn.execute(
            sa.text("INSERT INTO events_out_lease VALUES ('events_out', 'old-relay', 1.5)")
        )
    outbox = Outbox(app, db_url, table="events_out", topic=TOPIC)
    outbox.create_table()
    outbox.create_table()  # a second time finds them there
    columns = {c["name"] for c in sa.inspect(engine).get_columns("events_out_lease")}
    assert {"renewals", "lease_s"} <= columns
    status = await outbox.status()
    assert (status.holder, status.lease_renewals, status.lease) == ("old-relay", 0, None)

    def old_relay_renews() -> None:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE events_out_lease SET expires_at = expires_at + 1.25"))

    clock = StepClock()
    async with app:
        relay = outbox.relay(lease=LEASE, holder="new", clock=clock)
        try:
            add(engine, outbox, 0)
            assert await relay.relay_once() == 0
            clock.advance(LEASE / 2)
            old_relay_renews()
            assert await relay.relay_once() == 0
            clock.advance(LEASE / 2)  # a lease since the first look, not since the change
            assert await relay.relay_once() == 0
            clock.advance(LEASE / 2)
            assert await relay.relay_once() == 1
            status = await outbox.status()
            assert (status.holder, status.lease_renewals, status.lease) == ("new", 1, LEASE)
        finally:
            await relay.close()
        await outbox.dispose()


# -- status ------------------------------------------------------------------------------


async def test_status_shows_the_holders_renewals_and_its_own_view_of_the_lease(
    app: Tidings, wall: WallClock, engine: sa.Engine
) -> None:
    outbox = Outbox(app, wall.engine, topic=TOPIC)
    outbox.create_table()
    clock = StepClock()
    async with app:
        relay = outbox.relay(lease=LEASE, holder="r-1", clock=clock)
        try:
            assert await relay.relay_once() == 0
            status = await outbox.status()
            assert (status.holder, status.lease_renewals, status.lease) == ("r-1", 1, LEASE)
            assert status.lease_expires_in is not None
            assert 0 < status.lease_expires_in <= LEASE
            clock.advance(LEASE / 2)
            assert await relay.relay_once() == 0
            assert (await outbox.status()).lease_renewals == 2
            wall.step(+60)  # as a holder that died a minute ago would look
            status = await outbox.status()
            assert status.holder == "r-1"  # until a standby has watched it for a lease
            assert status.lease_expires_in is not None
            assert -60 <= status.lease_expires_in < -60 + LEASE
            assert status.as_json()["lease_renewals"] == 2
        finally:
            await relay.close()
        status = await outbox.status()
        assert (status.holder, status.lease_expires_in) == (None, None)
        assert status.lease_renewals == 3  # the release changed the row too
