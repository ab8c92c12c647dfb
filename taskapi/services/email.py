"""The email service: mail to the assignee when a task is created, assigned to them,
completed, or due soon (its reminder), and to the manager when it is escalated
(:mod:`taskapi.services.escalation`), sent over SMTP.

Each mail carries ``Message-ID: <event id@taskapi>``, ``X-Correlation-ID`` and
``X-Tidings-Event-ID``: the correlation links it to the request that caused it, and a
mail system can drop the one repeat that at-least-once delivery allows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import smtplib
import threading
from email.message import EmailMessage

from taskapi.events import (
    TOPIC,
    ReminderDue,
    TaskAssigned,
    TaskCompleted,
    TaskCreated,
    TaskEscalated,
    TaskEscalationFailed,
)
from taskapi.services import (
    base_app,
    due_text,
    escalation,
    inbox,
    mail_message,
    retry_policy,
)
from taskapi.settings import Settings
from tidings import Context, Tidings

__all__ = ["MailRejected", "Mailer", "build", "compose"]

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
        if event.due_at is not None:
            lines += ["", f"Due: {event.due_at.isoformat()} (priority {event.priority})"]
    elif isinstance(event, TaskAssigned):
        subject = f"Assigned to you: {event.title}"
        lines = [f"The task {event.title!r} is now assigned to you."]
        if event.previous_assignee:
            lines.append(f"It was assigned to {event.previous_assignee}.")
    elif isinstance(event, TaskCompleted):
        subject = f"Completed: {event.title}"
        lines = [f"The task {event.title!r} was completed at {event.completed_at.isoformat()}."]
    else:
        subject = f"Reminder: {event.title} is due {due_text(event.due)}"
        lines = [f"The task {event.title!r} is due at {event.due.isoformat()}."]
    to = settings.address(event.assignee)
    return mail_message(settings, ctx, to, subject, lines, event.task_id)


class Mailer:
    """Sends over SMTP, keeping one connection open per handler thread (an SMTP
    session carries one mail at a time; a new session per mail costs a connect, EHLO
    and QUIT: measured 48 ms against 3.4 ms per mail on a kept connection)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local = threading.local()
        self._open: set[smtplib.SMTP] = set()
        self._lock = threading.Lock()

    def send(self, mail: EmailMessage) -> None:
        """Send ``mail``; a permanent refusal raises MailRejected, anything else is
        worth retrying. A kept connection the server has closed is replaced once."""
        smtp: smtplib.SMTP | None = getattr(self._local, "smtp", None)
        reused = smtp is not None
        while True:
            if smtp is None:
                smtp = self._connect()
            try:
                smtp.send_message(mail)
                return
            except smtplib.SMTPResponseException as exc:
                with contextlib.suppress(smtplib.SMTPException, OSError):
                    smtp.rset()  # the session stays usable for the next mail
                if 500 <= exc.smtp_code < 600:
                    raise MailRejected(
                        f"SMTP server refused the mail: {exc.smtp_code} {exc}"
                    ) from exc
                raise
            except smtplib.SMTPRecipientsRefused as exc:
                with contextlib.suppress(smtplib.SMTPException, OSError):
                    smtp.rset()
                if all(500 <= code < 600 for code, _ in exc.recipients.values()):
                    raise MailRejected(
                        f"SMTP server refused every recipient: {exc.recipients}"
                    ) from exc
                raise  # a 4xx refusal: "try again later"
            except (smtplib.SMTPServerDisconnected, OSError):
                self._drop(smtp)
                smtp = None
                if not reused:
                    raise
                reused = False  # the kept one had gone stale: one fresh try

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        smtp = smtplib.SMTP(
            s.smtp_host, s.smtp_port, local_hostname="taskapi-email", timeout=s.http_timeout
        )
        self._local.smtp = smtp
        with self._lock:
            self._open.add(smtp)
        return smtp

    def _drop(self, smtp: smtplib.SMTP) -> None:
        self._local.smtp = None
        with self._lock:
            self._open.discard(smtp)
        with contextlib.suppress(Exception):
            smtp.close()

    def close(self) -> None:
        """Say goodbye on every kept connection (at the service's exit)."""
        with self._lock:
            connections, self._open = list(self._open), set()
        for smtp in connections:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                smtp.quit()
            smtp.close()


def build(settings: Settings, stack: contextlib.AsyncExitStack) -> Tidings:
    app = base_app("email", settings)
    policy = dataclasses.replace(retry_policy(settings), never=(MailRejected,))
    mailer = Mailer(settings)
    stack.callback(mailer.close)

    # A plain def: smtplib blocks, so tidings runs it in its handler threads.
    @app.subscriber(
        TOPIC,
        group="email",
        types=[
            "task.created", "task.assigned", "task.completed", "task.reminder_due",
            "task.escalated", "task.escalation_failed",
        ],
        retry=policy,
        inbox=inbox("email", settings, stack),
        personal=True,  # the assignee is the address
    )  # fmt: skip
    def email(event: Notice | escalation.Notice, ctx: Context) -> None:
        if isinstance(event, TaskEscalated | TaskEscalationFailed):
            mail = escalation.mail(event, settings, ctx)
        else:
            mail = compose(event, settings, ctx)
        if mail is None:
            log.debug("%s %s has no one to mail", ctx.type, ctx.id)
            return
        try:
            mailer.send(mail)
        except MailRejected as exc:
            if not isinstance(event, TaskEscalated):
                raise
            # The escalation saga compensates: the manager hears of it on Slack.
            ctx.publish_sync(TOPIC, escalation.failure(event, "email", ctx, exc))

    return app
