"""The services' pieces that need no process: messages, classification of failures,
device lookup and settings."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from taskapi.events import ReminderDue, TaskAssigned, TaskCompleted, TaskCreated
from taskapi.services import build
from taskapi.services.email import Mailer, MailRejected, compose
from taskapi.services.push import Devices, notification
from taskapi.services.slack import message
from taskapi.services.webhook import WebhookFailed, WebhookRejected, client, post_json
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
    os.utime(path, (1, 1))  # a different mtime, whatever the clock's resolution
    assert (devices.token("alice"), devices.token("bob")) == ("a-2", "b-1")
    path.write_text("[1, 2]")
    os.utime(path, (2, 2))
    with pytest.raises(ConfigError, match="must map assignees to tokens"):
        devices.token("alice")


def test_the_usage_names_every_service() -> None:
    from taskapi.__main__ import USAGE
    from taskapi.services import SERVICES

    line = " ".join(USAGE.split("service NAME", 1)[1].split("sinks", 1)[0].split())
    assert [s for s in SERVICES if s not in line] == []  # task-board was left out


def test_a_reminder_push_reads_its_due_date_as_the_mail_does(settings) -> None:
    due = ReminderDue(task_id="t", title="R", assignee="bob", due=NOW, remind_at=NOW)
    body = notification(due, "b-1", ctx("task.reminder_due"))
    assert body["body"] == "R is due 2026-11-30 12:00 UTC"  # was: 2026-11-30T12:00:00+00:00
    assert compose(due, settings, ctx())["Subject"] == f"Reminder: {body['body']}"  # type: ignore[index]


def test_the_demo_shows_a_reminder_set_for_another_day_with_its_date(settings) -> None:
    import sqlalchemy as sa

    from taskapi.effects import Effects
    from taskapi.services.reminders import metadata, timers

    settings.data.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(f"sqlite:///{settings.data / 'reminders.db'}")
    metadata.create_all(engine)
    tomorrow = NOW.timestamp() + 86400 - 60  # a day ahead, at a time of day already gone
    with engine.begin() as conn:
        conn.execute(
            timers.insert().values(
                task_id="t",
                title="R",
                due=tomorrow + 60,
                remind_at=tomorrow,
                correlation_id="c",
                causation_id="e",
                scheduled_at=NOW.timestamp(),
            )
        )
    engine.dispose()
    [effect] = Effects(settings).poll()
    assert effect.summary == "reminder for 'R' set for 2026-12-01 11:59:00 UTC"


def test_the_push_notification_names_the_task_and_the_device() -> None:
    event = TaskAssigned(task_id="t9", title="Ship", assignee="bob")
    body = notification(event, "b-1", ctx("task.assigned"))
    assert body == {
        "to": "b-1",
        "title": "Task assigned to you",
        "body": "Ship",
        "data": {"task_id": "t9", "type": "task.assigned", "event_id": "ev-1"},
    }


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[str, list[web.Request], list[int]]]:
    """A real HTTP server on 127.0.0.1 answering each POST with the status set in
    ``statuses[0]``; it records the requests."""
    seen: list[web.Request] = []
    statuses = [200]

    async def answer(request: web.Request) -> web.Response:
        seen.append(request)
        await request.read()
        return web.Response(status=statuses[0], text="nope")

    app = web.Application()
    app.router.add_post("/hook", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/hook", seen, statuses
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, WebhookFailed), (503, WebhookFailed), (429, WebhookFailed), (408, WebhookFailed),
     (400, WebhookRejected), (404, WebhookRejected)],
)  # fmt: skip
async def test_webhook_answers_are_retried_or_refused_by_status(
    endpoint, settings, status: int, error: type
) -> None:
    url, seen, statuses = endpoint
    statuses[0] = status
    async with contextlib.AsyncExitStack() as stack:
        http = client(settings, stack)
        with pytest.raises(error, match=f"answered {status}: nope"):
            await post_json(http, url, {"a": 1}, ctx())
        statuses[0] = 200
        await post_json(http, url, {"a": 2}, ctx())
    assert seen[0].headers["Idempotency-Key"] == "ev-1"
    assert seen[0].headers["X-Correlation-ID"] == "corr-1"
    assert seen[0].headers["Content-Type"] == "application/json"
    assert len(seen) == 2


async def test_an_unreachable_webhook_is_worth_retrying(settings) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with contextlib.AsyncExitStack() as stack:
        http = client(settings, stack)
        with pytest.raises(WebhookFailed, match="ClientConnectorError"):
            await post_json(http, f"http://127.0.0.1:{port}/hook", {}, ctx())


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
    async with contextlib.AsyncExitStack() as stack:
        with pytest.raises(ConfigError, match="email, slack, push, audit, reminders"):
            build("fax", settings, stack)


class _Recorder:
    """An aiosmtpd handler: records mails and sessions; answers RCPT with ``rcpt``."""

    def __init__(self) -> None:
        self.mails: list[bytes] = []
        self.sessions = 0
        self.rcpt = "250 OK"

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt.startswith("250"):
            envelope.rcpt_tos.append(address)
        return self.rcpt

    async def handle_DATA(self, server, session, envelope):
        self.mails.append(envelope.original_content or b"")
        return "250 Message accepted"


@pytest.fixture
def smtp_server(tmp_path: Path):
    from aiosmtpd.controller import Controller

    recorder = _Recorder()
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    controllers = []

    def start() -> None:
        controller = Controller(recorder, hostname="127.0.0.1", port=port)
        controller.start()
        controllers.append(controller)

    start()
    settings = Settings.from_env(tmp_path, env={"TASKAPI_SMTP": f"127.0.0.1:{port}"})
    yield recorder, settings, start, controllers
    for controller in controllers:
        with contextlib.suppress(Exception):
            controller.stop()


def _mail(n: int) -> Any:
    event = TaskCreated(task_id=f"t{n}", title=f"Task {n}", assignee="alice", created_at=NOW)
    return compose(event, Settings.from_env("/tmp", env={}), ctx())


def test_the_mailer_keeps_its_connection_and_replaces_a_stale_one(smtp_server) -> None:
    recorder, settings, start, controllers = smtp_server
    mailer = Mailer(settings)
    try:
        for n in range(3):
            mailer.send(_mail(n))
        assert (len(recorder.mails), recorder.sessions) == (3, 1)
        controllers[-1].stop()  # the server goes away and comes back: the kept session is dead
        start()
        mailer.send(_mail(3))
        assert (len(recorder.mails), recorder.sessions) == (4, 2)
        assert b"Subject: New task: Task 3" in recorder.mails[-1]
    finally:
        mailer.close()


def test_a_permanent_smtp_refusal_is_not_worth_retrying_but_a_transient_one_is(
    smtp_server,
) -> None:
    import smtplib

    recorder, settings, _, _ = smtp_server
    mailer = Mailer(settings)
    try:
        recorder.rcpt = "550 5.1.1 no such mailbox"
        with pytest.raises(MailRejected, match="refused every recipient"):
            mailer.send(_mail(1))
        recorder.rcpt = "451 4.3.0 try again later"
        with pytest.raises(smtplib.SMTPRecipientsRefused) as transient:
            mailer.send(_mail(2))
        assert not isinstance(transient.value, MailRejected)
        recorder.rcpt = "250 OK"
        mailer.send(_mail(3))  # the same session, still usable
        assert (len(recorder.mails), recorder.sessions) == (1, 1)
    finally:
        mailer.close()


def test_a_mail_server_that_is_down_is_worth_retrying(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    mailer = Mailer(Settings.from_env(tmp_path, env={"TASKAPI_SMTP": f"127.0.0.1:{port}"}))
    with pytest.raises(ConnectionRefusedError):
        mailer.send(_mail(1))
