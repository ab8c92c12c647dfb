"""The Task API: FastAPI over a SQL database, announcing every change as an event.

Each change writes the task and its events (``task.created``, ``task.updated``,
``task.assigned``, ``task.completed``, ``task.deleted``) in one transaction through a
transactional outbox; a relay in the same process moves them to the ``task-events``
topic of the log. Requests never wait for the log or for any consumer. Every event
caused by a request carries the request's ``X-Correlation-ID`` as its correlation id.

``taskapi api [--data DIR] [--host 127.0.0.1] [--port 8000] [--no-relay] [--no-events]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from taskapi.api_models import ASSIGNEE_PATTERN, Detail, TaskCreate, TaskList, TaskOut, TaskPatch
from taskapi.board import board_rows
from taskapi.db import Status, create_schema, make_engine
from taskapi.events import API_TYPES, TOPIC, register
from taskapi.net import ListenError, Server, listen
from taskapi.net import port as port_number
from taskapi.settings import Settings
from taskapi.tasks import TaskIsCompleted, TaskNotFound, TaskStore
from tidings import ConfigError, Tidings
from tidings.asgi import CorrelationMiddleware
from tidings.logs import FORMATS, configure
from tidings.outbox import Outbox

__all__ = ["create_app", "main"]

MAX_OFFSET = 2**63 - 1  # the largest OFFSET both databases take (a signed 64-bit integer)
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Detail, "description": "No task has this id"}
}
# FastAPI answers 400 to a body it cannot parse at all (e.g. bytes that are not UTF-8).
_BAD_BODY: dict[int | str, dict[str, Any]] = {
    400: {"model": Detail, "description": "The body could not be parsed"}
}
_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": Detail, "description": "The task is completed"}
}


class Health(BaseModel):
    status: Literal["ok"]


class BoardCount(BaseModel):
    assignee: str | None
    status: Status
    tasks: int


class Board(BaseModel):
    counts: list[BoardCount]
    total: int


def create_app(settings: Settings, *, events: bool = True, relay: bool = True) -> FastAPI:
    """The Task API on ``settings.db_url``, its events in ``settings.tidings_url``.

    ``events=False``: the same endpoints writing the same tasks without events (the
    benchmark's baseline; no outbox, no log). ``relay=False``: events wait in the
    outbox table for a relay run elsewhere (``tidings outbox relay``). The tables are
    created at startup if missing. ``app.state`` holds ``engine``, ``outbox`` and
    ``tidings`` (``None`` without events).
    """
    engine = make_engine(settings.db_url)
    board_engine = make_engine(settings.board_url)  # the task-board projection's, read only
    tidings: Tidings | None = None
    outbox: Outbox | None = None
    if events:
        tidings = register(Tidings(settings.tidings_url, service="taskapi", personal=settings.keys))
        tidings.publishes(TOPIC, API_TYPES)  # for its AsyncAPI document
        outbox = Outbox(tidings, engine, topic=TOPIC)
    store = TaskStore(engine, outbox)

    def prepare() -> None:
        create_schema(engine)
        if outbox is not None:
            outbox.create_table()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            await asyncio.to_thread(prepare)
            async with contextlib.AsyncExitStack() as stack:
                if tidings is not None:
                    await stack.enter_async_context(tidings)
                if relay and outbox is not None:
                    stop = asyncio.Event()
                    relaying = asyncio.create_task(outbox.relay().run(stop))

                    async def stop_relay() -> None:
                        # The relay finishes its pass, releases its lease and returns;
                        # rows it did not reach wait for the next relay.
                        stop.set()
                        await relaying

                    stack.push_async_callback(stop_relay)
                yield
        finally:
            engine.dispose()
            board_engine.dispose()

    app = FastAPI(
        title="Task API",
        version="1.0.0",
        summary="Tasks, each change announced as an event on the task-events topic.",
        lifespan=lifespan,
    )
    app.add_middleware(CorrelationMiddleware)
    app.state.engine, app.state.outbox, app.state.tidings = engine, outbox, tidings

    async def not_found(_request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    async def conflict(_request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    app.add_exception_handler(TaskNotFound, not_found)
    app.add_exception_handler(TaskIsCompleted, conflict)
    _routes(app, store)
    _people(app, tidings)

    @app.get("/board", tags=["board"], summary="Tasks per assignee and status")
    def get_board() -> Board:
        """The task board (``taskapi.board``): how many tasks each assignee has, per
        status, as the ``task-board`` projection has it (it follows the events)."""
        counts = [BoardCount(**row) for row in board_rows(board_engine)]
        return Board(counts=counts, total=sum(c.tasks for c in counts))

    return app


def _people(app: FastAPI, tidings: Tidings | None) -> None:
    """``DELETE /people/{id}``: erasure of a person's personal data (decision 0036)."""

    @app.delete(
        "/people/{person_id}",
        status_code=204,
        tags=["people"],
        summary="Erase a person",
        description="Erases a person's personal data: their key is deleted, so every "
        "event naming them reads `[erased]` from now on (`TASKAPI_KEYS` must be set).",
        responses={409: {"model": Detail, "description": "No key store (TASKAPI_KEYS)"}},
        response_class=Response,
    )
    async def erase_person(person_id: str) -> Response:
        if tidings is None or tidings.shredder is None:
            detail = "personal data is not encrypted here: set TASKAPI_KEYS"
            return JSONResponse({"detail": detail}, status_code=409)
        await tidings.erase(person_id)
        return Response(status_code=204)


def _routes(app: FastAPI, store: TaskStore) -> None:
    # Sync endpoints: FastAPI runs them in its thread pool, each with its own Session
    # (for short SQLite transactions the sync driver is faster than aiosqlite).

    @app.post(
        "/tasks",
        status_code=201,
        tags=["tasks"],
        summary="Create a task",
        description="Creates an open task; announces `task.created`.",
        responses=_BAD_BODY,
    )
    def create_task(body: TaskCreate) -> TaskOut:
        return store.create(body)

    @app.get("/tasks", tags=["tasks"], summary="List tasks")
    def list_tasks(
        status: Annotated[Status | None, Query(description="Only tasks in this status")] = None,
        assignee: Annotated[
            str | None, Query(pattern=ASSIGNEE_PATTERN, description="Only this assignee's")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=200, description="Page size")] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Tasks to skip")] = 0,
    ) -> TaskList:
        """Tasks ordered by creation time (then id), one page at a time."""
        return store.page(status=status, assignee=assignee, limit=limit, offset=offset)

    @app.get("/tasks/{task_id}", tags=["tasks"], summary="Get a task", responses=_NOT_FOUND)
    def get_task(task_id: str) -> TaskOut:
        return store.get(task_id)

    @app.patch(
        "/tasks/{task_id}",
        tags=["tasks"],
        summary="Change a task",
        responses={**_BAD_BODY, **_NOT_FOUND, **_CONFLICT},
        description=(
            "Changes the fields sent. Announces `task.updated` (with `changed`, the fields "
            "whose value changed) and, when the assignee changed, `task.assigned`. Nothing "
            "is written or announced when no value changed. A completed task answers 409."
        ),
    )
    def update_task(task_id: str, body: TaskPatch) -> TaskOut:
        return store.update(task_id, body.changes())

    @app.post(
        "/tasks/{task_id}/complete",
        tags=["tasks"],
        summary="Complete a task",
        description="Marks an open task completed; announces `task.completed`.",
        responses={**_NOT_FOUND, **_CONFLICT},
    )
    def complete_task(task_id: str) -> TaskOut:
        return store.complete(task_id)

    @app.delete(
        "/tasks/{task_id}",
        status_code=204,
        tags=["tasks"],
        summary="Delete a task",
        description="Deletes a task, open or completed; announces `task.deleted`.",
        responses=_NOT_FOUND,
        response_class=Response,
    )
    def delete_task(task_id: str) -> Response:
        store.delete(task_id)
        return Response(status_code=204)

    @app.get("/health", tags=["health"], summary="Liveness")
    def health() -> Health:
        return Health(status="ok")


