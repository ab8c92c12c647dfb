"""Projections: read models kept from the log, and rebuilt while they serve.

::

    board = app.projection("task-board", topic="task-events",
                           db="sqlite:///./board.db", tables=[counts])

    @board.on("task.created")
    def count(event, ctx):
        ctx.session.execute(...)  # commits with the projection's position

A projection is a group (named after it) whose handlers write to tables of its own
database through ``ctx.session``, a SQLAlchemy ``Session``. Each event is applied in
one transaction that also records the projection's **position**: the offset of the
last event applied in that partition, in the table ``tidings_projection_positions``
of the same database. The handlers' writes and the position commit together or not
at all; an event at or below the stored position is passed without calling a
handler, so a redelivery (a crash before the group committed its offset, a reset of
the group's offsets) has no second effect. The group's committed offset in the log is
then only where reading resumes; the stored position is what the model reflects.

Handlers are plain ``def`` functions taking ``(payload, ctx)`` (they run in a worker
thread with a sync Session); they must not commit, publish, or have effects outside
the projection's database, since a rebuild runs them again. A handler that raises
rolls back its event (writes and position) and goes to ``Retry``; a dead-lettered
event is passed, and replaying it later does not apply it (its position is passed):
fix the handler and rebuild.

**Rebuild** (:meth:`Projection.rebuild`, ``tidings projections rebuild NAME``) runs
the handlers again from the start of the topics into a shadow (a file beside the
live SQLite file, or a schema of its own on PostgreSQL) while the live projection
goes on serving, then swaps the shadow's tables and positions in, in one
transaction, once the shadow has read as far as the live projection has applied:
readers see the old tables or the new ones, never a partial one. One rebuild of a
projection runs at a time (another gets ``RebuildRunning``). Events that retention
has deleted cannot be replayed. See :mod:`tidings.projections._rebuild` and
``docs/decisions/0029-projections.md``.

**Status** (:meth:`Projection.status`, ``tidings projections status``): per
partition, the stored position, the group's committed offset, the log's end and the
lag, and whether a rebuild runs.
"""

from tidings.projections._projection import Projection
from tidings.projections._rebuild import RebuildReport
from tidings.projections._status import PartitionStatus, ProjectionStatus, RebuildRunningInfo

__all__ = [
    "PartitionStatus",
    "Projection",
    "ProjectionStatus",
    "RebuildReport",
    "RebuildRunningInfo",
]
