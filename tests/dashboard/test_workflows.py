"""The sagas, a saga's and the projections pages, and progress on the trace page:
driven by real workers on a SQLite log, their figures checked against the command
line's ``--json``; and what the pages say when they are not enabled or given bad
input."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.conftest import looking, text
from tests.projections.helpers import PARTITIONS, TOPIC, publish
from tests.projections.test_cli import Specs, spec  # noqa: F401 (a fixture)
from tests.sagas.conftest import app, db_url, engine  # noqa: F401 (fixtures)
from tests.sagas.test_sagas_cli import filled  # noqa: F401 (a fixture)
from tests.test_slow_consumers import ask_with_progress, reporting_app
from tidings import Tidings, dashboard
from tidings.cli import main
from tidings.cli.common import load_app
from tidings.projections import Projection
from tidings.sagas import Saga
from tidings.testing import eventually, running


async def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    """The command's JSON output (run in a thread: it has an event loop of its own)."""
    capsys.readouterr()
    assert await asyncio.to_thread(main, list(args)) in (0, 1)
    return json.loads(capsys.readouterr().out)


def cells(html: str, row: str) -> dict[str, str]:
    """The ``data-field`` cells of the element whose opening tag matches ``row``."""
    start = re.search(row, html)
    assert start is not None, row
    rest = html[start.start() :]
    end = rest.find("</tr>") if rest.startswith("<tr") else rest.find("</section>")
    found = re.findall(r'data-field="(\w+)"[^>]*>(.*?)</', rest[:end], re.S)
    return {k: text(v) for k, v in found}


