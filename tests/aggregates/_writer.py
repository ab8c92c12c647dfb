"""A writer process of tests/aggregates/test_processes.py: loads a dog, waits until
the other writer has loaded it too, adds a trick and saves; on a conflict, retries
through ``update``. Reports what happened on ``results``."""

from __future__ import annotations

from typing import Any

from tests.aggregates.conftest import Dog, dog_app
from tidings.aggregates import AggregateStore
from tidings.errors import ConcurrencyConflict


def write(db_url: str, dog_id: str, trick: str, barrier: Any, results: Any) -> None:
    store = AggregateStore(dog_app(), db_url, Dog, topic="dog-events")
    try:
        dog = store.load(dog_id)
        barrier.wait(60)
        dog.add_trick(trick)
        try:
            store.save(dog)
            results.put((trick, "saved"))
        except ConcurrencyConflict as exc:
            store.update(dog_id, lambda d: d.add_trick(trick))
            results.put((trick, f"conflict {exc.expected}->{exc.actual}, retried"))
    finally:
        store.dispose()
