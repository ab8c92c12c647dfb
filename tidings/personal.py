"""Personal data in payloads: a field marked as personal, and whose it is (decision 0032).

A payload model marks a field with :class:`Personal`, naming its *data subject*: the
field of the same object whose value identifies the person it is about (the field
itself, when its value is that identifier)::

    from typing import Annotated

    from pydantic import BaseModel

    from tidings.personal import Personal, personal_fields


    class TaskAssigned(BaseModel):
        task_id: str
        assignee_id: str
        email: Annotated[str, Personal(subject="assignee_id")]


    print([str(field) for field in personal_fields(TaskAssigned)])
    # ['email (subject assignee_id)']

The mark is part of the contract: it is written into the model's JSON Schema as the
keyword :data:`KEYWORD` on the field (``{"x-tidings-personal": {"subject":
"assignee_id"}}``), so the schema registry stores it, the catalog shows it and the
compatibility check reports a field that becomes personal, or stops being personal, as a
break (:mod:`tidings.schema.rules`). A subject that is not a field of the object is
refused when the model is registered (``@app.event``).

Marking is all this module does: :mod:`tidings.shredding` encrypts the marked fields,
erases a subject's data and masks it (decision 0036).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, GetJsonSchemaHandler
from pydantic.errors import PydanticInvalidForJsonSchema
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from tidings.errors import ConfigError

__all__ = ["KEYWORD", "Personal", "PersonalField", "personal_fields"]

KEYWORD = "x-tidings-personal"
"""The JSON Schema keyword that carries a field's mark: ``{"subject": "<field>"}``."""


@dataclass(frozen=True, slots=True)
class Personal:
    """Marks a field as personal data about the person ``subject`` names: a field of the
    same object (``Annotated[str, Personal(subject="assignee_id")]``)."""

    subject: str

    def __post_init__(self) -> None:
        if not isinstance(self.subject, str) or not self.subject:
            raise ConfigError(f"Personal(subject=...) must name a field, got {self.subject!r}")

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        # Beside a $ref, not inside the definition: the mark is the field's, not the model's.
        schema[KEYWORD] = {"subject": self.subject}
        return schema


@dataclass(frozen=True, slots=True)
class PersonalField:
    """A personal field of a payload: ``path`` from the payload's root (``email``,
    ``customer.email``, ``contacts[].email``) and its subject field, a path too."""

    path: str
    subject: str

    def __str__(self) -> str:
        return f"{self.path} (subject {self.subject})"


def mark_of(schema: Any) -> str | None:
    """The subject named by the mark on ``schema`` (a property's schema), if marked."""
    if not isinstance(schema, Mapping):
        return None
    mark = schema.get(KEYWORD)
    if isinstance(mark, Mapping) and isinstance(mark.get("subject"), str):
        return str(mark["subject"])
    for member in schema.get("anyOf") or ():  # Optional[Annotated[str, Personal(...)]]
        found = mark_of(member)
        if found is not None:
            return found
    return None


def personal_fields(source: type[BaseModel] | Mapping[str, Any]) -> list[PersonalField]:
    """The personal fields of a payload model, or of its JSON Schema (as the registry
    stores it), in schema order; nested models, lists and optional fields included."""
    return [field for field, _ in _marks(source)]


def check_subjects(model: type[BaseModel], what: str) -> None:
    """Raise ConfigError if a mark of ``model`` names a subject that is not a field of
    the object that holds it (``what`` names the contract in the message)."""
    try:
        marks = _marks(model)
    except PydanticInvalidForJsonSchema:  # no JSON Schema: its own fields' marks only
        marks = [
            (PersonalField(name, mark.subject), mark.subject in model.model_fields)
            for name, info in model.model_fields.items()
            for mark in info.metadata
            if isinstance(mark, Personal)
        ]
    for field, known in marks:
        if not known:
            name = field.subject.rsplit(".", 1)[-1]
            raise ConfigError(
                f"{what}: {model.__name__}.{field.path} is marked Personal(subject={name!r}), "
                f"but {name!r} is not a field beside it; name the field that identifies "
                "whose data it is"
            )


def _marks(source: type[BaseModel] | Mapping[str, Any]) -> list[tuple[PersonalField, bool]]:
    """Each mark, and whether its subject is a property of the object holding it."""
    schema = source if isinstance(source, Mapping) else source.model_json_schema()
    found: list[tuple[PersonalField, bool]] = []
    _walk(schema, schema, "", {}, found, frozenset())
    return found


def _walk(
    root: Mapping[str, Any],
    schema: Any,
    path: str,
    siblings: Mapping[str, Any],
    found: list[tuple[PersonalField, bool]],
    seen: frozenset[str],
) -> None:
    """Collect the marks under ``schema`` at ``path``; ``siblings`` are the properties
    of the object that holds it (where the subject of a list item's mark is)."""
    if not isinstance(schema, Mapping):
        return
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if ref in seen or not ref.startswith("#/"):
            return  # a recursive model: its marks are listed once
        target: Any = root
        for token in ref[2:].split("/"):
            target = target.get(token) if isinstance(target, Mapping) else None
        seen = seen | {ref}
        schema = target if isinstance(target, Mapping) else {}
    properties = schema.get("properties")
    if isinstance(properties, Mapping):
        prefix = f"{path}." if path else ""
        for name, sub in properties.items():
            subject = mark_of(sub)
            if subject is not None:
                field = PersonalField(prefix + name, prefix + subject)
                found.append((field, subject in properties))
            _walk(root, sub, prefix + name, properties, found, seen)
    items = schema.get("items")
    if isinstance(items, Mapping):
        subject = mark_of(items)
        if subject is not None:  # list[Annotated[str, Personal(...)]]: its object's field
            parent = path.rsplit(".", 1)[0] + "." if "." in path else ""
            found.append((PersonalField(f"{path}[]", parent + subject), subject in siblings))
        _walk(root, items, f"{path}[]", siblings, found, seen)
    for combination in ("anyOf", "oneOf", "allOf"):
        for member in schema.get(combination) or ():
            _walk(root, member, path, siblings, found, seen)
