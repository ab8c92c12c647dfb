"""Comparing two array schemas: every item, tuple items against the tuple's content
model (open, closed or partially open), further items, bounds and uniqueness."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tidings.schema.nodes import Node, describe
from tidings.schema.rules import Rule
from tidings.schema.walk import Walk, limit, personal, shown

__all__ = ["compare"]


def compare(walk: Walk, a: Node, b: Node) -> None:
    with walk.at("[]"):
        personal(walk, _all_items(a), _all_items(b))
        walk.children(a, _all_items(a), b, _all_items(b))
    _tuple_items(walk, a, b)
    _further_items(walk, a, b)
    limit(walk, "maxItems", "MAX_ITEMS", a.raw.get("maxItems"), b.raw.get("maxItems"))
    limit(walk, "minItems", "MIN_ITEMS", a.raw.get("minItems"), b.raw.get("minItems"))
    for keyword, prefix in (("maxContains", "MAX_CONTAINS"), ("minContains", "MIN_CONTAINS")):
        limit(walk, keyword, prefix, a.raw.get(keyword), b.raw.get(keyword))
    old, new = a.raw.get("uniqueItems") is True, b.raw.get("uniqueItems") is True
    if old != new:
        rule = Rule.UNIQUE_ITEMS_REMOVED if old else Rule.UNIQUE_ITEMS_ADDED
        walk.add(rule, f"uniqueItems {str(old).lower()}", f"uniqueItems {str(new).lower()}")


def _all_items(node: Node) -> Any:
    """The schema of every item (``items`` as one schema), or None."""
    items = node.raw.get("items")
    return items if isinstance(items, Mapping) and "prefixItems" not in node.raw else None


def _tuple(node: Node) -> list[Any]:
    """The positional item schemas: ``prefixItems`` (2020-12) or ``items`` as a list."""
    for keyword in ("prefixItems", "items"):
        found = node.raw.get(keyword)
        if isinstance(found, list):
            return found
    return []


def _further(node: Node) -> Any:
    """What items after the positional ones must be: True (anything), False, a schema.
    ``additionalItems`` (``items`` beside ``prefixItems``, or a boolean ``items``), else
    ``unevaluatedItems``."""
    items = node.raw.get("items")
    if "prefixItems" in node.raw or isinstance(items, bool):
        further = items
    else:
        further = node.raw.get("additionalItems")
    if further is None:
        further = node.raw.get("unevaluatedItems", True)
    return True if further == {} else further


def _tuple_items(walk: Walk, a: Node, b: Node) -> None:
    old, new = _tuple(a), _tuple(b)
    for i in range(max(len(old), len(new))):
        with walk.at(f"[{i}]"):
            if i < len(old) and i < len(new):
                walk.children(a, old[i], b, new[i])
            elif i < len(old):
                _item_removed(walk, a, b, old[i])
            else:
                _item_added(walk, a, b, new[i])


def _item_removed(walk: Walk, a: Node, b: Node, schema: Any) -> None:
    node = a.document.node(schema)
    further = _further(b)
    if further is True:
        rule = Rule.ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL
    elif isinstance(further, Mapping):
        trial = walk.trial()
        trial.children(a, schema, b, further)
        walk.merge(trial)
        rule = (
            Rule.ITEM_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL
            if trial.compatible
            else Rule.ITEM_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL
        )
    elif node.kind == "false":
        rule = Rule.ITEM_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL
    else:
        rule = Rule.ITEM_REMOVED_FROM_CLOSED_CONTENT_MODEL
    walk.add(rule, describe(node), "absent")


def _item_added(walk: Walk, a: Node, b: Node, schema: Any) -> None:
    node = b.document.node(schema)
    further = _further(a)
    if further is True:
        rule = (
            Rule.ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL
            if node.kind == "empty"
            else Rule.ITEM_ADDED_TO_OPEN_CONTENT_MODEL
        )
    elif isinstance(further, Mapping):
        trial = walk.trial()
        trial.children(a, further, b, schema)
        walk.merge(trial)
        rule = (
            Rule.ITEM_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL
            if trial.compatible
            else Rule.ITEM_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL
        )
    else:
        rule = Rule.ITEM_ADDED_TO_CLOSED_CONTENT_MODEL
    walk.add(rule, "absent", describe(node))


def _further_items(walk: Walk, a: Node, b: Node) -> None:
    old, new = _further(a), _further(b)
    if (old is False) != (new is False):
        rule = Rule.ADDITIONAL_ITEMS_REMOVED if new is False else Rule.ADDITIONAL_ITEMS_ADDED
        walk.add(rule, shown(old), shown(new))
    elif isinstance(new, Mapping) and not isinstance(old, Mapping):
        walk.add(Rule.ADDITIONAL_ITEMS_NARROWED, "any further item", shown(new))
    elif isinstance(old, Mapping) and not isinstance(new, Mapping):
        walk.add(Rule.ADDITIONAL_ITEMS_EXTENDED, shown(old), "any further item")
    elif isinstance(old, Mapping):
        with walk.at("[*]"):
            walk.children(a, old, b, new)
