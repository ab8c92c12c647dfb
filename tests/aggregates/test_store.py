"""The event store on SQLite and on a real PostgreSQL: what is saved loads back; two
writers of one aggregate conflict once and the loser's retry lands; snapshots are used
and ignored once the class's snapshot_version changes; old stored events load through
the upcasters; the outbox rows exist exactly when the transaction commits."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.orm import Session

from tidings import ConfigError, Tidings
from tidings.aggregates import Aggregate, AggregateStore, applies
from tidings.codec import decode
from tidings.errors import AggregateNotFound, ConcurrencyConflict

from .conftest import TOPIC, Dog, DogRegistered, TrickAdded, Unregistered, dog_app


def count(store: AggregateStore[Any], table: sa.Table) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def outbox_events(store: AggregateStore[Any]) -> list[Any]:
    assert store.outbox is not None
    t = store.outbox.table
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.topic, t.c.payload).order_by(t.c.seq)).all()
    assert {topic for topic, _ in rows} <= {TOPIC}
    return [decode(payload) for _, payload in rows]


# -- round trips ------------------------------------------------------------------------


def test_recorded_events_change_the_state_and_load_back(store: AggregateStore[Dog]) -> None:
    dog = store.create()
    dog.register("Fido")
    dog.add_trick("sit")
    assert (dog.name, dog.tricks, dog.version) == ("Fido", ["sit"], 2)
    assert [type(p) for p in dog.pending] == [DogRegistered, TrickAdded]
    events = store.save(dog)
    assert dog.pending == []
    assert [e.type for e in events] == ["dog.registered", "dog.trick_added"]
    assert {e.subject for e in events} == {dog.id}  # the partition key: one stream in order
    dog.add_trick("roll over")
    store.save(dog)

    loaded = store.load(dog.id)
    assert (loaded.id, loaded.name, loaded.tricks, loaded.version) == (
        dog.id, "Fido", ["sit", "roll over"], 3,
    )  # fmt: skip
    assert store.stream_version(dog.id) == 3
    # The same events, as the log will carry them, went to the outbox.
    published = outbox_events(store)
    assert [e.type for e in published] == ["dog.registered", *["dog.trick_added"] * 2]
    assert [e.id for e in published[:2]] == [e.id for e in events]
    assert published[0].data == {"dog_id": dog.id, "name": "Fido"}


def test_saving_nothing_writes_nothing(store: AggregateStore[Dog]) -> None:
    dog = store.create()
    assert store.save(dog) == []
    with pytest.raises(AggregateNotFound):
        store.load(dog.id)


def test_an_unknown_id_is_a_clear_error(store: AggregateStore[Dog]) -> None:
    with pytest.raises(AggregateNotFound, match=r"no Dog with id 'nope' in tidings_aggregate_"):
        store.load("nope")
    with pytest.raises(LookupError):  # AggregateNotFound is a LookupError too
        store.load("nope")


def test_recording_an_unregistered_payload_is_a_clear_error(store: AggregateStore[Dog]) -> None:
    dog = store.create()
    with pytest.raises(ConfigError, match="Unregistered is not registered as an event payload"):
        dog.record(Unregistered())
    with pytest.raises(ConfigError, match="takes a registered pydantic event model, got dict"):
        dog.record({"trick": "sit"})  # type: ignore[arg-type]
    assert dog.version == 0
    assert dog.pending == []


def test_an_event_without_its_apply_method_is_refused_when_recorded(app: Tidings) -> None:
    class Cat(Aggregate):
        def __init__(self) -> None:
            self.name = ""

    store = AggregateStore(app, "sqlite://", Cat)
    cat = store.create()
    with pytest.raises(ConfigError, match=r"Cat has no method for TrickAdded: mark one with "):
        cat.record(TrickAdded(trick="sit"))
    assert cat.pending == []


# -- two writers ------------------------------------------------------------------------


def test_two_writers_conflict_once_and_the_retry_lands_both(store: AggregateStore[Dog]) -> None:
    dog = store.create()
    dog.register("Fido")
    store.save(dog)
    both_loaded = threading.Barrier(2, timeout=30)
    conflicts: list[ConcurrencyConflict] = []
    retried: list[str] = []

    def writer(trick: str) -> None:
        mine = store.load(dog.id)
        both_loaded.wait()  # both hold version 1 before either saves
        mine.add_trick(trick)
        try:
            store.save(mine)
        except ConcurrencyConflict as exc:
            conflicts.append(exc)
            retried.append(trick)
            store.update(dog.id, lambda d: d.add_trick(trick))

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("sit", "stay")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(conflicts) == 1
    conflict = conflicts[0]
    assert (conflict.aggregate_id, conflict.expected, conflict.actual) == (dog.id, 1, 2)
    assert "another writer saved first" in str(conflict)
    assert "Reload it" in str(conflict)
    final = store.load(dog.id)
    assert sorted(final.tricks) == ["sit", "stay"]
    assert final.tricks[-1] == retried[0]  # the loser's change, after the winner's
    assert final.version == 3
    assert len(outbox_events(store)) == 3  # the lost save published nothing


def test_a_stale_aggregate_in_the_callers_session_conflicts_and_rolls_back(
    store: AggregateStore[Dog],
) -> None:
    dog = store.create()
    dog.register("Fido")
    store.save(dog)
    stale = store.load(dog.id)
    store.update(dog.id, lambda d: d.add_trick("sit"))
    stale.add_trick("stay")
    with (
        Session(store.engine) as session,
        pytest.raises(ConcurrencyConflict) as caught,
        session.begin(),
    ):
        store.save(stale, session=session)
    assert (caught.value.expected, caught.value.actual) == (1, 2)
    assert store.load(dog.id).tricks == ["sit"]
    assert stale.pending  # not saved: the caller reloads and applies it again


def test_update_gives_up_after_its_attempts(store: AggregateStore[Dog]) -> None:
    dog = store.create()
    dog.register("Fido")
    store.save(dog)
    writes = 0

    def change_while_another_writes(d: Dog) -> None:
        nonlocal writes
        d.add_trick("mine")
        store.update(dog.id, lambda other: other.add_trick(f"theirs-{writes}"))
        writes += 1

    with pytest.raises(ConcurrencyConflict):
        store.update(dog.id, change_while_another_writes, attempts=2)
    assert writes == 2
    assert store.load(dog.id).tricks == ["theirs-0", "theirs-1"]


# -- the outbox in the same transaction ---------------------------------------------------


def test_outbox_rows_exist_exactly_when_the_transaction_commits(
    store: AggregateStore[Dog],
) -> None:
    store.create_tables()  # a save in a session only checks that they exist
    assert store.outbox is not None
    dog = store.create()
    dog.register("Fido")
    with Session(store.engine) as session:
        session.begin()
        store.save(dog, session=session)
        session.rollback()
    assert count(store, store.outbox.table) == 0
    assert count(store, store.table) == 0

    dog = store.create()
    dog.register("Rex")
    with Session(store.engine) as session, session.begin():
        saved = store.save(dog, session=session)
    assert [e.id for e in outbox_events(store)] == [saved[0].id]
    assert store.load(dog.id).name == "Rex"


def test_a_save_in_a_session_needs_the_tables_created_first(
    store: AggregateStore[Dog],
) -> None:
    dog = store.create()
    dog.register("Fido")
    with (
        Session(store.engine) as session,
        pytest.raises(ConfigError, match=r"do not exist; create them before using a session"),
    ):
        store.save(dog, session=session)
    store.create_tables()
    with Session(store.engine) as session, session.begin():
        store.save(dog, session=session)
    assert store.load(dog.id).name == "Fido"


def test_without_a_topic_events_are_only_stored(app: Tidings, db_url: str) -> None:
    store = AggregateStore(app, db_url, Dog)
    try:
        dog = store.create()
        dog.register("Fido")
        store.save(dog)
        assert store.outbox is None
        assert store.load(dog.id).name == "Fido"
        assert not sa.inspect(store.engine).has_table("tidings_outbox")
    finally:
        store.dispose()


# -- snapshots --------------------------------------------------------------------------


def test_a_load_starts_from_the_snapshot(app: Tidings, db_url: str) -> None:
    store = AggregateStore(app, db_url, Dog, topic=TOPIC, snapshot_every=10)
    try:
        dog = store.create()
        dog.register("Fido")
        store.save(dog)
        for i in range(24):  # 25 events: the snapshot at 20
            dog.add_trick(f"t{i}")
            store.save(dog)
        assert count(store, store.snapshots) == 1
        Dog.applied = 0
        loaded = store.load(dog.id)
        assert Dog.applied == 5  # events 21..25, after the snapshot
        assert (loaded.name, loaded.tricks, loaded.version) == (dog.name, dog.tricks, 25)
        # Saved from the snapshot's state: the next snapshot (at 30) is taken from it.
        for i in range(5):
            loaded.add_trick(f"u{i}")
        store.save(loaded)
        Dog.applied = 0
        assert store.load(dog.id).tricks == [*dog.tricks, "u0", "u1", "u2", "u3", "u4"]
        assert Dog.applied == 0
    finally:
        store.dispose()


def test_a_snapshot_of_another_snapshot_version_is_ignored_then_replaced(
    app: Tidings, db_url: str
) -> None:
    store = AggregateStore(app, db_url, Dog, snapshot_every=5)
    dog = store.create()
    dog.register("Fido")
    for i in range(6):
        dog.add_trick(f"t{i}")
    store.save(dog)  # 7 events: a snapshot at 7 (a save that crosses 5)
    store.dispose()

    class NewDog(Dog):
        snapshot_version = 2  # the state's shape changed: old snapshots mean nothing

        def restore_snapshot(self, state: dict[str, Any]) -> None:
            raise AssertionError("an old snapshot was restored")

    new_store = AggregateStore(app, db_url, NewDog, snapshot_every=5)
    try:
        NewDog.applied = 0
        loaded = new_store.load(dog.id)
        assert NewDog.applied == 7  # every event: the snapshot was ignored
        assert loaded.tricks == dog.tricks
        for i in range(3):
            loaded.add_trick(f"u{i}")
        new_store.save(loaded)  # 10: a new snapshot, of version 2, replaces the old
        with new_store.engine.connect() as conn:
            s = new_store.snapshots
            rows = conn.execute(sa.select(s.c.version, s.c.schema_version)).all()
        assert [tuple(r) for r in rows] == [(10, 2)]
    finally:
        new_store.dispose()


def test_state_a_snapshot_cannot_keep_is_refused_by_name(app: Tidings) -> None:
    class Kennel(Aggregate):
        def __init__(self) -> None:
            self.dogs: set[str] = set()

        @applies(TrickAdded)
        def _added(self, event: TrickAdded) -> None:
            self.dogs.add(event.trick)

    store = AggregateStore(app, "sqlite://", Kennel, snapshot_every=1)
    kennel = store.create()
    kennel.record(TrickAdded(trick="sit"))
    with pytest.raises(ConfigError, match=r"Kennel.dogs is a set, which a snapshot cannot keep"):
        store.save(kennel)


# -- contracts --------------------------------------------------------------------------


class TrickAddedV2(BaseModel):
    trick: str
    level: str


def test_old_stored_events_load_through_the_upcasters(db_url: str) -> None:
    store = AggregateStore(dog_app(), db_url, Dog)
    dog = store.create()
    dog.register("Fido")
    dog.add_trick("sit")
    store.save(dog)
    store.dispose()

    app = dog_app()
    app.event("dog.trick_added", version=2)(TrickAddedV2)

    @app.upcaster("dog.trick_added", from_version=1)
    def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "level": "basic"}

    class LevelledDog(Dog):
        @applies(TrickAddedV2)
        def _levelled(self, event: TrickAddedV2) -> None:
            self.tricks.append(f"{event.trick} ({event.level})")

    new_store = AggregateStore(app, db_url, LevelledDog)
    try:
        assert new_store.load(dog.id).tricks == ["sit (basic)"]
    finally:
        new_store.dispose()


def test_bad_settings_are_refused(app: Tidings) -> None:
    with pytest.raises(ConfigError, match="needs an Aggregate subclass"):
        AggregateStore(app, "sqlite://", dict)  # type: ignore[type-var]
    with pytest.raises(ConfigError, match="snapshot_every must be an integer >= 1"):
        AggregateStore(app, "sqlite://", Dog, snapshot_every=0)
    with pytest.raises(ConfigError, match="takes a database URL or a SQLAlchemy engine"):
        AggregateStore(app, 42, Dog)
    with pytest.raises(ConfigError, match="snapshot_version must be an integer >= 1"):
        type("Bad", (Aggregate,), {"snapshot_version": 0})
    store = AggregateStore(app, "sqlite://", Dog)
    with pytest.raises(ConfigError, match="an aggregate id is a string of 1 to 255"):
        store.create("")
    other = AggregateStore(app, "sqlite://", Dog)
    fido = Dog()
    fido.add_trick("sit")
    with pytest.raises(ConfigError, match="made by its create"):
        other.save(fido)


def test_a_shared_outbox_takes_the_events_to_the_stores_topic(
    app: Tidings, db_url: str, tmp_path: Any
) -> None:
    from tidings.outbox import Outbox

    outbox = Outbox(app, db_url, topic="task-events")
    store = AggregateStore(app, db_url, Dog, outbox=outbox, topic=TOPIC)
    try:
        assert store.outbox is outbox
        dog = store.create()
        dog.register("Fido")
        store.save(dog)
        dog.add_trick("sit")
        with Session(store.engine) as session, session.begin():
            store.save(dog, session=session)
        with store.engine.connect() as conn:
            topics = conn.execute(sa.select(outbox.table.c.topic)).scalars().all()
        assert topics == [TOPIC, TOPIC]
        elsewhere = Outbox(app, f"sqlite:///{tmp_path / 'other.db'}", topic=TOPIC)
        with pytest.raises(ConfigError, match="must share a database"):
            AggregateStore(app, db_url, Dog, outbox=elsewhere)
    finally:
        store.dispose()
