"""``tidings trace`` on the reference system: one task's life (create, reminder, assign,
complete) under one correlation id is one tree, with every service's handling.

The API (its lifespan and outbox relay), the six services and the local sinks run in
this test's event loop, over real sockets on 127.0.0.1 and a real SQLite log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from taskapi.api import create_app
from taskapi.services import SERVICES, serve
from taskapi.settings import Settings
from taskapi.sinks import run_sinks
from tests.test_cli import tidings
from tidings import Tidings
from tidings.cli.trace import tree_lines
from tidings.testing import eventually
from tidings.trace import Trace, trace

CORRELATION = "life-of-a-task"
LIFE = ["task.created", "task.updated", "task.assigned", "task.completed"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_in(data: Path) -> Settings:
    (data / "devices.json").write_text(json.dumps({"alice": "dev-alice"}))
    http = free_port()
    return Settings.from_env(
        data,
        env={
            "TASKAPI_SMTP": f"127.0.0.1:{free_port()}",
            "TASKAPI_SLACK_WEBHOOK": f"http://127.0.0.1:{http}/slack",
            "TASKAPI_PUSH_GATEWAY": f"http://127.0.0.1:{http}/push",
            # Due in a minute, an hour's lead: the reminder is due at once.
            "TASKAPI_REMINDER_LEAD": "3600",
        },
    ).ensure()


@contextlib.asynccontextmanager
async def system(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The sinks, the six services and the API, in this loop; a client of the API."""
    stop = asyncio.Event()
    http = int(settings.slack_webhook_url.split(":")[2].split("/")[0])
    parts = [
        asyncio.create_task(
            run_sinks(settings, smtp_port=settings.smtp_port, http_port=http, stop=stop)
        )
    ]
    parts += [asyncio.create_task(serve(name, settings, stop)) for name in SERVICES]
    api = create_app(settings)
    try:
        async with api.router.lifespan_context(api):
            transport = httpx.ASGITransport(app=api)
            async with httpx.AsyncClient(transport=transport, base_url="http://taskapi") as client:
                yield client
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*parts), 60)  # raises what a part raised


async def call(client: httpx.AsyncClient, method: str, path: str, body: Any = None) -> Any:
    response = await client.request(
        method, path, json=body, headers={"X-Correlation-ID": CORRELATION}
    )
    assert response.is_success, response.text
    return response.json()


def types(t: Trace) -> set[str]:
    return {n.event.type for n in t.nodes()}


def all_handled(t: Trace) -> bool:
    """The whole life is in the log, and every group has handled every event of it."""
    nodes = t.nodes()
    return (
        types(t) >= {*LIFE, "task.reminder_due"}
        and all(n.groups for n in nodes)
        and all(g.status == "handled" for n in nodes for g in n.groups)
    )


async def test_one_tasks_life_is_one_tree_with_every_services_handling(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    async with system(settings) as client, Tidings(settings.tidings_url, service="t") as reader:
        found: list[Trace] = []

        async def life(settled: Callable[[Trace], bool], what: str) -> None:
            async def done() -> bool:
                found[:] = [await trace(reader.transport, CORRELATION)]
                return settled(found[0])

            try:
                await eventually(done, timeout=60, what=what)
            except AssertionError as exc:
                tree = "\n".join(tree_lines(found[0])) if found else "nothing"
                raise AssertionError(f"{exc}; the trace:\n{tree}") from None

        due = datetime.now(UTC) + timedelta(minutes=1)
        task = await call(client, "POST", "/tasks", {"title": "Report", "due": due.isoformat()})
        # (Completing the task cancels a reminder that has not fired yet.)
        await life(lambda t: "task.reminder_due" in types(t), "the reminder")
        await call(client, "PATCH", f"/tasks/{task['id']}", {"assignee": "alice"})
        await call(client, "POST", f"/tasks/{task['id']}/complete")
        await life(all_handled, "the life handled by every service")
    t = found[0]
    # The requests caused the API's events; the reminder was caused by task.created.
    assert [r.event.type for r in t.roots] == LIFE
    assert all(r.cause_seen for r in t.roots)
    created = t.roots[0]
    assert [c.event.type for c in created.children] == ["task.reminder_due"]
    (reminder,) = created.children
    assert reminder.event.causationid == created.event.id
    assert reminder.event.source == "taskapi-reminders"
    assert reminder.after_cause is not None
    # Every service is its own group reading task-events: each shows its handling.
    for node in t.nodes():
        assert {g.group for g in node.groups} == set(SERVICES), node.event.type
    assert {n.event.subject for n in t.nodes()} == {task["id"]}

    result = tidings("trace", CORRELATION, url=settings.tidings_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"correlation id {CORRELATION}: 5 event(s) over ")
    tops = [line for line in lines if line.startswith(("├─ ", "└─ "))]
    assert [line.split("  ")[1] for line in tops] == LIFE
    (nested,) = [line for line in lines if "task.reminder_due" in line]
    assert nested.startswith("│  └─ ")
    assert "  +" in nested
    assert sum("handled" in line for line in lines) == 5 * len(SERVICES)
