"""The Slack service: a Slack-format message (``text`` and ``blocks``) POSTed to an
incoming-webhook URL for every task created and completed, and for every escalation
(:mod:`taskapi.services.escalation`)."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

from taskapi.events import TOPIC, TaskCompleted, TaskCreated, TaskEscalated, TaskEscalationFailed
from taskapi.services import base_app, escalation, inbox, retry_policy
from taskapi.services.webhook import WebhookRejected, client, post_json
from taskapi.settings import Settings
from tidings import Context, Tidings

__all__ = ["build", "message"]


def message(event: TaskCreated | TaskCompleted, ctx: Context) -> dict[str, Any]:
    """The webhook body: ``text`` for notifications, ``blocks`` for the channel."""
    who = f" for {event.assignee}" if event.assignee else ""
    if isinstance(event, TaskCreated):
        text = f"New task{who}: {event.title}"
        headline = f":new: *New task*{who}: *{event.title}*"
        if event.due_at is not None:
            headline += f"\nDue {event.due_at.isoformat()} · priority {event.priority}"
    else:
        text = f"Task completed: {event.title}"
        headline = f":white_check_mark: *Completed*: *{event.title}*{who}"
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": headline}},
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f"task `{event.task_id}` · correlation `{ctx.correlationid}`",
                    }
                ],
            },
        ],
    }


def build(settings: Settings, stack: contextlib.AsyncExitStack) -> Tidings:
    app = base_app("slack", settings)
    http = client(settings, stack)
    policy = dataclasses.replace(retry_policy(settings), never=(WebhookRejected,))

    @app.subscriber(
        TOPIC,
        group="slack",
        types=["task.created", "task.completed", "task.escalated", "task.escalation_failed"],
        retry=policy,
        inbox=inbox("slack", settings, stack),
        personal=True,  # names the assignee
    )
    async def post_to_slack(
        event: TaskCreated | TaskCompleted | escalation.Notice, ctx: Context
    ) -> None:
        if isinstance(event, TaskEscalated | TaskEscalationFailed):
            body = escalation.post(event)
        else:
            body = message(event, ctx)
        if body is None:
            return
        try:
            await post_json(http, settings.slack_webhook_url, body, ctx)
        except WebhookRejected as exc:
            if not isinstance(event, TaskEscalated):
                raise
            # The escalation saga compensates: the manager gets a mail instead.
            await ctx.publish(TOPIC, escalation.failure(event, "slack", ctx, exc))

    return app
