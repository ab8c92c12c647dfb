"""A worker of groups with ``concurrency=8``, SIGKILLed with calls under way, then
restarted: nothing is lost (every event handled at least once; with an inbox exactly
once, each key's effects in its order). The worker is ``tests/keyed_crash_child.py``."""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests import keyed_crash_child as child
from tests.crashkit import Children
from tidings import Tidings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

KEYS = [f"k{i}" for i in range(25)]
SEQS = range(8)  # 200 events


class Run(Children):
    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.engine = sa.create_engine(child.db_url(folder))
        with self.engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            conn.exec_driver_sql(
                "CREATE TABLE effects (id INTEGER PRIMARY KEY, key TEXT, seq INTEGER)"
            )

    def start(self) -> subprocess.Popen[bytes]:
        """A worker (``tests/keyed_crash_child.py``) on this run's files."""
        return self.spawn("tests.keyed_crash_child", str(self.dir))

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


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    r = Run(tmp_path)
    try:
        yield r
    finally:
        r.shutdown()
        r.engine.dispose()


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
    first = run.start()
    before = {(k, n) for k, n in expected if n < child.HELD}  # the calls that may end
    await run.until(
        "the calls not held, in each group",
        lambda: set(run.plain()) >= before and set(run.effects()) >= before,
        [first],
    )
    first.send_signal(signal.SIGKILL)  # with up to 8 calls per partition held
    assert await run.exit_code(first) == -signal.SIGKILL
    (run.dir / "go").touch()
    second = run.start()
    await run.until("every event handled", lambda: set(run.plain()) >= expected, [second])
    await run.until("every effect", lambda: len(run.effects()) >= len(expected), [second])
    await run.stop(second)

    assert set(run.plain()) == expected  # at least once
    effects = run.effects()
    assert Counter(effects) == Counter(expected), "with the inbox, exactly once"
    for key in KEYS:  # each key's effects committed in its order
        assert [s for k, s in effects if k == key] == list(SEQS)
