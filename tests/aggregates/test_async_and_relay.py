"""The asyncio side of the store (the caller's AsyncSession, or a thread), and the
saved events reaching a subscriber through the outbox's relay in a running app."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from tidings import ConfigError, Context, Tidings
from tidings.aggregates import AggregateStore
from tidings.errors import ConcurrencyConflict
from tidings.testing import eventually, running

from .conftest import TOPIC, Dog, DogRegistered, TrickAdded, dog_app


def async_url(url: str) -> str:
    url = url.replace("sqlite:///", "sqlite+aiosqlite:///", 1)
    return url.replace("postgresql+psycopg://", "postgresql+psycopg_async://", 1)


async def test_save_and_load_in_the_callers_async_session(
    store: AggregateStore[Dog], db_url: str
) -> None:
    engine = create_async_engine(async_url(db_url))
    store.create_tables()  # a session's save only checks that they exist
    try:
        dog = store.create()
        dog.register("Fido")
        async with AsyncSession(engine) as session, session.begin():
            await store.save_async(dog, session=session)
            await session.rollback()  # rolled back: neither the events nor the outbox
        with pytest.raises(LookupError):
            await store.load_async(dog.id)
        dog = store.create()
        dog.register("Rex")
        async with AsyncSession(engine) as session, session.begin():
            await store.save_async(dog, session=session)
            loaded = await store.load_async(dog.id, session=session)  # its own writes
        assert loaded.name == "Rex"
        assert store.outbox is not None
        with Session(store.engine) as s:
            assert (
                s.execute(sa.select(sa.func.count()).select_from(store.outbox.table)).scalar() == 1
            )
    finally:
        await engine.dispose()


async def test_the_async_methods_without_a_session_run_in_a_thread(
    store: AggregateStore[Dog],
) -> None:
    dog = store.create()
    dog.register("Fido")
    await store.save_async(dog)
    stale = await store.load_async(dog.id)
    await store.update_async(dog.id, lambda d: d.add_trick("sit"))
    stale.add_trick("stay")
    with pytest.raises(ConcurrencyConflict):
        await store.save_async(stale)
    assert (await store.load_async(dog.id)).tricks == ["sit"]


async def test_a_session_of_the_wrong_kind_is_refused(store: AggregateStore[Dog]) -> None:
    dog = store.create()
    dog.register("Fido")
    with Session(store.engine) as session, pytest.raises(ConfigError, match="AsyncSession"):
        await store.save_async(dog, session=session)
    engine = create_async_engine("sqlite+aiosqlite://")
    try:
        async with AsyncSession(engine) as asession:
            with pytest.raises(ConfigError, match="got an async session"):
                store.save(dog, session=asession)
    finally:
        await engine.dispose()


async def test_saved_events_reach_a_subscriber_through_the_relay(tmp_path: Path) -> None:
    app: Tidings = dog_app(f"sqlite:///{tmp_path / 'log.db'}")
    store = AggregateStore(app, f"sqlite:///{tmp_path / 'app.db'}", Dog, topic=TOPIC)
    seen: list[tuple[str, str | None, object]] = []

    @app.subscriber(TOPIC, group="kennel-club", types=["dog.registered", "dog.trick_added"])
    async def handle(payload: DogRegistered | TrickAdded, context: Context) -> None:
        seen.append((type(payload).__name__, context.event.subject, payload))

    assert store.outbox is not None
    app.add_component(store.outbox.relay(poll_interval=0.01))
    dog = store.create()
    dog.register("Fido")
    dog.add_trick("sit")
    try:
        async with app, running(app):
            await store.save_async(dog)
            await store.update_async(dog.id, lambda d: d.add_trick("stay"))
            await eventually(lambda: len(seen) == 3, timeout=20)
    finally:
        store.dispose()
    assert [name for name, _, _ in seen] == ["DogRegistered", "TrickAdded", "TrickAdded"]
    assert {subject for _, subject, _ in seen} == {dog.id}  # one key: the stream's order
    assert [p.trick for _, _, p in seen[1:]] == ["sit", "stay"]  # type: ignore[union-attr]
