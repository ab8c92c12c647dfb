"""Event-sourced aggregates against ``eventsourcing`` (PyPI), in the same run (issue 20).

    .venv/bin/python -m bench.bench_aggregates [--rounds 3] [--saves 300] [--loads 300]

Both on a SQLite file of their own in WAL mode with ``synchronous=FULL`` (set on every
connection and read back), the same aggregate (a ``Dog`` registered with a name, then
one ``add_trick`` per save), the same shape of stored event (a JSON document per event
with its aggregate id, version, type, time and payload; tidings' also carries the
CloudEvents attributes). Each side also writes what its log needs in the same
transaction: tidings the outbox row of every event (``topic=``), eventsourcing its
notification log (the same table, which numbers every event).

Figures, per second, medians of ``--rounds``; within a round the two sides take turns
of 50 operations (the order swapped every turn), so both meet the same disk:

- ``save``: a save of one new event (an aggregate loaded once, ``add_trick`` + save).
- ``load``: loading an aggregate of 100 events, no snapshots.
- ``load_snapshot``: loading an aggregate of 105 events with a snapshot every 50 (the
  snapshot at 100 and 5 events after it).

Prints each round and a table of medians with the ratio tidings / eventsourcing.
``--without-outbox``: tidings stores the events without their outbox rows, a
diagnostic of what the outbox costs a durable save (not the comparison: eventsourcing
writes its notification log either way).
Counts are bounded (``--saves``, ``--loads``); the files are removed at the end.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from tidings import Tidings
from tidings.aggregates import Aggregate, AggregateStore, applies

EVENTS = 100  # the aggregate loaded without snapshots
SNAPSHOT_EVENTS = 105  # the aggregate loaded with snapshots
SNAPSHOT_EVERY = 50
TOPIC: list[str | None] = ["dog-events"]  # [None] with --without-outbox

# -- tidings -----------------------------------------------------------------------------

app = Tidings("memory://", service="dog-school")


@app.event("dog.registered", subject="dog_id")
class DogRegistered(BaseModel):
    dog_id: str
    name: str


@app.event("dog.trick_added")
class TrickAdded(BaseModel):
    trick: str


class Dog(Aggregate):
    def __init__(self) -> None:
        self.name = ""
        self.tricks: list[str] = []

    def register(self, name: str) -> None:
        self.record(DogRegistered(dog_id=self.id, name=name))

    def add_trick(self, trick: str) -> None:
        self.record(TrickAdded(trick=trick))

    @applies(DogRegistered)
    def _registered(self, event: DogRegistered) -> None:
        self.name = event.name

    @applies(TrickAdded)
    def _trick_added(self, event: TrickAdded) -> None:
        self.tricks.append(event.trick)


class TidingsSide:
    name = "tidings"

    def __init__(self, folder: str, snapshot_every: int | None) -> None:
        url = f"sqlite:///{folder}/tidings-{snapshot_every}.db"
        self.store = AggregateStore(app, url, Dog, topic=TOPIC[0], snapshot_every=snapshot_every)
        self.store.create_tables()
        with self.store.engine.connect() as conn:
            self.synchronous = conn.exec_driver_sql("PRAGMA synchronous").scalar()

    def new(self, events: int) -> Any:
        dog = self.store.create()
        dog.register("Fido")
        self.store.save(dog)
        for i in range(events - 1):
            dog.add_trick(f"trick-{i}")
            self.store.save(dog)
        return dog

    def add_trick(self, dog: Any, trick: str) -> None:
        dog.add_trick(trick)
        self.store.save(dog)

    def load(self, dog_id: Any) -> Any:
        return self.store.load(dog_id)

    def close(self) -> None:
        self.store.dispose()


# -- eventsourcing ------------------------------------------------------------------------


@functools.cache
def _es_classes() -> tuple[Any, Any, Any]:
    """eventsourcing's Dog and applications (once: it registers classes by name)."""
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate as ESAggregate
    from eventsourcing.domain import event
    from eventsourcing.sqlite import SQLiteConnectionPool

    create = SQLiteConnectionPool._create_connection

    def full(self: Any) -> Any:
        conn = create(self)
        conn._sqlite_conn.execute("PRAGMA synchronous=FULL")
        return conn

    SQLiteConnectionPool._create_connection = full  # type: ignore[method-assign]

    class ESDog(ESAggregate):
        @event("Registered")
        def __init__(self, name: str) -> None:
            self.name = name
            self.tricks: list[str] = []

        @event("TrickAdded")
        def add_trick(self, trick: str) -> None:
            self.tricks.append(trick)

    class DogSchool(Application[Any]):
        pass

    class SnapshottingDogSchool(Application[Any]):
        snapshotting_intervals = {ESDog: SNAPSHOT_EVERY}

    return ESDog, DogSchool, SnapshottingDogSchool


