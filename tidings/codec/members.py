"""The members of a structured-mode document: which are attributes (the rest are
extensions) and which of those are strings, as :func:`~tidings.codec.decode` and the
decoders made per shape (:mod:`tidings.codec.shapes`) tell them apart."""

from __future__ import annotations

__all__ = ["ATTRIBUTES", "STRINGS"]

# Attributes with a fixed meaning; any other top-level member is an extension.
ATTRIBUTES = frozenset(
    {
        "specversion", "id", "source", "type", "time", "subject", "datacontenttype",
        "dataschema", "data", "data_base64", "dataversion", "correlationid", "causationid",
        "traceparent", "partitionkey",
    }
)  # fmt: skip

# The attributes whose value is a string (``dataversion`` is an int; ``data`` and
# ``data_base64`` are the payload).
STRINGS = ATTRIBUTES - {"dataversion", "data", "data_base64"}
