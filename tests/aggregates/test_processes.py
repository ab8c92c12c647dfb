"""Two writer processes of one aggregate on one SQLite file: one saves, the other gets
a ConcurrencyConflict and its retry lands after it."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from tidings.aggregates import AggregateStore

from ._writer import write
from .conftest import Dog, dog_app


def test_two_writer_processes_conflict_once_and_both_changes_land(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'app.db'}"
    store = AggregateStore(dog_app(), db_url, Dog, topic="dog-events")
    dog = store.create()
    dog.register("Fido")
    store.save(dog)
    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(2), spawn.Queue()
    writers = [
        spawn.Process(target=write, args=(db_url, dog.id, trick, barrier, results))
        for trick in ("sit", "stay")
    ]
    for p in writers:
        p.start()
    outcomes = dict(results.get(timeout=120) for _ in writers)
    for p in writers:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(outcomes.values()) == ["conflict 1->2, retried", "saved"]
    final = store.load(dog.id)
    assert sorted(final.tricks) == ["sit", "stay"]
    loser = next(t for t, what in outcomes.items() if what != "saved")
    assert final.tricks[-1] == loser
    assert final.version == 3
    store.dispose()
