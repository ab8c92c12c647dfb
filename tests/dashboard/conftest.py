"""A log made by real workers, and a browser-less client of its dashboard.

``seeded``: a SQLite log (two partitions) where group ``mail`` dead-lettered four
notes (TimeoutError for even n, OSError for odd n) and group ``audit`` handled them;
then, with no worker running, three more notes were published: both groups lag by 3.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import log_url
from tests.test_dlq_cli import Note, fail_four
from tidings import Tidings, dashboard
from tidings.middleware import Retry


@dataclass
class Seeded:
    url: str
    correlation: str = "req-seeded"


def make_app(url: str, handled: list[str] | None = None) -> Tidings:
    app = Tidings(url, service="seed")
    app.event("note.added", subject="note_id")(Note)

    @app.subscriber("notes", group="mail", retry=Retry(max_attempts=1))
    async def send(note: Note) -> None:
        raise (TimeoutError if note.n % 2 == 0 else OSError)(f"note {note.n} failed")

    @app.subscriber("notes", group="audit")
    async def record(note: Note) -> None:
        if handled is not None:
            handled.append(note.note_id)

    return app


async def seed(url: str) -> Seeded:
    handled: list[str] = []
    app = make_app(url, handled)
    async with app:
        await fail_four(app, handled, Seeded.correlation)
        await app.publish_many("notes", [Note(note_id=f"m-{i}", n=10 + i) for i in range(3)])
    return Seeded(url)


@pytest.fixture
def url(request: pytest.FixtureRequest) -> str:
    return log_url(request, partitions=2, kind="sqlite")


@pytest.fixture
async def seeded(url: str) -> Seeded:
    return await seed(url)


class Client:
    """An httpx client of a dashboard app, with the CSRF token of its session."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8080"
        )

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.http.get(path, **kw)

    async def csrf(self) -> str:
        """The CSRF token of this client's session (its cookie, set by any page)."""
        if "tidings_csrf" not in self.http.cookies:
            await self.http.get("/actions")
        return str(self.http.cookies["tidings_csrf"])

    async def post(self, path: str, data: dict[str, Any], *, csrf: bool = True) -> httpx.Response:
        fields = dict(data)
        if csrf:
            fields["csrf"] = await self.csrf()
        return await self.http.post(path, data=fields)

    async def close(self) -> None:
        await self.http.aclose()
        await self.app.state.dashboard.close()


@contextlib.asynccontextmanager
async def looking(asgi: Any) -> AsyncIterator[Client]:
    """A client of the dashboard ``asgi``, closed (with the dashboard) at the end."""
    c = Client(asgi)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def client(seeded: Seeded) -> AsyncIterator[Client]:
    c = Client(dashboard.app(seeded.url))
    yield c
    await c.close()


def text(html: str) -> str:
    """The page's text, tags removed, spaces collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()