# -- the command ---------------------------------------------------------------------


class _Server(Server):
    """Announces its address once it listens."""

    def __init__(self, config: uvicorn.Config, url: str) -> None:
        super().__init__(config)
        self.url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:  # startup done: tables, log, relay; the socket listens
            print(f"Task API on {self.url} (docs: {self.url}/docs)", flush=True)


async def _serve(server: uvicorn.Server, sock: socket.socket) -> int:
    loop = asyncio.get_running_loop()

    def stop() -> None:
        if server.should_exit:
            server.force_exit = True  # a second signal: do not wait for open connections
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(sig, stop)

    try:
        await server.serve(sockets=[sock])
    except SystemExit:  # uvicorn's answer to a failed startup (it logged why)
        return 1
    return 0 if server.started else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``taskapi api``: serve the Task API until SIGTERM or SIGINT; exit 0 then, 1 if it
    cannot start (a busy port, a bad setting)."""
    parser = argparse.ArgumentParser(
        prog="taskapi api", description="Serve the Task API (FastAPI on uvicorn)."
    )
    parser.add_argument("--data", help="the data folder (default $TASKAPI_DATA or ./taskapi-data)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=port_number, default=8000, help="port (0: any free one)")
    parser.add_argument(
        "--no-relay",
        action="store_true",
        help="leave events in the outbox for a relay run elsewhere (tidings outbox relay)",
    )
    parser.add_argument(
        "--no-events", action="store_true", help="write tasks without events (a baseline)"
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (%(default)s)")
    parser.add_argument("--log-format", choices=FORMATS, default="text", help="(%(default)s)")
    args = parser.parse_args(argv)
    # The relay's lines (and tidings' warnings) with their coordinates; uvicorn keeps its own.
    configure(args.log_format, args.log_level)
    host: str = args.host
    try:
        settings = Settings.from_env(args.data).ensure()
        sock = listen(host, args.port)
    except (ConfigError, ListenError) as exc:
        print(f"taskapi api: {exc}", file=sys.stderr)
        return 1
    with sock:
        port = sock.getsockname()[1]
        try:
            app = create_app(settings, events=not args.no_events, relay=not args.no_relay)
        except ConfigError as exc:
            print(f"taskapi api: {exc}", file=sys.stderr)
            return 1
        shown = f"[{host}]" if ":" in host else host
        config = uvicorn.Config(app, host=host, port=port, log_level="warning")
        return asyncio.run(_serve(_Server(config, f"http://{shown}:{port}"), sock))


if __name__ == "__main__":
    sys.exit(main())
