"""The outbox relay: a component that moves committed outbox rows to the log, one
active relay per table by a lease (the guarantees are in :mod:`tidings.outbox`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tidings._sql import Threads, transaction
from tidings.errors import ConfigError
from tidings.logs import fields
from tidings.outbox._app import OutboxApp
from tidings.outbox._lease import Lease, acquire
from tidings.outbox._lease import release as release_lease
from tidings.outbox._tables import reason
from tidings.transport import Clock, new_member_id

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["MAX_BATCH", "OutboxRelay", "RelayedOutbox"]

log = logging.getLogger("tidings.outbox")
# A line per relayed row (DEBUG), on a logger of its own: a relay's lease and failures
# are worth reading at DEBUG without a line for every event.
rows_log = logging.getLogger("tidings.outbox.rows")

T = TypeVar("T")

MAX_BATCH = 10_000  # bound parameters of one DELETE stay far below every driver's limit
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0


class RelayedOutbox(Protocol):
    """What a relay needs of its outbox (an :class:`~tidings.outbox.Outbox`)."""

    @property
    def app(self) -> OutboxApp: ...

    @property
    def engine(self) -> Engine | AsyncEngine: ...

    @property
    def table(self) -> sa.Table: ...

    @property
    def lease_table(self) -> sa.Table: ...

    @property
    def _relays(self) -> set[Any]:
        """The relays of this outbox running in this process (woken by commits)."""
        ...

    def _create(self, conn: Connection) -> None: ...

    def _due(self, conn: Connection, limit: int) -> Sequence[Sequence[Any]]: ...

    def _forget(self, conn: Connection, seqs: list[int]) -> None: ...

    async def dispose(self) -> None: ...


class OutboxRelay:
    """Moves committed outbox rows to the log (see the module docstring for what it
    guarantees). A component: ``app.add_component(outbox.relay())``, or run alone by
    ``tidings outbox relay``.

    The loop: hold the lease (take it, or renew it every ``lease / 3``), read up to
    ``batch`` due rows, append each run of one topic to the log, delete those rows;
    loop at once after a full batch, else wait ``poll_interval``, or less when a
    session in this process commits rows it added (:meth:`Outbox.add` arranges
    that, so a relay beside the API relays each commit at once). Any error (the log,
    the database) is logged and the pass tried again after a backoff (0.1 s doubling
    to 5 s); nothing is deleted before its append succeeded, so nothing is lost and
    the order holds. Without the lease it looks again every ``min(lease / 4, 1)`` s.

    The lease is timed by ``clock.monotonic()`` only. An append starts only under a
    renewal sent less than ``lease / 3`` ago, or one that succeeded within two thirds
    of the lease of being sent. A standby takes over once it has seen the lease row
    unchanged for a lease length (the longer of its own and the holder's) since it
    first saw it so; a released row at once. A holder whose renewals have failed for
    two thirds of its lease, counted from the sending of the last one that succeeded,
    is fenced: :attr:`holding` turns False, and it relays nothing until it holds the
    lease again. The third left over is the margin for an append in flight and for
    the two processes' clocks running at slightly different rates.

    ``quiet``: the lease's comings and goings are logged at DEBUG until a pass finds
    rows to relay (then at INFO, as by default), and a takeover is a warning only if
    due rows waited for it. For the delayed-event relay that every worker runs, which
    most never give anything to do. Warnings about failures are logged either way.
    """

    def __init__(
        self,
        outbox: RelayedOutbox,
        *,
        batch: int = 500,
        poll_interval: float = 0.05,
        lease: float = 10.0,
        holder: str | None = None,
        clock: Clock | None = None,
        quiet: bool = False,
    ) -> None:
        if not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
            raise ConfigError(f"relay batch must be 1 to {MAX_BATCH}, got {batch!r}")
        if not poll_interval > 0:
            raise ConfigError(f"relay poll_interval must be > 0 seconds, got {poll_interval!r}")
        if not lease >= 0.1:
            raise ConfigError(f"relay lease must be at least 0.1 seconds, got {lease!r}")
        self.outbox = outbox
        self.batch = batch
        self.poll_interval = poll_interval
        self.lease = lease
        self.holder = holder or new_member_id()
        self.name = f"outbox-relay:{outbox.table.name}"
        self.holding = False
        self.relayed = 0  # events appended by this relay (a re-append counts again)
        # The app's OpenTelemetry spans (Tidings(tracing=True)): a send span per append.
        self._tracing = getattr(outbox.app, "tracing", None)
        self._clock = clock
        self.quiet = quiet
        self._busy = False  # a pass has found rows: a quiet relay speaks up from then on
        # A quiet relay's takeover, told at DEBUG: a warning too if due rows waited.
        self._takeover: tuple[str, tuple[Any, ...]] | None = None
        # Monotonic time at which the last renewal that succeeded was sent.
        self._renewed = 0.0
        self._ready = False
        self._threads: Threads | None = None  # one: the relay's transactions never overlap
        # The lease row as last read while another relay held it (or None held it),
        # and the monotonic time just after the read that first found it so.
        self._seen: Lease | None = None
        self._seen_at = 0.0
        self._wakeup: asyncio.Event | None = None
        self._loop_of_run: asyncio.AbstractEventLoop | None = None
        # The rows being appended, for the log line of a pass that fails on them.
        self._chunk: Sequence[Any] = ()

    @property
    def clock(self) -> Clock:
        """Whose ``monotonic()`` times the lease: the one given, else the app's
        transport's (looked up on each use, so a test may replace it later)."""
        if self._clock is not None:
            return self._clock
        return self.outbox.app.transport.clock

    @property
    def fence(self) -> float:
        """Seconds after sending its last renewal that succeeded at which a holder
        stops trusting its lease: two thirds of it (see the class docstring)."""
        return self.lease * 2 / 3

    def wake(self) -> None:
        """Look for rows now rather than at the next poll (from any thread)."""
        loop, wakeup = self._loop_of_run, self._wakeup
        if loop is not None and wakeup is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(wakeup.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; then release the lease, so that a standby takes
        over at once."""
        self._loop_of_run = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self.outbox._relays.add(self)
        app = self.outbox.app
        await app.start()
        try:
            await self._loop(stop)
        finally:
            try:
                self.outbox._relays.discard(self)
                await self.close()
                await self.outbox.dispose()
            finally:
                await app.close()

    async def _loop(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                moved = await self.relay_once()
            except Exception as exc:
                failures += 1
                delay = min(_BACKOFF_FIRST * 2 ** (failures - 1), _BACKOFF_MAX)
                log.warning(
                    "%s: pass failed (%s); trying again in %.1fs (failure %d)",
                    self.name,
                    reason(exc),
                    delay,
                    failures,
                    exc_info=failures == 1,
                    extra=self._at(),
                )
                await _sleep(stop, delay)
                continue
            if failures:
                log.info("%s: working again after %d failed pass(es)", self.name, failures)
                failures = 0
            if not self.holding:
                await _sleep(stop, min(self.lease / 4, 1.0))
            elif moved < self.batch:
                await self._idle(stop)

    async def _idle(self, stop: asyncio.Event) -> None:
        """Wait ``poll_interval``, less if woken or stopped (only :meth:`run` idles)."""
        wakeup = self._wakeup
        assert wakeup is not None  # set by run()
        if not wakeup.is_set():
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wakeup.wait())]
            try:
                await asyncio.wait(waits, timeout=self.poll_interval, return_when="FIRST_COMPLETED")
            finally:
                for w in waits:
                    w.cancel()
        wakeup.clear()

    async def relay_once(self) -> int:
        """One pass: hold the lease, then move up to ``batch`` due rows to the log.

        Returns how many events were appended (0 when there was nothing to do, or
        another relay holds the lease: see :attr:`holding`). Raises what failed; the
        rows stay for the next pass. The app must be started (``async with app``).
        """
        if not self._ready:
            await self._tx(self.outbox._create)
            self._ready = True
        if not await self._hold():
            return 0
        rows = await self._tx(lambda conn: self.outbox._due(conn, self.batch))
        self._found(len(rows))
        moved = 0
        transport = self.outbox.app.transport
        for topic, run in itertools.groupby(rows, key=lambda r: r[1]):
            chunk = self._chunk = list(run)
            # Under a renewal sent less than lease/3 ago (or, after a slow renewal,
            # 2/3 ago): a standby cannot take over for a third of the lease at least.
            if not await self._hold():
                break
            records = [(r[2], r[3]) for r in chunk]
            if self._tracing is None:
                await transport.append(topic, records)
            else:  # its send span, from the rows' creation contexts
                with self._tracing.relay(topic, [r[3] for r in chunk]):
                    await transport.append(topic, records)
            moved += len(chunk)
            self.relayed += len(chunk)
            await self._tx(functools.partial(self.outbox._forget, seqs=[r[0] for r in chunk]))
            if rows_log.isEnabledFor(logging.DEBUG):
                for r in chunk:
                    rows_log.debug(
                        "%s: relayed row %d to %s", self.name, r[0], topic,
                        extra=fields(outbox_id=r[0], topic=topic, event_id=r[5]),
                    )  # fmt: skip
        self._chunk = ()
        return moved

    def _at(self) -> dict[str, Any]:
        """The log fields of the rows a pass was relaying (the first of them, and how
        many), if it got that far."""
        if not self._chunk:
            return fields()
        seq, topic, *_, event_id = self._chunk[0]
        return fields(outbox_id=seq, topic=topic, event_id=event_id, rows=len(self._chunk))

    async def _hold(self) -> bool:
        """Whether an append may start now under this relay's lease: renew it if it
        was last renewed ``lease / 3`` ago or more, or try to take it."""
        clock = self.clock
        sent = clock.monotonic()
        if self.holding and sent - self._renewed < self.lease / 3:
            return True
        seen = self._seen
        take = None
        if seen is not None and seen.holder is not None:
            waited = sent - self._seen_at
            if waited >= max(self.lease, seen.lease or 0.0):
                take = seen
        outbox = self.outbox
        try:
            row = await self._tx(
                functools.partial(
                    acquire,
                    lease=outbox.lease_table,
                    name=outbox.table.name,
                    holder=self.holder,
                    seconds=self.lease,
                    clock=clock,
                    take=take,
                    recreate=outbox._create,
                )
            )
        except BaseException:
            self._fence_if_overdue()
            raise
        after = clock.monotonic()
        if row is None:
            if take is not None:
                self._took_over(take, sent - self._seen_at)
            elif not self.holding:
                log.log(self._level, "%s: %s holds the lease; relaying", self.name, self.holder)
            self._renewed = sent
            self._seen = None
            self.holding = True
            # A renewal slower than the fence leaves less than a third of the lease.
            return after - sent < self.fence
        if self.holding:
            log.log(
                logging.WARNING if self._level == logging.INFO else logging.DEBUG,
                "%s: lost the lease to %s; standing by",
                self.name,
                row.holder,
            )
        elif row.holder != (seen.holder if seen is not None else None):
            log.log(
                self._level,
                "%s: %s holds the lease; standing by until it is released, or unchanged for %.1fs",
                self.name,
                row.holder,
                max(self.lease, row.lease or 0.0),
            )
        if seen is None or row.state != seen.state:
            self._seen, self._seen_at = row, after
        self.holding = False
        return False

    @property
    def _level(self) -> int:
        """How the lease's news is logged: INFO, or DEBUG for a quiet relay that has
        not found anything to relay yet."""
        return logging.DEBUG if self.quiet and not self._busy else logging.INFO

    def _took_over(self, taken: Lease, unchanged: float) -> None:
        message = "%s: %s took over the lease from %s, which it saw unchanged for %.1fs"
        args = (self.name, self.holder, taken.holder, unchanged)
        if self._level == logging.DEBUG:
            log.debug(message, *args)
            self._takeover = (message, args)  # a warning if due rows waited: _found
        else:
            log.warning(message, *args)

    def _found(self, rows: int) -> None:
        """After a pass read ``rows`` due rows: a quiet relay speaks up at the first."""
        takeover, self._takeover = self._takeover, None
        if not rows or self._busy:
            return
        self._busy = True
        if takeover is not None:
            message, args = takeover
            log.warning(message + "; %d due event(s) waited", *args, rows)
        elif self.quiet:
            log.info("%s: %s holds the lease; relaying", self.name, self.holder)

    def _fence_if_overdue(self) -> None:
        """After a renewal failed: stop holding once the fence has passed."""
        if not self.holding:
            return
        overdue = self.clock.monotonic() - self._renewed
        if overdue >= self.fence:
            self.holding = False
            self._seen = None
            log.warning(
                "%s: no renewal of the lease has succeeded for %.1fs (the fence is %.1fs "
                "of a %.1fs lease): relaying nothing until the lease is held again",
                self.name,
                overdue,
                self.fence,
                self.lease,
            )

    async def close(self, *, release: bool = True) -> None:
        """Release the lease (unless ``release=False``: leave it to run out, as a relay
        that died would) and the relay's thread. :meth:`run` does this on its way out."""
        threads = self._threads
        if threads is None:
            return
        lease, name = self.outbox.lease_table, self.outbox.table.name
        try:
            if release and self.holding:
                with contextlib.suppress(Exception):
                    await self._tx(lambda conn: release_lease(conn, lease, name, self.holder))
                    log.log(self._level, "%s: released the lease", self.name)
        finally:
            self.holding = False
            self._threads = None
            threads.shutdown(wait=True)

    async def _tx(self, job: Callable[[Connection], T]) -> T:
        """``job`` in a transaction of the outbox's database, in the relay's thread."""
        if self._threads is None:
            self._threads = Threads(1, "tidings-outbox")
        return await transaction(self.outbox.engine, job, self._threads)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less if ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
