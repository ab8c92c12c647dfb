"""Every page renders with real data, and shows what the command line's JSON says."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import httpx

from tests.dashboard.conftest import Client, Seeded
from tests.test_cli import tidings
from tidings import dashboard


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


def cli_json(*args: str, url: str) -> Any:
    result = tidings(*args, "--json", url=url)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_topics_show_what_tidings_topics_json_says(client: Client, seeded: Seeded) -> None:
    page = (await client.get("/?all=1")).text
    for t in cli_json("topics", url=seeded.url):
        row = f'data-topic="{t["topic"]}"'
        assert cell(page, row, "partitions") == str(len(t["partitions"]))
        assert cell(page, row, "events") == str(t["events"])
        assert f'data-bytes="{t["bytes"]}"' in page
        assert cell(page, row, "ends") == ",".join(str(p["end"]) for p in t["partitions"])
    shown = (await client.get("/")).text
    assert 'data-topic="notes"' in shown
    assert 'data-topic="mail.dlq"' not in shown  # the log's own only with all=1


async def test_group_partitions_show_what_groups_partitions_json_says(
    client: Client, seeded: Seeded
) -> None:
    page = (await client.get("/groups/mail")).text
    rows = cli_json("groups", "mail", "--partitions", "--all", url=seeded.url)
    assert rows
    for r in rows:
        row = f'data-topic="{r["topic"]}" data-partition="{r["partition"]}"'
        committed = "-" if r["committed"] is None else str(r["committed"])
        assert cell(page, row, "committed") == committed
        for field in ("end", "lag", "lost", "dlq"):
            assert cell(page, row, field) == str(r[field]), (r, field)
    assert 'class="lag-chart" data-topic="notes"' in page


async def test_dead_letters_list_shows_what_dlq_list_json_says_and_pages(
    seeded: Seeded,
) -> None:
    entries = cli_json("dlq", "list", "mail", url=seeded.url)
    assert len(entries) == 4
    c = Client(dashboard.app(seeded.url, page_size=3))
    try:
        first = (await c.get("/groups/mail/dead-letters")).text
        second = (await c.get("/groups/mail/dead-letters", params={"page": 2})).text
        assert 'data-page="1" data-pages="2"' in first
        assert 'rel="next"' in first
        assert 'rel="prev"' in second
        shown = re.findall(r'<tr data-entry="([^"]+)"', first + second)
        assert shown == [e["entry"] for e in entries]  # in order, each once
        assert re.search(r'id="dlq-depth"[^>]*>4<', first)
        odd = await c.get("/groups/mail/dead-letters", params={"error_type": "OSError"})
        want = [e["entry"] for e in entries if e["error_type"].endswith("OSError")]
        assert re.findall(r'<tr data-entry="([^"]+)"', odd.text) == want
        assert 'name="error_type" value="OSError"' in odd.text
    finally:
        await c.close()


async def test_an_entry_shows_its_error_traceback_and_payload(
    client: Client, seeded: Seeded
) -> None:
    [entry, *_] = cli_json("dlq", "list", "mail", url=seeded.url)
    shown = cli_json("dlq", "show", "mail", entry["entry"], url=seeded.url)
    page = (await client.get(f"/groups/mail/dead-letters/{entry['entry']}")).text
    assert shown["error_message"] in page
    assert "Traceback" in page
    assert html.escape(shown["traceback"].strip().splitlines()[-1], quote=False) in page
    payload = re.search(r'<pre id="entry-payload" class="json">(.*?)</pre>', page, re.S)
    assert payload
    assert json.loads(html.unescape(payload.group(1))) == shown["event"]
    by_event = await client.get(f"/groups/mail/dead-letters/{entry['event_id']}")
    assert by_event.status_code == 200


async def test_events_browse_search_and_copy_as_publish_input(
    client: Client, seeded: Seeded
) -> None:
    tailed = [
        json.loads(line)
        for line in tidings("tail", "notes", "--json", url=seeded.url).stdout.splitlines()
    ]
    page = (await client.get("/events/notes")).text
    assert re.findall(r'data-event-id="([^"]+)"', page) == [e["id"] for e in tailed]
    wanted = tailed[5]
    found = (await client.get("/events/notes", params={"id": wanted["id"]})).text
    assert re.findall(r'<li class="event" data-event-id="([^"]+)"', found) == [wanted["id"]]
    line = re.search(r'<textarea[^>]*class="publish-line"[^>]*>(.*?)</textarea>', found, re.S)
    assert line
    assert json.loads(html.unescape(line.group(1))) == {
        "type": "note.added", "data": wanted["data"], "subject": wanted["subject"],
        **{k: wanted[k] for k in ("correlationid", "dataversion") if k in wanted},
    }  # fmt: skip
    subject = (await client.get("/events/notes", params={"subject": "n-2"})).text
    assert len(re.findall(r'<li class="event"', subject)) == 1
    correlated = (await client.get("/events/notes", params={"correlation": "req-seeded"})).text
    assert len(re.findall(r'<li class="event"', correlated)) == 4
    paged = (await client.get("/events/notes", params={"limit": 4})).text
    more = re.search(r'<a rel="next" href="([^"]+)"', paged)
    assert more
    rest = (await client.get(html.unescape(more.group(1)))).text
    ids = re.findall(r'<li class="event" data-event-id="([^"]+)"', paged + rest)
    assert ids == [e["id"] for e in tailed]


async def test_trace_shows_the_tree_tidings_trace_json_gives(
    client: Client, seeded: Seeded
) -> None:
    doc = cli_json("trace", seeded.correlation, url=seeded.url)
    page = (await client.get("/trace", params={"id": seeded.correlation})).text

    def ids(node: dict[str, Any]) -> list[str]:
        return [node["id"], *[i for c in node["children"] for i in ids(c)]]

    expected = [i for root in doc["roots"] for i in ids(root)]
    tree = page[page.index('id="trace-tree"') : page.index('id="trace-timeline"')]
    assert re.findall(r'class="trace-node" data-event-id="([^"]+)"', tree) == expected
    assert f'data-events="{len(expected)}"' in page
    statuses = [
        (g["group"], g["status"]) for root in doc["roots"] for g in root["groups"]
    ]  # the seeded notes are the roots: nothing caused them
    assert len(statuses) == 8
    for group, status in statuses:
        assert f'data-group="{group}" data-status="{status}"' in tree


async def test_every_event_type_shown_links_to_the_catalog(client: Client) -> None:
    for path in ("/events/notes", "/groups/mail/dead-letters", "/catalog"):
        page = (await client.get(path)).text
        assert 'class="event-type" data-type="note.added" href="/catalog/note.added"' in page
    event = (await client.get("/catalog/note.added")).text
    assert 'id="event-type" data-type="note.added"' in event
    assert 'data-group="mail"' in event


async def test_live_updates_carry_the_groups_json(client: Client, seeded: Seeded) -> None:
    answer = await client.get("/live", params={"frames": 1})
    assert answer.headers["content-type"].startswith("text/event-stream")
    [frame] = [line for line in answer.text.splitlines() if line.startswith("data: ")]
    doc = json.loads(frame.removeprefix("data: "))
    lines = cli_json("groups", url=seeded.url)
    keep = ("group", "topic", "lag", "dlq", "status", "partitions")
    assert [{k: x[k] for k in keep} for x in doc["groups"]] == [
        {k: x[k] for k in keep} for x in lines
    ]
    assert doc["depth"] == {"mail": 4}


async def test_mounted_in_a_fastapi_service_its_links_and_cookies_stay_under_the_mount(
    seeded: Seeded,
) -> None:
    from fastapi import FastAPI

    api = FastAPI()
    ops = dashboard.app(seeded.url)
    api.mount("/ops", ops)
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        page = await c.get("/ops/groups/mail")
        assert page.status_code == 200
        assert "Path=/ops;" in page.headers["set-cookie"]
        links = re.findall(r'(?:href|src|action)="(/[^"]*)"', page.text)
        assert links
        assert all(link.startswith("/ops/") for link in links), links
        assert (await c.get("/ops/static/dashboard.js")).status_code == 200
        fields = {"to": "earliest", "csrf": c.cookies["tidings_csrf"]}
        preview = await c.post("/ops/groups/audit/reset", data=fields)
        assert 'id="reset-preview"' in preview.text
    await ops.state.dashboard.close()
