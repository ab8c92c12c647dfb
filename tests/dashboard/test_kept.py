"""What the dashboard keeps between looks so that a big log's pages stay fast (issue
23): the dead letters counted in the background at start, the trace page's tracers."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from typing import Any

import pytest

from tests.dashboard.conftest import Client, Seeded, make_app
from tests.dashboard.test_pages import cell, cli_json
from tests.test_dlq_cli import Note
from tidings import dashboard, dead_letters
from tidings.trace import DEFAULT_SCAN

MAIL = 'data-group="mail" data-topic="notes"'


async def live_frame(client: Client) -> dict[str, Any]:
    answer = await client.get("/live", params={"frames": 1})
    [frame] = [line for line in answer.text.splitlines() if line.startswith("data: ")]
    doc: dict[str, Any] = json.loads(frame.removeprefix("data: "))
    return doc


async def test_the_first_pages_say_counting_until_the_dead_letters_are_read(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = asyncio.Event()  # the counting at start reads nothing until it is set
    plain = dead_letters.waiting

    async def held(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await plain(*args, **kwargs)

    monkeypatch.setattr(dead_letters, "waiting", held)
    client = Client(dashboard.app(seeded.url))
    board = client.app.state.dashboard
    try:
        board.start_counting()
        page = await client.get("/")  # answered while the counting waits
        assert page.status_code == 200, page.text
        assert cell(page.text, MAIL, "dlq") == "counting..."
        assert cell(page.text, MAIL, "lag") == "3"
        group = await client.get("/groups/mail")
        assert group.status_code == 200, group.text
        assert "counting..." in group.text
        frame = await live_frame(client)
        assert [g["dlq"] for g in frame["groups"] if g["group"] == "mail"] == [None]
        assert frame["depth"] == {}

        gate.set()
        await asyncio.wait_for(board.counted_all(), timeout=60)
        assert board.counted == {"mail", "audit"}
        assert set(board.dead_logs) == {"mail", "audit"}  # the list pages read them too
        page = await client.get("/")
        assert cell(page.text, MAIL, "dlq") == "4"
        assert "counting..." not in (await client.get("/groups/mail")).text
        assert (await live_frame(client))["depth"] == {"mail": 4}
    finally:
        gate.set()
        await client.close()


async def test_a_trace_looked_at_again_reads_on_and_shows_what_came_since(
    client: Client, seeded: Seeded
) -> None:
    def shown(page: str) -> list[str]:
        tree = page[page.index('id="trace-tree"') : page.index('id="trace-timeline"')]
        return re.findall(r'class="trace-node" data-event-id="([^"]+)"', tree)

    first = shown((await client.get("/trace", params={"id": seeded.correlation})).text)
    assert len(first) == 4
    board = client.app.state.dashboard
    assert list(board.tracers) == [(seeded.correlation, DEFAULT_SCAN)]
    app = make_app(seeded.url)
    async with app:
        await app.publish("notes", Note(note_id="late", n=20), correlation_id=seeded.correlation)
    again = shown((await client.get("/trace", params={"id": seeded.correlation})).text)
    doc = cli_json("trace", seeded.correlation, url=seeded.url)
    assert again == [root["id"] for root in doc["roots"]]
    assert len(again) == 5
    assert set(first) < set(again)


async def test_the_reading_at_start_reads_each_dead_letter_once(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counts, the list pages and the trace share one log per group: each record of
    a dead-letter topic is read once at start (it was read twice: for the counts, then
    for the lists), and the list page reads nothing again."""
    client = Client(dashboard.app(seeded.url))
    board = client.app.state.dashboard
    transport = await board.transport()
    plain = type(transport).read
    got: Counter[str] = Counter()

    async def read(self: Any, topic: str, *args: Any, **kwargs: Any) -> Any:
        records = await plain(self, topic, *args, **kwargs)
        got[topic] += len(records)
        return records

    monkeypatch.setattr(type(transport), "read", read)
    try:
        board.start_counting()
        await asyncio.wait_for(board.counted_all(), timeout=60)
        held = {
            info.name: n
            for info in await transport.topics()
            if info.name.endswith(".dlq") and (n := sum(p.end - p.start for p in info.partitions))
        }
        assert held == {"mail.dlq": 4}
        assert {topic: n for topic, n in got.items() if topic.endswith(".dlq") and n} == held
        listing = await client.get("/groups/mail/dead-letters")
        assert listing.text.count("<tr data-entry=") == 4
        assert got["mail.dlq"] == 4
    finally:
        await client.close()
