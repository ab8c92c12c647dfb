"""The audit service: every event on the task topic, as it was published, into the
hash-chained audit log (:mod:`taskapi.audit_log`), once.

It subscribes to every type, including ones it has never heard of, and never looks at
the payload: the record is the CloudEvent itself (``ctx.event``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from taskapi.audit_log import AuditLog
from taskapi.events import PARTITIONS, TOPIC
from taskapi.services import inbox, retry_policy
from taskapi.settings import Settings
from tidings import Context, Tidings

__all__ = ["build"]

log = logging.getLogger(__name__)


def _app(settings: Settings) -> Tidings:
    # Not base_app(): it registers the payload models, and an event of a known type
    # whose payload or version this build does not know would then fail decoding before
    # the handler and be dead-lettered unaudited. With no model registered every
    # payload arrives as raw JSON, which the handler ignores anyway.
    app = Tidings(settings.tidings_url, service="taskapi-audit")
    app.topic(TOPIC, partitions=PARTITIONS)
    return app


def build(settings: Settings, stack: contextlib.AsyncExitStack) -> Tidings:
    """The audit app: group ``audit`` from the earliest event, one line per event."""
    app = _app(settings)
    audit = AuditLog(settings.audit_dir)
    # The inbox keeps a replayed or redelivered event from being audited twice; the
    # log's own recent ids cover a crash between an append and the inbox's mark.
    box = inbox("audit", settings, stack)

    @app.subscriber(
        TOPIC,
        group="audit",
        start_from="earliest",
        retry=retry_policy(settings),
        inbox=box,
    )
    async def audit_event(payload: Any, ctx: Context) -> None:
        where = audit.path_for(ctx.event).name
        if await audit.append(ctx.event):
            log.info("audited %s %s in %s", ctx.type, ctx.id, where)
        else:
            log.info("%s %s is already in %s: not audited again", ctx.type, ctx.id, where)

    return app
