"""Personal-data marks (tidings.personal, decision 0032): in the JSON Schema, refused at
registration when the subject is not a field, listed for nested models and lists,
reported by the compatibility check and the registry both ways, shown by the catalog."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import BaseModel

from tidings import ConfigError, Tidings
from tidings.catalog import build_catalog, catalog_json, render_text, write_html
from tidings.errors import SchemaIncompatible
from tidings.personal import KEYWORD, Personal, PersonalField, personal_fields
from tidings.schema import Mode, Rule, check, diff


class Plain(BaseModel):
    task_id: str
    assignee: str | None = None
    email: str


class Marked(BaseModel):
    task_id: str
    assignee: Annotated[str | None, Personal(subject="assignee")] = None
    email: Annotated[str, Personal(subject="assignee")]


class Contact(BaseModel):
    person_id: str
    phone: Annotated[str, Personal(subject="person_id")]


class Nested(BaseModel):
    owner: str
    contact: Contact | None = None
    aliases: list[Annotated[str, Personal(subject="owner")]] = []
    team: list[Contact] = []


def test_the_mark_is_in_the_json_schema_beside_the_field() -> None:
    properties = Marked.model_json_schema()["properties"]
    assert properties["email"][KEYWORD] == {"subject": "assignee"}
    assert properties["assignee"][KEYWORD] == {"subject": "assignee"}  # Optional too
    assert KEYWORD not in properties["task_id"]
    # a marked nested model: the mark is on the field, not on the model's definition
    schema = Nested.model_json_schema()
    assert KEYWORD not in schema["$defs"]["Contact"]


def test_personal_fields_of_a_model_and_of_its_schema() -> None:
    assert personal_fields(Marked) == [
        PersonalField("assignee", "assignee"),
        PersonalField("email", "assignee"),
    ]
    assert personal_fields(Nested) == [
        PersonalField("contact.phone", "contact.person_id"),
        PersonalField("aliases[]", "owner"),
        PersonalField("team[].phone", "team[].person_id"),
    ]
    assert personal_fields(Nested.model_json_schema()) == personal_fields(Nested)
    assert personal_fields(Plain) == []
    assert str(PersonalField("email", "assignee")) == "email (subject assignee)"


def test_a_subject_that_is_not_a_field_is_refused_at_registration() -> None:
    class Bad(BaseModel):
        task_id: str
        email: Annotated[str, Personal(subject="assignee_id")]

    app = Tidings("memory://", service="test")
    with pytest.raises(ConfigError) as caught:
        app.event("task.assigned")(Bad)
    assert str(caught.value) == (
        "task.assigned v1: Bad.email is marked Personal(subject='assignee_id'), but "
        "'assignee_id' is not a field beside it; name the field that identifies whose "
        "data it is"
    )

    class BadNested(BaseModel):
        owner: str
        contact: Annotated[Contact, Personal(subject="nobody")]

    with pytest.raises(ConfigError, match=r"BadNested.contact is marked .*'nobody'"):
        app.event("contact.added")(BadNested)
    with pytest.raises(ConfigError, match="must name a field"):
        Personal(subject="")
    app.event("task.marked")(Marked)  # a good one registers


def test_the_check_reports_a_field_becoming_personal_or_not_both_ways() -> None:
    plain, marked = Plain.model_json_schema(), Marked.model_json_schema()
    for mode in (Mode.BACKWARD, Mode.FORWARD, Mode.FULL_TRANSITIVE):
        became = check(marked, [plain], mode)
        # seen from the writer: BACKWARD reads plain events with the marked model (the
        # mark added), FORWARD marked events with the plain model (the mark removed)
        expected = {
            (f"data.{name}", rule, direction)
            for name in ("assignee", "email")
            for rule, direction in ((Rule.PERSONAL_ADDED, Mode.BACKWARD),
                                    (Rule.PERSONAL_REMOVED, Mode.FORWARD))
            if direction in mode.directions
        }  # fmt: skip
        assert {(b.path, b.rule, b.direction) for b in became} == expected, mode
        assert all(b.phrase == "becomes personal" for b in became), mode
        no_longer = check(plain, [marked], mode)
        assert len(no_longer) == len(became) > 0
        assert all(b.phrase == "is no longer personal" for b in no_longer), mode
    [email] = [b for b in check(marked, [plain], Mode.BACKWARD) if b.path == "data.email"]
    assert str(email) == (
        "data.email: not personal -> personal (subject assignee) becomes personal; breaks "
        "BACKWARD (readers of v2 cannot read v1 events)"
    )
    assert check(marked, [plain], Mode.NONE) == []
    changes = {c.path: c for c in diff(plain, marked)}
    assert changes["data.email"].breaks == (Mode.BACKWARD, Mode.FORWARD)
    assert changes["data.email"].phrase == "becomes personal"


def test_a_changed_subject_and_a_marked_list_item_are_changes_too() -> None:
    class OtherSubject(BaseModel):
        task_id: str
        assignee: Annotated[str | None, Personal(subject="task_id")] = None
        email: Annotated[str, Personal(subject="assignee")]

    [brk] = check(OtherSubject.model_json_schema(), [Marked.model_json_schema()])
    assert (brk.path, brk.rule) == ("data.assignee", Rule.PERSONAL_SUBJECT_CHANGED)
    assert (brk.old, brk.new) == ("personal (subject assignee)", "personal (subject task_id)")

    class Unmarked(BaseModel):
        owner: str
        contact: Contact | None = None
        aliases: list[str] = []
        team: list[Contact] = []

    [brk] = check(Nested.model_json_schema(), [Unmarked.model_json_schema()])
    assert (brk.path, brk.rule) == ("data.aliases[]", Rule.PERSONAL_ADDED)


def app_with(url: str, model: type[BaseModel], version: int, breaking: bool = False) -> Tidings:
    app = Tidings(url, service="tasks")
    app.event("task.assigned", version=version, breaking=breaking)(model)
    return app


async def test_the_registry_refuses_a_mark_change_unless_declared_breaking(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    async with app_with(url, Plain, 1):
        pass
    with pytest.raises(SchemaIncompatible) as caught:
        await app_with(url, Marked, 2).start()
    assert "data.email: not personal -> personal (subject assignee) becomes personal" in str(
        caught.value
    )
    with pytest.raises(SchemaIncompatible, match="registered with another schema"):
        await app_with(url, Marked, 1).start()  # marking a registered version in place
    async with app_with(url, Marked, 2, breaking=True) as app:
        [_, v2] = await app.schema_registry.versions("task.assigned")
    assert personal_fields(v2.schema) == personal_fields(Marked)  # the registry holds it
    with pytest.raises(SchemaIncompatible, match="is no longer personal"):
        await app_with(url, Plain, 3).start()


async def test_the_catalog_shows_the_personal_fields(tmp_path: Path) -> None:
    async with app_with("memory://", Marked, 1) as app:
        catalog = await build_catalog(app.transport)
        [event] = catalog.events
        assert event.versions[0].personal == (
            PersonalField("assignee", "assignee"),
            PersonalField("email", "assignee"),
        )
        assert "personal: assignee (subject assignee), email (subject assignee)" in render_text(
            catalog
        )
        doc = json.loads(json.dumps(catalog_json(catalog)))
        assert doc["events"][0]["versions"][0]["personal"] == [
            {"path": "assignee", "subject": "assignee"},
            {"path": "email", "subject": "assignee"},
        ]
        written = write_html(catalog, tmp_path / "site")
    page = next(p for p in written if p.name.startswith("task.assigned")).read_text()
    assert "<h4>Personal data</h4>" in page
    assert '<code class="personal">email</code>' in page
