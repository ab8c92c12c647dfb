"""The services of the reference system, each its own consumer group and process.

Each module has ``build(settings, stack) -> Tidings``: an app with that service's
subscribers (one group, named after the service), whose resources (HTTP clients,
files) are closed by ``stack``. :func:`serve` runs one of them until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Protocol

from taskapi.events import register
from taskapi.settings import Settings
from tidings import ConfigError, Context, Inbox, Retry, Tidings, Worker

__all__ = ["SERVICES", "base_app", "build", "due_text", "inbox", "retry_policy", "serve"]

SERVICES = ("email", "slack", "push", "audit", "reminders", "task-board", "escalation")


class _Module(Protocol):
    def build(self, settings: Settings, stack: contextlib.AsyncExitStack) -> Tidings: ...


def base_app(name: str, settings: Settings) -> Tidings:
    """A Tidings app for service ``name`` with the task events registered."""
    return register(
        Tidings(settings.tidings_url, service=f"taskapi-{name}", personal=settings.keys)
    )


def retry_policy(settings: Settings) -> Retry:
    """The services' retry policy: exhausted, the event goes to ``<group>.dlq``."""
    return Retry(
        max_attempts=settings.retry_attempts,
        base_delay=settings.retry_base_delay,
        max_delay=max(settings.retry_max_delay, settings.retry_base_delay),
    )


def mail_message(
    settings: Settings, ctx: Context, to: str, subject: str, lines: list[str], task_id: str
) -> EmailMessage:
    """A mail of the services about the handled event (``ctx``): its headers carry the
    event's id and correlation id; its body ``lines`` and the task id."""
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(ctx.event.time)
    message["Message-ID"] = f"<{ctx.id}@taskapi>"
    message["X-Correlation-ID"] = ctx.correlationid
    message["X-Tidings-Event-ID"] = ctx.id
    message.set_content("\n".join([*lines, "", f"Task id: {task_id}"]) + "\n")
    return message


def due_text(due: datetime) -> str:
    """A due date as a person reads it in a mail or a push: ``2026-11-30 12:00 UTC``."""
    return f"{due.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def inbox(name: str, settings: Settings, stack: contextlib.AsyncExitStack) -> Inbox:
    """The service's inbox, in its own SQLite file under the data folder, closed by
    ``stack`` (its engines and its sweeper) when the service stops."""
    box = Inbox(settings.state_db(name))
    stack.push_async_callback(box.close)
    return box


def build(name: str, settings: Settings, stack: contextlib.AsyncExitStack) -> Tidings:
    if name not in SERVICES:
        raise ConfigError(f"unknown service {name!r}; the services are: {', '.join(SERVICES)}")
    module: _Module = importlib.import_module(f"taskapi.services.{name.replace('-', '_')}")
    return module.build(settings.ensure(), stack)


async def serve(
    name: str,
    settings: Settings,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Tidings], None] | None = None,
) -> None:
    """Run service ``name`` until ``stop`` is set, or SIGTERM/SIGINT if none is given.

    ``on_ready`` is called once the app is connected to the log, before handling.
    """
    async with contextlib.AsyncExitStack() as stack:
        app = build(name, settings, stack)
        worker = Worker(app)
        async with app:
            if on_ready is not None:
                on_ready(app)
            # Without stop, this is the service's own process ('taskapi SERVICE'), as
            # under 'tidings run'; with one, a guest (a test, the demo's supervisor).
            await worker.serve(stop, tune_gc=stop is None)
