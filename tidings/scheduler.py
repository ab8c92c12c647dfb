"""The delayed-event scheduler: where events published with ``delay=`` or
``deliver_at=`` wait until due, and the relay that appends them to the log then.

Delayed events wait in an outbox table of their own (``tidings_scheduled``), with
their due time as the row's ``deliver_at``; the scheduler's relay, an
:class:`~tidings.outbox.OutboxRelay` run by every worker beside its groups (one holds
the lease), appends them once due, by due time. By default the table lives in the
SQLite log's own file (for ``memory://``, in a temporary file); other transports need
a database (``Tidings(scheduler=...)`` or ``$TIDINGS_SCHEDULER_URL``), unless they hold
delayed events themselves (NATS message schedules: then there is no scheduler).

Importing this module imports SQLAlchemy; ``tidings.app`` imports it when a scheduler
is first needed.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from tidings._sql import transaction, twice_async
from tidings.envelope import Event
from tidings.outbox import Outbox, OutboxApp, OutboxError, OutboxRelay, OutboxStatus

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["SCHEDULER_TABLE", "Scheduler", "default_scheduler_db"]

SCHEDULER_TABLE = "tidings_scheduled"
"""The table where delayed events wait."""
RELAY_POLL_INTERVAL = 0.05  # seconds: a delayed event is appended this soon after due
RELAY_LEASE = 5.0  # seconds
_memory_schedulers: dict[str, str] = {}  # memory:// log name -> its scheduler file


def default_scheduler_db(url: str) -> str | None:
    """Where delayed events wait by default for the log at ``url``: in the SQLite log's
    own file; for ``memory://``, in a temporary SQLite file removed at exit (shared by
    name, like the log; a file rather than ``:memory:``, whose one connection the
    relay's and the publisher's threads would have to share); elsewhere nowhere."""
    scheme, _, rest = url.partition("://")
    if scheme == "sqlite":
        return "sqlite://" + rest.partition("?")[0]
    if scheme == "memory":
        name = rest.partition("?")[0]
        path = _memory_schedulers.get(name) if name else None
        if path is None:
            folder = tempfile.mkdtemp(prefix="tidings-scheduler-")
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            path = os.path.join(folder, "scheduled.db")
            if name:
                _memory_schedulers[name] = path
        return f"sqlite:///{path}"
    return None


class Scheduler:
    """Delayed events of ``app``, waiting in the table ``table`` of the database ``db``
    (a SQLAlchemy URL or Engine/AsyncEngine) until due.

    :meth:`add` puts events in (the table is created on first use); :meth:`relay` is
    the component that appends them once due; :meth:`status` shows what waits.
    """

    def __init__(
        self, app: OutboxApp, db: str | Engine | AsyncEngine, *, table: str = SCHEDULER_TABLE
    ) -> None:
        self.outbox = Outbox(app, db, table=table)
        self._ready = False

    @property
    def engine(self) -> Engine | AsyncEngine:
        return self.outbox.engine

    @property
    def table(self) -> sa.Table:
        return self.outbox.table

    def __repr__(self) -> str:
        return f"Scheduler({self.outbox.table.name!r} in {self.outbox.url})"

    async def add(self, topic: str, events: Sequence[Event], when: datetime) -> None:
        """Keep ``events`` (ready-made, checked by the caller) until ``when`` (an aware
        datetime), then append them to ``topic``, in this order; in one transaction."""
        outbox = self.outbox
        if not self._ready:
            # A relay may create it at the same moment ("already exists"); a second
            # look finds it, or raises the real problem.
            await twice_async(outbox.create_table_async, OutboxError)
            self._ready = True

        def insert(conn: Any) -> None:
            for event in events:
                outbox.add(conn, event, topic=topic, deliver_at=when)

        await transaction(outbox.engine, insert)

    def relay(self) -> OutboxRelay:
        """The component that appends delayed events once due (workers run it).

        Quiet: every worker runs it, most have nothing to schedule, so the lease's
        comings and goings are logged at DEBUG until there is something to relay."""
        return self.outbox.relay(poll_interval=RELAY_POLL_INTERVAL, lease=RELAY_LEASE, quiet=True)

    async def status(self) -> OutboxStatus:
        """What waits: pending, due, scheduled, and who relays them."""
        return await self.outbox.status()

    async def dispose(self) -> None:
        """Close the idle connections of the engine made from a URL."""
        await self.outbox.dispose()
