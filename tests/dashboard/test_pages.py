"""Every page renders with real data, and shows what the command line's JSON says."""

from __future__ import annotations

import json
import re

from tests.dashboard.conftest import Client, Seeded
from tests.test_cli import tidings


def cell(html: str, row: str, field: str) -> str:
    """The text of ``[data-field=field]`` in the table row whose attributes match ``row``."""
    found = re.search(rf"<tr {re.escape(row)}[^>]*>(.*?)</tr>", html, re.S)
    assert found, f"no row {row}"
    value = re.search(rf'data-field="{field}"[^>]*>(.*?)</td>', found.group(1), re.S)
    assert value, f"no {field} in row {row}"
    return re.sub(r"<[^>]+>", "", value.group(1)).strip()


async def test_overview_shows_what_tidings_groups_json_says(client: Client, seeded: Seeded) -> None:
    page = await client.get("/")
    assert page.status_code == 200, page.text
    result = tidings("groups", "--json", url=seeded.url)
    assert result.returncode == 0, result.stderr
    lines = json.loads(result.stdout)
    assert {(x["group"], x["topic"]) for x in lines} == {("audit", "notes"), ("mail", "notes")}
    for x in lines:
        row = f'data-group="{x["group"]}" data-topic="{x["topic"]}"'
        for field in ("partitions", "lag", "lost", "dlq", "status"):
            assert cell(page.text, row, field) == str(x[field]), (x, field)
        assert cell(page.text, row, "health") == (x["health"] or "-")


async def test_every_page_renders(client: Client, seeded: Seeded) -> None:
    listing = await client.get("/groups/mail/dead-letters")
    assert listing.status_code == 200, listing.text
    entry = re.search(r'data-entry="([^"]+)"', listing.text)
    assert entry
    for path in (
        "/",
        "/?all=1",
        "/groups/mail",
        "/groups/audit",
        "/groups/mail/dead-letters?all=1",
        f"/groups/mail/dead-letters/{entry.group(1)}",
        "/events",
        "/events/notes",
        "/trace",
        f"/trace?id={seeded.correlation}",
        "/catalog",
        "/catalog/note.added",
        "/actions",
    ):
        page = await client.get(path)
        assert page.status_code == 200, (path, page.text)
