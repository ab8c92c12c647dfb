"""The dashboard in a real browser (Debian's Chromium under Playwright), on a log a real
worker filled (seed_app.py): each page shows what the CLI's ``--json`` says, a dead
letter is replayed by clicking through its confirmation, and the lag of a group goes
to zero live, over server-sent events, while a worker drains it.

The tests share one log and one dashboard per test process; those that change the log
(the replay, the drain) touch a group each that no other test counts on, and the
comparisons read the CLI and the page at the same moment.
"""

from __future__ import annotations

import contextlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from devservers._process import stop
from tests.dashboard.browser.seed_app import CORRELATION, WAITING, drain
from tests.debian import APT_TIMEOUT
from tidings.cli import main

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.integration, pytest.mark.timeout(APT_TIMEOUT * 2 + 300)]

LIVE_TIMEOUT_MS = 120_000  # a worker starting and draining on a loaded machine


def cli(url: str, *args: str) -> Any:
    """``tidings ARGS --json --url URL``'s document (or list of documents, one a line),
    run in this process (a thread: Playwright's synchronous API runs a loop in this
    one) to spare the suite a Python start per look."""
    out = io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out):
            return main([*args, "--json", "--url", url])

    with ThreadPoolExecutor(1) as thread:
        assert thread.submit(run).result() == 0, out.getvalue()
    text = out.getvalue()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines()]


def fields(page: Page, rows: str, keys: tuple[str, ...], names: tuple[str, ...]) -> dict:
    """``{(row's data-KEY, ...): (text of [data-field=NAME], ...)}`` of the rows that
    ``rows`` selects."""
    found = page.eval_on_selector_all(
        rows,
        """(rows, [keys, names]) => rows.map(row => [
             keys.map(k => row.dataset[k]),
             names.map(n => row.querySelector(`[data-field="${n}"]`).textContent.trim())])""",
        [list(keys), list(names)],
    )
    return {tuple(key): tuple(shown) for key, shown in found}


def test_the_overview_shows_the_groups_and_topics_as_the_cli_does(
    page: Page, dashboard: str, seeded_url: str
) -> None:
    page.goto(dashboard + "/")
    groups = cli(seeded_url, "groups")
    shown = fields(page, "#groups tr[data-group]", ("group", "topic"), ("lag", "dlq", "status"))
    assert shown == {
        (g["group"], g["topic"]): (str(g["lag"]), str(g["dlq"]), g["status"]) for g in groups
    }
    # The seeded log is there: a group with dead letters, one with lag.
    assert any(int(dlq) > 0 for _, dlq, _ in shown.values())
    assert any(int(lag) > 0 for lag, _, _ in shown.values())

    topics = {t["topic"]: t for t in cli(seeded_url, "topics")}
    shown = fields(page, "#topics tr[data-topic]", ("topic",), ("partitions", "events"))
    assert "notes" in {topic for (topic,) in shown}
    for (topic,), (partitions, events) in shown.items():
        assert (int(partitions), int(events)) == (
            len(topics[topic]["partitions"]),
            topics[topic]["events"],
        ), topic


def test_the_group_page_shows_each_partition_as_the_cli_does(
    page: Page, dashboard: str, seeded_url: str
) -> None:
    page.goto(dashboard + "/")
    page.click('#groups tr[data-group="audit"] a[href$="/groups/audit"]')
    page.wait_for_selector("#partitions")
    assert page.text_content("#group-name") == "audit"
    rows = cli(seeded_url, "groups", "audit", "--partitions", "--all")  # with audit.retry
    shown = fields(
        page, "#partitions tr[data-partition]", ("topic", "partition"), ("committed", "end", "lag")
    )
    assert shown == {
        (r["topic"], str(r["partition"])): (
            "-" if r["committed"] is None else str(r["committed"]),
            str(r["end"]),
            str(r["lag"]),
        )
        for r in rows
    }


def test_the_dead_letters_page_lists_filters_and_shows_an_entry_as_the_cli_does(
    page: Page, dashboard: str, seeded_url: str
) -> None:
    page.goto(dashboard + "/groups/mail/dead-letters")
    listed = cli(seeded_url, "dlq", "list", "mail")
    shown = fields(page, "#dead-letters tr[data-entry]", ("entry",), ("state", "error"))
    assert {entry for (entry,) in shown} == {e["entry"] for e in listed}
    for e in listed:
        state, error = shown[(e["entry"],)]
        assert state == e["state"]
        assert error.startswith(f"{e['error_type']}: {e['error_message']}")
    assert page.text_content("#dlq-depth") == str(len([e for e in listed if e["state"] == "dead"]))

    page.fill('#dlq-filters input[name="error_type"]', "TimeoutError")
    page.click('#dlq-filters button[type="submit"]')
    page.wait_for_url("**error_type=TimeoutError**")
    timeouts = cli(seeded_url, "dlq", "list", "mail", "--error-type", "TimeoutError")
    assert 0 < len(timeouts) < len(listed)
    shown = fields(page, "#dead-letters tr[data-entry]", ("entry",), ("state",))
    assert {entry for (entry,) in shown} == {e["entry"] for e in timeouts}

    entry = timeouts[0]["entry"]
    page.click(f'#dead-letters tr[data-entry="{entry}"] a[href$="/{entry}"]')
    page.wait_for_url(f"**/dead-letters/{entry}")
    detail = cli(seeded_url, "dlq", "show", "mail", entry)
    assert detail["error_message"] in (page.text_content("#entry-error") or "")
    traceback = page.text_content("#entry-traceback") or ""
    assert detail["traceback"].strip().splitlines()[-1] in traceback
    assert detail["event"]["id"] in (page.text_content("#entry-payload") or "")


