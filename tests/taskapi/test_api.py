"""The Task API: CRUD, listing, its errors, and the events each change announces
(through the outbox, in the change's own transaction, under the request's correlation
id), on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from taskapi.api import main
from taskapi.db import make_engine
from tests.conftest import database_url
from tests.taskapi.api_support import (
    error_of,
    log_events,
    outbox_events,
    running,
    settings_for,
    task_count,
)
from tidings import ConfigError, Event
from tidings.outbox import Outbox

# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The API's database: a SQLite file, or a fresh real PostgreSQL database."""
    return database_url(request, tmp_path, name="tasks.db")


# -- the life of a task, and its events --------------------------------------------------


def test_crud_announces_each_change_under_the_requests_correlation_id(
    tmp_path: Path, db_url: str
) -> None:
    settings = settings_for(tmp_path, db_url)
    with running(settings) as (client, _app):
        created = client.post(
            "/tasks",
            json={"title": "  Write the report ", "assignee": "alice", "priority": "high",
                  "due": "2030-01-31T18:00:00+01:00", "description": "Q3"},
            headers={"X-Correlation-ID": "req-create"},
        )  # fmt: skip
        assert created.status_code == 201, created.text
        assert created.headers["x-correlation-id"] == "req-create"
        task = created.json()
        task_id = task["id"]
        assert task["title"] == "Write the report"  # stripped
        assert task["due"] == "2030-01-31T17:00:00Z"  # stored and answered in UTC
        assert (task["status"], task["completed_at"]) == ("open", None)
        assert client.get(f"/tasks/{task_id}").json() == task

        patch = {"title": "Write the Q3 report", "assignee": "bob", "priority": "high"}
        updated = client.patch(
            f"/tasks/{task_id}", json=patch, headers={"X-Correlation-ID": "req-patch"}
        )
        assert updated.status_code == 200, updated.text
        assert updated.json()["assignee"] == "bob"
        assert updated.json()["updated_at"] > task["updated_at"]
        # The same values again: nothing changes, nothing is written or announced.
        again = client.patch(f"/tasks/{task_id}", json=patch)
        assert again.json() == updated.json()

        done = client.post(f"/tasks/{task_id}/complete", headers={"X-Correlation-ID": "req-done"})
        assert done.status_code == 200
        assert done.json()["status"] == "completed"
        assert done.json()["completed_at"] is not None
        assert client.get("/tasks/" + task_id).json()["status"] == "completed"

        deleted = client.delete(f"/tasks/{task_id}", headers={"X-Correlation-ID": "req-delete"})
        assert (deleted.status_code, deleted.content) == (204, b"")
        assert client.get(f"/tasks/{task_id}").status_code == 404
        events = [e for e in log_events(settings, at_least=5) if e.subject == task_id]

    assert [e.type for e in events] == [
        "task.created", "task.updated", "task.assigned", "task.completed", "task.deleted",
    ]  # fmt: skip
    assert [e.correlationid for e in events] == [
        "req-create", "req-patch", "req-patch", "req-done", "req-delete",
    ]  # fmt: skip
    assert {(e.key, e.source) for e in events} == {(task_id, "taskapi")}
    assert [e.dataversion for e in events] == [3, 2, 2, 2, 2]  # the versions with the marks
    created_e, updated_e, assigned_e, completed_e, deleted_e = (e.data for e in events)
    assert created_e == {
        "task_id": task_id, "title": "Write the report", "description": "Q3",
        "assignee": "alice", "due_at": "2030-01-31T17:00:00Z", "priority": "high",
        "created_at": task["created_at"],
    }  # fmt: skip
    assert updated_e == {
        "task_id": task_id, "changed": ["title", "assignee"], "title": "Write the Q3 report",
        "description": "Q3", "assignee": "bob", "due": "2030-01-31T17:00:00Z",
        "priority": "high", "updated_at": updated.json()["updated_at"],
    }  # fmt: skip
    assert assigned_e == {
        "task_id": task_id, "title": "Write the Q3 report", "assignee": "bob",
        "previous_assignee": "alice", "due": "2030-01-31T17:00:00Z",
    }  # fmt: skip
    assert completed_e == {
        "task_id": task_id, "title": "Write the Q3 report", "assignee": "bob",
        "completed_at": done.json()["completed_at"],
    }  # fmt: skip
    assert set(deleted_e) == {"task_id", "title", "assignee", "deleted_at"}
    assert deleted_e["assignee"] == "bob"


