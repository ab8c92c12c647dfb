"""A projection's worker SIGKILLed inside an event's transaction, or right after its
commit and before the offset's: the model is never half an event (its total equals what
the positions say), and once restarted it ends with each event counted exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.projections.helpers import (
    PARTITIONS,
    TOPIC,
    board_app,
    expected,
    publish,
    read_counts,
    snapshot,
)
from tidings import Tidings
from tidings.testing import eventually, running

ROOT = Path(__file__).resolve().parents[2]
N = 120


@pytest.mark.parametrize("mode", ["in-handler", "after-commit"])
async def test_a_killed_projection_worker_leaves_whole_events_and_counts_each_once(
    mode: str, sqlite_url: str, db_url: str, engine: sa.Engine
) -> None:
    # A 2 s lease, not the default 10 s: the restarted worker waits for the killed one's
    # lease to lapse before it takes the partitions over. No two workers run at once,
    # so a late heartbeat cannot change what the test sees.
    log = f"{sqlite_url}?partitions={PARTITIONS}&lease=2"
    async with Tidings(log, service="test") as app:
        await app.transport.create_topic(TOPIC, partitions=PARTITIONS)
        await publish(app, 0, N)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TIDINGS_URL", None)
    child = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tests.projections.child", log, db_url, mode, "40"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    total, applied = snapshot(engine)
    assert total == applied  # nothing of an event without its position, or the reverse
    if mode == "in-handler":  # the 40th event's transaction, and those beside it, lost
        assert 0 < applied < 40
    else:  # the 40th committed (and maybe others beside it), not every one
        assert 40 <= applied < N

    again = board_app(log, db_url)
    async with again.app, running(again.app):
        await eventually(lambda: snapshot(engine) == (N, N), what="every event", timeout=60)
    again.projection.close()
    assert read_counts(engine) == expected(N)  # none counted twice
    if mode == "after-commit":
        assert len(again.calls) == N - applied  # the redelivered ones called no handler
