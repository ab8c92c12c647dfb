"""Operating a group's dead letters: list, replay, purge (the library behind
``tidings dlq``)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tidings.dead_letters.entry import DeadLetter, dlq_topic, replay_key
from tidings.dead_letters.log import DeadLetterLog
from tidings.errors import TopicNotFound
from tidings.shredding.fields import EXTENSION, Shredder, shown
from tidings.transport import Transport

__all__ = [
    "Filter",
    "depths",
    "open_log",
    "purge",
    "read_entry",
    "replay",
    "replay_plan",
    "shown_detail",
    "waiting",
]

log = logging.getLogger("tidings.dead_letters")


@dataclass(frozen=True)
class Filter:
    """Which entries an operator means. Empty fields match everything."""

    types: frozenset[str] = frozenset()
    error_types: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()  # entry ids or event ids
    since: float | None = None  # dead_at, Unix seconds
    until: float | None = None

    def __call__(self, entry: DeadLetter) -> bool:
        if self.types and entry.type not in self.types:
            return False
        if self.error_types and not (
            entry.error_type in self.error_types
            or entry.error_type.rsplit(".", 1)[-1] in self.error_types
        ):
            return False
        if self.ids and entry.entry not in self.ids and entry.event_id not in self.ids:
            return False
        if self.since is not None and entry.dead_at < self.since:
            return False
        return not (self.until is not None and entry.dead_at > self.until)


async def open_log(
    transport: Transport, group: str, *, resolved: bool = True, values: bool = True
) -> DeadLetterLog:
    """A group's dead letters, read in full (``resolved`` and ``values`` as
    :class:`DeadLetterLog` takes them); TopicNotFound if it never had a worker."""
    names = {info.name for info in await transport.topics()}
    if dlq_topic(group) not in names:
        groups = sorted(n[: -len(".dlq")] for n in names if n.endswith(".dlq"))
        raise TopicNotFound(
            f"group {group!r} has no dead-letter topic in {transport.url} (a worker creates "
            f"it when it first runs the group); groups with one: {', '.join(groups) or 'none'}"
        )
    dead = DeadLetterLog(transport, group, resolved=resolved, values=values)
    await dead.refresh()
    return dead


def replay_plan(dead: DeadLetterLog, where: Filter) -> tuple[list[DeadLetter], list[DeadLetter]]:
    """The matching ``dead`` entries a replay sends, in the order it sends them, and the
    ones it skips: truncated entries, whose original was not kept in full."""
    chosen = [e for e, s in dead.listing(where) if s == "dead"]
    # One key's entries in original order: a sequenced group replays its parked
    # events behind the one they waited for.
    chosen.sort(key=lambda e: (e.topic, e.partition, e.offset, e.dead_at))
    return [e for e in chosen if e.replayable], [e for e in chosen if not e.replayable]


async def replay(
    transport: Transport,
    group: str,
    where: Filter,
    *,
    batch: int = 500,
    progress: Any = None,
) -> int:
    """Send what :func:`replay_plan` chooses to ``group``'s retry topic, in order, then
    mark it replayed; return how many. Entries already replayed, resolved or purged
    are left alone, so running it twice replays each entry once. If this is
    interrupted between sending and marking, a second run sends those again; the worker
    skips an entry it has already resolved, and an inbox removes what remains."""
    dead = await open_log(transport, group, resolved=False)
    chosen, cut = replay_plan(dead, where)
    if cut:
        log.warning(
            "group %s: %d truncated dead letter(s) not replayed (their original was not "
            "kept in full), e.g. %s",
            group, len(cut), cut[0].entry,
        )  # fmt: skip
    stop = asyncio.Event()
    if chosen:  # the retry topic, if it is missing, sized from the entries' topics
        origins = {e.topic for e in chosen}
        counts = [len(t.partitions) for t in await transport.topics() if t.name in origins]
        await dead.create_topics(max(counts, default=1))
    done = 0
    for start in range(0, len(chosen), batch):
        part = chosen[start : start + batch]
        await transport.append(dead.retry_topic, [(replay_key(e), e.encode()) for e in part])
        await dead.mark("replayed", [e.entry for e in part], stop)
        done += len(part)
        if progress is not None:
            progress(done, len(chosen))
    return done


async def purge(transport: Transport, group: str, where: Filter) -> int:
    """Mark the matching unresolved entries purged; return how many."""
    dead = await open_log(transport, group, resolved=False, values=False)
    chosen = [e.entry for e in dead.matching(where)]
    stop = asyncio.Event()
    for start in range(0, len(chosen), 1000):
        await dead.mark("purged", chosen[start : start + 1000], stop)
    return len(chosen)


async def depths(transport: Transport, groups: Iterable[str]) -> dict[str, int]:
    """Per group, the entries waiting in its dead-letter topic (0 if it has none)."""
    return {group: sum(by.values()) for group, by in (await waiting(transport, groups)).items()}


async def waiting(
    transport: Transport,
    groups: Iterable[str],
    logs: dict[str, DeadLetterLog] | None = None,
    *,
    resolved: bool = False,
) -> dict[str, Counter[tuple[str, int]]]:
    """Per group, the entries waiting for an operator (state ``dead``) by the topic and
    partition their event was read from (empty if the group has no dead-letter topic).

    ``logs``: the groups' logs kept from an earlier call, refreshed (only what is new is
    read) and completed; a caller that looks again and again (the dashboard) keeps it.
    ``resolved``: the logs made here keep resolved entries too (see
    :class:`DeadLetterLog`), for a caller that lists them from the same logs."""
    names = {info.name for info in await transport.topics()}
    result: dict[str, Counter[tuple[str, int]]] = {}
    kept = {} if logs is None else logs
    for group in groups:
        result[group] = Counter()
        if dlq_topic(group) not in names:
            kept.pop(group, None)  # deleted: a new topic of that name starts again
            continue
        dead = kept.get(group)
        if dead is None:
            dead = kept[group] = DeadLetterLog(transport, group, resolved=resolved, values=False)
        await dead.refresh()
        result[group] = dead.waiting()
    return result


async def read_entry(transport: Transport, entry: DeadLetter) -> DeadLetter:
    """``entry`` in full (its original and traceback), read back from its place in the
    group's dead-letter topic: for a log kept with ``values=False``."""
    if entry.dlq_offset < 0:
        return entry
    records = await transport.read(dlq_topic(entry.group), entry.dlq_partition, entry.dlq_offset, 1)
    if not records or records[0].offset != entry.dlq_offset:
        return entry  # gone (the topic was deleted meanwhile): what is kept is all there is
    return DeadLetter.from_bytes(
        records[0].value, partition=entry.dlq_partition, offset=entry.dlq_offset
    )


def shown_detail(doc: dict[str, Any], reveal: Shredder | None) -> dict[str, Any]:
    """``doc`` (a :meth:`DeadLetter.detail`) with its event's personal fields masked, or
    opened with ``reveal``."""
    event = doc["event"]
    if event is not None and EXTENSION in event and "data" in event:
        doc["event"] = {**event, "data": shown(event["id"], event["data"], reveal)}
    return doc
