"""A JSON Schema (a dict as pydantic's ``model_json_schema()`` emits it) read into the
parts a compatibility check compares.

A schema object may say several things at once: ``{"type": "string", "enum": [...]}`` is
a string *and* an enum. Like the validator Confluent builds on, such a schema is read as
the conjunction (``allOf``) of one part per kind it declares; a schema declaring one kind
is that part alone. ``$ref`` is resolved against the document's root (local references
only: ``#/$defs/...``, ``#/definitions/...``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Node", "Resolver", "canonical", "describe"]

JsonSchema = Mapping[str, Any] | bool

# Keywords that imply a kind when "type" is absent (the validator's inference).
_KIND_KEYWORDS: dict[str, tuple[str, ...]] = {
    "string": ("minLength", "maxLength", "pattern", "format"),
    "number": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
    "object": (
        "properties",
        "required",
        "dependencies",
        "dependentRequired",
        "dependentSchemas",
        "additionalProperties",
        "patternProperties",
        "minProperties",
        "maxProperties",
    ),
    "array": (
        "items",
        "prefixItems",
        "additionalItems",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minContains",
        "maxContains",
    ),
}
_COMBINATIONS = ("allOf", "anyOf", "oneOf")
# Keywords read by nothing here: a change to one is reported, not judged.
UNSUPPORTED = (
    "unevaluatedProperties",
    "unevaluatedItems",
    "contains",
    "propertyNames",
    "if",
    "then",
    "else",
)


@dataclass(frozen=True, slots=True)
class Node:
    """One part of a schema: its kind and the schema object it was read from.

    ``kind`` is one of ``empty`` (accepts anything), ``false`` (accepts nothing),
    ``string``, ``number``, ``boolean``, ``null``, ``object``, ``array``, ``enum``,
    ``const``, ``combined`` (``criterion`` is ``allOf``, ``anyOf`` or ``oneOf``) and ``not``.
    """

    kind: str
    raw: Mapping[str, Any]
    integer: bool = False  # a number part of "type": "integer"
    criterion: str = ""
    parts: tuple[Node, ...] = ()
    annotated: bool = True  # carries the object's title, description and default
    synthetic: bool = False  # the conjunction of the kinds one schema object declares
    resolver: Resolver | None = field(default=None, compare=False, repr=False)

    @property
    def document(self) -> Resolver:
        """The resolver of the document this node was read from (for its subschemas)."""
        assert self.resolver is not None, "a node read from a document has its resolver"
        return self.resolver

    def annotation(self, keyword: str) -> Any:
        return self.raw.get(keyword) if self.annotated else None


class Resolver:
    """Reads the schema objects of one document into nodes, resolving local ``$ref``."""

    def __init__(self, root: JsonSchema) -> None:
        self.root = root
        # id of a $ref object with siblings -> the merged object, so that a recursive
        # model meets the same object again (the comparison stops at a pair it is in)
        self._merged: dict[int, Mapping[str, Any]] = {}
        self._reading: set[int] = set()  # objects being read: a union that holds itself

    def target(self, schema: JsonSchema) -> JsonSchema:
        """``schema`` with its ``$ref`` chain followed; sibling annotations are kept."""
        seen: set[str] = set()
        while isinstance(schema, Mapping) and isinstance(schema.get("$ref"), str):
            ref = schema["$ref"]
            if ref in seen:
                return True  # a reference loop with no schema in it constrains nothing
            seen.add(ref)
            found = self._lookup(ref)
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            if siblings and isinstance(found, Mapping):
                key = id(schema)
                if key not in self._merged:
                    self._merged[key] = {**found, **siblings}
                found = self._merged[key]
            schema = found
        return schema

    def _lookup(self, ref: str) -> JsonSchema:
        if not ref.startswith("#"):
            raise ValueError(f"only local $ref are supported, not {ref!r}")
        found: Any = self.root
        for token in filter(None, ref[1:].split("/")):
            token = token.replace("~1", "/").replace("~0", "~")
            if isinstance(found, list):
                found = found[int(token)]
            elif isinstance(found, Mapping) and token in found:
                found = found[token]
            else:
                raise ValueError(f"$ref {ref!r} points at nothing")
        if not isinstance(found, Mapping | bool):
            raise ValueError(f"$ref {ref!r} is not a schema")
        return found

    def node(self, schema: JsonSchema) -> Node:
        """The node of ``schema``; raises ValueError if it is not a JSON Schema."""
        schema = self.target(schema)
        if schema is True:
            return Node("empty", {}, resolver=self)
        if schema is False:
            return Node("false", {}, resolver=self)
        if not isinstance(schema, Mapping):
            raise ValueError(f"not a JSON Schema (an object or a boolean): {schema!r:.80}")
        if id(schema) in self._reading:
            # {"anyOf": [{"$ref": <itself>}, ...]}: the inner self adds no constraint
            return Node("empty", {}, resolver=self)
        self._reading.add(id(schema))
        try:
            parts = self._parts(schema)
        finally:
            self._reading.discard(id(schema))
        if not parts:
            return Node("empty", schema, resolver=self)
        if len(parts) == 1:
            return parts[0]
        bare = tuple(_without_annotations(p) for p in parts)
        return Node(
            "combined", schema, criterion="allOf", parts=bare, synthetic=True, resolver=self
        )

    def _parts(self, schema: Mapping[str, Any]) -> list[Node]:
        parts: list[Node] = []
        declared = schema.get("type")
        if isinstance(declared, str):
            parts.append(self._typed(schema, declared))
        elif isinstance(declared, list) and declared:
            typed = tuple(_without_annotations(self._typed(schema, t)) for t in declared)
            if len(typed) == 1:
                parts.append(typed[0])
            else:
                parts.append(
                    Node("combined", schema, criterion="anyOf", parts=typed, resolver=self)
                )
        else:
            for kind, keywords in _KIND_KEYWORDS.items():
                if any(k in schema for k in keywords):
                    parts.append(Node(kind, schema, resolver=self))
        if "enum" in schema:
            parts.append(Node("enum", schema, resolver=self))
        if "const" in schema:
            parts.append(Node("const", schema, resolver=self))
        for criterion in _COMBINATIONS:
            if isinstance(schema.get(criterion), list):
                subs = tuple(self.node(s) for s in schema[criterion])
                parts.append(
                    Node("combined", schema, criterion=criterion, parts=subs, resolver=self)
                )
        if "not" in schema:
            parts.append(Node("not", schema, resolver=self))
        return parts

    def _typed(self, schema: Mapping[str, Any], name: str) -> Node:
        if name == "integer":
            return Node("number", schema, integer=True, resolver=self)
        return Node(name, schema, resolver=self)


def _without_annotations(node: Node) -> Node:
    if not node.annotated:
        return node
    return Node(
        node.kind,
        node.raw,
        integer=node.integer,
        criterion=node.criterion,
        parts=node.parts,
        annotated=False,
        synthetic=node.synthetic,
        resolver=node.resolver,
    )


def canonical(value: Any) -> str:
    """One JSON text per value: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def describe(node: Node) -> str:
    """A short name of what the node accepts: ``integer``, ``string | null``, ``Address``."""
    if node.kind == "number":
        return "integer" if node.integer else "number"
    if node.kind == "object":
        title = node.raw.get("title")
        return title if isinstance(title, str) and "properties" in node.raw else "object"
    if node.kind == "array":
        items = node.raw.get("items")
        if isinstance(items, Mapping | bool) and node.resolver is not None:
            return f"array of {describe(node.resolver.node(items))}"
        return "array"
    if node.kind == "enum":
        return "enum " + canonical(node.raw.get("enum"))
    if node.kind == "const":
        return "const " + canonical(node.raw.get("const"))
    if node.kind == "combined":
        return _describe_combined(node)
    if node.kind == "not":
        return "not a schema"
    return {"empty": "anything", "false": "nothing"}.get(node.kind, node.kind)


def _describe_combined(node: Node) -> str:
    kinds = {p.kind for p in node.parts}
    if node.criterion == "allOf" and kinds & {"enum", "const"}:
        # a synthetic conjunction such as {"type": "string", "enum": [...]}: the values say it
        return next(describe(p) for p in node.parts if p.kind in {"enum", "const"})
    joiner = " & " if node.criterion == "allOf" else " | "
    return joiner.join(describe(p) for p in node.parts)
