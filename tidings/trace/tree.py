"""The tree ``tidings trace`` shows: its events, each group's status with each, what
moved between two trees, and their JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from tidings.dead_letters import DeadLetter, State
from tidings.envelope import Event
from tidings.middleware.cancellation import CANCELLED_TYPE
from tidings.progress import is_progress
from tidings.transport import Record

__all__ = [
    "Change",
    "GroupStatus",
    "Status",
    "Trace",
    "TraceNode",
    "changes",
    "dead_status",
    "node_json",
    "note",
    "span",
    "status_json",
    "trace_json",
]

Status = Literal["handled", "pending", "dead-lettered", "replaying", "replayed", "purged"]
"""Where a group stands with one event: ``handled`` (its committed offset is past it);
``pending`` (not yet); ``dead-lettered`` (its handler gave up, or it could not be read,
or it is parked behind an earlier dead letter); ``replaying`` (an operator sent the dead
letter back, the group has not handled it yet); ``replayed`` (handled on replay);
``purged`` (an operator dropped the dead letter)."""

_BY_STATE: dict[State, Status] = {
    "dead": "dead-lettered",
    "replayed": "replaying",
    "resolved": "replayed",
    "purged": "purged",
}


@dataclass(frozen=True, slots=True)
class GroupStatus:
    """One group's status with one event.

    ``behind``: for ``pending``, the events before it in its partition that the group
    has still to handle (None where offsets are not dense). For a dead letter: ``entry``
    its id, ``reason`` why (the error, or what it is parked behind), ``dead_at`` when.
    """

    group: str
    status: Status
    behind: int | None = None
    entry: str | None = None
    reason: str | None = None
    attempts: int | None = None
    dead_at: datetime | None = None

    @property
    def text(self) -> str:
        """The status as one line says it."""
        if self.status == "pending":
            if self.behind is None:
                return "pending"
            return "pending (next)" if not self.behind else f"pending ({self.behind} before it)"
        if self.entry is None:
            return self.status
        tries = "" if not self.attempts else f", {self.attempts} attempt(s)"
        return f"{self.status}: {self.reason} (entry {self.entry}{tries})"


@dataclass(slots=True)
class TraceNode:
    """One event of a trace, where it is stored, its groups and what it caused.

    ``cause_seen`` is False when its ``causationid`` names an event the scan did not
    find (older than the window, or on a topic not read); such an event hangs under the
    root. ``after_cause``: seconds from its cause's time to its own. ``copies``: other
    places the same event id was appended (a producer's retry)."""

    event: Event
    record: Record
    groups: list[GroupStatus] = field(default_factory=list)
    children: list[TraceNode] = field(default_factory=list)
    cause_seen: bool = True
    after_cause: float | None = None
    copies: list[Record] = field(default_factory=list)

    def walk(self) -> list[TraceNode]:
        """This node and its descendants, depth first."""
        out = [self]
        for child in self.children:
            out.extend(child.walk())
        return out


@dataclass(frozen=True, slots=True)
class Trace:
    """The causal tree of ``id``: ``roots`` are the events nothing seen caused (for an
    event id, that event alone); ``span`` the seconds from the first event to the last
    thing seen happen (an event or a dead letter). Empty ``roots``: nothing matched in
    the window read (``scanned`` records of ``topics`` topics)."""

    id: str
    kind: Literal["correlation", "event"]
    correlationid: str | None
    roots: tuple[TraceNode, ...]
    span: float
    scanned: int
    topics: int

    def nodes(self) -> list[TraceNode]:
        """Every event of the tree, depth first."""
        return [n for root in self.roots for n in root.walk()]


@dataclass(frozen=True, slots=True)
class Change:
    """What moved between two traces: a new event (``group`` None), or a group's
    status with an event (``before``: its previous status, None if new)."""

    node: TraceNode
    group: GroupStatus | None = None
    before: GroupStatus | None = None


def note(event: Event) -> str | None:
    """What a progress or cancellation event says, in a few words (docs/agents.md)."""
    data = event.data if isinstance(event.data, dict) else {}
    if is_progress(event.type) and isinstance(data.get("fraction"), int | float):
        text = f"progress {data['fraction']:.0%}"
        return f"{text}: {data['note']}" if data.get("note") else text
    if event.type == CANCELLED_TYPE:
        target = data.get("correlationid") or f"subject {data.get('subject')}"
        reason = data.get("reason")
        return f"cancelled {target}" + (f": {reason}" if reason else "")
    return None


def dead_status(group: str, entry: DeadLetter, state: State) -> GroupStatus:
    """``group``'s status with an event it dead-lettered as ``entry``, in ``state``."""
    if entry.reason == "parked":
        reason = f"parked behind {entry.parked_behind}"
    else:
        reason = f"{entry.error_type}: {entry.error_message}"
        if entry.reason == "poison":
            reason = f"cannot be read: {reason}"
    return GroupStatus(
        group,
        _BY_STATE[state],
        entry=entry.entry,
        reason=reason,
        attempts=entry.attempts,
        dead_at=datetime.fromtimestamp(entry.dead_at, UTC),
    )


def span(nodes: list[TraceNode]) -> float:
    """Seconds from the first event of ``nodes`` to the last thing seen happen."""
    times = [n.event.time for n in nodes]
    times += [g.dead_at for n in nodes for g in n.groups if g.dead_at is not None]
    return (max(times) - min(times)).total_seconds() if times else 0.0


def changes(before: Trace | None, after: Trace) -> list[Change]:
    """What ``after`` shows that ``before`` did not: new events (each followed by its
    groups' statuses) and groups whose status with an event changed, in tree order."""
    seen = {n.event.id: n for n in before.nodes()} if before is not None else {}
    out: list[Change] = []
    for node in after.nodes():
        old = seen.get(node.event.id)
        if old is None:
            out.append(Change(node))
        was = {g.group: g for g in old.groups} if old is not None else {}
        for status in node.groups:
            previous = was.get(status.group)
            if previous != status:
                out.append(Change(node, status, previous))
    return out


# -- JSON --------------------------------------------------------------------------


def trace_json(trace: Trace) -> dict[str, Any]:
    """The documented JSON of ``tidings trace --json``: the tree as nested objects."""
    return {
        "id": trace.id,
        "kind": trace.kind,
        "correlationid": trace.correlationid,
        "events": len(trace.nodes()),
        "span_ms": round(trace.span * 1000, 3),
        "scanned": trace.scanned,
        "topics": trace.topics,
        "roots": [node_json(root) for root in trace.roots],
    }


def node_json(node: TraceNode, *, children: bool = True) -> dict[str, Any]:
    """One event of the tree (and, with ``children``, what it caused)."""
    e, r = node.event, node.record
    doc: dict[str, Any] = {
        "id": e.id,
        "type": e.type,
        "source": e.source,
        "subject": e.subject,
        "time": e.time.astimezone(UTC).isoformat(timespec="microseconds"),
        "topic": r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "causationid": e.causationid,
        "note": note(e),
        "cause_seen": node.cause_seen,
        "after_cause_ms": None if node.after_cause is None else round(node.after_cause * 1000, 3),
        "copies": [
            {"topic": c.topic, "partition": c.partition, "offset": c.offset} for c in node.copies
        ],
        "groups": [status_json(g, e) for g in node.groups],
    }
    if children:
        doc["children"] = [node_json(child) for child in node.children]
    return doc


def status_json(status: GroupStatus, event: Event) -> dict[str, Any]:
    """One group's status with ``event``; ``after_ms``: from the event's time to its
    dead letter."""
    after = None
    if status.dead_at is not None:
        after = round((status.dead_at - event.time).total_seconds() * 1000, 3)
    return {
        "group": status.group,
        "status": status.status,
        "behind": status.behind,
        "entry": status.entry,
        "reason": status.reason,
        "attempts": status.attempts,
        "dead_at": None if status.dead_at is None else status.dead_at.isoformat(),
        "after_ms": after,
        "text": status.text,
    }
