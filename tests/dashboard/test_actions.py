"""Replaying, purging and resetting from the dashboard: a confirmation first, then the
change the command line sees, recorded as an event on ``_tidings.admin``."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.dashboard.conftest import Client, Seeded, make_app
from tests.dashboard.test_safety import lag, waiting
from tests.test_cli import tidings
from tidings.admin import ADMIN_ACTION_TYPE, ADMIN_TOPIC
from tidings.testing import eventually, running


def admin_events(url: str) -> list[dict[str, Any]]:
    result = tidings("tail", ADMIN_TOPIC, "--json", url=url)
    if result.returncode == 1 and "does not exist" in result.stderr:
        return []  # nothing was ever recorded
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


async def test_replay_by_filter_asks_then_replays_with_progress_and_is_recorded(
    client: Client, seeded: Seeded
) -> None:
    ask = await client.post("/groups/mail/dead-letters/replay", {"scope": "filter"})
    assert ask.status_code == 200
    assert 'data-action="replay" data-count="4"' in ask.text
    assert waiting(seeded.url) == 4  # the first step changes nothing
    done = await client.post(
        "/groups/mail/dead-letters/replay",
        {"scope": "filter", "confirm": "yes", "operator": "ada"},
    )
    assert done.status_code == 303
    job = done.headers["location"]
    assert re.fullmatch(r"/jobs/\d+", job)

    async def finished() -> bool:
        doc = (await client.get(job, params={"format": "json"})).json()
        return bool(doc["finished"])

    await eventually(finished, what="the replay job finished")
    doc = (await client.get(job, params={"format": "json"})).json()
    assert doc == {**doc, "done": 4, "total": 4, "error": None}
    page = await client.get(job)
    assert 'data-finished="yes"' in page.text
    assert waiting(seeded.url) == 0
    listed = json.loads(tidings("dlq", "list", "mail", "--all", "--json", url=seeded.url).stdout)
    assert {e["state"] for e in listed} == {"replayed"}
    [event] = admin_events(seeded.url)
    assert event["type"] == ADMIN_ACTION_TYPE
    assert event["data"] == {**event["data"], "action": "replay", "target": "mail", "count": 4}
    assert event["data"]["who"] == "ada (127.0.0.1)"
    overview = await client.get("/")
    assert f'data-event-id="{event["id"]}"' in overview.text


async def test_purge_of_a_selection_confirms_then_purges_only_it(
    client: Client, seeded: Seeded
) -> None:
    listing = await client.get("/groups/mail/dead-letters")
    first = re.findall(r'<tr data-entry="([^"]+)" data-state="dead"', listing.text)[0]
    fields = {"scope": "selected", "id": first}
    ask = await client.post("/groups/mail/dead-letters/purge", fields)
    assert 'data-action="purge" data-count="1"' in ask.text
    assert waiting(seeded.url) == 4
    done = await client.post("/groups/mail/dead-letters/purge", {**fields, "confirm": "yes"})
    assert done.status_code == 200
    assert 'id="action-done"' in done.text
    assert 'data-count="1"' in done.text
    listed = json.loads(tidings("dlq", "list", "mail", "--all", "--json", url=seeded.url).stdout)
    assert {e["entry"]: e["state"] for e in listed}[first] == "purged"
    assert waiting(seeded.url) == 3
    [event] = admin_events(seeded.url)
    assert event["data"]["action"] == "purge"
    assert event["data"]["count"] == 1


async def test_reset_previews_what_would_be_replayed_then_resets(
    client: Client, seeded: Seeded
) -> None:
    assert lag(seeded.url) == {"audit": 3, "mail": 3}
    preview = await client.post("/groups/audit/reset", {"to": "earliest", "topic": "notes"})
    assert preview.status_code == 200
    assert 'data-done="no"' in preview.text
    effects = re.findall(r'data-field="effect">([^<]*)<', preview.text)
    assert sum(int(e.split()[0]) for e in effects if "handled again" in e) == 4
    dry = json.loads(
        tidings("offsets", "reset", "audit", "--to", "earliest", "--dry-run", "--json",
                url=seeded.url).stdout
    )  # fmt: skip
    shown = re.findall(r'data-field="old">([^<]*)</td><td data-field="new">([^<]*)<', preview.text)
    assert [(str(c["old"]), str(c["new"])) for c in dry] == shown
    assert lag(seeded.url) == {"audit": 3, "mail": 3}  # a preview changes nothing
    done = await client.post(
        "/groups/audit/reset", {"to": "earliest", "topic": "notes", "confirm": "yes"}
    )
    assert 'id="reset-done"' in done.text
    assert lag(seeded.url) == {"audit": 7, "mail": 3}
    [event] = admin_events(seeded.url)
    assert event["data"]["action"] == "reset"
    assert event["data"]["target"] == "audit"
    assert event["data"]["detail"] == "to earliest on notes"


async def test_reset_is_refused_while_the_group_has_live_members(
    client: Client, seeded: Seeded
) -> None:
    app = make_app(seeded.url)
    async with app, running(app):

        async def live() -> bool:
            result = tidings("groups", "audit", "--json", url=seeded.url)
            return bool(json.loads(result.stdout)[0]["members"])

        await eventually(live, what="audit's worker joined")
        refused = await client.post("/groups/audit/reset", {"to": "latest", "confirm": "yes"})
        assert refused.status_code == 409
        assert "live member" in refused.text
    assert admin_events(seeded.url) == []