def test_the_events_page_browses_and_searches_a_topic_as_tidings_tail_does(
    page: Page, dashboard: str, seeded_url: str
) -> None:
    page.goto(dashboard + "/")
    page.click('#topics tr[data-topic="notes"] a')
    page.wait_for_selector("#events")
    tailed = cli(seeded_url, "tail", "notes")
    shown = page.eval_on_selector_all(
        "#events li.event", "items => items.map(i => i.dataset.eventId)"
    )
    assert sorted(shown) == sorted(e["id"] for e in tailed)

    wanted = tailed[-1]
    page.fill('#events-form input[name="id"]', wanted["id"])
    page.click('#events-form button[type="submit"]')
    page.wait_for_url(f"**id={wanted['id']}**")
    (found,) = page.query_selector_all("#events li.event")
    assert found.get_attribute("data-event-id") == wanted["id"]
    assert json.loads(found.eval_on_selector("pre.json", "p => p.textContent")) == wanted
    publish_line = found.eval_on_selector("textarea.publish-line", "t => t.value")
    assert wanted["type"] in publish_line
    assert json.dumps(wanted["data"], separators=(",", ":")) in publish_line.replace(" ", "")


def test_the_trace_page_shows_the_causal_tree_tidings_trace_does(
    page: Page, dashboard: str, seeded_url: str
) -> None:
    page.goto(dashboard + "/trace")
    page.fill('#trace-form input[name="id"]', CORRELATION)
    page.click('#trace-form button[type="submit"]')
    summary = page.wait_for_selector("#trace-summary")
    traced = cli(seeded_url, "trace", CORRELATION)
    assert summary.get_attribute("data-events") == str(traced["events"])
    for root in traced["roots"]:
        node = f'#trace-tree li.trace-node[data-event-id="{root["id"]}"]'
        statuses = page.eval_on_selector_all(
            f"{node} li[data-group]", "items => items.map(i => [i.dataset.group, i.dataset.status])"
        )
        assert dict(statuses) == {g["group"]: g["status"] for g in root["groups"]}
    assert page.query_selector_all("svg#trace-timeline g[data-event-id]")


def test_the_catalog_lists_the_event_types_tidings_catalog_does(
    page: Page, dashboard: str, seeded_url: str
) -> None:
    page.goto(dashboard + "/groups/mail/dead-letters")
    page.click("#dead-letters a.event-type")  # an event type, linked where it is shown
    page.wait_for_selector("#event-type")
    assert page.get_attribute("#event-type", "data-type") == "note.added"
    page.goto(dashboard + "/catalog")
    shown = page.eval_on_selector_all(
        "#catalog tr[data-type]", "rows => rows.map(r => r.dataset.type)"
    )
    assert sorted(shown) == sorted(e["type"] for e in cli(seeded_url, "catalog")["events"])


# This test found that "Referrer-Policy: no-referrer" made Chromium send "Origin: null"
# with the page's own form POSTs, which the origin check refuses (now "same-origin").
def test_a_dead_letter_is_replayed_by_clicking_through_its_confirmation(
    page: Page, dashboard: str, seeded_url: str
) -> None:
    page.goto(dashboard + "/groups/mail/dead-letters")
    waiting = [e["entry"] for e in cli(seeded_url, "dlq", "list", "mail") if e["state"] == "dead"]
    entry = waiting[0]

    # The same POST without the page's CSRF field, with the browser's cookies: refused,
    # and nothing changes.
    action = page.get_attribute("#selection-form", "action")
    assert action is not None
    forged = page.request.post(
        dashboard + action, form={"scope": "selected", "id": entry, "confirm": "yes"}
    )
    assert forged.status == 403, forged.text()

    page.check(f'#dead-letters tr[data-entry="{entry}"] input[type="checkbox"]')
    page.click("#replay-selected")
    page.wait_for_selector('body[data-page="confirm"], body[data-page="error"]')
    assert page.get_attribute("body", "data-page") == "confirm", page.text_content("main")
    confirm = page.wait_for_selector('#confirm[data-action="replay"]')
    assert confirm.get_attribute("data-count") == "1"
    states = {e["entry"]: e["state"] for e in cli(seeded_url, "dlq", "list", "mail")}
    assert states[entry] == "dead"  # asking is not doing
    page.fill('#confirm-form input[name="operator"]', "browser-test")
    page.click('#confirm-form button[type="submit"]')
    page.wait_for_selector('#action-done[data-action="replay"], #job[data-finished="yes"]')

    states = {e["entry"]: e["state"] for e in cli(seeded_url, "dlq", "list", "mail", "--all")}
    assert states[entry] in ("replayed", "resolved")
    assert sorted(e for e, s in states.items() if s == "dead") == sorted(waiting[1:])
    page.goto(dashboard + "/actions")
    actions = page.text_content("main") or ""
    assert "browser-test" in actions
    assert "replay" in actions


def test_the_lag_goes_to_zero_live_while_a_worker_drains_the_group(
    page: Page, dashboard: str, seeded_url: str, browser_folder: Path
) -> None:
    page.goto(dashboard + "/")
    lag = '#groups tr[data-group="audit"][data-topic="notes"] [data-field="lag"]'
    assert page.text_content(lag) == str(WAITING)
    page.evaluate("() => { window.notReloaded = true; }")
    worker = drain(seeded_url, browser_folder / "drain.log")
    try:
        page.wait_for_function(
            "selector => document.querySelector(selector).textContent.trim() === '0'",
            arg=lag,
            timeout=LIVE_TIMEOUT_MS,
        )
    finally:
        stop(worker)
    assert page.evaluate("() => window.notReloaded") is True  # updated in place, live
    assert int(page.get_attribute("body", "data-live-frames") or 0) > 0
    (audit,) = cli(seeded_url, "groups", "audit")
    assert audit["lag"] == 0
