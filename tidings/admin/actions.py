"""Operators' actions recorded on the log: who did what, when, to how many.

Every state-changing action of the dashboard (a replay, a purge, an offset reset) is
published as a ``tidings.admin_action`` event on :data:`ADMIN_TOPIC`, so that it is
kept, shown and traced like any other fact; :func:`recent_actions` reads the newest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tidings.admin.positions import topic_info
from tidings.codec import decode
from tidings.errors import EventError, TopicNotFound

if TYPE_CHECKING:
    from tidings.app import Tidings
    from tidings.transport import Transport

__all__ = ["ADMIN_ACTION_TYPE", "ADMIN_TOPIC", "Action", "recent_actions", "record_action"]

ADMIN_TOPIC = "_tidings.admin"
"""The topic of operators' actions (one partition: one order)."""
ADMIN_ACTION_TYPE = "tidings.admin_action"


@dataclass(frozen=True, slots=True)
class Action:
    """One recorded action: ``who`` did ``action`` (``replay``, ``purge``,
    ``reset``) to ``target`` (a group), ``count`` entries or partitions, at ``at``."""

    who: str
    action: str
    target: str
    count: int
    at: float  # Unix seconds
    detail: str = ""
    event_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "who": self.who,
            "action": self.action,
            "target": self.target,
            "count": self.count,
            "at": self.at,
            "detail": self.detail,
        }


async def record_action(
    app: Tidings, who: str, action: str, target: str, count: int, detail: str = ""
) -> Action:
    """Publish the action on :data:`ADMIN_TOPIC` (made if missing) and return it."""
    done = Action(who, action, target, count, time.time(), detail)
    await app.transport.create_topic(ADMIN_TOPIC, 1)
    event = await app.publish(
        ADMIN_TOPIC, done.as_json(), type=ADMIN_ACTION_TYPE, subject=target, key=target
    )
    return Action(who, action, target, count, done.at, detail, event.id)


async def recent_actions(
    transport: Transport, *, limit: int = 20, target: str | None = None
) -> list[Action]:
    """The newest ``limit`` actions (of ``target`` only, if given), newest first; none
    where nothing was recorded yet. Reads at most ``limit * 10`` records back."""
    try:
        info = await topic_info(transport, ADMIN_TOPIC)
    except TopicNotFound:
        return []
    found: list[Action] = []
    for p in info.partitions:
        first = max(p.start, p.end - limit * 10)
        records = await transport.read(ADMIN_TOPIC, p.partition, first, p.end - first)
        for record in records:
            try:
                event = decode(record.value)
                data = event.data
                action = Action(
                    str(data["who"]), str(data["action"]), str(data["target"]),
                    int(data["count"]), float(data["at"]), str(data.get("detail", "")), event.id,
                )  # fmt: skip
            except (EventError, KeyError, TypeError, ValueError):
                # Not an action (someone else wrote to the topic): not shown.
                continue
            if target is None or action.target == target:
                found.append(action)
    found.sort(key=lambda a: a.at, reverse=True)
    return found[:limit]
