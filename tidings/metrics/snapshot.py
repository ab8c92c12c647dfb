"""What a scrape reads from the log and the databases (the rest is counted in memory):
lag, dead letters, events lost to retention, outbox and scheduler backlogs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tidings.admin import Lag, LagWindows, group_rows, lag_health, partition_lag
from tidings.dead_letters import depths
from tidings.errors import ConfigError
from tidings.outbox import Outbox, OutboxRelay
from tidings.scheduler import SCHEDULER_TABLE

if TYPE_CHECKING:
    from tidings.worker import Worker

__all__ = ["Backlog", "Lag", "Snapshot", "read_snapshot"]

log = logging.getLogger("tidings.metrics")


@dataclass(frozen=True, slots=True)
class Backlog:
    """An outbox table's rows waiting (the scheduler's too)."""

    table: str
    pending: int  # rows not yet relayed, due or not
    due: int  # of which due now
    oldest_age: float | None  # seconds the oldest due row has waited


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One reading; the empty one before the first (or while the app is not started)."""

    lag: tuple[Lag, ...] = ()
    lost: dict[tuple[str, str], int] = field(default_factory=dict)  # (group, topic) -> n
    dead_letters: dict[str, int] = field(default_factory=dict)  # group -> waiting
    outboxes: tuple[Backlog, ...] = ()
    scheduler: Backlog | None = None
    errors: int = 0  # parts that could not be read this time (logged)
    # (group, topic) -> its lag health's status name (OK, WARN, ERR), as `tidings groups`
    status: dict[tuple[str, str], str] = field(default_factory=dict)


async def read_snapshot(
    worker: Worker, now: Callable[[], float] = time.time, windows: LagWindows | None = None
) -> Snapshot:
    """Read the state of ``worker``'s groups and components. A part that fails (the
    log or a database unreachable) is logged, counted in ``errors`` and left empty:
    the rest is still exposed. ``windows``: where the lag samples of a log that keeps
    none (Kafka, NATS, memory) are kept from one reading to the next, for the groups'
    lag health (the SQLite log keeps its own)."""
    app, groups = worker.app, worker.groups
    errors = 0
    lag: tuple[Lag, ...] = ()
    lost: dict[tuple[str, str], int] = {}
    dead: dict[str, int] = {}
    health: dict[tuple[str, str], str] = {}
    try:
        rows = [r for r in await group_rows(app.transport) if r.group in groups]
        lag = tuple([await partition_lag(app.transport, r, now()) for r in rows])
        for r in rows:
            lost[(r.group, r.topic)] = lost.get((r.group, r.topic), 0) + r.lost
        dead = await depths(app.transport, groups)
        rated = lag_health(rows, app.transport.clock.time_ms(), windows) or {}
        health = {line: h.status.name for line, h in rated.items()}
    except Exception as exc:
        errors += 1
        log.warning("metrics: could not read the groups' lag from %s: %r", app.url, exc)
    outboxes: list[Backlog] = []
    scheduler = None
    for component in worker.components:
        if not isinstance(component, OutboxRelay) or not isinstance(component.outbox, Outbox):
            continue
        try:
            status = await component.outbox.status()
        except ConfigError:
            # No table yet: its relay makes it when it first runs; nothing waits in it.
            status = None
        except Exception as exc:
            errors += 1
            log.warning("metrics: could not read the outbox %s: %r", component.name, exc)
            continue
        table = component.outbox.table.name
        backlog = Backlog(table, 0, 0, None)
        if status is not None:
            backlog = Backlog(table, status.pending, status.due, status.oldest_age)
        if table == SCHEDULER_TABLE:
            scheduler = backlog
        else:
            outboxes.append(backlog)
    return Snapshot(lag, lost, dead, tuple(outboxes), scheduler, errors, health)
