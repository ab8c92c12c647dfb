"""The comparison of a writer's schema with a reader's: every change, classified.

``changes(writer, reader, policy)`` walks both schemas side by side and returns each
difference as a :class:`Found` (the data path, the rule, the writer's and the reader's
form). Which rules a reader survives is in :mod:`tidings.schema.rules`; the walk needs the
policy only where Confluent's does, to pick the members of two unions that match and to
decide whether an undeclared-properties schema covers a property.
"""

from __future__ import annotations

from collections.abc import Mapping

from tidings.schema import arrays, objects, scalars
from tidings.schema.nodes import UNSUPPORTED, JsonSchema, Node, Resolver, canonical, describe
from tidings.schema.rules import Policy, Rule
from tidings.schema.walk import Found, Walk, shown

__all__ = ["changes"]


def changes(writer: JsonSchema, reader: JsonSchema, policy: Policy) -> list[Found]:
    """Every difference between ``writer`` and ``reader``, seen from the writer."""
    walk = Walk(policy, compare_nodes)
    compare_nodes(walk, Resolver(writer).node(writer), Resolver(reader).node(reader))
    return walk.found


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
        trial.nodes(writer, reader)
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
    trial.children(b, b.raw.get("not"), a, a.raw.get("not"))
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
            trial.nodes(member, other)
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
        walk.nodes(part, by_kind[part.kind])
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


_BY_KIND = {
    "string": scalars.string,
    "number": scalars.number,
    "enum": scalars.enum,
    "const": scalars.const,
    "not": _not,
    "combined": _combined,
    "object": objects.compare,
    "array": arrays.compare,
}
