"""The Task API's request and response bodies (its OpenAPI document is built from them).

Inputs forbid unknown fields, so a misspelt field is a 422 rather than silently
ignored. Datetimes are accepted only with a time zone and answered in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from taskapi.db import Status
from taskapi.events import Priority

__all__ = [
    "ASSIGNEE_PATTERN",
    "PATCHABLE",
    "Detail",
    "TaskCreate",
    "TaskList",
    "TaskOut",
    "TaskPatch",
]

ASSIGNEE_PATTERN = r"^[A-Za-z0-9._@+-]{1,100}$"
PATCHABLE = ("title", "description", "assignee", "due", "priority")


def _storable(value: str) -> str:
    # Both would fail in the database rather than here (PostgreSQL refuses NUL in text;
    # a lone surrogate from JSON "\ud800" cannot be encoded as UTF-8): a 422, not a 500.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise ValueError("is out of range once converted to UTC") from None


Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_storable),
    Field(description="1 to 200 characters, surrounding whitespace removed; not blank"),
]
Description = Annotated[str, Field(max_length=5000), AfterValidator(_storable)]
Assignee = Annotated[str, Field(pattern=ASSIGNEE_PATTERN, examples=["alice"])]
Due = Annotated[
    AwareDatetime,
    AfterValidator(_utc),
    Field(description="An ISO 8601 date-time with a time zone, e.g. 2030-01-31T17:00:00Z"),
]


class Detail(BaseModel):
    """An error: what went wrong, in one sentence."""

    detail: str


class TaskOut(BaseModel):
    """A task as stored. Times are UTC."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    title: str
    description: str | None
    assignee: str | None
    due: datetime | None
    priority: Priority
    status: Status
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


class TaskList(BaseModel):
    """One page of tasks, ordered by creation time, and how many match in all."""

    items: list[TaskOut]
    total: int
    limit: int
    offset: int


class TaskCreate(BaseModel):
    """A new task: a title, and optionally the rest."""

    model_config = ConfigDict(extra="forbid")

    title: Title
    description: Description | None = None
    assignee: Assignee | None = None
    due: Due | None = None
    priority: Priority = "normal"


class TaskPatch(BaseModel):
    """Fields to change; those left out stay. `description`, `assignee` and `due` may
    be null to clear them; `title` and `priority` may not."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    # SkipJsonSchema: the document says "a string"; null is refused by the validator
    # below (a missing title is left as it is and never reaches it).
    title: Title | SkipJsonSchema[None] = None
    description: Description | None = None
    assignee: Assignee | None = None
    due: Due | None = None
    priority: Priority | SkipJsonSchema[None] = None

    @field_validator("title", "priority")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be null; leave the field out to keep it")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> TaskPatch:
        if not self.model_fields_set:
            raise ValueError(f"nothing to change: set at least one of {', '.join(PATCHABLE)}")
        return self

    def changes(self) -> dict[str, Any]:
        """The fields that were sent, with their new values."""
        return {name: getattr(self, name) for name in PATCHABLE if name in self.model_fields_set}
