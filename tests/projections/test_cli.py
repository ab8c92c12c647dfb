"""``tidings projections status|rebuild``, in process, on a SQLite log and projection
database: output, JSON, and one-line errors (2 for bad usage, 1 for a refusal)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from tests.projections.helpers import PARTITIONS, TOPIC, publish
from tidings import Tidings
from tidings.cli import main
from tidings.cli.common import load_app

MODULE = """
import os
from tests.projections.helpers import PARTITIONS, TOPIC, board_app

board = board_app(os.environ["TIDINGS_URL"], {db!r})
board.app.topic(TOPIC, partitions=PARTITIONS)
app = board.app
"""


class Specs:
    """A new ``module:app`` at each call (each command imports an app of its own, as a
    process would), all of the same log and projection database."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self) -> str:
        name = f"boardapp_{uuid.uuid4().hex[:8]}"
        db = f"sqlite:///{self.folder / 'board.db'}"
        (self.folder / f"{name}.py").write_text(MODULE.format(db=db))
        return f"{name}:app"


@pytest.fixture
def spec(here: Path, monkeypatch: pytest.MonkeyPatch) -> Specs:
    """Apps with the projection ``board``, 7 events in their log."""
    url = f"sqlite:///{here / 'events.db'}"
    monkeypatch.setenv("TIDINGS_URL", url)

    async def seven() -> None:
        async with Tidings(url, service="test") as app:
            await app.transport.create_topic(TOPIC, partitions=PARTITIONS)
            await publish(app, 0, 7)

    asyncio.run(seven())
    return Specs(here)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["projections", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_status_then_rebuild_then_status(spec: Specs, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "status", spec(), "--json")
    assert code == 0
    (before,) = json.loads(out)
    assert (before["name"], before["lag"], before["rebuilding"]) == ("board", 7, None)
    assert [p["position"] for p in before["partitions"]] == [None] * PARTITIONS

    code, out, _ = run(capsys, "rebuild", spec(), "board", "--json")
    assert code == 0
    report = json.loads(out)
    assert (report["applied"], report["failed"], report["rounds"]) == (7, 0, 1)

    code, out, _ = run(capsys, "status", spec(), "board")
    assert code == 0
    assert out.startswith("projection board in sqlite:///")
    assert ": lag 0\n" in out
    assert "POSITION" in out
    assert "COMMITTED" in out

    code, out, _ = run(capsys, "rebuild", spec(), "board")
    assert code == 0
    assert out.startswith("projection board rebuilt: 7 events applied (0 failed")


def test_an_unknown_projection_is_a_usage_error_naming_the_known_ones(
    spec: Specs, capsys: pytest.CaptureFixture[str]
) -> None:
    app = spec()
    code, out, err = run(capsys, "rebuild", app, "nope")
    assert code == 2
    assert out == ""
    assert f"{app} has no projection 'nope'; it has: board" in err
    assert err.count("\n") == 1


def test_an_app_without_projections_is_refused(
    here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDINGS_URL", f"sqlite:///{here / 'events.db'}")
    (here / "plain_app.py").write_text("from tidings import Tidings\napp = Tidings(service='x')\n")
    code, _, err = run(capsys, "status", "plain_app:app")
    assert code == 2
    assert "declares no projection" in err


def test_a_rebuild_while_another_runs_fails_with_one_line(
    spec: Specs, capsys: pytest.CaptureFixture[str]
) -> None:
    projection = load_app(spec()).projections["board"]
    projection.prepare()
    projection.db.claim_rebuild()  # a rebuild in another process, alive
    code, _, err = run(capsys, "rebuild", spec(), "board")
    assert code == 1
    assert "projection 'board': a rebuild runs since" in err
    code, out, _ = run(capsys, "status", spec(), "--json")
    assert json.loads(out)[0]["rebuilding"]["owner"] == projection.db.owner
    projection.db.release_rebuild()
    projection.close()
