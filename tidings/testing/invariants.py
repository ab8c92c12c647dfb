"""The delivery promises, checked: nothing acknowledged lost, per-key order, effects once.

Record what the test published (:meth:`Invariants.publish`, or :meth:`~Invariants.
published` once a publish returned), what each group handled (:meth:`~Invariants.
handled`, first thing in the handler) and, where effects must happen once, each effect
(:meth:`~Invariants.effect`); then :meth:`~Invariants.check` asserts the promises::

    inv = Invariants(["email", "audit"], seed=faulty.seed, faults=faulty)

    @app.subscriber("task-events", group="email")
    async def send(payload, ctx):
        inv.handled(ctx.group, ctx.event)

    for i in range(100):
        await inv.publish(app, "task-events", TaskCreated(task_id=f"t{i % 10}"))
    await eventually(inv.complete)
    report = inv.check()  # AssertionError naming the seed and the first violations

Per-key order is the order in which the test's publishes of one key were acknowledged:
publish a key's events one after another (each awaited) for it to mean anything.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tidings.envelope import Event
from tidings.errors import TransportError

if TYPE_CHECKING:
    from tidings.app import Tidings
    from tidings.testing.faults import FaultyTransport

__all__ = ["Invariants", "Report"]

SHOWN = 5  # violations named in a failure message


@dataclass(frozen=True, slots=True)
class Report:
    """What :meth:`Invariants.check` counted, per group where it says so."""

    published: int  # distinct events acknowledged
    handled: dict[str, int]  # distinct acknowledged events each group handled
    deliveries: dict[str, int]  # handler calls recorded, duplicates included
    duplicates: dict[str, int]  # deliveries beyond the first of each event
    lost: dict[str, int]  # acknowledged events a group never handled
    out_of_order: dict[str, int]  # handlings before an earlier event of their key
    effects: dict[str, int] = field(default_factory=dict)  # distinct events with an effect
    duplicate_effects: dict[str, int] = field(default_factory=dict)
    injected: dict[str, int] = field(default_factory=dict)  # from the FaultyTransport

    def __str__(self) -> str:
        parts = [f"published={self.published}"]
        for group in sorted(self.deliveries):
            parts.append(
                f"{group}: handled={self.handled[group]} duplicates={self.duplicates[group]}"
                f" lost={self.lost[group]} out_of_order={self.out_of_order[group]}"
            )
        if self.effects:
            parts.append(f"effects={self.effects} duplicate_effects={self.duplicate_effects}")
        if self.injected:
            parts.append(f"injected={dict(sorted(self.injected.items()))}")
        return "; ".join(parts)


class Invariants:
    """Records deliveries and checks the promises (see the module doc).

    ``groups``: the groups that must handle every acknowledged event (a group that
    handled nothing would otherwise pass). ``seed`` (default: ``faults.seed``) and the
    counts of ``faults`` are named in every failure message, to replay the run.
    """

    def __init__(
        self,
        groups: Iterable[str],
        *,
        seed: int | None = None,
        faults: FaultyTransport | None = None,
    ) -> None:
        self.groups = sorted(set(groups))
        if not self.groups:
            raise ValueError("Invariants(groups) needs the groups that must handle every event")
        self.faults = faults
        self.seed = seed if seed is not None or faults is None else faults.seed
        self._acked: dict[str, str | None] = {}  # event id -> key, in acknowledgement order
        self._keys: dict[str | None, list[str]] = {}  # key -> its event ids, in order
        self._expected: dict[str, frozenset[str]] = {}  # event id -> groups, if not all
        self._log: list[tuple[str, str]] = []  # (group, event id), in handling order
        self._seen: dict[str, set[str]] = {}  # group -> event ids handled
        self._effects: dict[str, Counter[str]] = {}

    # -- recording ----------------------------------------------------------------

    def published(self, event: Event, *, groups: Iterable[str] | None = None) -> None:
        """``event`` was acknowledged (its publish returned). ``groups``: the groups
        that must handle it, if not all of :attr:`groups` (a subscriber's ``types``)."""
        if event.id in self._acked:
            return  # acknowledged again: a publisher's retry of the same event
        self._acked[event.id] = event.key
        self._keys.setdefault(event.key, []).append(event.id)
        if groups is not None:
            self._expected[event.id] = frozenset(groups)

    async def publish(
        self,
        app: Tidings,
        topic: str,
        payload: Any,
        *,
        attempts: int = 100,
        pause: float = 0.005,
        **options: Any,
    ) -> Event:
        """Publish as an outbox relay does: the same event (same id) again after a
        TransportError, until it is acknowledged; then record it. Returns the event."""
        event = payload if isinstance(payload, Event) else app.build(payload, **options)
        for attempt in range(1, attempts + 1):
            try:
                await app.publish_events(topic, [event])
            except TransportError:
                if attempt == attempts:
                    raise
                await asyncio.sleep(pause)
                continue
            break
        self.published(event)
        return event

    def handled(self, group: str, event: Event) -> None:
        """``group`` handled ``event`` (call it first thing in the handler)."""
        self._log.append((group, event.id))
        self._seen.setdefault(group, set()).add(event.id)

    def effect(self, group: str, event_id: str) -> None:
        """``group``'s handler had its effect for ``event_id`` (where it must be once)."""
        self._effects.setdefault(group, Counter())[event_id] += 1

    # -- checking -------------------------------------------------------------------

    def _wants(self, group: str, event_id: str) -> bool:
        return group in self._expected.get(event_id, self.groups)

    def complete(self) -> bool:
        """Whether every group has handled every acknowledged event at least once (for
        ``eventually(inv.complete)``)."""
        for group in self.groups:
            seen = self._seen.get(group, set())
            for event_id in self._acked:
                if event_id not in seen and self._wants(group, event_id):
                    return False
        return True

    def _out_of_order(
        self,
        group: str,
        keys: dict[str | None, list[str]],
        position: dict[str, tuple[str | None, int]],
        problems: list[str],
    ) -> int:
        """How many of ``group``'s calls came before an earlier event of their key."""
        count = 0
        prefix: dict[str | None, int] = {}  # per key: how many of its first are handled
        done: set[str] = set()
        for g, event_id in self._log:
            if g != group or event_id not in position:
                continue  # another group's, or an event the test never saw acknowledged
            key, index = position[event_id]
            ids = keys[key]
            first_missing = prefix.get(key, 0)
            if index > first_missing:
                count += 1
                if count <= SHOWN:
                    problems.append(
                        f"out of order: group {group} handled {event_id} (#{index} of key"
                        f" {key!r}) before {ids[first_missing]} (#{first_missing})"
                    )
            done.add(event_id)
            while first_missing < len(ids) and ids[first_missing] in done:
                first_missing += 1
            prefix[key] = first_missing
        return count

    def _effects_of(
        self, groups: list[str], problems: list[str]
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Per group: acknowledged events with an effect, and effects beyond one."""
        effects: dict[str, int] = {}
        duplicate_effects: dict[str, int] = {}
        for group in groups:
            counts = self._effects.get(group, Counter())
            effects[group] = sum(1 for event_id in self._acked if counts[event_id])
            twice = sorted(event_id for event_id, n in counts.items() if n > 1)
            duplicate_effects[group] = sum(counts[event_id] - 1 for event_id in twice)
            for event_id in twice[:SHOWN]:
                problems.append(
                    f"effect twice: group {group} had {counts[event_id]} effects for {event_id}"
                )
            none = [
                event_id
                for event_id in self._acked
                if not counts[event_id] and self._wants(group, event_id)
            ]
            for event_id in none[:SHOWN]:
                problems.append(f"no effect: group {group} had no effect for {event_id}")
        return effects, duplicate_effects

    def check(self, *, exactly_once: Iterable[str] = ()) -> Report:
        """Assert the promises; return the counts. ``exactly_once``: groups whose
        recorded effects must be one per acknowledged event (with an inbox).

        Raises AssertionError naming the seed, the counts and the first violations.
        """
        problems: list[str] = []
        handled: dict[str, int] = {}
        deliveries: dict[str, int] = {}
        duplicates: dict[str, int] = {}
        lost: dict[str, int] = {}
        out_of_order: dict[str, int] = {}
        for group in self.groups:
            calls = Counter(event_id for g, event_id in self._log if g == group)
            deliveries[group] = sum(calls.values())
            duplicates[group] = sum(n - 1 for n in calls.values())
            handled[group] = sum(1 for event_id in self._acked if event_id in calls)
            # Each key's events this group must handle, in acknowledgement order.
            keys = {
                key: [event_id for event_id in ids if self._wants(group, event_id)]
                for key, ids in self._keys.items()
            }
            position = {
                event_id: (key, i) for key, ids in keys.items() for i, event_id in enumerate(ids)
            }
            missing = [event_id for event_id in position if event_id not in calls]
            lost[group] = len(missing)
            for event_id in missing[:SHOWN]:
                key, index = position[event_id]
                problems.append(
                    f"lost: group {group} never handled {event_id} (#{index} of key {key!r})"
                )
            out_of_order[group] = self._out_of_order(group, keys, position, problems)
        effects, duplicate_effects = self._effects_of(sorted(set(exactly_once)), problems)
        report = Report(
            published=len(self._acked),
            handled=handled,
            deliveries=deliveries,
            duplicates=duplicates,
            lost=lost,
            out_of_order=out_of_order,
            effects=effects,
            duplicate_effects=duplicate_effects,
            injected=dict(self.faults.injected) if self.faults is not None else {},
        )
        if problems:
            raise AssertionError(
                f"seed={self.seed}: the delivery promises did not hold ({report}):\n  "
                + "\n  ".join(problems)
            )
        return report