def test_a_request_without_correlation_id_gets_one_and_its_events_carry_it(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    with running(settings, relay=False) as (client, app):
        response = client.post("/tasks", json={"title": "t"})
        given = response.headers["x-correlation-id"]
        assert [e.correlationid for e in outbox_events(app)] == [given]


def test_clearing_fields_and_unassigning(tmp_path: Path) -> None:
    with running(settings_for(tmp_path), relay=False) as (client, app):
        body = {"title": "t", "assignee": "a", "due": "2030-01-01T00:00:00Z", "description": "d"}
        task_id = client.post("/tasks", json=body).json()["id"]
        cleared = client.patch(
            f"/tasks/{task_id}", json={"assignee": None, "due": None, "description": None}
        )
        assert cleared.status_code == 200
        assert [cleared.json()[k] for k in ("assignee", "due", "description")] == [None] * 3
        updated, assigned = outbox_events(app)[1:]
        assert updated.data["changed"] == ["description", "assignee", "due"]
        assert (assigned.data["assignee"], assigned.data["previous_assignee"]) == (None, "a")


def test_listing_filters_and_pages_in_creation_order(tmp_path: Path, db_url: str) -> None:
    with running(settings_for(tmp_path, db_url), relay=False) as (client, _app):
        ids = [
            client.post(
                "/tasks", json={"title": f"t{i}", "assignee": "ann" if i % 2 else "bo"}
            ).json()["id"]
            for i in range(7)
        ]
        for task_id in ids[:3]:
            client.post(f"/tasks/{task_id}/complete")

        everything = client.get("/tasks").json()
        assert [t["id"] for t in everything["items"]] == ids
        assert (everything["total"], everything["limit"], everything["offset"]) == (7, 50, 0)
        page = client.get("/tasks", params={"limit": 3, "offset": 3}).json()
        assert ([t["id"] for t in page["items"]], page["total"]) == (ids[3:6], 7)
        assert client.get("/tasks", params={"offset": 100}).json()["items"] == []
        open_ann = client.get("/tasks", params={"status": "open", "assignee": "ann"}).json()
        assert [t["id"] for t in open_ann["items"]] == [ids[3], ids[5]]
        assert open_ann["total"] == 2
        done = client.get("/tasks", params={"status": "completed", "limit": 2}).json()
        assert ([t["id"] for t in done["items"]], done["total"]) == (ids[:2], 3)
        bad_params = [{"limit": 0}, {"limit": 201}, {"offset": -1}, {"status": "closed"}]
        for bad in [*bad_params, {"assignee": "a b"}]:
            assert client.get("/tasks", params=bad).status_code == 422, bad


# -- refusals ---------------------------------------------------------------------------


def test_invalid_input_is_422_naming_the_field(tmp_path: Path) -> None:
    with running(settings_for(tmp_path), relay=False) as (client, app):
        assert "at least 1 character" in error_of(
            client.post("/tasks", json={"title": " "}), "title"
        )
        long = client.post("/tasks", json={"title": "x" * 201})
        assert "at most 200" in error_of(long, "title")
        naive = client.post("/tasks", json={"title": "t", "due": "2030-01-01T10:00:00"})
        assert "timezone" in error_of(naive, "due")
        year_0 = client.post("/tasks", json={"title": "t", "due": "0001-01-01T00:00:00+01:00"})
        assert "out of range" in error_of(year_0, "due")
        bad_name = client.post("/tasks", json={"title": "t", "assignee": "bob smith"})
        assert "pattern" in error_of(bad_name, "assignee")
        extra = client.post("/tasks", json={"title": "t", "colour": "red"})
        assert "Extra inputs are not permitted" in error_of(extra, "colour")
        assert "NUL" in error_of(client.post("/tasks", json={"title": "a\x00b"}), "title")
        assert task_count(app) == 0

        task_id = client.post("/tasks", json={"title": "t"}).json()["id"]
        empty = client.patch(f"/tasks/{task_id}", json={})
        assert "title, description, assignee, due, priority" in error_of(empty, "body")
        assert "cannot be null" in error_of(
            client.patch(f"/tasks/{task_id}", json={"title": None}), "title"
        )
        assert client.patch(f"/tasks/{task_id}", json={"status": "completed"}).status_code == 422
        assert len(outbox_events(app)) == 1  # the creation only


def test_unknown_task_is_404_and_a_completed_one_409(tmp_path: Path, db_url: str) -> None:
    with running(settings_for(tmp_path, db_url), relay=False) as (client, app):
        unknown = ["nope", "01a22e88-88df-711e-85ec-82e64da553cd", "a%00b"]
        for method, path in [("GET", ""), ("PATCH", ""), ("POST", "/complete"), ("DELETE", "")]:
            for task_id in unknown:
                json = {"title": "x"} if method == "PATCH" else None
                response = client.request(method, f"/tasks/{task_id}{path}", json=json)
                assert response.status_code == 404, (method, path, task_id)
                shown = task_id.replace("%00", "\x00")
                assert response.json() == {"detail": f"task {shown} not found"}
        task_id = client.post("/tasks", json={"title": "t"}).json()["id"]
        client.post(f"/tasks/{task_id}/complete")
        refused = client.patch(f"/tasks/{task_id}", json={"title": "u"})
        assert refused.status_code == 409
        assert refused.json() == {"detail": f"task {task_id} is completed; it can only be deleted"}
        twice = client.post(f"/tasks/{task_id}/complete")
        assert twice.json() == {"detail": f"task {task_id} is already completed"}
        assert twice.status_code == 409
        assert client.delete(f"/tasks/{task_id}").status_code == 204
        assert [e.type for e in outbox_events(app)] == [
            "task.created", "task.completed", "task.deleted",
        ]  # fmt: skip


# -- atomicity, concurrency, the baseline -------------------------------------------------


def test_a_failed_write_leaves_neither_task_nor_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running(settings_for(tmp_path), relay=False, raise_errors=False) as (client, app):
        task_id = client.post("/tasks", json={"title": "t", "assignee": "a"}).json()["id"]
        outbox: Outbox = app.state.outbox
        real_add = outbox.add

        def add_then_fail(session: Any, payload: Any) -> Event:
            event = real_add(session, payload)  # the event row is written...
            if type(payload).__name__ in ("TaskCreated", "TaskAssigned"):
                raise RuntimeError("the database went away")  # ...then the transaction fails
            return event

        monkeypatch.setattr(outbox, "add", add_then_fail)
        assert client.post("/tasks", json={"title": "lost"}).status_code == 500
        # task.updated is added, task.assigned fails: the update goes with both events.
        failed = client.patch(f"/tasks/{task_id}", json={"title": "u", "assignee": "b"})
        assert failed.status_code == 500
        assert task_count(app) == 1
        assert client.get(f"/tasks/{task_id}").json()["assignee"] == "a"
        assert [e.type for e in outbox_events(app)] == ["task.created"]


def test_concurrent_patches_of_one_task_lose_no_update(tmp_path: Path, db_url: str) -> None:
    with running(settings_for(tmp_path, db_url), relay=False) as (client, app):
        task_id = client.post("/tasks", json={"title": "t", "assignee": "u0"}).json()["id"]

        def patch(n: int) -> int:
            body = {"assignee": f"u{n}", "description": f"d{n}"}
            status: int = client.patch(f"/tasks/{task_id}", json=body).status_code
            return status

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(patch, range(1, 33))) == {200}
        assigned = [e.data for e in outbox_events(app) if e.type == "task.assigned"]
        final = client.get(f"/tasks/{task_id}").json()
    # Each change saw the one before it: the chain of assignees has no gap or fork.
    assert len(assigned) == 32
    chain = ["u0"] + [a["assignee"] for a in assigned]
    assert [a["previous_assignee"] for a in assigned] == chain[:-1]
    assert final["assignee"] == chain[-1]
    assert final["description"] == "d" + chain[-1][1:]


