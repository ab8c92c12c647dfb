"""What the inbox tests share: the effects table the handlers write, readers of
effects and marks, handlers, and deliveries for calling the middleware directly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from tidings import Context, Event, Tidings
from tidings.inbox import Inbox
from tidings.middleware import Delivery, Retry, Stats
from tidings.middleware.inbox import InboxMiddleware
from tidings.subscriber import Subscriber
from tidings.transport import Record

TOPIC = "task-events"
PARTITIONS = 4

effects_md = sa.MetaData()
effects = sa.Table(
    "effects",
    effects_md,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False),  # no unique key: doubles show
    sa.Column("handler", sa.String(64), nullable=False),
)


def middleware() -> list[Any]:
    # Until InboxMiddleware is in default_middleware(), pass it explicitly (innermost).
    return [Retry(base_delay=0.01, max_delay=0.02), InboxMiddleware()]


def effect_rows(engine: sa.Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(effects.c.event_id, effects.c.handler))]


def mark_rows(engine: sa.Engine, inbox: Inbox) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        t = inbox.table
        return [tuple(r) for r in conn.execute(sa.select(t.c.consumer, t.c.event_id))]


def add_effect(session: Any, ctx: Context, handler: str = "h") -> Any:
    """The handler's write, through ``ctx.session`` (a Core insert: flushed at once)."""
    return session.execute(effects.insert().values(event_id=ctx.id, handler=handler))


def subscribe_writer(
    app: Tidings, inbox: Inbox, kind: str, calls: list[str], *, group: str = "g"
) -> None:
    """A handler of ``kind`` (sync/async) that writes one effect row per call."""
    if kind == "sync":

        @app.subscriber(TOPIC, group=group, inbox=inbox)
        def write(payload: Any, ctx: Context) -> None:
            assert isinstance(ctx.session, Session)
            calls.append(ctx.id)
            add_effect(ctx.session, ctx)

    else:

        @app.subscriber(TOPIC, group=group, inbox=inbox)
        async def write_async(payload: Any, ctx: Context) -> None:
            assert isinstance(ctx.session, AsyncSession)
            calls.append(ctx.id)
            await add_effect(ctx.session, ctx)


async def publish_one_key(app: Tidings, n: int) -> list[str]:
    """``n`` events of one key: one partition, one lane, in this order; their ids."""
    sent = await app.publish_many(
        TOPIC, [{"n": i} for i in range(n)], type="task.created", subject="one-key"
    )
    return [e.id for e in sent]


def async_url(db_url: str) -> str:
    return db_url.replace("sqlite:///", "sqlite+aiosqlite:///", 1)


def subscriber(
    inbox: Inbox | None, handler: Callable[..., Any], *, is_async: bool = True, group: str = "g"
) -> Subscriber:
    return Subscriber(
        topic=TOPIC,
        group=group,
        handler=handler,
        types=None,
        start_from="earliest",
        is_async=is_async,
        takes_context=True,
        inbox=inbox,
    )


def delivery(sub: Subscriber, event: Event, stats: Stats) -> Delivery:
    return Delivery(sub, event, Record(TOPIC, 0, 0, 0, None, b""), sub.group, stats)


def an_event() -> Event:
    return Tidings("memory://", service="test").build({}, type="task.created")


def writer(kind: str, calls: list[str], pause: float) -> Callable[[Delivery], Any]:
    """A call_next that writes one effect through ``delivery.session`` after ``pause``;
    with a sync session it does so in a thread, as the worker runs sync handlers."""

    async def call_next(d: Delivery) -> None:
        calls.append(d.event.id)
        await asyncio.sleep(pause)
        stmt = effects.insert().values(event_id=d.event.id, handler="h")
        if kind == "async":
            await d.session.execute(stmt)
        else:
            await asyncio.to_thread(d.session.execute, stmt)

    return call_next


def old_marks(engine: sa.Engine, inbox: Inbox, consumer: str, ages: list[timedelta]) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            inbox.table.insert(),
            [
                {"consumer": consumer, "event_id": f"e{i}", "handled_at": now - age}
                for i, age in enumerate(ages)
            ],
        )
