"""The comparison of a writer's schema with a reader's: every change, classified.

``changes(writer, reader, policy)`` walks both schemas side by side and returns each
difference as a :class:`Found` (the data path, the rule, the writer's and the reader's
form). Which rules a reader survives is in :mod:`tidings.schema.rules`; the walk needs the
policy only where Confluent's does, to pick the members of two unions that match and to
decide whether an undeclared-properties schema covers a property.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tidings.schema import scalars
from tidings.schema.nodes import UNSUPPORTED, JsonSchema, Node, Resolver, canonical, describe
from tidings.schema.rules import Policy, Rule
from tidings.schema.walk import Found, Walk, limit, shown

__all__ = ["changes"]


def changes(writer: JsonSchema, reader: JsonSchema, policy: Policy) -> list[Found]:
    """Every difference between ``writer`` and ``reader``, seen from the writer."""
    walk = Walk(policy)
    compare_nodes(walk, Resolver(writer).node(writer), Resolver(reader).node(reader))
    return walk.found


def compare_children(walk: Walk, a: Node, a_child: Any, b: Node, b_child: Any) -> None:
    """Compare two subschemas (``None``: the keyword is absent) of ``a`` and ``b``."""
    if a_child is None and b_child is None:
        return
    if a_child is None:
        walk.add(Rule.SCHEMA_ADDED, "absent", describe(_resolver(b).node(b_child)))
    elif b_child is None:
        walk.add(Rule.SCHEMA_REMOVED, describe(_resolver(a).node(a_child)), "absent")
    else:
        compare_nodes(walk, _resolver(a).node(a_child), _resolver(b).node(b_child))


def _resolver(node: Node) -> Resolver:
    assert node.resolver is not None, "a node of a document has its resolver"
    return node.resolver


def compare_nodes(walk: Walk, a: Node, b: Node) -> None:
    with walk.entering(a, b) as first:
        if first:
            _compare(walk, a, b)


def _compare(walk: Walk, a: Node, b: Node) -> None:
    if _against_combination(walk, a, b):
        return
    if a.kind != b.kind:
        if a.kind != "false" and b.kind != "empty":
            walk.add(Rule.TYPE_CHANGED, describe(a), describe(b))
        return
    _annotations(walk, a, b)
    compare_kind = _BY_KIND.get(a.kind)
    if compare_kind is not None:
        compare_kind(walk, a, b)


def _against_combination(walk: Walk, a: Node, b: Node) -> bool:
    """A plain schema read by a union (or an intersection read by a plain schema): the
    change is compatible when one member matches; True when that settled it."""
    if a.kind != "combined" and b.kind == "combined":
        if len(b.parts) > 1 and b.criterion == "allOf":
            return False
        pairs = [(a, member) for member in b.parts]
        rule = Rule.SUM_TYPE_EXTENDED
    elif a.kind == "combined" and b.kind != "combined":
        if len(a.parts) > 1 and a.criterion != "allOf":
            return False
        pairs = [(member, b) for member in a.parts]
        rule = Rule.PRODUCT_TYPE_NARROWED
    else:
        return False
    for writer, reader in pairs:
        trial = walk.trial()
        compare_nodes(trial, writer, reader)
        if trial.compatible:
            walk.merge(trial)
            if len(pairs) > 1:
                walk.add(rule, describe(a), describe(b))
            return True
    return False


_ANNOTATIONS = (
    ("$id", Rule.ID_CHANGED),
    ("title", Rule.TITLE_CHANGED),
    ("description", Rule.DESCRIPTION_CHANGED),
    ("default", Rule.DEFAULT_CHANGED),
)


def _annotations(walk: Walk, a: Node, b: Node) -> None:
    for keyword, rule in _ANNOTATIONS:
        old, new = a.annotation(keyword), b.annotation(keyword)
        if canonical(old) != canonical(new):
            walk.add(rule, shown(old), shown(new))
    if a.annotated and b.annotated:
        for keyword in UNSUPPORTED:
            old, new = a.raw.get(keyword), b.raw.get(keyword)
            if canonical(old) != canonical(new):
                walk.add(Rule.UNSUPPORTED_KEYWORD_CHANGED, f"{keyword} {shown(old)}", shown(new))


def _not(walk: Walk, a: Node, b: Node) -> None:
    # what the reader excludes must be what the writer excluded, or less: compared reversed
    trial = walk.trial()
    compare_children(trial, b, b.raw.get("not"), a, a.raw.get("not"))
    if not trial.found:
        return
    rule = Rule.NOT_TYPE_NARROWED if trial.compatible else Rule.NOT_TYPE_EXTENDED
    walk.add(rule, describe(a), describe(b))


def _combined(walk: Walk, a: Node, b: Node) -> None:
    if _criterion_changed(walk, a, b):
        return
    if _by_kind(walk, a, b):
        return
    old, new = _distinct(a.parts), _distinct(b.parts)
    if len(old) < len(new):
        rule = Rule.PRODUCT_TYPE_EXTENDED if b.criterion == "allOf" else Rule.SUM_TYPE_EXTENDED
        walk.add(rule, describe(a), describe(b))
    elif len(old) > len(new):
        rule = Rule.PRODUCT_TYPE_NARROWED if a.criterion == "allOf" else Rule.SUM_TYPE_NARROWED
        walk.add(rule, describe(a), describe(b))
    edges: dict[int, dict[int, Walk]] = {}
    for i, member in enumerate(old):
        for j, other in enumerate(new):
            trial = walk.trial()
            compare_nodes(trial, member, other)
            if trial.compatible:
                edges.setdefault(i, {})[j] = trial
    matched = _matching({i: list(js) for i, js in edges.items()})
    for j, i in sorted(matched.items()):
        walk.merge(edges[i][j])
    if len(matched) < min(len(old), len(new)):
        walk.add(Rule.COMBINED_TYPE_SUBSCHEMAS_CHANGED, describe(a), describe(b))


def _by_kind(walk: Walk, a: Node, b: Node) -> bool:
    """Two objects declaring the same kinds (``{"type": "string", "enum": [...]}`` both):
    each kind is compared with its own, so a narrowed enum reads as one. The verdict is
    the matching's (a part matches no part of another kind), the findings more exact."""
    kinds = [p.kind for p in a.parts]
    if not (a.synthetic and b.synthetic) or len(set(kinds)) != len(kinds):
        return False
    if sorted(kinds) != sorted(p.kind for p in b.parts):
        return False
    by_kind = {p.kind: p for p in b.parts}
    for part in a.parts:
        compare_nodes(walk, part, by_kind[part.kind])
    return True