def test_without_events_the_same_endpoints_write_no_outbox_rows(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    with running(settings, events=False) as (client, app):
        task_id = client.post("/tasks", json={"title": "t"}).json()["id"]
        assert client.patch(f"/tasks/{task_id}", json={"assignee": "b"}).status_code == 200
        assert client.post(f"/tasks/{task_id}/complete").status_code == 200
        assert client.get("/tasks").json()["total"] == 1
        assert client.delete(f"/tasks/{task_id}").status_code == 204
        assert app.state.outbox is None
        assert not sa.inspect(app.state.engine).has_table("tidings_outbox")
    assert not Path(settings.tidings_url.removeprefix("sqlite:///")).exists()


@pytest.mark.parametrize(
    "url", ["mysql://u@h/db", "sqlite://", "postgresql+psycopg2://h/db", "::not a url::"]
)
def test_only_sqlite_files_and_psycopg_postgresql_are_accepted(url: str) -> None:
    with pytest.raises(ConfigError, match=r"sqlite:///.*postgresql\+psycopg://"):
        make_engine(url)


# -- the command ---------------------------------------------------------------------


def test_main_on_a_busy_port_says_so_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["--data", str(tmp_path), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"taskapi api: port {port} on 127.0.0.1 is already in use")
    assert "choose another port with --port N" in err


def test_main_serves_until_sigterm_and_exits_0(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "taskapi.api", "--data", str(tmp_path), "--port", "0"]
    command += ["--log-format", "json"]  # tidings' own lines; uvicorn keeps its text
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKAPI_", "TIDINGS_"))}
    out = subprocess.PIPE
    with subprocess.Popen(command, stdout=out, stderr=out, text=True, env=env) as p:
        try:
            assert p.stdout is not None
            line = p.stdout.readline().rstrip("\n")  # bounded: the process ends on failure
            base = line.removeprefix("Task API on ").split(" ")[0]
            assert line == f"Task API on {base} (docs: {base}/docs)", line
            assert base.startswith("http://127.0.0.1:")
            assert httpx.get(f"{base}/health", timeout=10).json() == {"status": "ok"}
            created = httpx.post(f"{base}/tasks", json={"title": "t"}, timeout=10)
            assert created.status_code == 201
            p.terminate()
            assert p.wait(timeout=30) == 0, p.stderr.read() if p.stderr else ""
            assert p.stderr is not None
            ours = [
                json.loads(line) for line in p.stderr.read().splitlines() if line.startswith("{")
            ]
            # A fresh log: the API registers its contracts, and says so.
            assert any(
                d["logger"] == "tidings.schema" and d["message"].startswith("registered ")
                for d in ours
            ), ours
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
