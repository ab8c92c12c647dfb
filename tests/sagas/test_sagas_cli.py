"""``tidings sagas list|show``: the instances, one key's history and deadlines, as
text and JSON; from --db or from an app's sagas; bad usage."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.sagas.helpers import TOPIC, add_saga
from tidings import Tidings
from tidings.cli import main
from tidings.sagas import Saga, show_saga
from tidings.testing import eventually, running


@pytest.fixture
async def filled(app: Tidings, db_url: str, engine: sa.Engine) -> AsyncIterator[Saga]:
    """Two instances: ``a`` waiting with a deadline, ``b`` finished."""
    saga = add_saga(app, db_url)
    saga.create_tables()

    def finished() -> bool:
        return [i.status for k in "ab" for i in show_saga(db_url, k)] == ["active", "finished"]

    async with running(app):
        for key in "ab":
            await app.publish(
                TOPIC, {"task_id": key, "due_in": 3600}, type="task.created", subject=key
            )
        await app.publish(TOPIC, {"task_id": "b"}, type="task.completed", subject="b")
        await eventually(finished)
    yield saga
    await saga.close()


def test_list_prints_a_table_of_instances(
    filled: Saga, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sagas", "list", "--db", db_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SAGA", "KEY", "STATE", "STATUS", "VERSION", "UPDATED"]
    assert sorted(line.split()[:5] for line in lines[1:]) == [
        ["esc", "a", "waiting", "active", "1"],
        ["esc", "b", "done", "finished", "2"],
    ]
    assert main(["sagas", "list", "--db", db_url, "--status", "finished", "--json"]) == 0
    [only] = json.loads(capsys.readouterr().out)
    assert (only["key"], only["state"], only["version"]) == ("b", "done", 2)


def test_show_prints_state_data_history_and_deadlines(
    filled: Saga, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sagas", "show", "a", "--db", db_url]) == 0
    out = capsys.readouterr().out
    assert "state    waiting (active, version 1)" in out
    assert 'data     {"reassigned": 0}' in out
    assert "task.created" in out
    assert "pending deadlines:" in out
    assert "overdue" in out
    assert main(["sagas", "show", "b", "--db", db_url, "--json"]) == 0
    [b] = json.loads(capsys.readouterr().out)
    assert [(h["type"], h["to_state"], h["note"]) for h in b["history"]] == [
        ("task.created", "waiting", "start"),
        ("task.completed", "done", "step; finished"),
    ]
    assert b["deadlines"] == []
    assert b["updated_at"].endswith("Z")


def test_show_of_an_unknown_key_says_so(
    filled: Saga, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sagas", "show", "nope", "--db", db_url]) == 1
    assert "no saga instance for key 'nope'" in capsys.readouterr().out


def test_the_app_option_reads_the_database_of_its_sagas(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (here / "svc.py").write_text(
        "from tidings import Tidings\n"
        "from tests.sagas.helpers import add_saga\n"
        "app = Tidings('memory://svc', service='svc')\n"
        f"saga = add_saga(app, 'sqlite:///{here / 'svc.db'}')\n"
        "saga.create_tables()\n"
    )
    assert main(["sagas", "list", "--app", "svc:app"]) == 0
    assert capsys.readouterr().out.split() == [
        "SAGA",
        "KEY",
        "STATE",
        "STATUS",
        "VERSION",
        "UPDATED",
    ]
    assert main(["sagas", "list", "--app", "svc:app", "--name", "other"]) == 2
    assert "svc:app has no saga named 'other'" in capsys.readouterr().err


def test_bad_usage_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sagas", "list"]) == 2
    assert "give the sagas' database as --db URL, or the app" in capsys.readouterr().err
    missing = tmp_path / "mistyped.db"
    assert main(["sagas", "list", "--db", f"sqlite:///{missing}"]) == 1
    assert f"there is no database at {missing}" in capsys.readouterr().err
    assert not missing.exists()  # a look does not create it
    (tmp_path / "empty.db").touch()
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["sagas", "show", "k", "--db", empty]) == 1
    assert "has no saga table 'tidings_sagas'" in capsys.readouterr().err
    assert main(["sagas", "list", "--db", "nonsense://x"]) == 2
    assert "cannot open the saga database 'nonsense://x'" in capsys.readouterr().err
    assert main(["sagas", "list", "--db", empty, "--status", "done"]) == 2
