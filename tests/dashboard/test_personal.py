"""Personal fields are masked on every page unless asked for, and only a dashboard
holding the key store can show them (as ``tidings tail --reveal`` and ``tidings dlq
show --reveal``)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Annotated

import pytest
from pydantic import BaseModel

from tests.dashboard.conftest import Client
from tidings import Tidings, dashboard
from tidings.dead_letters import open_log
from tidings.errors import TopicNotFound
from tidings.middleware import Retry
from tidings.personal import Personal
from tidings.shredding import MASK
from tidings.shredding.erasure import shredder_for
from tidings.testing import eventually, running


class Assigned(BaseModel):
    task_id: str
    assignee: Annotated[str, Personal(subject="assignee")]
    email: Annotated[str | None, Personal(subject="assignee")] = None


@pytest.fixture
async def entry(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """A log with one task.assigned event (personal fields sealed) dead-lettered by
    group ``g``; the entry's id."""
    monkeypatch.setenv("TIDINGS_MASTER_KEY", os.urandom(32).hex())
    app = Tidings(sqlite_url, service="test", personal=True)
    app.event("task.assigned", subject="task_id")(Assigned)

    @app.subscriber("tasks", group="g", retry=Retry(max_attempts=1))
    async def fails(task: Assigned) -> None:
        raise OSError("down")

    async with app, running(app):
        await app.publish("tasks", Assigned(task_id="t-1", assignee="ann", email="ann@x.example"))

        async def dead() -> list[str]:
            try:
                return [e.entry for e, _ in (await open_log(app.transport, "g")).listing()]
            except TopicNotFound:  # no dead-letter topic yet; any other error fails
                return []

        await eventually(dead, what="a dead letter")
        yield (await dead())[0]


async def test_personal_fields_are_masked_unless_the_key_store_reveals_them(
    sqlite_url: str, entry: str
) -> None:
    plain = Client(dashboard.app(sqlite_url))
    keyed = Client(dashboard.app(sqlite_url, shredder=shredder_for(True, sqlite_url)))
    try:
        for path in ("/events/tasks", f"/groups/g/dead-letters/{entry}"):
            masked = (await plain.get(path)).text
            assert "ann@x.example" not in masked
            assert MASK in masked
            assert 'id="reveal-link"' not in masked
            refused = await plain.get(path, params={"reveal": 1})
            assert refused.status_code == 400
            assert "needs the key store" in refused.text
            still = (await keyed.get(path)).text
            assert "ann@x.example" not in still
            assert 'id="reveal-link"' in still
            shown = await keyed.get(path, params={"reveal": 1})
            assert shown.status_code == 200
            assert "ann@x.example" in shown.text
    finally:
        await plain.close()
        await keyed.close()
