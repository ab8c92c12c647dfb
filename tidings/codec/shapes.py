"""Decoders of the shapes documents come in: a structured-mode document's member names,
in their order, and a function made for them that reads such a document in one pass.

A producer writes every event of a kind with the same members in the same order
(tidings' own :func:`~tidings.codec.to_dict` does), so a consumer sees a handful of
shapes. For each shape :func:`~tidings.codec.decode` has decoded once in full, a function
is made (as ``dataclasses`` makes an ``__init__``: Python source, compiled once) that
unpacks the document's values in order, checks each as the full lookup would, for that
member only, and fills the :class:`~tidings.envelope.Event`'s slots. It takes only what
the full lookup takes in the same way, and gives None for anything else (a wrong type, a
null, an unknown event type, a time not in UTC): the full lookup then decodes it, or
says why not. One dict lookup by the names' tuple finds it
(docs/decisions/0051-decoders-made-per-shape.md).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tidings.codec.members import ATTRIBUTES, STRINGS
from tidings.envelope import _FIELDS, EPOCH, JSON, SPECVERSION, Event, _Slots, seen_types

__all__ = ["SHAPES_MAX", "learn", "shapes"]

# Shapes kept at most: past that, a new shape is decoded by the full lookup every time
# (a producer that varies its extensions' names without end must not grow a cache).
SHAPES_MAX = 64

_Shaped = Callable[[dict[str, Any]], Event | None]
_shapes: dict[tuple[str, ...], _Shaped] = {}

_REQUIRED = ("specversion", "id", "source", "type")
_NOT_MADE = frozenset({"data_base64"})  # bytes: rare, the full lookup decodes them


def shapes() -> dict[tuple[str, ...], _Shaped]:
    """The decoders made so far, by shape: :func:`~tidings.codec.decode` looks there."""
    return _shapes


def learn(names: tuple[str, ...]) -> None:
    """Make the decoder of documents with these member names, in this order (a document
    the full lookup has just decoded), unless there is one, or no room, or no decoder
    would take it (a required attribute missing, ``data_base64``)."""
    if names in _shapes or len(_shapes) >= SHAPES_MAX:
        return
    if not set(_REQUIRED) <= set(names) or not _NOT_MADE.isdisjoint(names):
        return
    _shapes[names] = _make(names)


def _make(names: tuple[str, ...]) -> _Shaped:
    # Local names v0, v1, ... for the values; member names only as repr() literals.
    at = {name: f"v{k}" for k, name in enumerate(names)}
    checks = [f"type({at[name]}) is str" for name in names if name in STRINGS]
    if "dataversion" in at:
        v = at["dataversion"]
        checks += [f"type({v}) is int", f"{v} > 0"]
    checks += [at["id"], at["source"], f"{at['specversion']} == SPECVERSION"]
    lines = [
        "def decoded(doc):",
        f"    {', '.join(at.values())}, = doc.values()",
        f"    if not ({' and '.join(checks)}) or {at['type']} not in seen:",
        "        return None",
    ]
    if "time" in at:
        v = at["time"]
        lines += [
            "    try:",
            f"        when = fromisoformat({v})",
            "    except ValueError:",
            "        return None",
            "    if when.tzinfo is not UTC:",
            "        return None",
        ]
    else:
        lines.append("    when = EPOCH")
    values = {name: at.get(name, "None") for name in _FIELDS}
    values["time"] = "when"
    if "datacontenttype" not in at:
        values["datacontenttype"] = "JSON"
    extensions = [name for name in names if name not in ATTRIBUTES]
    values["extensions"] = "{" + ", ".join(f"{n!r}: {at[n]}" for n in extensions) + "}"
    lines.append("    event = Slots()")
    lines += [f"    event.{name} = {values[name]}" for name in _FIELDS]
    lines += ["    event.__class__ = Event", "    return event"]
    scope: dict[str, Any] = {
        "SPECVERSION": SPECVERSION, "seen": seen_types(), "fromisoformat": datetime.fromisoformat,
        "UTC": UTC, "EPOCH": EPOCH, "JSON": JSON, "Slots": _Slots,
        "Event": Event,
    }  # fmt: skip
    exec("\n".join(lines), scope)  # the source is made here, names only as repr() literals
    made: _Shaped = scope["decoded"]
    return made
