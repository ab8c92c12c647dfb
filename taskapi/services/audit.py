"""The audit service: every event on the task topic, as it was published, into the
keyed audit chain (:mod:`taskapi.audit_log`), once, with the files' heads anchored in
the log (:mod:`taskapi.audit_anchor`).

It subscribes to every type and records the CloudEvent itself (``ctx.event``): the fact
as the log holds it, at the version it was written. It reads the payloads with the
system's contracts (:func:`taskapi.events.register`), as every service does, so an
event written at an older version is read as today's (``task.created`` v1 as v2, by the
upcaster) and its line also keeps what it was read as (``read``). A type it has no
model for arrives as raw JSON and is audited as it is. An event it cannot read is a
dead letter (``poison``) before the handler: a version newer than this build knows,
until the service is deployed with its model (then ``tidings dlq replay audit`` audits
it), or a payload that does not match its model.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from pydantic import BaseModel

from taskapi.audit_anchor import Checkpoints
from taskapi.audit_chain import load_key
from taskapi.audit_log import AuditLog
from taskapi.events import TOPIC
from taskapi.services import base_app, inbox, retry_policy
from taskapi.settings import Settings
from tidings import Context, Tidings

__all__ = ["build", "read_as"]

log = logging.getLogger(__name__)


def read_as(payload: Any, ctx: Context) -> dict[str, Any] | None:
    """What an upcast event was read as (``{"version", "data"}``); None for an event
    read at the version it was written."""
    if ctx.read_version == ctx.event.dataversion or not isinstance(payload, BaseModel):
        return None
    return {"version": ctx.read_version, "data": payload.model_dump(mode="json")}


def build(settings: Settings, stack: contextlib.AsyncExitStack) -> Tidings:
    """The audit app: group ``audit`` from the earliest event, one line per event, and
    a checkpoint every ``settings.audit_checkpoint_every`` lines of a day."""
    app = base_app("audit", settings)
    key = load_key(settings, create=True)
    audit = AuditLog(settings.audit_dir, key)
    every = settings.audit_checkpoint_every
    checkpoints = Checkpoints(app, key.id, every, folder=settings.audit_dir)
    app.add_component(checkpoints)
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
        read = read_as(payload, ctx)
        async with checkpoints.writing():
            head = await audit.append(ctx.event, read=read)
            if head is None:
                log.info("%s %s is already in %s: not audited again", ctx.type, ctx.id, where)
                return
            upcast = f" (v{ctx.event.dataversion} read as v{ctx.read_version})" if read else ""
            log.info("audited %s %s%s in %s", ctx.type, ctx.id, upcast, where)
            await checkpoints.appended(head)

    return app
