"""Compatibility modes, and the check of a new schema version against the earlier ones.

A check compares JSON Schemas (as pydantic's ``model_json_schema()`` emits them) and
returns the breaks, each naming where in the event it is, the rule, the old and the new
form and the direction it breaks; ``str(brk)`` reads like::

    data.total: number -> integer narrows the type; breaks BACKWARD (readers of v2 cannot
    read v1 events)

The rules are Confluent Schema Registry's for JSON Schema (decision 0016 has the table).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tidings.schema.compare import changes
from tidings.schema.nodes import JsonSchema, canonical
from tidings.schema.rules import Policy, Rule, compatible, phrase
from tidings.schema.walk import Found

__all__ = ["Break", "Change", "Mode", "check", "diff", "fingerprint"]


class Mode(enum.Enum):
    """Which versions a new schema must stay compatible with, and how (Confluent's names).

    ``BACKWARD``: readers of the new version can read events written with the previous
    one (upgrade the consumers first). ``FORWARD``: readers of the previous version can
    read events written with the new one (upgrade the producers first). ``FULL``: both.
    The ``_TRANSITIVE`` modes hold against every earlier version, the others against the
    latest only. ``NONE`` checks nothing.
    """

    NONE = "NONE"
    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"

    @property
    def transitive(self) -> bool:
        return self.value.endswith("_TRANSITIVE")

    @property
    def directions(self) -> tuple[Mode, ...]:
        """``BACKWARD`` and/or ``FORWARD``: the directions this mode checks."""
        base = self.value.removesuffix("_TRANSITIVE")
        return {
            "NONE": (),
            "BACKWARD": (Mode.BACKWARD,),
            "FORWARD": (Mode.FORWARD,),
            "FULL": (Mode.BACKWARD, Mode.FORWARD),
        }[base]


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between two versions, read from the older (``old``) to the newer.

    ``breaks`` holds ``Mode.BACKWARD`` when readers of the newer version cannot read
    events of the older, ``Mode.FORWARD`` when readers of the older cannot read events of
    the newer; it is empty for a compatible change.
    """

    path: str
    rule: Rule
    old: str
    new: str
    phrase: str
    breaks: tuple[Mode, ...] = ()

    def __str__(self) -> str:
        verdict = ", ".join(m.value for m in self.breaks) or "compatible"
        verdict = f"breaks {verdict}" if self.breaks else verdict
        return f"{self.path}: {self.old} -> {self.new} {self.phrase}; {verdict}"


@dataclass(frozen=True, slots=True)
class Break:
    """A change that breaks ``direction`` (``Mode.BACKWARD`` or ``Mode.FORWARD``) between
    version ``old_version`` and ``new_version``; ``old`` and ``new`` are the forms at
    ``path`` in those versions."""

    path: str
    rule: Rule
    old: str
    new: str
    phrase: str
    direction: Mode
    old_version: int
    new_version: int

    def __str__(self) -> str:
        if self.direction is Mode.BACKWARD:
            reader, writer = self.new_version, self.old_version
        else:
            reader, writer = self.old_version, self.new_version
        return (
            f"{self.path}: {self.old} -> {self.new} {self.phrase}; breaks "
            f"{self.direction.value} (readers of v{reader} cannot read v{writer} events)"
        )


def check(
    new: JsonSchema,
    previous: Sequence[JsonSchema] | Mapping[int, JsonSchema],
    mode: Mode = Mode.BACKWARD,
    *,
    policy: Policy = Policy.STRICT,
) -> list[Break]:
    """The breaks of ``new`` against ``previous`` under ``mode``; empty when it may be
    registered.

    ``previous`` is the earlier versions, oldest first (numbered from 1), or a mapping of
    version number to schema; ``new`` is numbered one above the highest. A transitive
    mode checks every earlier version, newest first, the others only the latest.
    """
    versions = dict(previous) if isinstance(previous, Mapping) else dict(enumerate(previous, 1))
    if not versions or mode is Mode.NONE:
        return []
    new_version = max(versions) + 1
    against = sorted(versions, reverse=True)
    if not mode.transitive:
        against = against[:1]
    found: list[Break] = []
    for version in against:
        for direction in mode.directions:
            found.extend(_breaks(versions[version], new, version, new_version, direction, policy))
    return found


def _breaks(
    old: JsonSchema, new: JsonSchema, v_old: int, v_new: int, direction: Mode, policy: Policy
) -> list[Break]:
    backward = direction is Mode.BACKWARD
    writer, reader = (old, new) if backward else (new, old)
    return [
        Break(
            path=f.path,
            rule=f.rule,
            # in version order: the writer's form first when the reader is the newer
            old=f.old if backward else f.new,
            new=f.new if backward else f.old,
            phrase=phrase(f.rule, reader_is_newer=backward),
            direction=direction,
            old_version=v_old,
            new_version=v_new,
        )
        for f in changes(writer, reader, policy)
        if not compatible(f.rule, policy)
    ]


def diff(old: JsonSchema, new: JsonSchema, *, policy: Policy = Policy.STRICT) -> list[Change]:
    """Every change from ``old`` to ``new``, compatible or not, with the directions each
    breaks (``tidings schema diff``).

    The changes are those a reader of ``new`` sees in events of ``old``; a change that
    only readers of ``old`` notice (say, a property added to a closed model) is matched to
    the change at the same path, or listed on its own.
    """
    listed = [
        _change(f, reader_is_newer=True, breaks=() if compatible(f.rule, policy) else _BACKWARD)
        for f in changes(old, new, policy)
    ]
    for f in changes(new, old, policy):
        if compatible(f.rule, policy):
            continue
        at = _counterpart(listed, f)
        if at is None:
            listed.append(_change(f, reader_is_newer=False, breaks=_FORWARD))
        elif Mode.FORWARD not in listed[at].breaks:
            c = listed[at]
            listed[at] = Change(c.path, c.rule, c.old, c.new, c.phrase, (*c.breaks, Mode.FORWARD))
    return listed


_BACKWARD, _FORWARD = (Mode.BACKWARD,), (Mode.FORWARD,)


def _counterpart(listed: list[Change], f: Found) -> int | None:
    """The listed change that ``f`` (found reading the other way) is the mirror of: the
    same path with the forms swapped, else the same path."""
    same_path = [i for i, c in enumerate(listed) if c.path == f.path]
    mirrored = [i for i in same_path if (listed[i].old, listed[i].new) == (f.new, f.old)]
    found = mirrored or same_path
    return found[0] if found else None


def _change(f: Found, *, reader_is_newer: bool, breaks: tuple[Mode, ...]) -> Change:
    old, new = (f.old, f.new) if reader_is_newer else (f.new, f.old)
    return Change(f.path, f.rule, old, new, phrase(f.rule, reader_is_newer=reader_is_newer), breaks)


def fingerprint(schema: JsonSchema) -> str:
    """The SHA-256 (hex) of the schema's canonical JSON: sorted keys, no whitespace, UTF-8.
    Equal schemas have equal fingerprints whatever their key order."""
    return hashlib.sha256(canonical(schema).encode()).hexdigest()
