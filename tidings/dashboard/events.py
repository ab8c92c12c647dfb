"""Events: browse a topic from an offset or a time, search by id, type, subject or
correlation id; each event as pretty JSON and as ``tidings publish`` input. The
reading is :func:`tidings.tail.tail`'s, as ``tidings tail`` reads."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings import admin, tail
from tidings.codec import encode
from tidings.dashboard.looks import topics_look
from tidings.dashboard.web import BadInput, dashboard_of, int_param, render, text_param
from tidings.errors import ConfigError, InvalidEventType
from tidings.shredding import Shredder
from tidings.transport import Transport, check_topic_name

__all__ = ["routes"]

SEARCH_SECONDS = 10.0  # a search stops after this long, with what it found so far
FIELDS = ("from", "type", "subject", "correlation", "id")


@dataclass(frozen=True)
class Shown:
    """One event as the page shows it."""

    entry: tail.TailEntry
    pretty: str
    line: str | None  # ``tidings publish`` input; None for binary data


async def index(request: Request) -> Response:
    topics = await topics_look(dashboard_of(request), internal=True)
    return render(request, "events_index.html", topics=topics)


def _topic(request: Request) -> str:
    try:
        return check_topic_name(str(request.path_params["topic"]))
    except ConfigError as exc:
        raise BadInput(str(exc)) from None


def _after(text: str | None) -> dict[int, int]:
    """``after=P:O,P:O``: the next page starts after these offsets."""
    if text is None:
        return {}
    found = {}
    for part in text.split(","):
        p, _, o = part.partition(":")
        if not (p.isascii() and p.isdigit() and o.isascii() and o.isdigit()) or len(part) > 30:
            raise BadInput(
                f"after={text!r} is not a list of PARTITION:OFFSET; use the page's links"
            )
        found[int(p)] = int(o) + 1
    return found


def _where(values: dict[str, str | None]) -> tail.TailFilter:
    try:
        return tail.TailFilter(
            frozenset([values["type"]]) if values["type"] else None,
            values["subject"],
            values["correlation"],
            values["id"],
        )
    except InvalidEventType as exc:
        raise BadInput(f"type: {exc}") from None


async def topic_page(request: Request) -> Response:
    dashboard = dashboard_of(request)
    topic = _topic(request)
    values = {name: text_param(request, name) for name in FIELDS}
    limit = int_param(request, "limit", dashboard.config.page_size, low=1, high=500)
    reveal = int_param(request, "reveal", 0, high=1) == 1
    if reveal and dashboard.config.shredder is None:
        raise BadInput(
            "reveal=1 shows personal fields in clear, and needs the key store: start the "
            "dashboard with --reveal (and the master key in $TIDINGS_MASTER_KEY)"
        )
    position = admin.parse_position(values["from"] or "earliest", datetime.now(UTC),
                                    offsets=True, name="from")  # fmt: skip
    where = _where(values)
    after = _after(text_param(request, "after"))
    transport = await dashboard.transport()
    start = await admin.resolve_start(transport, topic, position)  # TopicNotFound: 404
    start.update({p: max(o, start.get(p, 0)) for p, o in after.items()})
    shredder = dashboard.config.shredder if reveal else None
    shown, undecodable, timed_out = await _read(transport, topic, start, where, limit, shredder)
    last = {p: o - 1 for p, o in after.items()}
    for s in shown:
        last[s.entry.record.partition] = s.entry.record.offset
    more = ",".join(f"{p}:{o}" for p, o in sorted(last.items())) if len(shown) == limit else None
    return render(request, "events.html", topic=topic, values=values, shown=shown,
                  undecodable=undecodable, timed_out=timed_out, more=more, limit=limit,
                  revealed=reveal, seconds=SEARCH_SECONDS)  # fmt: skip


async def _read(
    transport: Transport,
    topic: str,
    start: dict[int, int],
    where: tail.TailFilter,
    limit: int,
    shredder: Shredder | None,
) -> tuple[list[Shown], list[tail.TailEntry], bool]:
    shown: list[Shown] = []
    undecodable: list[tail.TailEntry] = []
    entries = tail.tail(transport, topic, start, where=where, limit=limit, reveal=shredder)
    try:
        async with asyncio.timeout(SEARCH_SECONDS), contextlib.aclosing(entries):
            async for entry in entries:
                if entry.event is None:
                    if len(undecodable) < limit:
                        undecodable.append(entry)
                    continue
                pretty = orjson.dumps(orjson.loads(encode(entry.event, 1 << 30)),
                                      option=orjson.OPT_INDENT_2).decode()  # fmt: skip
                shown.append(Shown(entry, pretty, admin.publish_line(entry.event)))
    except TimeoutError:
        return shown, undecodable, True
    return shown, undecodable, False


routes = [
    Route("/events", index, name="events_index"),
    Route("/events/{topic}", topic_page, name="events"),
]
