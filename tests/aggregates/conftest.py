"""Fixtures of the aggregate tests: the service's database on SQLite and on a real
PostgreSQL, an app whose contracts the stored events use, and a Dog aggregate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from tests.conftest import database_url
from tidings import Tidings
from tidings.aggregates import Aggregate, AggregateStore, applies

TOPIC = "dog-events"


class DogRegistered(BaseModel):
    dog_id: str
    name: str


class TrickAdded(BaseModel):
    trick: str


class Unregistered(BaseModel):
    x: int = 1


class Dog(Aggregate):
    applied = 0  # every apply() call, on every Dog: what a load replayed

    def __init__(self) -> None:
        self.name = ""
        self.tricks: list[str] = []

    def register(self, name: str) -> None:
        self.record(DogRegistered(dog_id=self.id, name=name))

    def add_trick(self, trick: str) -> None:
        self.record(TrickAdded(trick=trick))

    def apply(self, payload: object) -> None:
        type(self).applied += 1
        super().apply(payload)

    @applies(DogRegistered)
    def _registered(self, event: DogRegistered) -> None:
        self.name = event.name

    @applies(TrickAdded)
    def _trick_added(self, event: TrickAdded) -> None:
        self.tricks.append(event.trick)


def dog_app(url: str = "memory://") -> Tidings:
    app = Tidings(url, service="dog-school")
    app.event("dog.registered", subject="dog_id")(DogRegistered)
    app.event("dog.trick_added")(TrickAdded)
    return app


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The service's database, as a sync SQLAlchemy URL."""
    return database_url(request, tmp_path, name="app.db")


@pytest.fixture
def app() -> Tidings:
    return dog_app()


@pytest.fixture
def store(app: Tidings, db_url: str) -> Iterator[AggregateStore[Dog]]:
    store = AggregateStore(app, db_url, Dog, topic=TOPIC)
    yield store
    store.dispose()
