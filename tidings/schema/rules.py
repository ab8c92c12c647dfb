"""The kinds of change between a writer's and a reader's JSON Schema, and which of them a
reader survives.

The names are Confluent Schema Registry's (``Difference.Type`` of its JSON Schema
provider), so a verdict can be looked up in its documentation; tidings adds four, marked
below. Each rule is seen from the writer (the schema the event was written with) to the
reader (the schema it is read with): ``TYPE_NARROWED`` means the reader accepts fewer
types than the writer wrote. Whether a rule is compatible depends on the policy:
``STRICT`` (Confluent's default) or ``LENIENT`` (Confluent's lenient policy, for
producers that emit only declared fields). See docs/decisions/0016-schema-compatibility.md;
the ``PERSONAL_*`` rules (a field's personal-data mark) are decision 0032's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Policy", "Rule"]


class Policy(enum.Enum):
    """How much a reader is trusted to cope with (Confluent's ``CompatibilityPolicy``)."""

    STRICT = "STRICT"
    """Confluent's default: an open content model may hold any undeclared property, so
    adding an optional property to it (or removing one from a closed model) breaks."""
    LENIENT = "LENIENT"
    """Producers emit only their declared fields (pydantic's serializer does, unless a
    model has ``extra='allow'``): adding or removing optional properties is compatible
    whatever the content model."""


@dataclass(frozen=True, slots=True)
class _Meaning:
    strict: bool  # compatible under Policy.STRICT
    lenient: bool  # compatible under Policy.LENIENT
    phrase: str  # the change, read from the older version to the newer, reader newer
    reverse: str  # the same change when the reader is the older version


def _m(strict: bool, phrase: str, reverse: str, *, lenient: bool | None = None) -> _Meaning:
    return _Meaning(strict, strict if lenient is None else lenient, phrase, reverse)


_TIGHTEN, _RELAX = "tightens a constraint", "relaxes a constraint"
_ADD, _DROP = "adds a constraint", "drops a constraint"


def _limits(prefix: str, *, upper: bool) -> dict[str, _Meaning]:
    """A bound: adding one or moving it inwards breaks readers of older events."""
    up, down = (_RELAX, _TIGHTEN) if upper else (_TIGHTEN, _RELAX)
    return {
        f"{prefix}_ADDED": _m(False, _ADD, _DROP),
        f"{prefix}_REMOVED": _m(True, _DROP, _ADD),
        f"{prefix}_INCREASED": _m(upper, up, down),
        f"{prefix}_DECREASED": _m(not upper, down, up),
    }


_OPEN, _CLOSED = "an open content model", "a closed content model"
_MEANINGS: dict[str, _Meaning] = {
    "ID_CHANGED": _m(True, "changes the $id", "changes the $id"),
    "DESCRIPTION_CHANGED": _m(True, "changes the description", "changes the description"),
    "TITLE_CHANGED": _m(True, "changes the title", "changes the title"),
    "DEFAULT_CHANGED": _m(True, "changes the default", "changes the default"),
    "SCHEMA_ADDED": _m(False, "adds a schema", "removes a schema"),
    "SCHEMA_REMOVED": _m(True, "removes a schema", "adds a schema"),
    "TYPE_EXTENDED": _m(True, "widens the type", "narrows the type"),
    "TYPE_NARROWED": _m(False, "narrows the type", "widens the type"),
    "TYPE_CHANGED": _m(False, "changes the type", "changes the type"),
    **_limits("MAX_LENGTH", upper=True),
    **_limits("MIN_LENGTH", upper=False),
    "PATTERN_ADDED": _m(False, _ADD, _DROP),
    "PATTERN_REMOVED": _m(True, _DROP, _ADD),
    "PATTERN_CHANGED": _m(False, "changes a constraint", "changes a constraint"),
    **_limits("MAXIMUM", upper=True),
    **_limits("MINIMUM", upper=False),
    **_limits("EXCLUSIVE_MAXIMUM", upper=True),
    **_limits("EXCLUSIVE_MINIMUM", upper=False),
    "MULTIPLE_OF_ADDED": _m(False, _ADD, _DROP),
    "MULTIPLE_OF_REMOVED": _m(True, _DROP, _ADD),
    "MULTIPLE_OF_EXPANDED": _m(False, _TIGHTEN, _RELAX),
    "MULTIPLE_OF_REDUCED": _m(True, _RELAX, _TIGHTEN),
    "MULTIPLE_OF_CHANGED": _m(False, "changes a constraint", "changes a constraint"),
    "REQUIRED_ATTRIBUTE_ADDED": _m(
        False, "makes the property required", "makes the property optional"
    ),
    "REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED": _m(
        True, "makes the property required, with a default", "makes the property optional"
    ),
    "REQUIRED_ATTRIBUTE_REMOVED": _m(
        True, "makes the property optional", "makes the property required"
    ),
    **_limits("MAX_PROPERTIES", upper=True),
    **_limits("MIN_PROPERTIES", upper=False),
    "ADDITIONAL_PROPERTIES_ADDED": _m(True, "opens the content model", "closes the content model"),
    "ADDITIONAL_PROPERTIES_REMOVED": _m(
        False, "closes the content model", "opens the content model", lenient=True
    ),
    "ADDITIONAL_PROPERTIES_EXTENDED": _m(
        True,
        "widens the undeclared properties' schema",
        "narrows the undeclared properties' schema",
    ),
    "ADDITIONAL_PROPERTIES_NARROWED": _m(
        False,
        "narrows the undeclared properties' schema",
        "widens the undeclared properties' schema",
        lenient=True,
    ),
    "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL": _m(
        False, f"adds a required property to {_OPEN}", "removes a required property"
    ),
    "REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_OPEN_CONTENT_MODEL": _m(
        False,
        f"adds a required property with a default to {_OPEN}",
        "removes a required property with a default",
        lenient=True,
    ),
    "OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL": _m(
        False,
        f"adds an optional property to {_OPEN}",
        f"removes an optional property from {_OPEN}",
        lenient=True,
    ),
    "PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL": _m(
        True, f"adds an unconstrained property to {_OPEN}", "removes an unconstrained property"
    ),
    "REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL": _m(
        False, "adds a required property", "removes a required property"
    ),
    "REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL": _m(
        True, "adds a required property with a default", "removes a required property"
    ),
    "OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL": _m(
        True, f"adds an optional property to {_CLOSED}", f"removes a property from {_CLOSED}"
    ),
    "PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL": _m(
        True, f"removes a property from {_OPEN}", f"adds a property to {_OPEN}"
    ),
    "PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL": _m(
        True, "removes a forbidden property", "adds a forbidden property"
    ),
    "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL": _m(
        False,
        f"removes a property from {_CLOSED}",
        f"adds a property to {_CLOSED}",
        lenient=True,
    ),
    "PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL": _m(
        True,
        "removes a property its undeclared properties' schema covers",
        "adds a property the undeclared properties' schema covered",
    ),
    "PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL": _m(
        False,
        "removes a property its undeclared properties' schema does not cover",
        "adds a property the undeclared properties' schema did not cover",
        lenient=True,
    ),
    "PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL": _m(
        True,
        "adds a property the undeclared properties' schema covered",
        "removes a property its undeclared properties' schema covers",
    ),
    "PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL": _m(
        False,
        "adds a property the undeclared properties' schema did not cover",
        "removes a property its undeclared properties' schema does not cover",
        lenient=True,
    ),
    "DEPENDENCY_ARRAY_ADDED": _m(False, "adds a dependency", "drops a dependency"),
    "DEPENDENCY_ARRAY_REMOVED": _m(True, "drops a dependency", "adds a dependency"),
    "DEPENDENCY_ARRAY_EXTENDED": _m(False, "requires more with it", "requires less with it"),
    "DEPENDENCY_ARRAY_NARROWED": _m(True, "requires less with it", "requires more with it"),
    "DEPENDENCY_ARRAY_CHANGED": _m(False, "changes its dependency", "changes its dependency"),
    "DEPENDENCY_SCHEMA_ADDED": _m(False, "adds a dependent schema", "drops a dependent schema"),
    "DEPENDENCY_SCHEMA_REMOVED": _m(True, "drops a dependent schema", "adds a dependent schema"),
    **_limits("MAX_ITEMS", upper=True),
    **_limits("MIN_ITEMS", upper=False),
    **_limits("MAX_CONTAINS", upper=True),
    **_limits("MIN_CONTAINS", upper=False),
    "UNIQUE_ITEMS_ADDED": _m(False, _ADD, _DROP),
    "UNIQUE_ITEMS_REMOVED": _m(True, _DROP, _ADD),
    "ADDITIONAL_ITEMS_ADDED": _m(True, "allows more items", "forbids more items"),
    "ADDITIONAL_ITEMS_REMOVED": _m(False, "forbids more items", "allows more items"),
    "ADDITIONAL_ITEMS_EXTENDED": _m(
        True, "widens the further items' schema", "narrows the further items' schema"
    ),
    "ADDITIONAL_ITEMS_NARROWED": _m(
        False, "narrows the further items' schema", "widens the further items' schema"
    ),
    "ITEM_ADDED_TO_OPEN_CONTENT_MODEL": _m(
        False, "adds a tuple item to an open tuple", "removes a tuple item from an open tuple"
    ),
    "ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL": _m(
        True, "adds an unconstrained tuple item", "removes an unconstrained tuple item"
    ),
    "ITEM_ADDED_TO_CLOSED_CONTENT_MODEL": _m(
        True, "adds a tuple item to a closed tuple", "removes a tuple item from a closed tuple"
    ),
    "ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL": _m(
        True, "removes a tuple item from an open tuple", "adds a tuple item to an open tuple"
    ),
    "ITEM_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL": _m(
        True, "removes a forbidden tuple item", "adds a forbidden tuple item"
    ),
    "ITEM_REMOVED_FROM_CLOSED_CONTENT_MODEL": _m(
        False, "removes a tuple item from a closed tuple", "adds a tuple item to a closed tuple"
    ),
    "ITEM_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL": _m(
        True, "removes a tuple item the further items cover", "adds a covered tuple item"
    ),
    "ITEM_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL": _m(
        False, "removes a tuple item the further items do not cover", "adds an uncovered item"
    ),
    "ITEM_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL": _m(
        True, "adds a tuple item the further items covered", "removes a covered tuple item"
    ),
    "ITEM_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL": _m(
        False, "adds a tuple item the further items did not cover", "removes an uncovered item"
    ),
    "ENUM_ARRAY_EXTENDED": _m(True, "widens the enum", "narrows the enum"),
    "ENUM_ARRAY_NARROWED": _m(False, "narrows the enum", "widens the enum"),
    "ENUM_ARRAY_CHANGED": _m(False, "changes the allowed values", "changes the allowed values"),
    "COMBINED_TYPE_EXTENDED": _m(True, "widens the combination", "narrows the combination"),
    "COMBINED_TYPE_CHANGED": _m(False, "changes the combination", "changes the combination"),
    "PRODUCT_TYPE_EXTENDED": _m(False, "adds an allOf member", "drops an allOf member"),
    "PRODUCT_TYPE_NARROWED": _m(True, "drops an allOf member", "adds an allOf member"),
    "SUM_TYPE_EXTENDED": _m(True, "widens the union", "narrows the union"),
    "SUM_TYPE_NARROWED": _m(False, "narrows the union", "widens the union"),
    "COMBINED_TYPE_SUBSCHEMAS_CHANGED": _m(
        False, "changes the union's members", "changes the union's members"
    ),
    "NOT_TYPE_EXTENDED": _m(False, "excludes more values", "excludes fewer values"),
    "NOT_TYPE_NARROWED": _m(True, "excludes fewer values", "excludes more values"),
    # tidings' own: Confluent ignores `format` (an annotation since JSON Schema 2019-09),
    # so these never break; they are listed so that `diff` shows them.
    "FORMAT_ADDED": _m(True, "adds a format", "drops a format"),
    "FORMAT_REMOVED": _m(True, "drops a format", "adds a format"),
    "FORMAT_CHANGED": _m(True, "changes the format", "changes the format"),
    # tidings' own: a keyword this checker does not model changed (e.g. `dependentSchemas`,
    # `unevaluatedProperties`, `contains`, `if`): reported as a break rather than ignored.
    "UNSUPPORTED_KEYWORD_CHANGED": _m(
        False, "changes a keyword the checker cannot judge", "changes a keyword"
    ),
    # tidings' own: a field's personal-data mark (tidings.personal, decision 0032). Every
    # change breaks, both ways and under both policies: marked fields may reach a reader
    # encrypted, masked or erased, unmarked ones in clear and kept, so the change needs
    # an explicit ok (a new major version, breaking=True, or the mode NONE).
    "PERSONAL_ADDED": _m(False, "becomes personal", "is no longer personal"),
    "PERSONAL_REMOVED": _m(False, "is no longer personal", "becomes personal"),
    "PERSONAL_SUBJECT_CHANGED": _m(False, "changes whose data it is", "changes whose data it is"),
}


class Rule(enum.StrEnum):
    """A kind of change between a writer's schema and a reader's, named as Confluent
    Schema Registry names it (``Difference.Type``), plus tidings' ``FORMAT_*``,
    ``UNSUPPORTED_KEYWORD_CHANGED`` and ``PERSONAL_*``; its value is its name."""

    @staticmethod
    def _generate_next_value_(name: str, start: int, count: int, last_values: list[str]) -> str:
        return name  # the value is the name, as Confluent spells it

    ID_CHANGED = enum.auto()
    DESCRIPTION_CHANGED = enum.auto()
    TITLE_CHANGED = enum.auto()
    DEFAULT_CHANGED = enum.auto()
    SCHEMA_ADDED = enum.auto()
    SCHEMA_REMOVED = enum.auto()
    TYPE_EXTENDED = enum.auto()
    TYPE_NARROWED = enum.auto()
    TYPE_CHANGED = enum.auto()
    MAX_LENGTH_ADDED = enum.auto()
    MAX_LENGTH_REMOVED = enum.auto()
    MAX_LENGTH_INCREASED = enum.auto()
    MAX_LENGTH_DECREASED = enum.auto()
    MIN_LENGTH_ADDED = enum.auto()
    MIN_LENGTH_REMOVED = enum.auto()
    MIN_LENGTH_INCREASED = enum.auto()
    MIN_LENGTH_DECREASED = enum.auto()
    PATTERN_ADDED = enum.auto()
    PATTERN_REMOVED = enum.auto()
    PATTERN_CHANGED = enum.auto()
    MAXIMUM_ADDED = enum.auto()
    MAXIMUM_REMOVED = enum.auto()
    MAXIMUM_INCREASED = enum.auto()
    MAXIMUM_DECREASED = enum.auto()
    MINIMUM_ADDED = enum.auto()
    MINIMUM_REMOVED = enum.auto()
    MINIMUM_INCREASED = enum.auto()
    MINIMUM_DECREASED = enum.auto()
    EXCLUSIVE_MAXIMUM_ADDED = enum.auto()
    EXCLUSIVE_MAXIMUM_REMOVED = enum.auto()
    EXCLUSIVE_MAXIMUM_INCREASED = enum.auto()
    EXCLUSIVE_MAXIMUM_DECREASED = enum.auto()
    EXCLUSIVE_MINIMUM_ADDED = enum.auto()
    EXCLUSIVE_MINIMUM_REMOVED = enum.auto()
    EXCLUSIVE_MINIMUM_INCREASED = enum.auto()
    EXCLUSIVE_MINIMUM_DECREASED = enum.auto()
    MULTIPLE_OF_ADDED = enum.auto()
    MULTIPLE_OF_REMOVED = enum.auto()
    MULTIPLE_OF_EXPANDED = enum.auto()
    MULTIPLE_OF_REDUCED = enum.auto()
    MULTIPLE_OF_CHANGED = enum.auto()
    REQUIRED_ATTRIBUTE_ADDED = enum.auto()
    REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED = enum.auto()
    REQUIRED_ATTRIBUTE_REMOVED = enum.auto()
    MAX_PROPERTIES_ADDED = enum.auto()
    MAX_PROPERTIES_REMOVED = enum.auto()
    MAX_PROPERTIES_INCREASED = enum.auto()
    MAX_PROPERTIES_DECREASED = enum.auto()
    MIN_PROPERTIES_ADDED = enum.auto()
    MIN_PROPERTIES_REMOVED = enum.auto()
    MIN_PROPERTIES_INCREASED = enum.auto()
    MIN_PROPERTIES_DECREASED = enum.auto()
    ADDITIONAL_PROPERTIES_ADDED = enum.auto()
    ADDITIONAL_PROPERTIES_REMOVED = enum.auto()
    ADDITIONAL_PROPERTIES_EXTENDED = enum.auto()
    ADDITIONAL_PROPERTIES_NARROWED = enum.auto()
    REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL = enum.auto()
    REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_OPEN_CONTENT_MODEL = enum.auto()
    OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL = enum.auto()
    PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL = enum.auto()
    REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL = enum.auto()
    REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL = enum.auto()
    OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL = enum.auto()
    PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL = enum.auto()
    PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL = enum.auto()
    PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL = enum.auto()
    PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = enum.auto()
    PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = enum.auto()
    PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = enum.auto()
    PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = enum.auto()
    DEPENDENCY_ARRAY_ADDED = enum.auto()
    DEPENDENCY_ARRAY_REMOVED = enum.auto()
    DEPENDENCY_ARRAY_EXTENDED = enum.auto()
    DEPENDENCY_ARRAY_NARROWED = enum.auto()
    DEPENDENCY_ARRAY_CHANGED = enum.auto()
    DEPENDENCY_SCHEMA_ADDED = enum.auto()
    DEPENDENCY_SCHEMA_REMOVED = enum.auto()
    MAX_ITEMS_ADDED = enum.auto()
    MAX_ITEMS_REMOVED = enum.auto()
    MAX_ITEMS_INCREASED = enum.auto()
    MAX_ITEMS_DECREASED = enum.auto()
    MIN_ITEMS_ADDED = enum.auto()
    MIN_ITEMS_REMOVED = enum.auto()
    MIN_ITEMS_INCREASED = enum.auto()
    MIN_ITEMS_DECREASED = enum.auto()
    MAX_CONTAINS_ADDED = enum.auto()
    MAX_CONTAINS_REMOVED = enum.auto()
    MAX_CONTAINS_INCREASED = enum.auto()
    MAX_CONTAINS_DECREASED = enum.auto()
    MIN_CONTAINS_ADDED = enum.auto()
    MIN_CONTAINS_REMOVED = enum.auto()
    MIN_CONTAINS_INCREASED = enum.auto()
    MIN_CONTAINS_DECREASED = enum.auto()
    UNIQUE_ITEMS_ADDED = enum.auto()
    UNIQUE_ITEMS_REMOVED = enum.auto()
    ADDITIONAL_ITEMS_ADDED = enum.auto()
    ADDITIONAL_ITEMS_REMOVED = enum.auto()
    ADDITIONAL_ITEMS_EXTENDED = enum.auto()
    ADDITIONAL_ITEMS_NARROWED = enum.auto()
    ITEM_ADDED_TO_OPEN_CONTENT_MODEL = enum.auto()
    ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL = enum.auto()
    ITEM_ADDED_TO_CLOSED_CONTENT_MODEL = enum.auto()
    ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL = enum.auto()
    ITEM_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL = enum.auto()
    ITEM_REMOVED_FROM_CLOSED_CONTENT_MODEL = enum.auto()
    ITEM_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = enum.auto()
    ITEM_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = enum.auto()
    ITEM_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = enum.auto()
    ITEM_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = enum.auto()
    ENUM_ARRAY_EXTENDED = enum.auto()
    ENUM_ARRAY_NARROWED = enum.auto()
    ENUM_ARRAY_CHANGED = enum.auto()
    COMBINED_TYPE_EXTENDED = enum.auto()
    COMBINED_TYPE_CHANGED = enum.auto()
    PRODUCT_TYPE_EXTENDED = enum.auto()
    PRODUCT_TYPE_NARROWED = enum.auto()
    SUM_TYPE_EXTENDED = enum.auto()
    SUM_TYPE_NARROWED = enum.auto()
    COMBINED_TYPE_SUBSCHEMAS_CHANGED = enum.auto()
    NOT_TYPE_EXTENDED = enum.auto()
    NOT_TYPE_NARROWED = enum.auto()
    FORMAT_ADDED = enum.auto()
    FORMAT_REMOVED = enum.auto()
    FORMAT_CHANGED = enum.auto()
    UNSUPPORTED_KEYWORD_CHANGED = enum.auto()
    PERSONAL_ADDED = enum.auto()
    PERSONAL_REMOVED = enum.auto()
    PERSONAL_SUBJECT_CHANGED = enum.auto()


def compatible(rule: Rule, policy: Policy) -> bool:
    """Whether a reader survives this change under ``policy``."""
    meaning = _MEANINGS[rule.value]
    return meaning.strict if policy is Policy.STRICT else meaning.lenient


def phrase(rule: Rule, *, reader_is_newer: bool = True) -> str:
    """The change in words, read from the older version to the newer."""
    meaning = _MEANINGS[rule.value]
    return meaning.phrase if reader_is_newer else meaning.reverse
