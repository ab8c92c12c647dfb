"""Where a projection stands (``tidings projections status``): its stored position
per partition beside the log's end and its group's committed offset, and whether a
rebuild runs."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tidings.projections._base import Projected

__all__ = ["PartitionStatus", "ProjectionStatus", "RebuildRunningInfo", "status"]


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    """One partition of one of a projection's topics.

    ``position``: the offset of the last event the projection applied (None: none
    yet); ``committed``: its group's committed offset in the log (the next to read;
    events of types it does not handle move only this); ``end``: the log's end.
    ``lag``: events still to read, from the further of the two."""

    topic: str
    partition: int
    position: int | None
    committed: int | None
    start: int
    end: int

    @property
    def lag(self) -> int:
        done = max(
            self.start,
            -1 if self.position is None else self.position + 1,
            -1 if self.committed is None else self.committed,
        )
        return max(self.end - done, 0)


@dataclass(frozen=True, slots=True)
class RebuildRunningInfo:
    """A rebuild under way: where it runs (host:pid), since when and its last sign of
    life (Unix times)."""

    owner: str
    started_at: float
    heartbeat: float


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    """A projection's status: its partitions and a rebuild under way, if any."""

    name: str
    db: str
    partitions: tuple[PartitionStatus, ...]
    rebuilding: RebuildRunningInfo | None

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    def to_json(self) -> dict[str, Any]:
        rebuilding = self.rebuilding
        return {
            "name": self.name,
            "db": self.db,
            "lag": self.lag,
            "rebuilding": None
            if rebuilding is None
            else {
                "owner": rebuilding.owner,
                "started_at": rebuilding.started_at,
                "heartbeat_age": round(time.time() - rebuilding.heartbeat, 3),
            },
            "partitions": [
                {
                    "topic": p.topic,
                    "partition": p.partition,
                    "position": p.position,
                    "committed": p.committed,
                    "start": p.start,
                    "end": p.end,
                    "lag": p.lag,
                }
                for p in self.partitions
            ],
        }


async def status(projection: Projected) -> ProjectionStatus:
    """The status of ``projection`` now."""
    db = projection.db

    def read() -> tuple[dict[tuple[str, int], int], dict[str, Any] | None]:
        projection.prepare()
        with db.read() as conn:
            return db.all_positions(conn), db.rebuild_running(conn)

    positions, running = await asyncio.to_thread(read)
    transport = projection.app.transport
    topics = {t.name: t for t in await transport.topics()}
    committed: dict[tuple[str, int], int | None] = {}
    for group in await transport.groups():
        if group.group == projection.group:
            committed = {(p.topic, p.partition): p.committed for p in group.partitions}
    rows = []
    for name in projection.topics:
        info = topics.get(name)
        for part in info.partitions if info is not None else ():
            tp = (name, part.partition)
            rows.append(
                PartitionStatus(
                    name, part.partition, positions.get(tp), committed.get(tp), part.start, part.end
                )
            )
    return ProjectionStatus(
        projection.name,
        db.describe(),
        tuple(rows),
        None if running is None else RebuildRunningInfo(**running),
    )
