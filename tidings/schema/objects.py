"""Comparing two object schemas: required properties, properties added and removed
against the content model (open, closed or partially open), undeclared properties."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tidings.schema.nodes import Node, describe
from tidings.schema.rules import Rule
from tidings.schema.walk import Walk, limit, personal

__all__ = ["compare"]


def compare(walk: Walk, a: Node, b: Node) -> None:
    old, new = _properties(a), _properties(b)
    _required(walk, a, b)
    for name in [*old, *(n for n in new if n not in old)]:
        with walk.at(f".{name}"):
            if name in old and name in new:
                personal(walk, old[name], new[name])
                walk.children(a, old[name], b, new[name])
            elif name in new:
                _property_added(walk, a, b, name)
            else:
                _property_removed(walk, a, b, name)
    _dependencies(walk, a, b)
    _additional_properties(walk, a, b)
    for keyword, prefix in (
        ("maxProperties", "MAX_PROPERTIES"),
        ("minProperties", "MIN_PROPERTIES"),
    ):
        limit(walk, keyword, prefix, a.raw.get(keyword), b.raw.get(keyword))


def _properties(node: Node) -> Mapping[str, Any]:
    found = node.raw.get("properties")
    return found if isinstance(found, Mapping) else {}


def _required_names(node: Node) -> set[str]:
    found = node.raw.get("required")
    return set(found) if isinstance(found, list) else set()


def _has_default(schema: Any) -> bool:
    return isinstance(schema, Mapping) and "default" in schema


def _required(walk: Walk, a: Node, b: Node) -> None:
    old, new = _properties(a), _properties(b)
    was_required, now_required = _required_names(a), _required_names(b)
    for name in old:
        if name not in new or (name in was_required) == (name in now_required):
            continue
        form = describe(b.document.node(new[name]))
        with walk.at(f".{name}"):
            if name in was_required:
                walk.add(Rule.REQUIRED_ATTRIBUTE_REMOVED, f"required {form}", f"optional {form}")
            elif _has_default(new[name]):
                rule = Rule.REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED
                walk.add(rule, f"optional {form}", f"required {form} with a default")
            else:
                walk.add(Rule.REQUIRED_ATTRIBUTE_ADDED, f"optional {form}", f"required {form}")


def _open(node: Node) -> bool:
    """Any undeclared property is allowed: ``additionalProperties`` absent or true, no
    ``patternProperties``, and ``unevaluatedProperties`` absent or true."""
    extra = node.raw.get("additionalProperties", True)
    rest = node.raw.get("unevaluatedProperties", True)
    return extra is True and not node.raw.get("patternProperties") and rest in (True, {})


def _covering(node: Node, name: str) -> Any:
    """The schema an undeclared property ``name`` must match, if the model is partly open:
    the first matching ``patternProperties``, else ``additionalProperties``, else (that
    absent) ``unevaluatedProperties``."""
    patterns = node.raw.get("patternProperties")
    for pattern, schema in (patterns if isinstance(patterns, Mapping) else {}).items():
        if re.search(pattern, name):
            return schema
    extra = node.raw.get("additionalProperties")
    if extra is None:
        extra = node.raw.get("unevaluatedProperties")
    return extra if isinstance(extra, Mapping) and extra else None


def _property_added(walk: Walk, a: Node, b: Node, name: str) -> None:
    schema = _properties(b)[name]
    node = b.document.node(schema)
    required, default = name in _required_names(b), _has_default(schema)
    form = f"{'required' if required else 'optional'} {describe(node)}"
    if _open(a):
        if node.kind == "empty":
            rule = Rule.PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL
        elif required and default:
            rule = Rule.REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_OPEN_CONTENT_MODEL
        elif required:
            rule = Rule.REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL
        else:
            rule = Rule.OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL
        walk.add(rule, "absent", form)
        return
    cover = _covering(a, name)
    if cover is not None:
        trial = walk.trial()
        trial.children(a, cover, b, schema)
        walk.merge(trial)
        covered = trial.compatible
        walk.add(
            Rule.PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL
            if covered
            else Rule.PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
            "absent",
            form,
        )
    if required and default:
        rule = Rule.REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL
    elif required:
        rule = Rule.REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL
    else:
        rule = Rule.OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL
    walk.add(rule, "absent", form)


def _property_removed(walk: Walk, a: Node, b: Node, name: str) -> None:
    schema = _properties(a)[name]
    node = a.document.node(schema)
    form = f"{'required' if name in _required_names(a) else 'optional'} {describe(node)}"
    if _open(b):
        walk.add(Rule.PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL, form, "absent")
        return
    cover = _covering(b, name)
    if cover is not None:
        trial = walk.trial()
        trial.children(a, schema, b, cover)
        walk.merge(trial)
        rule = (
            Rule.PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL
            if trial.compatible
            else Rule.PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL
        )
    elif node.kind == "false":
        rule = Rule.PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL
    else:
        rule = Rule.PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL
    walk.add(rule, form, "absent")


def _additional_properties(walk: Walk, a: Node, b: Node) -> None:
    old = a.raw.get("additionalProperties", True)
    new = b.raw.get("additionalProperties", True)
    if (old is False) != (new is False):
        if new is False:
            walk.add(Rule.ADDITIONAL_PROPERTIES_REMOVED, "open", "closed")
        else:
            walk.add(Rule.ADDITIONAL_PROPERTIES_ADDED, "closed", "open")
    elif isinstance(new, Mapping) and not isinstance(old, Mapping):
        shown_new = f"undeclared properties of {describe(b.document.node(new))}"
        walk.add(Rule.ADDITIONAL_PROPERTIES_NARROWED, "any undeclared property", shown_new)
    elif isinstance(old, Mapping) and not isinstance(new, Mapping):
        shown_old = f"undeclared properties of {describe(a.document.node(old))}"
        walk.add(Rule.ADDITIONAL_PROPERTIES_EXTENDED, shown_old, "any undeclared property")
    elif isinstance(old, Mapping):
        with walk.at(".*"):
            walk.children(a, old, b, new)


def _dependency_maps(node: Node) -> tuple[dict[str, set[str]], dict[str, Any]]:
    """(property -> the properties it requires, property -> the schema it brings), from
    ``dependencies`` (draft 7) and ``dependentRequired``/``dependentSchemas`` (2019-09)."""
    names: dict[str, set[str]] = {}
    schemas: dict[str, Any] = {}
    for keyword in ("dependencies", "dependentRequired", "dependentSchemas"):
        found = node.raw.get(keyword)
        for key, value in (found if isinstance(found, Mapping) else {}).items():
            if isinstance(value, list):
                names[key] = set(value)
            else:
                schemas[key] = value
    return names, schemas


def _dependencies(walk: Walk, a: Node, b: Node) -> None:
    (old_names, old_schemas), (new_names, new_schemas) = _dependency_maps(a), _dependency_maps(b)
    for key in sorted(old_names.keys() | new_names.keys()):
        old, new = old_names.get(key), new_names.get(key)
        if old == new:
            continue
        if new is None:
            rule = Rule.DEPENDENCY_ARRAY_REMOVED
        elif old is None:
            rule = Rule.DEPENDENCY_ARRAY_ADDED
        elif new >= old:
            rule = Rule.DEPENDENCY_ARRAY_EXTENDED
        elif old >= new:
            rule = Rule.DEPENDENCY_ARRAY_NARROWED
        else:
            rule = Rule.DEPENDENCY_ARRAY_CHANGED
        with walk.at(f".{key}"):
            walk.add(rule, _requires(old), _requires(new))
    for key in sorted(old_schemas.keys() | new_schemas.keys()):
        with walk.at(f".{key}"):
            if key not in new_schemas:
                walk.add(Rule.DEPENDENCY_SCHEMA_REMOVED, "a dependent schema", "none")
            elif key not in old_schemas:
                walk.add(Rule.DEPENDENCY_SCHEMA_ADDED, "none", "a dependent schema")
            else:
                walk.children(a, old_schemas[key], b, new_schemas[key])


def _requires(names: set[str] | None) -> str:
    return "requires nothing" if not names else "requires " + ", ".join(sorted(names))
