"""Comparisons of the kinds that hold no subschema: strings, numbers, enums, constants."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tidings.schema.nodes import Node, canonical, describe
from tidings.schema.rules import Rule
from tidings.schema.walk import Walk, by_value, limit

__all__ = ["const", "enum", "number", "string"]


def string(walk: Walk, a: Node, b: Node) -> None:
    limit(walk, "maxLength", "MAX_LENGTH", a.raw.get("maxLength"), b.raw.get("maxLength"))
    limit(walk, "minLength", "MIN_LENGTH", a.raw.get("minLength"), b.raw.get("minLength"))
    by_value(walk, "pattern", "PATTERN", a, b)
    by_value(walk, "format", "FORMAT", a, b)


_NUMBER_LIMITS = (
    ("maximum", "MAXIMUM"),
    ("minimum", "MINIMUM"),
    ("exclusiveMaximum", "EXCLUSIVE_MAXIMUM"),
    ("exclusiveMinimum", "EXCLUSIVE_MINIMUM"),
)


def number(walk: Walk, a: Node, b: Node) -> None:
    for keyword, prefix in _NUMBER_LIMITS:
        limit(walk, keyword, prefix, a.raw.get(keyword), b.raw.get(keyword))
    _multiple_of(walk, a.raw.get("multipleOf"), b.raw.get("multipleOf"))
    if a.integer and not b.integer:
        walk.add(Rule.TYPE_EXTENDED, "integer", "number")
    elif b.integer and not a.integer:
        walk.add(Rule.TYPE_NARROWED, "number", "integer")


def _multiple_of(walk: Walk, old: Any, new: Any) -> None:
    # Decimal of the text: 0.1 stays 0.1, and 0.5 equals 0.50
    was = Decimal(str(old)) if isinstance(old, int | float) else None
    now = Decimal(str(new)) if isinstance(new, int | float) else None
    if was == now:
        return
    before = f"multipleOf {old}" if was is not None else "no multipleOf"
    after = f"multipleOf {new}" if now is not None else "no multipleOf"
    if was is None:
        rule = Rule.MULTIPLE_OF_ADDED
    elif now is None:
        rule = Rule.MULTIPLE_OF_REMOVED
    elif was != 0 and now % was == 0:
        rule = Rule.MULTIPLE_OF_EXPANDED  # every reader value is a writer value: fewer
    elif now != 0 and was % now == 0:
        rule = Rule.MULTIPLE_OF_REDUCED
    else:
        rule = Rule.MULTIPLE_OF_CHANGED
    walk.add(rule, before, after)


def enum(walk: Walk, a: Node, b: Node) -> None:
    old = {canonical(v) for v in a.raw.get("enum") or ()}
    new = {canonical(v) for v in b.raw.get("enum") or ()}
    if old == new:
        return
    if new >= old:
        rule = Rule.ENUM_ARRAY_EXTENDED
    elif old >= new:
        rule = Rule.ENUM_ARRAY_NARROWED
    else:
        rule = Rule.ENUM_ARRAY_CHANGED
    walk.add(rule, describe(a), describe(b))


def const(walk: Walk, a: Node, b: Node) -> None:
    if canonical(a.raw.get("const")) != canonical(b.raw.get("const")):
        walk.add(Rule.ENUM_ARRAY_CHANGED, describe(a), describe(b))
