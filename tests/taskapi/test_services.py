"""The services' pieces that need no process: messages, classification of failures,
device lookup and settings."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from taskapi.events import ReminderDue, TaskAssigned, TaskCompleted, TaskCreated
from taskapi.services import build
from taskapi.services.webhook import WebhookFailed, WebhookRejected, post_json
from taskapi.services.email import compose
from taskapi.services.push import Devices, notification
from taskapi.services.slack import message
from taskapi.settings import Settings
from tidings import ConfigError

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def ctx(type_: str = "task.created") -> Any:
    event = SimpleNamespace(time=NOW)
    return SimpleNamespace(id="ev-1", correlationid="corr-1", type=type_, event=event)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env(tmp_path, env={})


def test_mail_goes_to_the_assignee_with_the_event_and_correlation_ids(settings) -> None:
    event = TaskCreated(task_id="t1", title="Report", assignee="alice", due=NOW, created_at=NOW)
    mail = compose(event, settings, ctx())
    assert mail is not None
    assert mail["To"] == "alice@example.com"
    assert mail["Subject"] == "New task: Report"
    assert mail["Message-ID"] == "<ev-1@taskapi>"
    assert (mail["X-Correlation-ID"], mail["X-Tidings-Event-ID"]) == ("corr-1", "ev-1")
    assert "Task id: t1" in mail.get_content()


def test_mail_subjects_per_event_and_none_without_an_assignee(settings) -> None:
    assigned = TaskAssigned(task_id="t", title="R", assignee="bob@corp.io", previous_assignee="al")
    completed = TaskCompleted(task_id="t", title="R", assignee="bob", completed_at=NOW)
    due = ReminderDue(task_id="t", title="R", assignee="bob", due=NOW, remind_at=NOW)
    subjects = [compose(e, settings, ctx())["Subject"] for e in (assigned, completed, due)]  # type: ignore[index]
    assert subjects == [
        "Assigned to you: R",
        "Completed: R",
        "Reminder: R is due 2026-11-30 12:00 UTC",
    ]
    assert compose(assigned, settings, ctx())["To"] == "bob@corp.io"  # type: ignore[index]
    nobody = TaskCreated(task_id="t", title="R", created_at=NOW)
    assert compose(nobody, settings, ctx()) is None


def test_the_slack_message_has_text_and_blocks() -> None:
    body = message(TaskCreated(task_id="t1", title="Report", created_at=NOW), ctx())
    assert body["text"] == "New task: Report"
    assert [b["type"] for b in body["blocks"]] == ["section", "context"]
    assert "corr-1" in json.dumps(body["blocks"][1])
    done = message(TaskCompleted(task_id="t1", title="Report", completed_at=NOW), ctx())
    assert done["text"] == "Task completed: Report"


def test_devices_are_read_again_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    devices = Devices(path)
    assert devices.token("alice") is None  # no file yet: nobody has a device
    path.write_text(json.dumps({"alice": "a-1"}))
    assert devices.token("alice") == "a-1"
    path.write_text(json.dumps({"alice": "a-2", "bob": "b-1"}))
    import os

    os.utime(path, (1, 1))  # a different mtime, whatever the clock's resolution
    assert (devices.token("alice"), devices.token("bob")) == ("a-2", "b-1")
    path.write_text("[1, 2]")
    os.utime(path, (2, 2))
    with pytest.raises(ConfigError, match="must map assignees to tokens"):
        devices.token("alice")


def test_the_push_notification_names_the_task_and_the_device() -> None:
    event = TaskAssigned(task_id="t9", title="Ship", assignee="bob")
    body = notification(event, "b-1", ctx("task.assigned"))
    assert body == {
        "to": "b-1",
        "title": "Task assigned to you",
        "body": "Ship",
        "data": {"task_id": "t9", "type": "task.assigned", "event_id": "ev-1"},
    }


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, WebhookFailed), (503, WebhookFailed), (429, WebhookFailed), (408, WebhookFailed),
     (400, WebhookRejected), (404, WebhookRejected)],
)  # fmt: skip
async def test_webhook_answers_are_retried_or_refused_by_status(status: int, error: type) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, text="nope")

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        with pytest.raises(error, match=f"answered {status}: nope"):
            await post_json(http, "http://hook/x", {"a": 1}, ctx())
    assert seen[0].headers["idempotency-key"] == "ev-1"
    assert seen[0].headers["x-correlation-id"] == "corr-1"


async def test_an_unreachable_webhook_is_worth_retrying() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        with pytest.raises(WebhookFailed, match="ConnectError"):
            await post_json(http, "http://hook/x", {}, ctx())


@pytest.mark.parametrize(
    ("env", "message"),
    [({"TASKAPI_SMTP": "localhost"}, "host:port"),
     ({"TASKAPI_REMINDER_LEAD": "soon"}, "TASKAPI_REMINDER_LEAD must be a number"),
     ({"TASKAPI_REMINDER_LEAD": "-1"}, ">= 0"),
     ({"TASKAPI_RETRY_ATTEMPTS": "0"}, "TASKAPI_RETRY_ATTEMPTS must be >= 1")],
)  # fmt: skip
def test_bad_settings_say_which_variable_is_wrong(tmp_path: Path, env, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(tmp_path, env=env)


async def test_an_unknown_service_name_lists_the_services(settings) -> None:
    import contextlib

    async with contextlib.AsyncExitStack() as stack:
        with pytest.raises(ConfigError, match="email, slack, push, audit, reminders"):
            build("fax", settings, stack)