def eventsourcing_side(folder: str, snapshot_every: int | None) -> Any:
    ESDog, DogSchool, SnapshottingDogSchool = _es_classes()
    assert snapshot_every in (None, SNAPSHOT_EVERY)
    school = DogSchool if snapshot_every is None else SnapshottingDogSchool

    class Side:
        name = "eventsourcing"

        def __init__(self) -> None:
            path = f"{folder}/eventsourcing-{snapshot_every}.db"
            self.app = school(
                env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path}
            )
            recorder: Any = self.app.recorder
            with recorder.datastore.transaction(commit=False) as curs:
                curs.execute("PRAGMA synchronous")
                self.synchronous = curs.fetchone()[0]

        def new(self, events: int) -> Any:
            dog = ESDog(name="Fido")
            self.app.save(dog)
            for i in range(events - 1):
                dog.add_trick(f"trick-{i}")
                self.app.save(dog)
            return dog

        def add_trick(self, dog: Any, trick: str) -> None:
            dog.add_trick(trick)
            self.app.save(dog)

        def load(self, dog_id: Any) -> Any:
            return self.app.repository.get(dog_id)

        def close(self) -> None:
            self.app.close()

    return Side()


# -- figures ------------------------------------------------------------------------------


CHUNK = 50  # operations of one side before the other side's turn


def interleaved(count: int, works: dict[str, Callable[[int], Any]]) -> dict[str, float]:
    """Each side's rate (per second) over ``count`` calls of its work, run in turns of
    ``CHUNK`` calls, the sides' order swapped every turn: on a shared machine the disk's
    fsync latency moves by ten times within seconds, and both sides meet the same."""
    spent = dict.fromkeys(works, 0.0)
    names = list(works)
    done = 0
    while done < count:
        n = min(CHUNK, count - done)
        for name in names:
            work = works[name]
            start = time.perf_counter()
            for i in range(done, done + n):
                work(i)
            spent[name] += time.perf_counter() - start
        names.reverse()
        done += n
    return {name: count / seconds for name, seconds in spent.items()}


Sides = dict[str, Callable[[str, int | None], Any]]


def one_round(folder: str, sides: Sides, args: Any) -> dict[str, dict[str, float]]:
    """The three figures of every side, each side on a SQLite file of its own."""
    out: dict[str, dict[str, float]] = {name: {} for name in sides}
    opened = {name: side_of(folder, None) for name, side_of in sides.items()}
    for side in opened.values():
        assert side.synchronous in (2, "2"), f"{side.name}: synchronous={side.synchronous}"
    dogs = {name: side.new(1) for name, side in opened.items()}
    saves = interleaved(
        args.saves, {n: functools.partial(_save, s, dogs[n]) for n, s in opened.items()}
    )
    loads = interleaved(args.loads, _loaders(opened, EVENTS))
    for side in opened.values():
        side.close()
    opened = {name: side_of(folder, SNAPSHOT_EVERY) for name, side_of in sides.items()}
    snapshot_loads = interleaved(args.loads, _loaders(opened, SNAPSHOT_EVENTS))
    for side in opened.values():
        side.close()
    for name in sides:
        out[name] = {
            "save": saves[name],
            "load": loads[name],
            "load_snapshot": snapshot_loads[name],
        }
    return out


def _load(side: Any, key: Any, _i: int) -> Any:
    return side.load(key)


def _save(side: Any, dog: Any, i: int) -> None:
    side.add_trick(dog, f"t-{i}")


def _loaders(opened: dict[str, Any], events: int) -> dict[str, Callable[[int], Any]]:
    """Per side, a load of a new aggregate of ``events`` events (checked once)."""
    loaders: dict[str, Callable[[int], Any]] = {}
    for name, side in opened.items():
        big = side.new(events)
        assert len(side.load(big.id).tricks) == events - 1, name
        loaders[name] = functools.partial(_load, side, big.id)
    return loaders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--saves", type=int, default=300)
    parser.add_argument("--loads", type=int, default=300)
    parser.add_argument("--dir", default=None, help="where the SQLite files go")
    parser.add_argument(
        "--without-outbox",
        action="store_true",
        help="tidings stores the events only (a diagnostic: what the outbox rows cost)",
    )
    args = parser.parse_args()
    if args.without_outbox:
        TOPIC[0] = None
    sides: Sides = {"tidings": TidingsSide, "eventsourcing": eventsourcing_side}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    for n in range(args.rounds):
        folder = tempfile.mkdtemp(prefix="bench-agg-", dir=args.dir)
        try:
            figures = one_round(folder, sides, args)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        for name in sides:
            results[name].append(figures[name])
            shown = "  ".join(f"{k}={v:,.0f}/s" for k, v in figures[name].items())
            print(f"round {n + 1} {name:>13}: {shown}", flush=True)
    print(f"\nmedians of {args.rounds} rounds (per second; load avg {os.getloadavg()[0]:.1f})")
    print(f"{'figure':<14} {'tidings':>10} {'eventsourcing':>14} {'ratio':>7}  per round")
    for figure in ("save", "load", "load_snapshot"):
        ours = statistics.median(r[figure] for r in results["tidings"])
        theirs = statistics.median(r[figure] for r in results["eventsourcing"])
        rounds = ", ".join(
            f"{t[figure] / e[figure]:.2f}"
            for t, e in zip(results["tidings"], results["eventsourcing"], strict=True)
        )
        print(f"{figure:<14} {ours:>10,.0f} {theirs:>14,.0f} {ours / theirs:>7.2f}  {rounds}")


if __name__ == "__main__":
    main()
