"""The dashboard benchmark's log (issue 23): ``--topics`` topics, ``--groups`` groups
with lag and ``--dead`` dead letters, written fast through the transport's batch append
(no handler runs 100,000 times).

Group ``gNN`` reads topics ``t(2·NN)`` and ``t(2·NN+1)`` (wrapping round), committed
half way: lag on every partition. The first group holds half the dead letters, the
others share the rest, so the dead-letter page is measured on one deep queue and the
overview sums many. Each entry is what a worker writes (:func:`tidings.dead_letters.new_entry`
of a record read back, with a real traceback), unresolved.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tidings.codec import encode
from tidings.dead_letters import DeadLetterLog, new_entry
from tidings.envelope import Event
from tidings.transport import Record, Transport

BATCH = 5_000  # records per append
TYPES = ("task.created", "task.assigned", "task.completed", "task.deleted")


@dataclass(frozen=True)
class Shape:
    topics: int = 100
    groups: int = 50
    dead: int = 100_000
    events_per_topic: int = 200
    partitions: int = 4

    def topic(self, n: int) -> str:
        return f"t{n % self.topics:03d}"

    def group(self, n: int) -> str:
        return f"g{n:02d}"

    def group_topics(self, n: int) -> tuple[str, str]:
        return self.topic(2 * n), self.topic(2 * n + 1)

    def dead_of(self, n: int) -> int:
        """How many dead letters group ``n`` holds: half in the first, the rest shared."""
        first = self.dead - (self.dead // 2 // max(self.groups - 1, 1)) * (self.groups - 1)
        return first if n == 0 else self.dead // 2 // max(self.groups - 1, 1)


def _event(topic: str, n: int) -> Event:
    kind = TYPES[n % len(TYPES)]
    return Event(
        type=kind, source="bench", subject=f"task-{n}", correlationid=f"req-{n // 3}",
        data={"task_id": f"task-{n}", "title": f"Task {n} on {topic}", "note": "x" * 120},
    )  # fmt: skip


def _failure(n: int) -> BaseException:
    """A raised error, so that the entry carries a real traceback."""
    error: BaseException = (TimeoutError if n % 3 else ConnectionError)(f"smtp: attempt {n}")
    try:
        raise error
    except BaseException as raised:
        return raised


async def _topics(transport: Transport, shape: Shape) -> None:
    for t in range(shape.topics):
        topic = shape.topic(t)
        await transport.create_topic(topic, shape.partitions)
        events = [_event(topic, n) for n in range(shape.events_per_topic)]
        await transport.append(topic, [(e.key, encode(e)) for e in events])


async def _lag(transport: Transport, shape: Shape) -> None:
    ends = {
        info.name: {p.partition: p.end for p in info.partitions}
        for info in await transport.topics()
    }
    for g in range(shape.groups):
        for topic in shape.group_topics(g):
            offsets = {p: end // 2 for p, end in ends[topic].items()}
            await transport.set_offsets(shape.group(g), topic, offsets)


async def _dead_letters(transport: Transport, shape: Shape, group: int) -> None:
    name = shape.group(group)
    dead = DeadLetterLog(transport, name)
    await dead.create_topics(shape.partitions)
    topic = shape.group_topics(group)[0]
    originals: list[Record] = []
    for p in range(shape.partitions):
        originals += await transport.read(topic, p, 0, shape.events_per_topic)
    errors = [_failure(n) for n in range(3)]
    count = shape.dead_of(group)
    for start in range(0, count, BATCH):
        batch = []
        for n in range(start, min(start + BATCH, count)):
            record = originals[n % len(originals)]
            entry = new_entry(
                name, record, errors[n % 3], reason="failed", max_value_bytes=None,
                attempts=3, handler="send", event_id=f"ev-{group}-{n}",
                event_type=TYPES[n % len(TYPES)], correlationid=f"req-{n // 3}",
            )  # fmt: skip
            batch.append((entry.key, entry.encode()))
        await transport.append(dead.topic, batch)


async def fill(transport: Transport, shape: Shape) -> float:
    """Write the log; return the seconds it took."""
    started = time.monotonic()
    await _topics(transport, shape)
    await _lag(transport, shape)
    for g in range(shape.groups):
        await _dead_letters(transport, shape, g)
    return time.monotonic() - started
