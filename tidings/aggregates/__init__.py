"""Event-sourced aggregates: state rebuilt from its own events, stored as one stream per
aggregate id in the service's database, and published through the outbox.

An :class:`Aggregate`'s methods :meth:`~Aggregate.record` events (the app's registered
payload models); :meth:`~Aggregate.apply` (by default the methods marked
:func:`applies`) turns each into state. An :class:`AggregateStore` loads an aggregate
by replaying its stream (from a snapshot, when there is one) and saves the events it
recorded since, in one transaction with their outbox rows::

    store = AggregateStore(app, "sqlite:///./app.db", Task, topic="task-events")
    task = store.create()
    task.start("write the docs")
    store.save(task)                    # or store.save(task, session=session)
    store.update(task.id, lambda t: t.complete())   # reloads and retries on a conflict

Two writers of one aggregate: the second save raises
:class:`~tidings.errors.ConcurrencyConflict` (the stream's primary key refuses a version
stored twice); reload and apply the change again. The design is in
``docs/decisions/0028-event-sourced-aggregates.md``.
"""

from tidings.aggregates._aggregate import Aggregate, applies
from tidings.aggregates._store import AggregateApp, AggregateStore
from tidings.aggregates._tables import DEFAULT_TABLE as DEFAULT_TABLE

__all__ = ["Aggregate", "AggregateApp", "AggregateStore", "applies"]
