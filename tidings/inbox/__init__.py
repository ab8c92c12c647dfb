"""The inbox: a group's record of the events it has handled, so that a redelivered
event has no second effect (an idempotent consumer).

::

    from tidings import Inbox

    inbox = Inbox("postgresql+psycopg://app@db/app")  # or "sqlite:///./app.db", an
    #   Engine, an AsyncEngine, a sessionmaker or an async_sessionmaker

    @app.subscriber("task-events", group="email", inbox=inbox)
    async def remember(payload, ctx):
        ctx.session.add(Sent(task_id=payload["task_id"]))  # commits with the mark

Delivery is at least once: an event whose offset was not committed before a crash, a
rebalance or a reset of the group's offsets is delivered again, and so is an event
published twice or a dead letter replayed twice. With an inbox, each handler of the
group records the event's id when it has handled it, and an event whose id is already
recorded is passed without calling the handler (counted in ``Stats.duplicates``).

**Handlers that write to a database** take a context and use ``ctx.session``, a
SQLAlchemy session on the inbox's database. The inbox commits its transaction after
the handler returns, and the mark is in it: the handler's writes and the mark commit
together or not at all. Do not commit in the handler; tidings does. If the handler
raises, the transaction is rolled back (no effect, no mark) and the exception goes on
to ``Retry``. The session follows the handler's kind: a ``Session`` for a plain ``def``
handler (run in a worker thread, the session with it), an ``AsyncSession`` for an
``async def`` handler. An Inbox made from a URL has both kinds; one made from an Engine
(or sessionmaker) has only ``Session``, one from an AsyncEngine (or
async_sessionmaker) only ``AsyncSession``. A handler of the other kind still has its
events deduplicated, but its ``ctx.session`` is a placeholder that raises ConfigError
when used: a blocking session on the event loop could stall every partition on one
row lock.

**Handlers without a database** (mail, webhooks) use the same Inbox as a durable store
of ids, for instance ``Inbox("sqlite:///./email-inbox.db")``. Their effect cannot be in
the inbox's transaction, so the mark is committed right after the handler returns: a
crash between the effect and that commit repeats the effect once. Within one process
two deliveries of the same event never run at once (the second waits and then finds
the mark).

**Batches.** In a worker, the events of one partition that come one after the other
are handled in a lane, in order. For handlers that write through ``ctx.session``, the
inbox keeps one transaction open across a run of a lane's events: each event gets a
savepoint, with its mark and the handler's writes in it, and the run is committed at
once (one fsync) before the worker commits the offsets of its events, at most
``Inbox(batch=...)`` events (default 500) and 0.2 s at a time. A handler that fails
rolls back to its savepoint (nothing of it stays, the events before it keep theirs, and
those are committed before ``Retry`` waits); retries and dead letters stay per event.
A crash before a batch's commit handles the whole batch again (nothing of it was
committed); after it, its events are found marked and passed. A handler that wrote
nothing through its session (an effect outside the database) has its mark committed at
once, and its next events are not batched, so that a crash repeats one such effect, not
a batch of them; a replayed dead letter is never batched. On SQLite, one batch of an
inbox at a time holds the file's write lock (``BEGIN IMMEDIATE``), and its statements,
which then never wait, run on the event loop's thread, an ``async def`` handler's
``AsyncSession`` included (on an engine of the inbox's whose aiosqlite connections do
each call at once: no trip to aiosqlite's thread, and its ``execute`` without a
greenlet). A plain ``def`` handler's calls in a batch are made in runs: a lane's
events one after the other in one trip to a worker thread, each event's savepoint,
mark and release in that thread, a failing call rolled back alone and taken on by
``Retry`` on the loop. ``Inbox(batch=1)``: a transaction per event, as described next.
See ``docs/decisions/0014-inbox-lane-batches.md``, ``0041-inbox-runs-in-one-thread.md``
and ``0045-inbox-async-statements-without-greenlets.md``.

**How a mark is taken.** On PostgreSQL the mark is inserted first, in the handler's
transaction (``INSERT ... ON CONFLICT DO NOTHING``: check and claim in one round
trip), and the connection is held while the handler runs: a concurrent delivery of the
same event, in any process, waits on that row and then finds it, without calling its
handler. On SQLite, which has one writer for the whole file, holding the write lock
while the handler runs would serialize every handler, so the mark is looked up first
(a read; in WAL mode on the event loop's thread, as readers never wait) and inserted
once the handler has returned: in the session's transaction, just before its commit,
if the handler used the session (which connects only then), else on its own, the
marks of deliveries finishing together in one transaction (one fsync). If another
delivery of the same event committed its mark in between, the insert finds it, and
this delivery's transaction, effect included, is rolled back and counted as a
duplicate (an effect outside the database has happened twice then). SQLite files
opened from a URL use WAL and ``synchronous=FULL``. SQLite has one writer: handlers
that write through their sessions wait for each other's commits (batches make those
few; ``bench/fig_inbox.py`` measures it).

**What a mark is.** A row ``(consumer, event_id, handled_at)`` in ``table`` (default
``tidings_inbox``), primary key ``(consumer, event_id)``, ``handled_at`` in UTC.
``consumer`` is ``"<group>:<module>.<qualname>"`` of the handler (see
:meth:`Inbox.key`): every handler of a group handles an event once, and renaming or
moving a handler starts a fresh record for it. The table is created on first use;
:meth:`Inbox.create_table` creates it ahead, and :attr:`Inbox.table` (in
:attr:`Inbox.metadata`, or in your own ``metadata=``) is there for Alembic.

**Retention.** Marks older than ``retention`` (default 7 days; None keeps them) are
deleted in the background, in batches, at most every ``retention / 100`` and at least
every 5 minutes while events flow. An event redelivered after its mark was deleted
is handled again: keep ``retention`` longer than any replay you may run.

The package: :class:`Inbox` (``_inbox``) delegates to one store per dialect
(``_sqlite``, ``_postgresql``, both over ``_sides``: the sync and async ways to the
database), with a lane's batch in ``_batch``, the table and its DDL in ``_schema`` and
retention in ``_retention``.
What happens around a handler call is :class:`tidings.middleware.InboxMiddleware`'s.
"""

from tidings.inbox._inbox import DEFAULT_BATCH, DEFAULT_RETENTION, DEFAULT_TABLE, Inbox

__all__ = ["DEFAULT_BATCH", "DEFAULT_RETENTION", "DEFAULT_TABLE", "Inbox"]
