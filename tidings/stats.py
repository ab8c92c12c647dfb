"""What a worker did, counted by the worker, its middleware and its dead letters."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Stats"]


@dataclass
class Stats:
    """Counters of one worker, over all its groups."""

    handled: int = 0
    failed_attempts: int = 0
    skipped: int = 0  # events no subscriber of the group wants, and replays sent twice
    undecodable: int = 0
    dead_lettered: int = 0  # events written to their group's dead-letter topic
    parked: int = 0  # of which, parked behind an earlier dead letter of their key
    duplicates: int = 0  # redelivered events an inbox had already seen
    abandoned: int = 0  # handlers still running when the worker had to stop without them
