"""Whether a payload is one a registered JSON Schema admits, and where it is not.

The checker (:mod:`tidings.schema.compat`) compares schemas; this reads a payload
against one, for a producer without the model (``tidings publish``: the log's schema
registry is all it knows of a type). A real JSON Schema validator does the reading
(``jsonschema-rs``, draft 2020-12 unless the schema names another; ``format`` is an
annotation, as the draft says). What the registry holds is pydantic's validation
schema (decision 0018), so a payload it admits is one the model reads; the schema is
stricter than pydantic's lax mode, which would also take ``"5"`` for an integer.

Paths are written as the checker writes them (decision 0016): ``data`` is the payload,
``.name`` a property, ``[2]`` an item::

    data.amount_cents: "x" is not of type "integer"
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jsonschema_rs
import orjson

from tidings.schema.nodes import JsonSchema

__all__ = ["PayloadValidator", "payload_path"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def payload_path(parts: Sequence[str | int]) -> str:
    """``data.items[1].sku`` for ``["items", 1, "sku"]``; a property that is not a
    name is quoted: ``data["a b"]``."""
    out = ["data"]
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _NAME.fullmatch(part):
            out.append(f".{part}")
        else:
            out.append(f"[{orjson.dumps(part).decode()}]")
    return "".join(out)


class PayloadValidator:
    """A compiled JSON Schema: :meth:`errors` says where a payload fails it. A schema
    the validator cannot read is a ValueError; a ``$ref`` outside the schema is one
    too (it is never fetched: checking a payload makes no network call)."""

    def __init__(self, schema: JsonSchema) -> None:
        self._validator = jsonschema_rs.validator_for(
            schema if isinstance(schema, bool | dict) else dict(schema), retriever=_no_fetch
        )

    def errors(self, data: Any) -> list[str]:
        """Every failure of ``data``, as ``path: message``, by path (empty: it is
        admitted)."""
        found = sorted(self._validator.iter_errors(data), key=lambda e: _key(e.instance_path))
        return [f"{payload_path(e.instance_path)}: {e.message}" for e in found]


def _no_fetch(uri: str) -> Any:
    raise ValueError(f"{uri} is outside the schema, and is not fetched")


def _key(parts: Sequence[str | int]) -> tuple[tuple[int, int, str], ...]:
    """Paths in order: a parent before its children, items by index."""
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in parts)
