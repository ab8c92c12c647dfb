"""The email service: mail to the assignee when a task is created, assigned to them,
completed, or due soon (its reminder), sent over SMTP.

Each mail carries ``Message-ID: <event id@taskapi>``, ``X-Correlation-ID`` and
``X-Tidings-Event-ID``: the correlation links it to the request that caused it, and a
mail system can drop the one repeat that at-least-once delivery allows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import smtplib
from email.message import EmailMessage
from email.utils import format_datetime

from taskapi.events import TOPIC, ReminderDue, TaskAssigned, TaskCompleted, TaskCreated
from taskapi.services import base_app, inbox, retry_policy
from taskapi.settings import Settings
from tidings import Context, Tidings

__all__ = ["MailRejected", "build", "compose"]

log = logging.getLogger("taskapi.email")

Notice = TaskCreated | TaskAssigned | TaskCompleted | ReminderDue


class MailRejected(Exception):
    """The SMTP server refused the mail permanently (5xx): no point retrying."""


def compose(event: Notice, settings: Settings, ctx: Context) -> EmailMessage | None:
    """The mail for ``event``, or None when it has nobody to go to."""
    if event.assignee is None:
        return None
    if isinstance(event, TaskCreated):
        subject = f"New task: {event.title}"
        lines = [f"A task was created for you: {event.title}"]
        if event.description:
            lines += ["", event.description]
        if event.due is not None:
            lines += ["", f"Due: {event.due.isoformat()} (priority {event.priority})"]
    elif isinstance(event, TaskAssigned):
        subject = f"Assigned to you: {event.title}"
        lines = [f"The task {event.title!r} is now assigned to you."]
        if event.previous_assignee:
            lines.append(f"It was assigned to {event.previous_assignee}.")
    elif isinstance(event, TaskCompleted):
        subject = f"Completed: {event.title}"
        lines = [f"The task {event.title!r} was completed at {event.completed_at.isoformat()}."]
    else:
        subject = f"Reminder: {event.title} is due {event.due:%Y-%m-%d %H:%M} UTC"
        lines = [f"The task {event.title!r} is due at {event.due.isoformat()}."]
    mail = EmailMessage()
    mail["From"] = settings.mail_from
    mail["To"] = settings.address(event.assignee)
    mail["Subject"] = subject
    mail["Date"] = format_datetime(ctx.event.time)
    mail["Message-ID"] = f"<{ctx.id}@taskapi>"
    mail["X-Correlation-ID"] = ctx.correlationid
    mail["X-Tidings-Event-ID"] = ctx.id
    mail.set_content("\n".join([*lines, "", f"Task id: {event.task_id}"]) + "\n")
    return mail


def send(mail: EmailMessage, settings: Settings) -> None:
    """Send over SMTP; a permanent refusal raises MailRejected, anything else retries."""
    try:
        with smtplib.SMTP(
            settings.smtp_host, settings.smtp_port, timeout=settings.http_timeout
        ) as smtp:
            smtp.send_message(mail)
    except smtplib.SMTPResponseException as exc:
        if 500 <= exc.smtp_code < 600:
            raise MailRejected(f"SMTP server refused the mail: {exc.smtp_code} {exc}") from exc
        raise
    except smtplib.SMTPRecipientsRefused as exc:
        raise MailRejected(f"SMTP server refused every recipient: {exc.recipients}") from exc


def build(settings: Settings, stack: contextlib.AsyncExitStack) -> Tidings:
    app = base_app("email", settings)
    policy = dataclasses.replace(retry_policy(settings), never=(MailRejected,))

    # A plain def: smtplib blocks, so tidings runs it in its handler threads.
    @app.subscriber(
        TOPIC,
        group="email",
        types=["task.created", "task.assigned", "task.completed", "task.reminder_due"],
        retry=policy,
        inbox=inbox("email", settings),
    )
    def email(event: Notice, ctx: Context) -> None:
        mail = compose(event, settings, ctx)
        if mail is None:
            log.debug("%s %s has no assignee: no mail", ctx.type, ctx.id)
            return
        send(mail, settings)

    return app
