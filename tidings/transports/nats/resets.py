"""Offset resets of a group (``set_offsets``): its durable consumers restarted at the
new positions; forced while members are live, after fencing them.

A forced reset (finding 2 of issue 15) puts a reset marker in each partition's lease
key, which no member claims, and waits until each live former holder has let go
(dropped the partition, its worker's lanes and their commits; it says so in the
marker), or a lease length has passed since the marker was put (it cannot renew: it
fenced itself). Without this, a live member's acks of what it held before the reset
would move the group again. Members then claim the partitions under a new lease
generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping

import orjson

from tidings.errors import ConfigError, GroupBusy, TransportError
from tidings.transports.nats.groups import GroupClient, consumer_name, lease_holder, reset_marker

__all__ = ["set_offsets"]


async def set_offsets(
    groups: GroupClient, group: str, topic: str, offsets: Mapping[int, int], *, force: bool
) -> None:
    count = await groups.streams.partitions_of(topic)
    live = [
        k
        for k, (_, value) in (await groups.entries(group)).items()
        if k.startswith(f"{group}.m.") and value is not None
    ]
    if live and not force:
        raise GroupBusy(
            f"group {group!r} has {len(live)} live member(s); stop its workers first, "
            "or force the change"
        )
    for p in offsets:
        if not 0 <= p < count:
            raise ConfigError(f"topic {topic!r} has no partition {p} (it has {count})")
    markers = await _take_leases(groups, group, topic, sorted(offsets)) if force else {}
    try:
        for p, offset in sorted(offsets.items()):
            await groups.ensure_consumer(group, topic, p, "earliest")
            await groups.reset_consumer(topic, consumer_name(group, p), max(offset, 0) + 1)
    finally:
        for key, (seq, _) in markers.items():  # the members claim them again at once
            with contextlib.suppress(TransportError):
                await groups.put_entry(key, b"", ttl=groups.config.lease, expect=seq, delete=True)


async def _take_leases(
    groups: GroupClient, group: str, topic: str, partitions: list[int]
) -> dict[str, tuple[int, bytes]]:
    """Fence live members before a forced reset: put a reset marker in each
    partition's lease key, wait for their holders to let go, and put the markers
    again. Returns each marker's key, sequence and value, to delete once the
    consumers are reset."""
    await groups.ensure_bucket()
    token = uuid.uuid4().hex
    entries = await groups.entries(group)
    live = {
        k[len(group) + 3 :]
        for k, (_, v) in entries.items()
        if k.startswith(f"{group}.m.") and v is not None
    }
    markers: dict[str, tuple[int, bytes]] = {}
    waiting: set[str] = set()
    for p in partitions:
        key = f"{group}.l.{topic}.{p}"
        for _ in range(100):
            seq, value = entries.get(key, (0, None))
            held = reset_marker(value)
            holder = held.get("member") if held is not None else lease_holder(value)
            marker = orjson.dumps({"reset": token, "member": holder, "fenced": False})
            put = await groups.put_entry(key, marker, expect=seq)
            if put is not None:
                markers[key] = (put, marker)
                if holder in live:
                    waiting.add(key)
                break
            entries = await groups.entries(group)  # changed meanwhile: again
        else:
            raise TransportError(
                f"{groups.url}: the lease of {topic}[{p}] in group {group!r} kept changing; "
                "try the reset again"
            )
    await _wait_fenced(groups, group, token, waiting)
    await _put_again(groups, group, token, markers)
    return markers


async def _wait_fenced(groups: GroupClient, group: str, token: str, waiting: set[str]) -> None:
    """Until each lease key of ``waiting`` says its former holder let go (``fenced``),
    or a lease length has passed."""
    since = groups.clock.monotonic()
    while waiting and groups.clock.monotonic() - since < groups.config.lease:
        await asyncio.sleep(0.02)
        entries = await groups.entries(group)
        for key in list(waiting):
            _, value = entries.get(key, (0, None))
            doc = reset_marker(value)
            if doc is not None and doc.get("reset") == token and doc.get("fenced"):
                waiting.discard(key)


async def _put_again(
    groups: GroupClient, group: str, token: str, markers: dict[str, tuple[int, bytes]]
) -> None:
    """Put each marker again, so that no member judges one expired (unchanged for a
    lease of its own clock) while the consumers are reset."""
    entries = await groups.entries(group)
    for key in list(markers):
        seq, value = entries.get(key, (0, None))
        doc = reset_marker(value)
        if doc is None or doc.get("reset") != token:
            raise TransportError(
                f"{groups.url}: a member took {key!r} during the forced reset (it waited "
                "past a lease); try the reset again"
            )
        put = await groups.put_entry(key, value or b"", expect=seq)
        if put is None:
            raise TransportError(f"{groups.url}: {key!r} changed during the reset; try again")
        markers[key] = (put, value or b"")
