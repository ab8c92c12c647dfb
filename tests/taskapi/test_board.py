"""The task board: the ``task-board`` projection counts tasks per assignee and
status as the API's events arrive, ``GET /board`` serves it, and ``taskapi board
rebuild`` rebuilds it from the log to the same counts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from taskapi.__main__ import main as taskapi_main
from taskapi.board import board_rows, board_status
from taskapi.db import make_engine
from taskapi.services import serve
from taskapi.settings import Settings
from tests.taskapi.api_support import TestClient, running, settings_for

EXPECTED = [
    {"assignee": "alice", "status": "open", "tasks": 1},
    {"assignee": "bob", "status": "completed", "tasks": 1},
    {"assignee": "bob", "status": "open", "tasks": 1},
]


def _changes(client: TestClient) -> None:
    ids = [
        client.post("/tasks", json={"title": f"task {i}", "assignee": who}).json()["id"]
        for i, who in enumerate(["alice", "alice", "bob", None])
    ]
    assert client.patch(f"/tasks/{ids[1]}", json={"assignee": "bob"}).status_code == 200
    assert client.post(f"/tasks/{ids[2]}/complete").status_code == 200
    assert client.delete(f"/tasks/{ids[3]}").status_code == 204


async def _board_until(settings: Settings, want: list[dict[str, Any]]) -> None:
    """Run the task-board service until the board is ``want`` with every event applied
    (30 s at most): the board can pass through ``want`` on its way, e.g. before the
    creation of a task deleted later (another partition) is applied."""
    engine = make_engine(settings.board_url)
    stop = asyncio.Event()
    task = asyncio.create_task(serve("task-board", settings, stop))
    try:
        for _ in range(300):
            if task.done():
                break
            if board_rows(engine) == want and (await board_status(settings))["lag"] == 0:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        engine.dispose()


def test_the_board_counts_tasks_per_assignee_and_status_and_rebuilds_to_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(tmp_path)
    with running(settings) as (client, _app):
        assert client.get("/board").json() == {"counts": [], "total": 0}
        _changes(client)
        asyncio.run(_board_until(settings, EXPECTED))
        assert client.get("/board").json() == {"counts": EXPECTED, "total": 3}

        assert taskapi_main(["board", "rebuild", "--data", str(tmp_path), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["name"] == "task-board"
        assert report["applied"] == 7  # 4 created, 1 assigned, 1 completed, 1 deleted
        assert client.get("/board").json() == {"counts": EXPECTED, "total": 3}

        assert taskapi_main(["board", "status", "--data", str(tmp_path), "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["rebuilding"] is None
        assert {p["partition"] for p in status["partitions"]} == {0, 1, 2, 3}