def _criterion_changed(walk: Walk, a: Node, b: Node) -> bool:
    """Adds the change of keyword (``oneOf`` to ``anyOf``); True when it is not a widening."""
    if a.criterion == b.criterion:
        return False
    one_a, one_b = len(a.parts) == 1, len(b.parts) == 1
    widened = (
        b.criterion == "anyOf"
        or (one_a and one_b)
        or (one_a and b.criterion == "oneOf")
        or (one_b and a.criterion == "allOf")
    )
    rule = Rule.COMBINED_TYPE_EXTENDED if widened else Rule.COMBINED_TYPE_CHANGED
    walk.add(rule, f"{a.criterion} {describe(a)}", f"{b.criterion} {describe(b)}")
    return not widened


def _distinct(parts: tuple[Node, ...]) -> list[Node]:
    seen: dict[tuple[str, bool, str, str], Node] = {}
    for part in parts:
        seen.setdefault((part.kind, part.integer, part.criterion, canonical(part.raw)), part)
    return list(seen.values())


def _matching(edges: Mapping[int, list[int]]) -> dict[int, int]:
    """A maximum matching of a bipartite graph (Kuhn's augmenting paths): right -> left."""
    owner: dict[int, int] = {}

    def augment(left: int, seen: set[int]) -> bool:
        for right in edges.get(left, ()):
            if right not in seen:
                seen.add(right)
                if right not in owner or augment(owner[right], seen):
                    owner[right] = left
                    return True
        return False

    for left in edges:
        augment(left, set())
    return owner


# -- objects --------------------------------------------------------------------------


def _object(walk: Walk, a: Node, b: Node) -> None:
    old, new = _properties(a), _properties(b)
    _required(walk, a, b)
    for name in [*old, *(n for n in new if n not in old)]:
        with walk.at(f".{name}"):
            if name in old and name in new:
                compare_children(walk, a, old[name], b, new[name])
            elif name in new:
                _property_added(walk, a, b, name)
            else:
                _property_removed(walk, a, b, name)
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
        form = describe(_resolver(b).node(new[name]))
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
    node = _resolver(b).node(schema)
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
        compare_children(trial, a, cover, b, schema)
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
    node = _resolver(a).node(schema)
    form = f"{'required' if name in _required_names(a) else 'optional'} {describe(node)}"
    if _open(b):
        walk.add(Rule.PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL, form, "absent")
        return
    cover = _covering(b, name)
    if cover is not None:
        trial = walk.trial()
        compare_children(trial, a, schema, b, cover)
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
        shown_new = f"undeclared properties of {describe(_resolver(b).node(new))}"
        walk.add(Rule.ADDITIONAL_PROPERTIES_NARROWED, "any undeclared property", shown_new)
    elif isinstance(old, Mapping) and not isinstance(new, Mapping):
        shown_old = f"undeclared properties of {describe(_resolver(a).node(old))}"
        walk.add(Rule.ADDITIONAL_PROPERTIES_EXTENDED, shown_old, "any undeclared property")
    elif isinstance(old, Mapping):
        with walk.at(".*"):
            compare_children(walk, a, old, b, new)


# -- arrays ---------------------------------------------------------------------------


def _array(walk: Walk, a: Node, b: Node) -> None:
    with walk.at("[]"):
        compare_children(walk, a, _all_items(a), b, _all_items(b))
    _tuple_items(walk, a, b)
    _further_items(walk, a, b)
    limit(walk, "maxItems", "MAX_ITEMS", a.raw.get("maxItems"), b.raw.get("maxItems"))
    limit(walk, "minItems", "MIN_ITEMS", a.raw.get("minItems"), b.raw.get("minItems"))
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
                compare_children(walk, a, old[i], b, new[i])
            elif i < len(old):
                _item_removed(walk, a, b, old[i])
            else:
                _item_added(walk, a, b, new[i])


def _item_removed(walk: Walk, a: Node, b: Node, schema: Any) -> None:
    node = _resolver(a).node(schema)
    further = _further(b)
    if further is True:
        rule = Rule.ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL
    elif isinstance(further, Mapping):
        trial = walk.trial()
        compare_children(trial, a, schema, b, further)
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
    node = _resolver(b).node(schema)
    further = _further(a)
    if further is True:
        rule = (
            Rule.ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL
            if node.kind == "empty"
            else Rule.ITEM_ADDED_TO_OPEN_CONTENT_MODEL
        )
    elif isinstance(further, Mapping):
        trial = walk.trial()
        compare_children(trial, a, further, b, schema)
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
            compare_children(walk, a, old, b, new)


_BY_KIND = {
    "string": scalars.string,
    "number": scalars.number,
    "enum": scalars.enum,
    "const": scalars.const,
    "not": _not,
    "combined": _combined,
    "object": _object,
    "array": _array,
}
