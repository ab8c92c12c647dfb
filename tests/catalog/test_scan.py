"""The catalog's scan kept between calls (tidings.catalog.scan.Kept, as the dashboard
keeps it): each scan reads only what was appended since the last one, and finds what a
fresh scan of the same log finds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tidings.catalog.scan import Kept, Observed, scan
from tidings.codec import encode
from tidings.envelope import Event
from tidings.transport import Record, Transport
from tidings.transports import open_transport


async def append(transport: Transport, topic: str, start: int, n: int) -> None:
    """``n`` events: task.created ``start..``, each followed by the reminder it caused,
    in another topic; then one record that is no event."""
    created = [Event(type="task.created", source="tasks", subject=f"t-{i}", data={"i": i})
               for i in range(start, start + n)]  # fmt: skip
    reminders = [
        Event(type="task.reminder_due", source="reminders", subject=c.subject, data={},
              causationid=c.id, dataversion=2)
        for c in created
    ]  # fmt: skip
    await transport.append(topic, [(e.key, encode(e)) for e in created])
    await transport.append(f"{topic}-reminders", [(e.key, encode(e)) for e in reminders])
    await transport.append(topic, [("k", b"not an event")])


def summary(seen: Observed) -> dict[str, Any]:
    return {
        "flows": dict(seen.flows),
        "examples": {k: e.id for k, e in seen.examples.items()},
        "producers": {k: (p.count, p.versions, p.last) for k, p in seen.producers.items()},
        "scanned": seen.scanned,
        "undecodable": seen.undecodable,
    }


async def test_a_kept_scan_reads_only_what_is_new_and_finds_what_a_fresh_scan_finds(
    tmp_path: Path,
) -> None:
    transport = open_transport(f"sqlite:///{tmp_path / 'events.db'}")
    await transport.start()
    read: list[Record] = []
    plain_read = transport.read

    async def counted(topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        records = await plain_read(topic, partition, offset, limit)
        read.extend(records)
        return records

    try:
        for topic in ("tasks", "tasks-reminders"):
            await transport.create_topic(topic, 3)
        await append(transport, "tasks", 0, 20)
        transport.read = counted  # type: ignore[method-assign]
        kept = Kept()
        first = await scan(transport, limit=15, kept=kept)
        assert summary(first) == summary(await scan(transport, limit=15))
        assert first.scanned == {"tasks": 15, "tasks-reminders": 15}
        assert first.undecodable == 1

        # Nothing new: the same result, nothing read.
        read.clear()
        assert await scan(transport, limit=15, kept=kept) is first
        assert read == []

        # 12 more events and their reminders: only those (and the odd record) are read,
        # and the window of the newest 15 has moved on as a fresh scan's has.
        await append(transport, "tasks", 20, 12)
        read.clear()
        again = await scan(transport, limit=15, kept=kept)
        assert len(read) == 12 + 12 + 1
        fresh = await scan(transport, limit=15)
        assert summary(again) == summary(fresh)
        assert again.flows == fresh.flows
        assert sum(again.flows.values()) > 0

        # A larger window than what is kept: read afresh, the same as a fresh scan.
        wider = await scan(transport, limit=40, kept=kept)
        assert summary(wider) == summary(await scan(transport, limit=40))
        assert wider.scanned == {"tasks": 34, "tasks-reminders": 32}
    finally:
        await transport.close()
