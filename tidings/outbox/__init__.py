"""The transactional outbox: events written in the caller's own database transaction,
then moved to the log by a relay.

Publishing straight to the log from a request handler has two failure modes: the
database commits and the publish fails (the fact happened, nobody hears of it), or
the publish succeeds and the transaction rolls back (everyone hears of something that
did not happen). The outbox closes both: :meth:`Outbox.add` inserts the encoded event
into a table of the service's own database, in the caller's transaction, so the event
exists exactly when the change it reports does. A relay (:meth:`Outbox.relay`, run by
``tidings run`` beside the worker or alone by ``tidings outbox relay``) then appends
committed rows to the log and deletes them::

    outbox = Outbox(app, "postgresql+psycopg://...", topic="task-events")

    with Session(engine) as session, session.begin():
        session.add(task)
        outbox.add(session, TaskCreated(task_id=task.id))

    app.add_component(outbox.relay())

What the relay guarantees (the reasoning is in ``docs/decisions/0004-outbox.md``):

- **At least once.** A row is deleted only after the log acknowledged its append; a
  crash in between publishes it again, with the same event id (the dedupe key of an
  inbox).
- **Commit order per key.** Each pass publishes the rows visible to it, oldest ``seq``
  first. On SQLite writers are serialised, so ``seq`` order is commit order. On
  PostgreSQL a ``seq`` is drawn at insert, not at commit, so a lower ``seq`` may
  commit after a higher one was published; since rows are deleted rather than passed
  by a cursor, it is still published, in the next pass: the order is then the order
  in which the transactions committed. ``add()`` inserts at once, after the
  session's pending writes are flushed, so two transactions that the database
  serialises on a row lock (two updates of one task) draw their ``seq`` in lock
  order, and their events keep it.
- **Delayed events** (``deliver_at``) are published once due, by due time; they do
  not hold back other rows. In a catch-up (the relay was down), a pass interleaves
  due delayed rows with immediate ones by time.
- **One active relay per table**, by a lease row renewed every third of its length.
  Every renewal changes the row (a counter). Another relay waits and takes over when
  the row is released (its holder stopped), or when it has seen the row unchanged for
  a lease length of its own monotonic clock (its holder died or cannot reach the
  database). A holder whose renewals have failed for two thirds of its lease, counted
  from when it sent the last one that succeeded, stops relaying. No wall clock takes
  part: a clock step neither ends a live relay's lease nor prolongs a dead one's.

The package: the table and :meth:`Outbox.add` (``_outbox``), the relay with its lease
(``_relay``, ``_lease``), ``status`` (``_status``), and what the outbox needs of the
app it publishes through, :class:`OutboxApp` (``_app``): the outbox depends on
that, not on :class:`tidings.Tidings`.
"""

from tidings.outbox._app import OutboxApp, RecordLog
from tidings.outbox._outbox import Outbox
from tidings.outbox._relay import MAX_BATCH as MAX_BATCH
from tidings.outbox._relay import OutboxRelay
from tidings.outbox._status import OutboxStatus
from tidings.outbox._tables import DEFAULT_TABLE as DEFAULT_TABLE
from tidings.outbox._tables import OutboxError

__all__ = [
    "Outbox",
    "OutboxApp",
    "OutboxError",
    "OutboxRelay",
    "OutboxStatus",
    "RecordLog",
]
