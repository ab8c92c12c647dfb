"""One comparison's state (:class:`Walk`) and its findings (:class:`Found`), with the
helpers for keywords compared by value alone."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from tidings.personal import mark_of
from tidings.schema.nodes import Node, canonical, describe
from tidings.schema.rules import Policy, Rule, compatible

__all__ = ["Found", "Walk", "by_value", "limit", "personal", "shown"]


class Found(NamedTuple):
    path: str  # where in the event, e.g. ``data.customer.email``
    rule: Rule
    old: str  # the writer's form
    new: str  # the reader's form


Compare = Callable[["Walk", Node, Node], None]


class Walk:
    """The state of one comparison: where it is, what it found, which pairs it is in."""

    def __init__(self, policy: Policy, compare: Compare, path: str = "data") -> None:
        self.policy = policy
        self._compare = compare  # the comparison of two nodes, which recurses through here
        self.path = path
        self.found: list[Found] = []
        self._active: set[tuple[int, str, bool, str, int, str, bool, str]] = set()

    def add(self, rule: Rule, old: str, new: str) -> None:
        self.found.append(Found(self.path, rule, old, new))

    def trial(self) -> Walk:
        """A walk from here whose findings are kept only if the caller merges them."""
        walk = Walk(self.policy, self._compare, self.path)
        walk._active = self._active
        return walk

    def nodes(self, a: Node, b: Node) -> None:
        """Compare ``a`` (the writer's) with ``b`` (the reader's) here."""
        self._compare(self, a, b)

    def children(self, a: Node, a_child: Any, b: Node, b_child: Any) -> None:
        """Compare two subschemas (``None``: the keyword is absent) of ``a`` and ``b``."""
        if a_child is None and b_child is None:
            return
        if a_child is None:
            self.add(Rule.SCHEMA_ADDED, "absent", describe(b.document.node(b_child)))
        elif b_child is None:
            self.add(Rule.SCHEMA_REMOVED, describe(a.document.node(a_child)), "absent")
        else:
            self.nodes(a.document.node(a_child), b.document.node(b_child))

    def merge(self, other: Walk) -> None:
        self.found.extend(other.found)

    @property
    def compatible(self) -> bool:
        return all(compatible(f.rule, self.policy) for f in self.found)

    @contextmanager
    def at(self, suffix: str) -> Iterator[None]:
        before = self.path
        self.path = before + suffix
        try:
            yield
        finally:
            self.path = before

    @contextmanager
    def entering(self, a: Node, b: Node) -> Iterator[bool]:
        """Yields False when this pair is already being compared (a recursive model):
        the inner visit adds nothing, the outer one reports the pair's changes."""
        key = (id(a.raw), a.kind, a.integer, a.criterion, id(b.raw), b.kind, b.integer, b.criterion)
        if key in self._active:
            yield False
            return
        self._active.add(key)
        try:
            yield True
        finally:
            self._active.discard(key)


def shown(value: Any) -> str:
    return "absent" if value is None else canonical(value)


def limit(walk: Walk, keyword: str, prefix: str, old: Any, new: Any) -> None:
    """A numeric bound (``maxLength``, ``minimum``, ...) added, removed or moved."""
    old = old if isinstance(old, int | float) and not isinstance(old, bool) else None
    new = new if isinstance(new, int | float) and not isinstance(new, bool) else None
    if old == new:
        return
    if old is None:
        walk.add(Rule(f"{prefix}_ADDED"), f"no {keyword}", f"{keyword} {new}")
    elif new is None:
        walk.add(Rule(f"{prefix}_REMOVED"), f"{keyword} {old}", f"no {keyword}")
    else:
        direction = "INCREASED" if old < new else "DECREASED"
        walk.add(Rule(f"{prefix}_{direction}"), f"{keyword} {old}", f"{keyword} {new}")


def by_value(walk: Walk, keyword: str, prefix: str, a: Node, b: Node) -> None:
    """A keyword whose value is compared for equality only (``pattern``, ``format``)."""
    old, new = a.raw.get(keyword), b.raw.get(keyword)
    if old == new:
        return
    if old is None:
        walk.add(Rule(f"{prefix}_ADDED"), f"no {keyword}", f"{keyword} {canonical(new)}")
    elif new is None:
        walk.add(Rule(f"{prefix}_REMOVED"), f"{keyword} {canonical(old)}", f"no {keyword}")
    else:
        forms = f"{keyword} {canonical(old)}", f"{keyword} {canonical(new)}"
        walk.add(Rule(f"{prefix}_CHANGED"), *forms)


def personal(walk: Walk, old: Any, new: Any) -> None:
    """A field's personal-data mark (:mod:`tidings.personal`) added, removed or pointed
    at another subject; ``old`` and ``new`` are the field's schemas (a property, items)."""
    was, now = mark_of(old), mark_of(new)
    if was == now:
        return
    if was is None:
        walk.add(Rule.PERSONAL_ADDED, "not personal", f"personal (subject {now})")
    elif now is None:
        walk.add(Rule.PERSONAL_REMOVED, f"personal (subject {was})", "not personal")
    else:
        walk.add(
            Rule.PERSONAL_SUBJECT_CHANGED, f"personal (subject {was})", f"personal (subject {now})"
        )
