"""The push service: a notification for the assignee's device, POSTed to a push
gateway, when a task is assigned and when its reminder is due.

Device tokens come from ``<data>/devices.json`` (``{"alice": "token", ...}``), read
again whenever the file changes: the stand-in for a device registry. An assignee with
no registered device gets no push (logged), which is not a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from taskapi.events import TOPIC, ReminderDue, TaskAssigned
from taskapi.services import base_app, due_text, inbox, retry_policy
from taskapi.services.webhook import WebhookRejected, client, post_json
from taskapi.settings import Settings
from tidings import ConfigError, Context, Tidings

__all__ = ["Devices", "build", "notification"]

log = logging.getLogger("taskapi.push")


class Devices:
    """Assignee -> device token, from a JSON file, reloaded when its mtime changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: float | None = None
        self._tokens: dict[str, str] = {}

    def token(self, assignee: str) -> str | None:
        try:
            stamp = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        if stamp != self._stamp:
            try:
                tokens = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{self.path} is not a JSON object of tokens: {exc}") from exc
            if not isinstance(tokens, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in tokens.items()
            ):
                raise ConfigError(f'{self.path} must map assignees to tokens: {{"alice": "…"}}')
            self._tokens, self._stamp = tokens, stamp
        return self._tokens.get(assignee)


def notification(event: TaskAssigned | ReminderDue, token: str, ctx: Context) -> dict[str, Any]:
    """The gateway's request body."""
    if isinstance(event, TaskAssigned):
        title, body = "Task assigned to you", event.title
    else:
        title, body = "Reminder", f"{event.title} is due {due_text(event.due)}"
    return {
        "to": token,
        "title": title,
        "body": body,
        "data": {"task_id": event.task_id, "type": ctx.type, "event_id": ctx.id},
    }


def build(settings: Settings, stack: contextlib.AsyncExitStack) -> Tidings:
    app = base_app("push", settings)
    http = client(settings, stack)
    devices = Devices(settings.devices_file)
    # A device file that cannot be read is a configuration error worth retrying (it may
    # be fixed meanwhile); a gateway refusal is not.
    policy = dataclasses.replace(retry_policy(settings), never=(WebhookRejected,))

    @app.subscriber(
        TOPIC,
        group="push",
        types=["task.assigned", "task.reminder_due"],
        retry=policy,
        inbox=inbox("push", settings, stack),
        personal=True,  # the assignee finds the device
    )
    async def push(event: TaskAssigned | ReminderDue, ctx: Context) -> None:
        if event.assignee is None:
            return  # unassigned: nobody to notify
        token = devices.token(event.assignee)
        if token is None:
            log.info("no device registered for %s: no push for %s", event.assignee, ctx.id)
            return
        await post_json(http, settings.push_gateway_url, notification(event, token, ctx), ctx)

    return app
