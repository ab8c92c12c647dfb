"""Safe by default: where it listens, the token, CSRF, read-only mode, the security
headers, escaping, and a clear 4xx page for every kind of bad input, changing nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from tests.dashboard.conftest import Client, Seeded, text
from tests.test_cli import assert_one_error_line, tidings
from tidings import dashboard
from tidings.errors import ConfigError

TOKEN = "a-token-of-24-characters"


def waiting(url: str, group: str = "mail") -> int:
    result = tidings("dlq", "list", group, "--json", url=url)
    assert result.returncode == 0, result.stderr
    return sum(1 for e in json.loads(result.stdout) if e["state"] == "dead")


def lag(url: str) -> dict[str, int]:
    result = tidings("groups", "--json", url=url)
    assert result.returncode == 0, result.stderr
    return {x["group"]: x["lag"] for x in json.loads(result.stdout)}


# -- where it listens -------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_addresses_need_nothing(host: str) -> None:
    dashboard.check_bind(host, token=None, read_only=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.7", "example.org"])
def test_another_address_needs_a_token_or_read_only(host: str) -> None:
    with pytest.raises(ConfigError, match="--token"):
        dashboard.check_bind(host, token=None, read_only=False)
    dashboard.check_bind(host, token=TOKEN, read_only=False)
    dashboard.check_bind(host, token=None, read_only=True)


def test_the_command_refuses_a_public_address_without_a_token(seeded: Seeded) -> None:
    result = tidings("dashboard", "--host", "0.0.0.0", url=seeded.url)
    assert_one_error_line(result, 2, "--token")


def test_a_short_token_is_refused_with_how_to_make_one() -> None:
    with pytest.raises(ConfigError, match="at least 16 characters"):
        dashboard.Config("sqlite:///x.db", token="short")


# -- headers and escaping -------------------------------------------------------------


async def test_every_answer_carries_the_security_headers(client: Client) -> None:
    for path in ("/", "/groups/nobody", "/static/dashboard.js", "/no/such/page"):
        page = await client.get(path)
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp, path
        assert "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "same-origin"


async def test_pages_have_no_inline_script(client: Client) -> None:
    for path in ("/", "/groups/mail", "/groups/mail/dead-letters", "/events/notes"):
        html = (await client.get(path)).text
        scripts = html.count("<script")
        assert scripts == html.count('<script src="/static/dashboard.js" defer></script>') == 1
        assert " on" + "click=" not in html
        assert "javascript:" not in html


async def test_a_script_in_a_search_box_is_shown_as_text(client: Client) -> None:
    attack = "<script>alert(1)</script>"
    page = await client.get("/events/notes", params={"subject": attack})
    assert page.status_code == 200
    assert attack not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    bad = await client.get("/events/notes", params={"type": attack})
    assert bad.status_code == 400
    assert attack not in bad.text
    trace = await client.get("/trace", params={"id": attack})
    assert trace.status_code == 200
    assert attack not in trace.text


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/groups/nobody", 404, "group 'nobody' does not exist"),
        ("/groups/no.dots", 400, "not valid"),
        ("/groups/nobody/dead-letters", 404, "has no dead-letter topic"),
        ("/groups/mail/dead-letters/no-such-entry", 400, "no dead letter 'no-such-entry'"),
        ("/groups/mail/dead-letters?since=yesterday", 400, "since: 'yesterday' is not a time"),
        ("/groups/mail/dead-letters?since=1h&until=2h", 400, "since 1h is after until 2h"),
        ("/groups/mail/dead-letters?page=999999", 400, "page 999999 is past the last page (1)"),
        ("/groups/mail/dead-letters?page=99999999999999", 400, "page=99999999999999"),
        ("/groups/mail/dead-letters?page=-1", 400, "out of range"),
        ("/groups/mail/dead-letters?page=two", 400, "not a whole number"),
        ("/groups/mail/dead-letters/x?reveal=1", 400, "needs the key store"),
        ("/events/nothing-here", 404, "topic 'nothing-here' does not exist"),
        ("/events/notes?from=-5", 400, "from '-5' is not valid"),
        ("/events/notes?from=tomorrow", 400, "from 'tomorrow' is not valid"),
        ("/events/notes?after=0:x", 400, "PARTITION:OFFSET"),
        ("/events/notes?limit=100000", 400, "out of range"),
        ("/events/notes?reveal=1", 400, "needs the key store"),
        ("/trace?id=x&scan=0", 400, "out of range"),
        ("/catalog/Not%20A%20Type", 400, "Not A Type"),
        ("/catalog/never.seen", 400, "no event type 'never.seen'"),
        ("/live?group=no.dots", 400, "not valid"),
        ("/jobs/12345", 400, "no such job"),
        (f"/events/notes?subject={'x' * 600}", 400, "at most 500"),
    ],
)
async def test_bad_input_gets_a_page_saying_what_was_wrong(
    client: Client, path: str, status: int, says: str
) -> None:
    page = await client.get(path)
    assert page.status_code == status, page.text
    assert 'id="message"' in page.text
    assert f'data-status="{status}"' in page.text
    assert says in text(page.text).replace("&#39;", "'"), text(page.text)


async def test_bad_form_input_changes_nothing(client: Client, seeded: Seeded) -> None:
    before = lag(seeded.url)
    for form, says in [
        ({"to": "-5"}, "not valid"),
        ({"to": "yesterday"}, "not valid"),
        ({"to": "earliest", "topic": "nothing-here"}, "does not exist"),
        ({}, "say where to reset to"),
        ({"to": "earliest", "confirm": "yes", "topic": "notes"}, ""),  # a real reset below
    ][:-1]:
        page = await client.post("/groups/audit/reset", {**form, "confirm": "yes"})
        assert 400 <= page.status_code < 500, (form, page.text)
        assert says in text(page.text).replace("&#39;", "'")
    replay = await client.post("/groups/mail/dead-letters/replay", {"scope": "selected"})
    assert replay.status_code == 400
    assert "no dead letter was selected" in replay.text
    since = await client.post(
        "/groups/mail/dead-letters/purge", {"since": "soon", "confirm": "yes"}
    )
    assert since.status_code == 400
    assert "since" in since.text
    assert lag(seeded.url) == before
    assert waiting(seeded.url) == 4


# -- CSRF, token, read-only ------------------------------------------------------------


async def test_an_action_without_the_csrf_field_is_refused(client: Client, seeded: Seeded) -> None:
    await client.csrf()
    for data in ({}, {"csrf": "not-the-cookie"}):
        page = await client.post(
            "/groups/mail/dead-letters/purge", {**data, "confirm": "yes"}, csrf=False
        )
        assert page.status_code == 403
        assert "CSRF" in page.text
    assert waiting(seeded.url) == 4


async def test_an_action_from_another_site_is_refused(client: Client, seeded: Seeded) -> None:
    fields = {"confirm": "yes", "csrf": await client.csrf()}
    page = await client.http.post(
        "/groups/mail/dead-letters/purge", data=fields, headers={"origin": "http://evil.example"}
    )
    assert page.status_code == 403
    assert "another site" in page.text
    assert waiting(seeded.url) == 4


@pytest.fixture
async def guarded(seeded: Seeded) -> AsyncIterator[Client]:
    c = Client(dashboard.app(seeded.url, token=TOKEN))
    yield c
    await c.close()


async def test_the_token_is_needed_for_every_page_and_action(
    guarded: Client, seeded: Seeded
) -> None:
    for path in ("/", "/groups/mail", "/live", "/groups/mail/dead-letters"):
        page = await guarded.get(path)
        assert page.status_code == 401, path
        assert 'id="login-form"' in page.text, path
    refused = await guarded.http.post("/groups/mail/dead-letters/purge", data={"confirm": "yes"})
    assert refused.status_code == 401
    assert waiting(seeded.url) == 4
    bearer = await guarded.get("/", headers={"authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200
    wrong = await guarded.http.post("/login", data={"token": "wrong", "next": "/"})
    assert wrong.status_code == 401
    assert 'id="login-error"' in wrong.text
    right = await guarded.http.post("/login", data={"token": TOKEN, "next": "//evil.example/"})
    assert right.status_code == 303
    assert right.headers["location"] == "/"
    assert TOKEN not in right.headers["set-cookie"]  # a digest of it, never the token
    assert (await guarded.get("/groups/mail")).status_code == 200


async def test_a_read_only_dashboard_shows_no_form_and_refuses_every_action(
    seeded: Seeded,
) -> None:
    c = Client(dashboard.app(seeded.url, read_only=True))
    try:
        page = await c.get("/groups/mail/dead-letters")
        assert page.status_code == 200
        assert 'id="purge-form"' not in page.text
        assert 'id="read-only"' in page.text
        for path in ("/groups/mail/dead-letters/purge", "/groups/mail/dead-letters/replay"):
            refused = await c.post(path, {"confirm": "yes"})
            assert refused.status_code == 403
            assert "read-only" in refused.text
        reset = await c.post("/groups/mail/reset", {"to": "earliest", "confirm": "yes"})
        assert reset.status_code == 403
    finally:
        await c.close()
    assert waiting(seeded.url) == 4
