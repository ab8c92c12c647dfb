"""A worker of groups with ``concurrency=8``, SIGKILLed with calls under way, then
restarted: nothing is lost (every event handled at least once; with an inbox exactly
once, each key's effects in its order). The worker is ``tests/keyed_crash_child.py``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests import keyed_crash_child as child
from tidings import Tidings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 60.0
KEYS = [f"k{i}" for i in range(25)]
SEQS = range(8)  # 200 events


class Run:
    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.procs: list[subprocess.Popen[bytes]] = []
        self.engine = sa.create_engine(child.db_url(folder))
        with self.engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            conn.exec_driver_sql(
                "CREATE TABLE effects (id INTEGER PRIMARY KEY, key TEXT, seq INTEGER)"
            )

    def spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("TIDINGS_URL", None)
        out = (self.dir / f"child-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.keyed_crash_child", str(self.dir)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out.close()
        self.procs.append(proc)
        return proc

    def report(self) -> str:
        return "\n".join(
            f"--- child {i} (exit {p.poll()}):\n"
            + (self.dir / f"child-{i}.log").read_text(errors="replace")[-3000:]
            for i, p in enumerate(self.procs)
        )

    def plain(self) -> list[tuple[str, int]]:
        path = self.dir / "plain.txt"
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        return [(k, int(s)) for k, s in (line.split() for line in lines)]

    def effects(self) -> list[tuple[str, int]]:
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT key, seq FROM effects ORDER BY id").all()
        return [(k, s) for k, s in rows]

    async def wait(self, what: str, check: Callable[[], bool]) -> None:
        start = time.monotonic()
        while not check():
            if any(p.poll() is not None for p in self.procs if p.returncode != -9):
                pytest.fail(f"a child exited while waiting for {what}\n{self.report()}")
            if time.monotonic() - start > DEADLINE:
                pytest.fail(f"{what}: not within {DEADLINE:.0f}s\n{self.report()}")
            await asyncio.sleep(0.05)

    def shutdown(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self.engine.dispose()


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    r = Run(tmp_path)
    try:
        yield r
    finally:
        r.shutdown()


async def test_a_sigkilled_keyed_worker_loses_nothing_once_restarted(run: Run) -> None:
    app = Tidings(child.log_url(run.dir), service="keyed-crash-test", schemas="off")
    app.topic(child.TOPIC, partitions=child.PARTITIONS)
    expected = {(k, n) for n in SEQS for k in KEYS}
    async with app:
        events = [
            app.build({"key": k, "seq": n}, type="call.requested", subject=k)
            for n in SEQS
            for k in KEYS
        ]
        await app.publish_events(child.TOPIC, events)
    first = run.spawn()
    before = {(k, n) for k, n in expected if n < child.HELD}  # the calls that may end
    await run.wait(
        "the calls not held, in each group",
        lambda: set(run.plain()) >= before and set(run.effects()) >= before,
    )
    first.send_signal(signal.SIGKILL)  # with up to 8 calls per partition held
    first.wait(timeout=10)
    (run.dir / "go").touch()
    second = run.spawn()
    await run.wait("every event handled", lambda: set(run.plain()) >= expected)
    await run.wait("every effect", lambda: len(run.effects()) >= len(expected))
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0, run.report()

    assert set(run.plain()) == expected  # at least once
    effects = run.effects()
    assert Counter(effects) == Counter(expected), "with the inbox, exactly once"
    for key in KEYS:  # each key's effects committed in its order
        assert [s for k, s in effects if k == key] == list(SEQS)
