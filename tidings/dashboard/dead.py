"""A group's dead letters: the list (filtered, paged), one entry in full, replaying
one, a selection or a filter (with progress), purging (with confirmation); the work is
:mod:`tidings.dead_letters`'s, as ``tidings dlq`` does it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from tidings import admin, dead_letters
from tidings.dashboard.actions import confirmed, record
from tidings.dashboard.groups import group_of
from tidings.dashboard.state import Job
from tidings.dashboard.text import utc
from tidings.dashboard.web import (
    BadInput,
    Form,
    dashboard_of,
    int_param,
    link,
    read_form,
    reading,
    render,
    text_param,
)
from tidings.dead_letters import DeadLetterLog, Filter
from tidings.errors import TidingsError

__all__ = ["routes"]

FILTERS = ("type", "error_type", "since", "until")


def _filter(values: dict[str, str | None], ids: list[str] | None = None) -> Filter:
    return admin.dead_letter_filter(
        datetime.now(UTC),
        types=[values["type"] or ""],
        error_types=[values["error_type"] or ""],
        ids=ids or (),
        since=values["since"],
        until=values["until"],
        names=("since", "until"),
    )


async def list_page(request: Request) -> Response:
    dashboard = dashboard_of(request)
    group = group_of(request)
    values = {name: text_param(request, name) for name in FILTERS}
    where = _filter(values)
    every = int_param(request, "all", 0, high=1) == 1
    page = int_param(request, "page", 1, low=1)
    if dashboard.unread(f"dead-letter list {group}"):
        return _reading(request, group, "dead-letters")
    log, entries = await dashboard.dead_listing(group, where, every=every)
    size = dashboard.config.page_size
    pages = max((len(entries) + size - 1) // size, 1)
    if page > pages:
        raise BadInput(
            f"page {page} is past the last page ({pages}) of the {len(entries)} matching "
            "dead letter(s); go to page 1"
        )
    shown = log.with_states(entries[(page - 1) * size : page * size])
    query = {**values, "all": 1 if every else None}
    return render(request, "dead_letters.html", group=group, rows=shown, total=len(entries),
                  depth=log.depth(), page=page, pages=pages, values=values, every=every,
                  query=query)  # fmt: skip


def _reading(request: Request, group: str, page: str) -> Response:
    what = f"The dead letters of group {group}, which the dashboard reads since it started."
    return reading(request, f"dead-letter list {group}", page, f"Dead letters of {group}", what)


def _when(ts: float) -> str:
    return utc(ts)


async def entry_page(request: Request) -> Response:
    dashboard = dashboard_of(request)
    group = group_of(request)
    wanted = str(request.path_params["entry"])
    reveal = int_param(request, "reveal", 0, high=1) == 1
    if reveal and dashboard.config.shredder is None:
        raise BadInput(
            "reveal=1 shows personal fields in clear, and needs the key store: start the "
            "dashboard with --reveal (and the master key in $TIDINGS_MASTER_KEY)"
        )
    if dashboard.unread(f"dead-letter list {group}"):
        return _reading(request, group, "dead-letter")
    log = await dashboard.dead_log(group)
    entry = log.entries.get(wanted) or next(
        (e for e in log.entries.values() if e.event_id == wanted), None
    )
    if entry is None:
        raise BadInput(f"no dead letter {wanted!r} in group {group}; see its list of dead letters")
    state = log.state(entry.entry) or "dead"
    full = await dead_letters.read_entry(await dashboard.transport(), entry)
    shredder = dashboard.config.shredder if reveal else None
    doc = dead_letters.shown_detail(full.detail(state), shredder)
    pretty = None if doc["event"] is None else _pretty(doc["event"])
    return render(request, "dead_letter.html", group=group, doc=doc, pretty=pretty,
                  revealed=reveal)  # fmt: skip


def _pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


@dataclass
class Chosen:
    """What an action's form chose: its group, its form, the filter, the group's log."""

    group: str
    form: Form
    where: Filter
    values: dict[str, str | None]
    ids: list[str]
    log: DeadLetterLog

    @property
    def scope(self) -> str:
        return self.form.get("scope") or "filter"


async def _chosen(request: Request) -> Chosen:
    group = group_of(request)
    form = await read_form(request)
    values = {name: form.get(name) for name in FILTERS}
    ids = form.all("id")
    if form.get("scope") == "selected" and not ids:
        raise BadInput("no dead letter was selected; tick the ones to act on")
    log = await dashboard_of(request).dead_log(group)
    return Chosen(group, form, _filter(values, ids), values, ids, log)


async def replay(request: Request) -> Response:
    """First step: how many would be replayed; second: the replay, as a job."""
    dashboard = dashboard_of(request)
    c = await _chosen(request)
    group, form, where = c.group, c.form, c.where
    chosen, cut = dead_letters.replay_plan(c.log, where)
    if not confirmed(form):
        return _confirm(request, c, "replay", len(chosen), skipped=len(cut))
    if not chosen:
        raise BadInput(f"no dead letter of group {group} matches, waiting to be replayed")
    job = dashboard.new_job("replay", group, len(chosen))
    dashboard.tasks.add(task := asyncio.create_task(_replay(request, form, job, where)))
    task.add_done_callback(dashboard.tasks.discard)
    return RedirectResponse(link(request, "job", id=job.id), status_code=303)


async def _replay(request: Request, form: Form, job: Job, where: Filter) -> None:
    dashboard = dashboard_of(request)
    try:
        count = await dead_letters.replay(
            await dashboard.transport(), job.group, where, progress=job.progress
        )
        job.done = job.total = count
        await record(request, form, "replay", job.group, count, _describe(where))
    except (TidingsError, OSError) as exc:
        job.error = str(exc)
    finally:
        job.finished = True


def _describe(where: Filter) -> str:
    parts = [f"{len(where.ids)} selected"] if where.ids else []
    parts += [f"type {t}" for t in sorted(where.types)]
    parts += [f"error {t}" for t in sorted(where.error_types)]
    if where.since is not None:
        parts.append(f"since {_when(where.since)}")
    if where.until is not None:
        parts.append(f"until {_when(where.until)}")
    return ", ".join(parts) or "every waiting entry"


async def purge(request: Request) -> Response:
    """First step: how many would be purged; second: the purge, recorded."""
    c = await _chosen(request)
    count = len(c.log.matching(c.where))
    if not confirmed(c.form):
        return _confirm(request, c, "purge", count)
    purged = await dead_letters.purge(await dashboard_of(request).transport(), c.group, c.where)
    await record(request, c.form, "purge", c.group, purged, _describe(c.where))
    return _confirm(request, c, "purge", purged, done=purged)


def _confirm(
    request: Request, c: Chosen, action: str, count: int, *, skipped: int = 0,
    done: int | None = None,
) -> Response:  # fmt: skip
    """The confirmation step's page (``done``: the result page of a purge)."""
    return render(request, "confirm.html", group=c.group, action=action, count=count,
                  skipped=skipped, values=c.values, ids=c.ids, scope=c.scope,
                  done=done)  # fmt: skip


async def job_page(request: Request) -> Response:
    dashboard = dashboard_of(request)
    job = dashboard.jobs.get(str(request.path_params["id"]))
    if job is None:
        raise BadInput("no such job here (jobs are kept while the dashboard runs)")
    if request.query_params.get("format") == "json":
        from starlette.responses import JSONResponse

        return JSONResponse(job.as_json())
    return render(request, "job.html", job=job)


routes = [
    Route("/groups/{group}/dead-letters", list_page, name="dead_letters"),
    Route("/groups/{group}/dead-letters/replay", replay, methods=["POST"], name="replay"),
    Route("/groups/{group}/dead-letters/purge", purge, methods=["POST"], name="purge"),
    Route("/groups/{group}/dead-letters/{entry}", entry_page, name="dead_letter"),
    Route("/jobs/{id}", job_page, name="job"),
]
