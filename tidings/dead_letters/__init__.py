"""Dead letters: events a group could not handle, kept on the same transport.

The one home of dead letters, poison and replay:

- :mod:`~tidings.dead_letters.entry`: one entry (:class:`DeadLetter`), its marks, the
  group's two topics;
- :mod:`~tidings.dead_letters.log`: a group's dead letters (:class:`DeadLetterLog`),
  the fold of its topic, and their writer;
- :mod:`~tidings.dead_letters.intake`: what the worker hands each fetched record to
  (replays in, poison and parked events out);
- :mod:`~tidings.dead_letters.operations`: list, replay and purge for operators.

The :class:`~tidings.middleware.DeadLetters` middleware writes what a handler gives
up on.

Each group ``G`` owns two topics:

- ``G.dlq`` holds its dead letters. An *entry* is a JSON document with the original
  record byte-for-byte (base64) and why it is there: the error's type, message and
  traceback, the attempts, the first and last failure times, the group, the handler,
  and where the event was (topic, partition, offset). Its record key is the original
  key, so one key's entries stay in order in one partition. A *mark* records what
  happened to entries later: ``replayed`` (sent to ``G.retry``), ``resolved`` (the
  replayed event was handled, or dead-lettered again as a new entry) or ``purged``.
  The state of the queue is the fold of the topic: no record is ever rewritten, so
  the dead letters work on any transport that can append and read.
- ``G.retry`` holds replayed entries. Only group ``G`` reads it (the worker
  subscribes each group to its own retry topic), so a replay never reaches the other
  groups of the original topic. The record is the entry itself: the worker handles
  the original event as if read from its original topic, and marks the entry
  resolved afterwards, so a replay run twice is handled once.

A *sequenced* group (``app.group(name, sequenced=True)``) parks later events of a key
behind its unresolved dead letters, in order: per-key order then survives the failure
and the replay. The order of a key's dead letters is the original offset, so an
event that fails again on replay keeps its place before the ones parked behind it.
"""

from __future__ import annotations

from tidings.dead_letters.entry import (
    DeadLetter,
    Reason,
    State,
    dlq_topic,
    new_entry,
    retry_topic,
    value_limit,
)
from tidings.dead_letters.intake import Intake
from tidings.dead_letters.log import DeadLetterLog
from tidings.dead_letters.operations import (
    Filter,
    depths,
    open_log,
    purge,
    read_entry,
    replay,
    replay_plan,
    shown_detail,
    waiting,
)

__all__ = [
    "DeadLetter",
    "DeadLetterLog",
    "Filter",
    "Intake",
    "Reason",
    "State",
    "depths",
    "dlq_topic",
    "new_entry",
    "open_log",
    "purge",
    "read_entry",
    "replay",
    "replay_plan",
    "retry_topic",
    "shown_detail",
    "value_limit",
    "waiting",
]
