"""The members of a structured-mode document, as :func:`~tidings.codec.decode` finds
them: which are attributes (the rest are extensions), the names its common case looks up
(orjson's own ``str`` objects), and the extensions of a document as tidings writes it,
read from its end (docs/decisions/0043-the-carry-cost-of-a-trace-context.md)."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = [
    "ATTRIBUTES", "KEY_CAUSATIONID", "KEY_CORRELATIONID", "KEY_DATA", "KEY_DATACONTENTTYPE",
    "KEY_DATASCHEMA", "KEY_DATAVERSION", "KEY_ID", "KEY_SOURCE", "KEY_SPECVERSION",
    "KEY_SUBJECT", "KEY_TIME", "KEY_TRACEPARENT", "KEY_TYPE", "TAILED", "tail_extensions",
]  # fmt: skip

# Attributes with a fixed meaning; any other top-level member is an extension.
ATTRIBUTES = frozenset(
    {
        "specversion", "id", "source", "type", "time", "subject", "datacontenttype",
        "dataschema", "data", "data_base64", "dataversion", "correlationid", "causationid",
        "traceparent", "partitionkey",
    }
)  # fmt: skip

# The names decode's common case looks up, as orjson's own str objects. orjson makes one
# str per member name and gives that same object again (its key cache), never the
# interned str a name in code is; and it makes an object of nine members or more
# pre-sized, a general dict, which compares a key that is not the very object in full
# (PyObject_RichCompare, some 150 machine instructions a lookup; a str-keyed dict, as
# orjson makes a smaller one, compares inline). A dozen lookups per event: most of what
# a traceparent (a ninth member) cost to carry. With orjson's own str, a lookup finds its
# member by identity. Were orjson to drop one from its cache, the lookups would still
# find it, by comparison; a dict orjson did not make is looked up as any other.
(
    KEY_SPECVERSION, KEY_ID, KEY_SOURCE, KEY_TYPE, KEY_TIME, KEY_SUBJECT, KEY_DATACONTENTTYPE,
    KEY_CORRELATIONID, KEY_CAUSATIONID, KEY_TRACEPARENT, KEY_DATA, KEY_DATASCHEMA,
    KEY_DATAVERSION,
) = orjson.loads(
    b'{"specversion":0,"id":0,"source":0,"type":0,"time":0,"subject":0,"datacontenttype":0,'
    b'"correlationid":0,"causationid":0,"traceparent":0,"data":0,"dataschema":0,'
    b'"dataversion":0}'
)  # fmt: skip

# Extensions the common case takes without looking at every member: as many as an
# event with a tracestate and sealed personal fields has, and one more.
TAILED = 3


def tail_extensions(doc: dict[str, Any], count: int) -> dict[str, Any] | None:
    """The extensions of a document as :func:`~tidings.codec.to_dict` writes it, if it
    has ``count`` members besides the common ones: they come last but for ``data``. None
    if those members are not all extensions there (a rarer attribute, another writer's
    order): the full lookup then finds them. Reads ``count + 1`` names from the end, not
    every member (no comprehension, no set per event)."""
    names = reversed(doc)
    if next(names) != KEY_DATA:
        return None
    name = next(names)
    if name in ATTRIBUTES:
        return None
    if count == 1:
        return {name: doc[name]}
    found = [name]
    for name in names:
        if name in ATTRIBUTES:
            return None
        found.append(name)
        if len(found) == count:
            return {name: doc[name] for name in reversed(found)}  # in the wire's order
    return None  # (not reached: len(doc) counts them)
