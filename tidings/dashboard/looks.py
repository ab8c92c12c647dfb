"""One look at the groups and topics, as the overview, a group's page and the live
updates show it: every figure from :mod:`tidings.admin`, as ``tidings groups`` and
``tidings topics`` print them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from tidings import admin
from tidings.dashboard.state import Dashboard
from tidings.dashboard.svg import Point, summed
from tidings.lag_health import GroupHealth, Health
from tidings.transport import GroupPartition, LagSample, TopicInfo

__all__ = ["GroupsLook", "groups_look", "topics_look"]

_V = TypeVar("_V")


@dataclass
class GroupsLook:
    """Groups at one moment: rows per partition, lines per group and topic."""

    now_ms: int
    rows: list[GroupPartition]
    lines: list[admin.GroupTopic]
    dlq: dict[tuple[str, str, int], int]
    counting: set[str]  # groups whose dead letters are not read yet (dlq: none of them)
    health: dict[tuple[str, str], GroupHealth] | None
    seconds: dict[tuple[str, str, int], float]  # lag in seconds per partition
    history: dict[tuple[str, str, int], list[LagSample]] = field(default_factory=dict)
    _lines: dict[int, Any] = field(default_factory=dict, repr=False)

    def line_health(self, line: admin.GroupTopic) -> GroupHealth | None:
        return None if self.health is None else self.health.get((line.group, line.topic))

    def row_health(self, row: GroupPartition) -> Health | None:
        return admin.partition_health(self.health, [row])[0]

    def line_seconds(self, line: admin.GroupTopic) -> float:
        return max(self._by_line(self.seconds).get((line.group, line.topic), ()), default=0.0)

    def points(self, group: str, topic: str) -> list[Point]:
        """The lag of ``group`` on ``topic`` over the samples kept, partitions summed."""
        return summed(self._by_line(self.history).get((group, topic), ()))

    def _by_line(
        self, per_partition: dict[tuple[str, str, int], _V]
    ) -> dict[tuple[str, str], list[_V]]:
        """``per_partition``'s values by (group, topic), grouped once per look."""
        found = self._lines.get(id(per_partition))
        if found is None:
            found = {}
            for (g, t, _), value in per_partition.items():
                found.setdefault((g, t), []).append(value)
            self._lines[id(per_partition)] = found
        return found

    def line_json(self, line: admin.GroupTopic) -> dict[str, Any]:
        """``tidings groups --json``'s object of the line, and its lag in seconds."""
        doc = admin.group_topic_json(line, self.line_health(line))
        if line.group in self.counting:
            doc["dlq"] = None  # not known yet
        doc["lag_seconds"] = round(self.line_seconds(line), 3)
        return doc


async def groups_look(
    dashboard: Dashboard, group: str | None = None, *, internal: bool = False
) -> GroupsLook:
    """The groups (or ``group`` alone: GroupNotFound if unknown) as ``tidings groups``
    sees them, with the lag in seconds of each lagging partition and the samples kept
    (the log's, and the dashboard's own looks)."""
    transport = await dashboard.transport()
    now_ms = transport.clock.time_ms()
    rows = await admin.group_rows(transport, group, internal=internal)
    counting = dashboard.uncounted({r.group for r in rows})
    counted = [r for r in rows if r.group not in counting]
    dlq = await admin.dead_letter_counts(transport, counted, dashboard.dead_logs, resolved=True)
    health = admin.lag_health(rows, now_ms, dashboard.windows)
    dashboard.history.observe(rows, now_ms)
    seconds = {}
    for row in rows:
        if row.lag:
            lag = await admin.partition_lag(transport, row, now_ms / 1000, dashboard.lag_stamps)
            seconds[(row.group, row.topic, row.partition)] = lag.seconds
    kept = dashboard.history.samples()
    history = {
        key: _merged(list(row.samples or ()), kept.get(key, []))
        for row in rows
        for key in [(row.group, row.topic, row.partition)]
    }
    lines = admin.group_topics(rows, dlq)
    return GroupsLook(now_ms, rows, lines, dlq, counting, health, seconds, history)


def _merged(logged: list[LagSample], looked: list[LagSample]) -> list[LagSample]:
    """The log's samples and the dashboard's, in time order."""
    return sorted({s.ts_ms: s for s in [*looked, *logged]}.values(), key=lambda s: s.ts_ms)


@dataclass(frozen=True)
class TopicLine:
    info: TopicInfo
    rate: float  # events per second over the last minute


def is_shown(name: str) -> bool:
    """Topics listed unless asked for all: not the log's own (``_tidings.*``) nor the
    groups' dead-letter and retry topics."""
    return not (name.startswith("_tidings") or name.endswith((".dlq", ".retry")))


async def topics_look(dashboard: Dashboard, *, internal: bool = False) -> list[TopicLine]:
    """The topics as ``tidings topics`` lists them, each with its rate."""
    transport = await dashboard.transport()
    infos = [i for i in await admin.topic_rows(transport) if internal or is_shown(i.name)]
    return [TopicLine(i, await admin.topic_rate(transport, i)) for i in infos]