async def test_sagas_pages_show_what_the_cli_lists_and_shows(
    filled: Saga,  # noqa: F811
    app: Tidings,  # noqa: F811
    db_url: str,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    listed = await cli_json(capsys, "sagas", "list", "--db", db_url, "--json")
    async with looking(dashboard.app(app.url, sagas_db=[db_url])) as c:
        page = await c.get("/sagas")
        assert page.status_code == 200
        assert 'data-page="sagas"' in page.text
        assert 'data-nav="sagas"' in page.text
        for i in listed:
            row = cells(page.text, f'<tr data-saga="{i["name"]}" data-key="{i["key"]}"')
            assert (row["state"], row["status"], row["version"], row["updated"]) == (
                i["state"], i["status"], str(i["version"]), i["updated_at"],
            )  # fmt: skip
        assert sorted(re.findall(r'<tr data-saga="esc" data-key="(\w)"', page.text)) == ["a", "b"]
        finished = await c.get("/sagas", params={"status": "finished"})
        assert re.findall(r'data-key="(\w)" data-status', finished.text) == ["b"]

        (shown,) = await cli_json(capsys, "sagas", "show", "a", "--db", db_url, "--json")
        one = await c.get("/sagas/a")
        assert one.status_code == 200
        section = cells(one.text, r'<section class="saga" data-saga="esc" data-key="a"')
        assert section["state"] == f"{shown['state']} ({shown['status']}, version 1)"
        assert json.loads(section["data"]) == shown["data"] == {"reassigned": 0}
        history = re.findall(r'<tr data-event-id="([^"]+)">', one.text)
        assert history == [h["event_id"] for h in shown["history"]]
        [deadline] = shown["deadlines"]
        due = cells(one.text, f'<tr data-deadline="{deadline["deadline"]}">')["due"]
        assert due == deadline["due_at"]
        assert deadline["id"] in one.text

        (b,) = await cli_json(capsys, "sagas", "show", "b", "--db", db_url, "--json")
        done = await c.get("/sagas/b")
        notes = re.findall(r'data-field="note">([^<]*)<', done.text)
        assert notes == [h["note"] for h in b["history"]] == ["start", "step; finished"]
        assert "none</td>" in done.text  # no pending deadline

        missing = await c.get("/sagas/nope")
        assert missing.status_code == 404
        assert "No saga instance for key nope" in text(missing.text)
        bad = await c.get("/sagas", params={"status": "sleeping"})
        assert bad.status_code == 400
        assert "status=sleeping is not a saga status" in text(bad.text)


async def test_the_sagas_of_an_app_are_found_as_tidings_sagas_app_finds_them(
    filled: Saga,  # noqa: F811
    app: Tidings,  # noqa: F811
) -> None:
    async with looking(dashboard.app(app.url, service=app)) as c:
        page = await c.get("/sagas")
        assert sorted(re.findall(r'<tr data-saga="esc" data-key="(\w)"', page.text)) == ["a", "b"]
        one = await c.get("/sagas/b", params={"name": "esc"})
        assert 'data-key="b" data-state="done" data-status="finished"' in one.text
        none = await c.get("/projections")  # the app declares no projection: says so
        assert 'id="projections-none"' in none.text


async def test_without_databases_or_app_the_pages_say_how_to_enable_them(
    seeded: Any, tmp_path: Path
) -> None:
    missing = f"sqlite:///{tmp_path / 'nowhere.db'}"
    async with looking(dashboard.app(seeded.url, sagas_db=[missing])) as c:
        page = await c.get("/sagas")
        assert page.status_code == 400
        assert "there is no database at" in text(page.text)
        assert "--sagas-db URL" in text(page.text)
        assert not (tmp_path / "nowhere.db").exists()
        long = await c.get("/sagas/" + "k" * 501)
        assert long.status_code == 400
    async with looking(dashboard.app(seeded.url)) as c:
        page = await c.get("/sagas")
        assert page.status_code == 200
        assert "--sagas-db URL" in text(page.text)
        assert 'id="sagas-off"' in page.text
        page = await c.get("/projections")
        assert page.status_code == 200
        assert "--app MODULE:APP" in text(page.text)
        assert 'id="projections-off"' in page.text


async def test_projections_page_shows_what_projections_status_prints(
    spec: Specs,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    served = load_app(spec())
    projection: Projection = served.projections["board"]
    async with served:
        async with running(served):  # a real worker applies the 7 events

            async def caught_up() -> bool:
                return (await projection.status()).lag == 0

            await eventually(caught_up, what="the projection caught up")
        await publish(served, 7, 9)  # no worker now: 2 behind
    (cli,) = await cli_json(capsys, "projections", "status", spec(), "--json")
    assert cli["lag"] == 2
    try:
        async with looking(dashboard.app(served.url, service=served)) as c:
            page = await c.get("/projections")
            assert page.status_code == 200
            assert (
                f'data-projection="board" data-lag="{cli["lag"]}" data-rebuilding="no"' in page.text
            )
            assert len(cli["partitions"]) == PARTITIONS
            for p in cli["partitions"]:
                row = cells(
                    page.text, f'<tr data-topic="{TOPIC}" data-partition="{p["partition"]}"'
                )
                assert row == {
                    "position": str(p["position"]), "committed": str(p["committed"]),
                    "end": str(p["end"]), "lag": str(p["lag"]),
                }  # fmt: skip
    finally:
        projection.close()


async def test_trace_page_shows_progress_as_the_trace_command_does(sqlite_url: str) -> None:
    from tidings.cli.trace import tree_lines
    from tidings.trace import Tracer

    agent = reporting_app(sqlite_url, "read 12 of 30 <passages>")
    async with agent:
        asked = await ask_with_progress(agent)
        tracer = Tracer(agent.transport, str(asked.correlationid))
        await tracer.refresh()
        cli = "\n".join(tree_lines(tracer.trace()))
    assert "(progress 40%: read 12 of 30 <passages>)" in cli
    async with looking(dashboard.app(sqlite_url)) as c:
        page = await c.get("/trace", params={"id": str(asked.correlationid)})
        assert page.status_code == 200
        assert 'data-type="research.requested.progressed"' in page.text
        assert (
            '<span class="trace-note" data-field="note">'
            "(progress 40%: read 12 of 30 &lt;passages&gt;)</span>"
        ) in page.text


def test_the_command_takes_sagas_databases_and_an_app() -> None:
    from tidings.cli import build_parser

    args = build_parser().parse_args(
        ["dashboard", "--sagas-db", "sqlite:///a.db", "--sagas-db", "sqlite:///b.db",
         "--app", "svc:app"]
    )  # fmt: skip
    assert (args.sagas_db, args.app) == (["sqlite:///a.db", "sqlite:///b.db"], "svc:app")
