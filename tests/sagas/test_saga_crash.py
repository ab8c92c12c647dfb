"""Sagas SIGKILLed at each step boundary: real worker processes die at the point a
scenario names (``tests/sagas/crash_child.py``), a successor takes over, and then
every step happened once: 0 lost steps (each instance ends in its state with exactly
its history), 0 repeated effects (the sink's ``effects`` rows, which have no unique
key, are exactly one per event the saga meant to send).

Twelve tasks: four escalate at their deadline (A), four are completed first (B), four
escalate and then see ``notification.failed``, which is compensated (C).
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import database_url
from tests.crashkit import Children
from tests.sagas import crash_child
from tests.sagas.helpers import TOPIC, effect_rows, effects_md
from tidings import Tidings
from tidings.sagas import list_sagas, show_saga

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

A, B, C = ([f"{g}{i}" for i in range(4)] for g in "abc")
EXPECTED = {
    **{k: ("escalated", "active", ["start", "deadline overdue"]) for k in A},
    **{k: ("done", "finished", ["start", "step; finished"]) for k in B},
    **{k: ("failed", "failed", ["start", "deadline overdue", "compensation; failed"]) for k in C},
}
EFFECTS = {
    **{k: ["task.escalated"] for k in A},
    **{k: ["task.escalated", "task.escalation_failed"] for k in C},
}


class Run(Children):
    def __init__(self, folder: Path, db: str) -> None:
        super().__init__(folder)
        self.db = db
        self.app = Tidings(crash_child.log_url(folder), service="saga-crash-test")
        self.app.topic(TOPIC, partitions=crash_child.PARTITIONS)

    def start(self, *options: str) -> subprocess.Popen[bytes]:
        """A saga worker (``tests/sagas/crash_child.py``) on this run's log and database."""
        return self.spawn("tests.sagas.crash_child", str(self.dir), self.db, *options)

    async def wait(
        self, what: str, check: Callable[[], bool], alive: subprocess.Popen[bytes]
    ) -> None:
        await self.until(what, check, [alive], detail=lambda: f"states {self.states()}")

    async def publish(self, type_: str, keys: list[str], **data: object) -> None:
        events = [self.app.build({"task_id": k, **data}, type=type_, subject=k) for k in keys]
        await self.app.publish_events(TOPIC, events)

    def states(self) -> dict[str, tuple[str, str]]:
        try:
            return {i.key: (i.state, i.status) for i in list_sagas(self.db, name="esc")}
        except Exception:  # the tables are not there yet
            return {}

    def escalated(self) -> bool:
        s = self.states()
        return all(s.get(k, ("",))[0] == "escalated" for k in A + C) and all(
            s.get(k) == ("done", "finished") for k in B
        )

    def final(self) -> bool:
        return self.states() == {k: v[:2] for k, v in EXPECTED.items()}


@pytest.fixture
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url(request, tmp_path)


@pytest.fixture
def run(tmp_path: Path, db: str) -> Iterator[Run]:
    engine = sa.create_engine(db)
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    effects_md.create_all(engine)
    engine.dispose()
    r = Run(tmp_path, db)
    try:
        yield r
    finally:
        r.shutdown()


SCENARIOS = [
    ("start", 2),  # a start step's state, deadline row and outbox row, uncommitted
    ("deadline", 1),  # a deadline step's escalation in the outbox, uncommitted
    ("compensation", 1),  # a compensation's event and 'failed', uncommitted
    ("step", 1),  # a completion that cancels the deadline, uncommitted
    ("batch-commit", 2),  # steps and marks committed, offsets not
    ("offset-commit", 1),  # at the offset commit, after steps committed
    ("relay-append", 1),  # deadlines/escalations on the log, outbox rows not deleted
]


# On PostgreSQL, the point where its transactions matter most: steps and inbox marks
# committed, offsets not. (Its deadline and relay-append runs, ~35 s each on a loaded
# machine, checked nothing more: an uncommitted step rolls back alike, the relay's
# outbox on PostgreSQL is tests/outbox's, and the SQLite runs cover those points.)
ON_POSTGRES = [("batch-commit", 2)]


@pytest.mark.parametrize(
    ("db", "point", "nth"),
    [("sqlite", *s) for s in SCENARIOS] + [("postgres", *s) for s in ON_POSTGRES],
    indirect=["db"],
)
async def test_a_killed_saga_worker_loses_and_repeats_no_step(
    run: Run, point: str, nth: int
) -> None:
    await run.app.start()
    try:
        await run.publish("task.created", A + C, due_in=0.3)
        await run.publish("task.created", B, due_in=3600)
        await run.publish("task.completed", B)
        doomed = run.start("--kill", point, "--nth", str(nth))
        phase2 = False

        async def dead_at_its_point() -> bool:  # in phase 1 or 2
            nonlocal phase2
            if not phase2 and run.escalated():
                await run.publish("notification.failed", C, channel="email")
                phase2 = True
            return doomed.poll() is not None

        await run.until(f"the child at {point} #{nth}", dead_at_its_point)
        line = await run.killed(doomed)
        said = {
            "batch-commit": "after inbox batch commit",
            "offset-commit": "at offset commit",
            "relay-append": "after relay append",
        }.get(point, f"at the end of {point} step")
        assert said in line, run.report()
        print(f"[{point} #{nth}, phase {2 if phase2 else 1}] {line.split(': ', 1)[1]}")
        successor = run.start()
        if not phase2:
            await run.wait("escalations", run.escalated, successor)
            await run.publish("notification.failed", C, channel="email")
        await run.wait("every saga in its final state", run.final, successor)
        engine = sa.create_engine(run.db)
        try:
            want = sum(len(v) for v in EFFECTS.values())
            await run.wait("every effect", lambda: len(effect_rows(engine)) >= want, successor)
            await run.stop(successor)
            effects = effect_rows(engine)
        finally:
            engine.dispose()
    finally:
        await run.app.close()
    by_key: dict[str, list[str]] = {}
    for key, type_, _ in effects:
        by_key.setdefault(key, []).append(type_)
    repeated = Counter(e for _, _, e in effects) - Counter(set(e for _, _, e in effects))
    assert not repeated, f"repeated effects: {repeated}"
    print(f"  effects={len(effects)} (want {sum(map(len, EFFECTS.values()))}), repeated=0")
    assert by_key == EFFECTS  # 0 repeated effects, 0 lost
    for key, (state, status, history) in EXPECTED.items():
        [info] = show_saga(run.db, key, name="esc")
        assert (info.state, info.status) == (state, status), key
        assert [h["note"] for h in info.history] == history, key  # no step lost or repeated
        assert info.deadlines == [], key
