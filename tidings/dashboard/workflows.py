"""Sagas and projections: the saga instances and one key's state, history and
pending deadlines, from :mod:`tidings.sagas` as ``tidings sagas list|show`` reads
them; where an app's projections stand, from :mod:`tidings.projections` as
``tidings projections status`` computes it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.dashboard.web import (
    MAX_TEXT,
    BadInput,
    dashboard_of,
    int_param,
    render,
    text_param,
)
from tidings.errors import ConfigError, TidingsError
from tidings.sagas import DEFAULT_PREFIX, SagaInfo, list_sagas, saga_databases, show_saga

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["routes"]

STATUSES = ("active", "finished", "failed")
MAX_SAGAS = 10_000


def _databases(request: Request) -> list[str | Engine]:
    """The sagas' databases: ``--sagas-db``, then those of the sagas of ``--app``."""
    config = dashboard_of(request).config
    service = [] if config.service is None else saga_databases(config.service)
    return [*config.sagas_db, *service]


async def _read(function: Any, *args: Any, **kwargs: Any) -> list[SagaInfo]:
    """``function`` of :mod:`tidings.sagas` in a thread; a database that cannot be read
    (no file, no saga table) is a 400 page saying which and what to give."""
    try:
        found: list[SagaInfo] = await asyncio.to_thread(function, *args, **kwargs)
    except ConfigError:
        raise
    except TidingsError as exc:
        raise ConfigError(
            f"{exc}; start the dashboard with the sagas' database (--sagas-db URL) or "
            "their app (--app MODULE:APP)"
        ) from None
    return found


async def sagas_page(request: Request) -> Response:
    databases = _databases(request)
    name = text_param(request, "name")
    status = text_param(request, "status")
    if status is not None and status not in STATUSES:
        raise BadInput(f"status={status} is not a saga status; give one of {', '.join(STATUSES)}")
    limit = int_param(request, "limit", 1000, low=1, high=MAX_SAGAS)
    found: list[SagaInfo] = []
    for db in databases:
        found += await _read(
            list_sagas, db, name=name, status=status, limit=limit, prefix=DEFAULT_PREFIX
        )
    return render(request, "sagas.html", databases=databases, sagas=found, name=name or "",
                  status=status or "", statuses=STATUSES, limit=limit)  # fmt: skip


async def saga_page(request: Request) -> Response:
    databases = _databases(request)
    key = request.path_params["key"]
    if len(key) > MAX_TEXT:
        raise BadInput(f"the key is {len(key)} characters long; at most {MAX_TEXT} are taken")
    name = text_param(request, "name")
    found: list[SagaInfo] = []
    for db in databases:
        found += await _read(show_saga, db, key, name=name, prefix=DEFAULT_PREFIX)
    code = 200 if found or not databases else 404
    return render(request, "saga.html", code, databases=databases, key=key, sagas=found)


async def projections_page(request: Request) -> Response:
    app = dashboard_of(request).config.service
    statuses = []
    if app is not None:
        async with app:  # started once more: the app may already run in this process
            statuses = [await p.status() for p in app.projections.values()]
    return render(request, "projections.html", app=app, statuses=statuses)


routes = [
    Route("/sagas", sagas_page, name="sagas"),
    Route("/sagas/{key:path}", saga_page, name="saga"),
    Route("/projections", projections_page, name="projections"),
]
