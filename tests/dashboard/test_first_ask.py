"""The first pages after start on a log whose slow parts are not read yet (issue 23,
decision 0046): they answer at once, say "counting..." or "reading..." where a figure
is not read yet, and show the real figures once the reading at start is done; the
reading waits while a page is answered."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import tidings.catalog
from tests.dashboard.conftest import Client, Seeded
from tests.dashboard.test_kept import MAIL, live_frame
from tests.dashboard.test_pages import cell
from tidings import dashboard, dead_letters
from tidings.dashboard.background import Gate, mark_background

READING = "reading..."


def held(
    monkeypatch: pytest.MonkeyPatch, module: Any, name: str, gate: asyncio.Event
) -> asyncio.Event:
    """``module.name`` (as the reading at start imports it) waits for ``gate``; the
    event returned is set when it is first called."""
    plain = getattr(module, name)
    called = asyncio.Event()

    async def waits(*args: Any, **kwargs: Any) -> Any:
        called.set()
        await gate.wait()
        return await plain(*args, **kwargs)

    monkeypatch.setattr(module, name, waits)
    return called


async def test_first_pages_say_reading_then_show_the_figures(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts, scan = asyncio.Event(), asyncio.Event()  # the seams: nothing read until set
    held(monkeypatch, dead_letters, "waiting", counts)
    scanning = held(monkeypatch, tidings.catalog, "build_catalog", scan)
    client = Client(dashboard.app(seeded.url))
    board = client.app.state.dashboard
    lists = "/groups/mail/dead-letters"
    trace = f"/trace?id={seeded.correlation}"
    try:
        board.start_counting()
        overview = await client.get("/")
        assert overview.status_code == 200, overview.text
        assert cell(overview.text, MAIL, "dlq") == "counting..."
        assert cell(overview.text, MAIL, "lag") == "3"  # the rest is there at once
        for path, key in [("/catalog", "catalog"), (lists, "dead-letter list mail"),
                          (trace, "dead-letter lists")]:  # fmt: skip
            page = await client.get(path)
            assert page.status_code == 200, page.text
            assert READING in page.text, path
            assert f'data-reading="{key}"' in page.text  # reloaded when no longer read
        frame = await live_frame(client)
        assert {"catalog", "dead-letter lists", "dead-letter list mail"} <= set(frame["reading"])

        counts.set()  # the counts are read; the catalog's scan is still held
        await asyncio.wait_for(scanning.wait(), timeout=60)  # the counting is over
        assert cell((await client.get("/")).text, MAIL, "dlq") == "4"
        assert READING in (await client.get("/catalog")).text
        assert "catalog" in (await live_frame(client))["reading"]

        scan.set()
        await asyncio.wait_for(board.counted_all(), timeout=60)
        assert (await live_frame(client))["reading"] == []
        catalog = await client.get("/catalog")
        assert READING not in catalog.text
        assert 'data-type="note.added"' in catalog.text
        listing = await client.get(lists)
        assert READING not in listing.text
        assert listing.text.count("<tr data-entry=") == 4
        assert 'class="trace-node"' in (await client.get(trace)).text
    finally:
        counts.set()
        scan.set()
        await client.close()


async def test_the_background_reads_only_while_no_page_is_answered() -> None:
    gate = Gate()
    steps: list[str] = []
    stepped = asyncio.Event()

    async def background() -> None:
        mark_background()
        for n in range(3):
            await gate.turn()
            steps.append(f"read {n}")
            stepped.set()
            await asyncio.sleep(0)

    gate.begin()  # a page is being answered
    task = asyncio.create_task(background())
    for _ in range(20):
        await asyncio.sleep(0)
    assert steps == []
    async with gate.wanting():  # the page waits for the background's work: it goes on
        await asyncio.wait_for(stepped.wait(), timeout=30)
    steps.clear()
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(steps) <= 1  # at most the step under way when the page stopped waiting
    gate.end()
    await asyncio.wait_for(task, timeout=30)
    await gate.turn()  # not in the background: never waits
