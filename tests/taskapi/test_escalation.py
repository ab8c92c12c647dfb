"""The escalation service (a saga): an overdue task is escalated to its assignee's
manager once; completing or reassigning it first cancels that; a notice refused for
good is compensated on the other channel."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from taskapi.events import (
    TOPIC,
    NotificationFailed,
    TaskAssigned,
    TaskCompleted,
    TaskCreated,
    TaskEscalated,
    TaskEscalationFailed,
    register,
)
from taskapi.services import serve
from taskapi.services.escalation import NAME, failure, mail, post
from taskapi.settings import Settings
from tests.taskapi.helpers import LogProbe
from tidings import ConfigError, Tidings
from tidings.sagas import SagaInfo, show_saga

NOW = datetime.now(UTC)
ENV = {"TASKAPI_MANAGERS": "alice=carol", "TASKAPI_DEFAULT_MANAGER": "dana"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env(tmp_path, env=ENV).ensure()


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[tuple[Tidings, LogProbe]]:
    """The escalation service, a probe on the log, and an app to publish with."""
    stop = asyncio.Event()
    service = asyncio.create_task(serve("escalation", settings, stop))
    publisher = register(Tidings(settings.tidings_url, service="taskapi"))
    try:
        async with publisher, LogProbe(settings.tidings_url) as probe:
            yield publisher, probe
    finally:
        stop.set()
        await asyncio.wait_for(service, 30)


def saga(settings: Settings, task_id: str) -> SagaInfo | None:
    with contextlib.suppress(Exception):  # not created yet
        found = show_saga(settings.state_db("escalation"), task_id, name=NAME)
        return found[0] if found else None
    return None


async def until(settings: Settings, task_id: str, state: str) -> SagaInfo:
    for _ in range(400):
        info = saga(settings, task_id)
        if info is not None and info.state == state:
            return info
        await asyncio.sleep(0.05)
    raise AssertionError(f"saga of {task_id} not in {state}: {saga(settings, task_id)}")


def created(task_id: str, due_in: float | None, assignee: str | None = "alice") -> TaskCreated:
    due = None if due_in is None else datetime.now(UTC) + timedelta(seconds=due_in)
    return TaskCreated(
        task_id=task_id, title=f"Task {task_id}", assignee=assignee, due_at=due, created_at=NOW
    )


async def test_an_overdue_task_is_escalated_to_the_manager_once(
    settings: Settings, running: tuple[Tidings, LogProbe]
) -> None:
    app, probe = running
    await app.publish(TOPIC, created("t1", 0.2))
    await app.publish(TOPIC, created("t2", 0.2, assignee="bob"))
    await probe.wait_for(lambda: len(probe.of("task.escalated")) == 2)
    info = await until(settings, "t1", "escalated")
    managers = {e.subject: e.data["manager"] for e in probe.of("task.escalated")}
    assert managers == {"t1": "carol", "t2": "dana"}  # TASKAPI_MANAGERS, else the default
    assert [h["note"] for h in info.history] == ["start", "deadline overdue"]
    assert info.deadlines == []
    # Each escalation is in its task's request's causal trace.
    roots = {e.subject: e.correlationid for e in probe.of("task.created")}
    for escalated in probe.of("task.escalated"):
        assert escalated.source == "taskapi-escalation"
        assert escalated.correlationid == roots[escalated.subject]


async def test_completing_or_reassigning_first_cancels_the_escalation(
    settings: Settings, running: tuple[Tidings, LogProbe]
) -> None:
    app, probe = running
    await app.publish(TOPIC, created("c1", 3600))
    await app.publish(TOPIC, created("r1", 3600))
    await app.publish(TOPIC, created("n1", None))
    await app.publish(TOPIC, TaskCompleted(task_id="c1", title="Task c1", completed_at=NOW))
    await app.publish(TOPIC, TaskAssigned(task_id="r1", title="Task r1", assignee="bob"))
    for task_id, state in (("c1", "completed"), ("r1", "reassigned"), ("n1", "no_due_date")):
        info = await until(settings, task_id, state)
        assert (info.status, info.deadlines) == ("finished", []), task_id
    assert probe.of("task.escalated") == []


async def test_a_refused_escalation_mail_is_compensated_on_slack(
    settings: Settings, running: tuple[Tidings, LogProbe]
) -> None:
    app, probe = running
    await app.publish(TOPIC, created("f1", 0.2))
    await probe.wait_for(lambda: len(probe.of("task.escalated")) == 1)
    await until(settings, "f1", "escalated")
    notice = probe.of("task.escalated")[0]
    refused = NotificationFailed(
        task_id="f1", channel="email", about="task.escalated", event_id=notice.id,
        reason="550 no such user",
    )  # fmt: skip
    await app.publish(TOPIC, refused)
    await probe.wait_for(lambda: len(probe.of("task.escalation_failed")) == 1)
    info = await until(settings, "f1", "failed")
    assert info.status == "failed"
    [compensation] = probe.of("task.escalation_failed")
    assert (compensation.data["failed_channel"], compensation.data["manager"]) == (
        "email",
        "carol",
    )
    # The other channel carries it: Slack posts it, the mail service leaves it.
    event = TaskEscalationFailed.model_validate(compensation.data)
    assert post(event) is not None
    assert mail(event, settings, _ctx()) is None


def _ctx() -> Any:
    return SimpleNamespace(
        id="ev-9", correlationid="corr-9", type="task.escalated", event=SimpleNamespace(time=NOW)
    )


def test_the_escalation_notices_go_to_the_manager(settings: Settings) -> None:
    event = TaskEscalated(
        task_id="t1", title="Report", assignee="alice", manager="carol", due_at=NOW,
        escalated_at=NOW,
    )  # fmt: skip
    message = mail(event, settings, _ctx())
    assert message is not None
    assert (message["To"], message["Subject"]) == ("carol@example.com", "Overdue: Report")
    assert "escalated to carol" in (post(event) or {})["text"]
    slack_failed = TaskEscalationFailed(
        task_id="t1", title="Report", manager="carol", failed_channel="slack", reason="410"
    )
    assert post(slack_failed) is None
    assert mail(slack_failed, settings, _ctx())["Subject"] == "Overdue (Slack failed): Report"  # type: ignore[index]
    refused = failure(event, "slack", _ctx(), RuntimeError("POST answered 410"))
    assert (refused.channel, refused.about, refused.event_id) == ("slack", "task.escalated", "ev-9")


def test_bad_managers_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TASKAPI_MANAGERS must be assignee=manager pairs"):
        Settings.from_env(tmp_path, env={"TASKAPI_MANAGERS": "alice"})
    assert Settings.from_env(tmp_path, env={}).manager_of(None) == "manager"


async def test_slack_refusing_the_escalation_is_compensated_by_mail(tmp_path: Path) -> None:
    """The whole loop: Slack refuses the escalation for good (a 4xx), its service
    publishes notification.failed, the saga compensates, and the mail service is asked
    to tell the manager instead."""
    posts: list[dict[str, Any]] = []

    async def refuse(request: web.Request) -> web.Response:
        posts.append(await request.json())
        return web.Response(status=410, text="channel archived")

    hook = web.Application()
    hook.router.add_post("/slack", refuse)
    runner = web.AppRunner(hook)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    env = {**ENV, "TASKAPI_SLACK_WEBHOOK": f"http://127.0.0.1:{port}/slack"}
    settings = Settings.from_env(tmp_path, env=env).ensure()
    stop = asyncio.Event()
    services = [asyncio.create_task(serve(n, settings, stop)) for n in ("slack", "escalation")]
    try:
        async with (
            register(Tidings(settings.tidings_url, service="taskapi")) as app,
            LogProbe(settings.tidings_url) as probe,
        ):
            await app.publish(TOPIC, created("s1", 0.2))
            await probe.wait_for(lambda: len(probe.of("task.escalation_failed")) == 1)
            info = await until(settings, "s1", "failed")
    finally:
        stop.set()
        await asyncio.gather(*(asyncio.wait_for(s, 30) for s in services))
        await runner.cleanup()
    [failed] = probe.of("notification.failed")
    assert (failed.data["channel"], failed.data["about"]) == ("slack", "task.escalated")
    assert failed.data["event_id"] == probe.of("task.escalated")[0].id
    [compensation] = probe.of("task.escalation_failed")
    assert compensation.data["failed_channel"] == "slack"
    assert compensation.causationid == failed.id
    assert [h["note"] for h in info.history] == [
        "start", "deadline overdue", "compensation; failed",
    ]  # fmt: skip
    assert any("escalated to carol" in p["text"] for p in posts)
