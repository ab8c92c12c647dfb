"""Schema compatibility: whether a new version of an event's payload schema may follow
the earlier ones, with Confluent Schema Registry's rules for JSON Schema.

The checker is pure (no I/O): it compares JSON Schemas as pydantic's
``model_json_schema()`` emits them (``$defs`` and ``$ref``, ``anyOf`` for ``Optional``
and unions, ``enum``, ``const``, ``additionalProperties: false`` for
``extra='forbid'``, defaults and constraints)::

    from pydantic import BaseModel

    from tidings.schema import Mode, check


    class OrderV1(BaseModel):
        total: float


    class OrderV2(BaseModel):
        total: int


    breaks = check(OrderV2.model_json_schema(), [OrderV1.model_json_schema()], Mode.BACKWARD)
    print(breaks[0])
    # data.total: number -> integer narrows the type; breaks BACKWARD (readers of v2
    # cannot read v1 events)

- :func:`check`: the breaks of a new version against the earlier ones under a
  :class:`Mode`;
- :func:`diff`: every change between two versions, compatible or not;
- :func:`fingerprint`: a schema's identity (SHA-256 of its canonical JSON);
- :class:`Policy`: ``STRICT`` (Confluent's default) or ``LENIENT`` (Confluent's lenient
  policy: producers emit only declared fields, so optional properties come and go freely
  whatever the content model);
- :class:`Rule`: the kinds of change, named as Confluent names them.

The schema registry that lives with the log (decision 0018):

- :class:`SchemaRegistry`: the fold of a log's :data:`SCHEMAS_TOPIC`: per type, its
  versions (:class:`SchemaVersion`: schema, fingerprint, who registered it and when,
  ``breaking``) and its mode; ``register``, ``check``, ``set_mode``, ``lookup``. An
  app registers its contracts at start (``Tidings(schemas=...)``);
- :class:`Conflict`: a registered version offered with another schema.

Content models matter: pydantic's default (``extra='ignore'``) emits an *open* model,
where an undeclared property may hold anything, so adding an optional field breaks
``BACKWARD``; ``extra='forbid'`` emits a *closed* one, where removing a field breaks
``BACKWARD`` and adding an optional one breaks ``FORWARD``. Decision 0016 has the table.
"""

from __future__ import annotations

from tidings.schema.compat import Break, Change, Mode, check, diff, fingerprint
from tidings.schema.registry import SCHEMAS_TOPIC, SchemaRegistry
from tidings.schema.rules import Policy, Rule
from tidings.schema.state import Conflict, SchemaVersion

__all__ = [
    "SCHEMAS_TOPIC",
    "Break",
    "Change",
    "Conflict",
    "Mode",
    "Policy",
    "Rule",
    "SchemaRegistry",
    "SchemaVersion",
    "check",
    "diff",
    "fingerprint",
]
