"""``tidings catalog`` and the deprecation listing of ``tidings schema check``, in
process, against a SQLite log where two services ran (tests/catalog/system.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from tests.catalog.html_check import broken_links, validate
from tests.catalog.test_catalog import run_system
from tidings.cli import main
from tidings.transports import open_transport


@pytest.fixture
def url(here: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{here / 'events.db'}"
    monkeypatch.setenv("TIDINGS_URL", url)
    return url


def system_module(folder: Path, **changes: str) -> str:
    """A module whose ``tasks`` and ``reminders`` are tests/catalog/system.py's apps on
    ``$TIDINGS_URL``, with the lines of ``changes`` (name -> statement) run after."""
    name = f"system_{uuid.uuid4().hex[:8]}"
    lines = [
        "from tests.catalog.system import build",
        "system = build()",
        "tasks, reminders = system.tasks, system.reminders",
        *changes.values(),
    ]
    (folder / f"{name}.py").write_text("\n".join(lines) + "\n")
    return name


async def test_catalog_prints_the_types_flows_and_deprecations(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await run_system(url)
    assert await main_async(["catalog"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"event catalog of {url} (2 type(s))\n")
    assert "    reminders/reminders <- task-events (reads v1,v2; SLA 30s, lag 0s)" in out
    assert "  task.created -> task.reminder_due (3)" in out
    assert "task.created v1: deprecated; PAST ITS SUNSET 2000-01-01" in out


async def test_catalog_json_and_html(
    url: str, here: Path, vnu_jar: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await run_system(url)
    assert await main_async(["catalog", "--json", "--scan", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["scanned"] == {"reminder-events": 2, "task-events": 2}
    assert [e["type"] for e in doc["events"]] == ["task.created", "task.reminder_due"]
    assert await main_async(["catalog", "--html", str(here / "site")]) == 0
    assert "wrote 5 page(s) to" in capsys.readouterr().out
    pages = sorted((here / "site").rglob("*.html"))
    assert validate(vnu_jar, pages) == []
    assert broken_links(here / "site") == []


async def test_catalog_of_an_app_uses_its_log_and_its_declarations(
    url: str, here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before anything ran (an empty log): the app alone makes the catalog."""
    empty = open_transport(url, create=True)
    await empty.start()
    await empty.close()
    module = system_module(here)
    assert await main_async(["catalog", f"{module}:reminders", "--scan", "0", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["service"] for s in doc["services"]] == ["reminders"]
    assert doc["events"][0]["versions"][1]["registered_by"] is None
    assert doc["scanned"] == {}
    # No log at all (CI): an empty memory log, the app alone.
    module = system_module(here)
    argv = ["catalog", f"{module}:tasks", "--url", "memory://", "--json"]
    assert await main_async(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["url"], [s["service"] for s in doc["services"]]) == ("memory://", ["tasks"])
    assert doc["deprecations"][0]["producers"] == ["tasks (task-events)"]


async def test_schema_check_lists_who_still_uses_a_deprecated_version(
    url: str, here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await run_system(url)
    module = system_module(here)
    assert await main_async(["schema", "check", f"{module}:tasks"]) == 0  # no break: exit 0
    out = capsys.readouterr().out.splitlines()
    start = out.index("deprecated versions, and who still produces or consumes them:")
    assert out[start + 1].startswith("  task.created v1: deprecated; PAST ITS SUNSET 2000-01-01 (")
    assert out[start + 2 :] == [
        "    still produced by tasks (task-events)",
        "    still consumed by reminders/audit (task-events)",
        "    still consumed by reminders/reminders (task-events)",
    ]
    assert await main_async(["schema", "check", f"{module}:tasks", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)["deprecated"]
    assert (listed["type"], listed["version"], listed["past_sunset"]) == ("task.created", 1, True)


async def test_schema_check_takes_the_app_as_it_is_now(
    url: str, here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checked app's declarations replace its recorded ones: a release of the
    reminders service that upcasts v1 to v2 no longer consumes v1 as it is."""
    await run_system(url)
    upcasting = system_module(
        here,
        up="reminders.upcaster('task.created', from_version=1)(lambda v1: {**v1, 'due': None})",
    )
    assert await main_async(["schema", "check", f"{upcasting}:reminders"]) == 0
    out = capsys.readouterr().out
    assert "still consumed by reminders" not in out
    assert "still produced by tasks (task-events)" in out


async def test_a_bad_scan_count_is_a_usage_error(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await main_async(["catalog", "--scan", "-1"]) == 2
    assert "expected a whole number >= 0" in capsys.readouterr().err


async def main_async(argv: list[str]) -> int:
    """``main`` runs its own event loop: give it a thread of its own here."""
    return await asyncio.to_thread(main, argv)
