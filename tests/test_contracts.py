"""Payload contracts: pydantic models registered per (event type, version)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from tidings.contracts import Contract, Registry
from tidings.errors import (
    ConfigError,
    DecodeError,
    InvalidEventType,
    UnknownEventType,
    UnsupportedVersion,
)


class TaskCreated(BaseModel):
    task_id: str
    title: str


class TaskCreatedV2(BaseModel):
    task_id: str
    title: str
    due: str | None = None


class TaskDeleted(BaseModel):
    task_id: str


@pytest.fixture
def registry() -> Registry:
    return Registry()


def test_register_then_look_up_by_type_and_version_and_by_model(registry: Registry) -> None:
    contract = registry.register(TaskCreated, "task.created", 1, subject="task_id")
    assert contract == Contract("task.created", 1, TaskCreated, "task_id")
    assert registry.lookup("task.created", 1) is contract
    assert registry.for_model(TaskCreated) is contract
    assert registry.knows("task.created")
    assert not registry.knows("task.deleted")
    assert registry.lookup("task.deleted", 1) is None
    assert registry.lookup("task.created", 2) is None


def test_the_decorator_registers_and_returns_the_class(registry: Registry) -> None:
    @registry.decorator("task.deleted")
    class Deleted(BaseModel):
        task_id: str

    assert registry.for_model(Deleted).type == "task.deleted"
    assert registry.for_model(Deleted).version == 1
    assert Deleted(task_id="x").task_id == "x"


def test_lookup_without_a_version_gives_the_latest(registry: Registry) -> None:
    registry.register(TaskCreated, "task.created", 1)
    registry.register(TaskCreatedV2, "task.created", 2)
    assert registry.latest_version("task.created") == 2
    latest = registry.lookup("task.created", None)
    assert latest is not None
    assert latest.model is TaskCreatedV2


def test_schema_uri_names_type_and_version(registry: Registry) -> None:
    contract = registry.register(TaskCreatedV2, "task.created", 2)
    assert contract.schema_uri == "urn:tidings:schema:task.created:2"


def test_registering_the_same_model_again_is_idempotent(registry: Registry) -> None:
    first = registry.register(TaskCreated, "task.created", 1)
    second = registry.register(TaskCreated, "task.created", 1)
    assert first == second
    assert registry.contracts() == [first]


def test_same_type_and_version_to_another_model_is_refused_suggesting_the_next_version(
    registry: Registry,
) -> None:
    registry.register(TaskCreated, "task.created", 1)
    registry.register(TaskCreatedV2, "task.created", 2)

    class Another(BaseModel):
        task_id: str

    with pytest.raises(ConfigError) as info:
        registry.register(Another, "task.created", 1)
    message = str(info.value)
    assert "task.created version 1 is already registered to TaskCreated" in message
    assert "register Another as version 3" in message
    assert registry.lookup("task.created", 1).model is TaskCreated  # type: ignore[union-attr]


@pytest.mark.parametrize("version", [0, -1, True, 1.0, "2"])
def test_version_must_be_a_positive_integer(registry: Registry, version: object) -> None:
    with pytest.raises(ConfigError, match="version must be an integer >= 1"):
        registry.register(TaskCreated, "task.created", version)  # type: ignore[arg-type]


def test_type_name_is_validated(registry: Registry) -> None:
    with pytest.raises(InvalidEventType):
        registry.register(TaskCreated, "TaskCreated")


def test_only_pydantic_models_can_be_registered(registry: Registry) -> None:
    class NotAModel:
        pass

    with pytest.raises(ConfigError, match="not a pydantic model class"):
        registry.register(NotAModel, "task.created")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not a pydantic model class"):
        registry.register(TaskCreated(task_id="a", title="b"), "task.created")  # type: ignore[arg-type]


def test_subject_field_gives_the_events_subject(registry: Registry) -> None:
    contract = registry.register(TaskCreated, "task.created", subject="task_id")
    assert contract.subject_of(TaskCreated(task_id="t9", title="x")) == "t9"
    plain = registry.register(TaskDeleted, "task.deleted")
    assert plain.subject_of(TaskDeleted(task_id="t9")) is None


def test_subject_field_value_is_turned_into_a_string(registry: Registry) -> None:
    class Numbered(BaseModel):
        number: int | None

    contract = registry.register(Numbered, "order.placed", subject="number")
    assert contract.subject_of(Numbered(number=17)) == "17"
    assert contract.subject_of(Numbered(number=None)) is None


def test_subject_must_be_a_field_of_the_model(registry: Registry) -> None:
    with pytest.raises(ConfigError) as info:
        registry.register(TaskCreated, "task.created", subject="id")
    message = str(info.value)
    assert "TaskCreated has no field 'id'" in message
    assert "task_id, title" in message


def test_unregistered_model_is_a_clear_error(registry: Registry) -> None:
    with pytest.raises(ConfigError, match=r"TaskCreated is not registered.*@app.event"):
        registry.for_model(TaskCreated)


def test_decode_payload_gives_the_registered_model(registry: Registry) -> None:
    registry.register(TaskCreated, "task.created", 1)
    registry.register(TaskCreatedV2, "task.created", 2)
    v1 = registry.decode_payload("task.created", 1, {"task_id": "a", "title": "b"})
    assert v1 == TaskCreated(task_id="a", title="b")
    v2 = registry.decode_payload("task.created", 2, {"task_id": "a", "title": "b", "due": "x"})
    assert v2 == TaskCreatedV2(task_id="a", title="b", due="x")
    assert type(v2) is TaskCreatedV2


def test_decode_payload_of_an_unregistered_type_gives_a_copy_of_the_raw_data(
    registry: Registry,
) -> None:
    data = {"anything": [1, 2]}
    for version in (1, None):
        payload = registry.decode_payload("task.created", version, data)
        assert payload == data
        assert payload is not data  # the event is shared: each handler gets its own
        assert payload["anything"] is not data["anything"]


def test_payload_validation_error_names_the_field(registry: Registry) -> None:
    registry.register(TaskCreated, "task.created", 1)
    with pytest.raises(DecodeError) as info:
        registry.decode_payload("task.created", 1, {"task_id": "a", "title": 5})
    message = str(info.value)
    assert "task.created v1" in message
    assert "TaskCreated" in message
    assert "1 error(s)" in message
    assert "title:" in message
    assert "task_id" not in message.split("TaskCreated", 1)[1]


def test_payload_validation_error_names_nested_and_missing_fields(registry: Registry) -> None:
    class Inner(BaseModel):
        email: str

    class Outer(BaseModel):
        who: Inner
        count: int

    registry.register(Outer, "user.invited")
    with pytest.raises(DecodeError) as info:
        registry.decode_payload("user.invited", 1, {"who": {}})
    message = str(info.value)
    assert "2 error(s)" in message
    assert "who.email: Field required" in message
    assert "count: Field required" in message


def test_payload_that_is_not_an_object_is_a_root_error(registry: Registry) -> None:
    registry.register(TaskCreated, "task.created")
    with pytest.raises(DecodeError, match=r"\(root\)"):
        registry.decode_payload("task.created", 1, [1, 2])


def test_unknown_version_of_a_known_type_is_unknown_event_type(registry: Registry) -> None:
    registry.register(TaskCreated, "task.created", 1)
    registry.register(TaskCreatedV2, "task.created", 2)
    with pytest.raises(UnknownEventType) as info:
        registry.decode_payload("task.created", 7, {"task_id": "a", "title": "b"})
    message = str(info.value)
    assert "version 7 of task.created" in message
    assert "versions 1..2" in message


def test_contracts_are_listed_by_type_then_version(registry: Registry) -> None:
    registry.register(TaskDeleted, "task.deleted")
    registry.register(TaskCreatedV2, "task.created", 2)
    registry.register(TaskCreated, "task.created", 1)
    assert [(c.type, c.version) for c in registry.contracts()] == [
        ("task.created", 1),
        ("task.created", 2),
        ("task.deleted", 1),
    ]


def test_versions_lists_a_types_registered_versions(registry: Registry) -> None:
    registry.register(TaskCreatedV2, "task.created", 3)
    registry.register(TaskCreated, "task.created", 1)
    assert registry.versions("task.created") == [1, 3]
    assert registry.versions("task.deleted") == []


def test_a_version_newer_than_the_only_one_is_unsupported_version(registry: Registry) -> None:
    registry.register(TaskCreated, "task.created", 1)
    with pytest.raises(UnsupportedVersion, match=r"newer than this service knows \(version 1\)"):
        registry.decode_payload("task.created", 2, {"task_id": "a", "title": "b"})
    with pytest.raises(UnsupportedVersion, match=r"registers version 1; .* or publish version 1"):
        registry.check_publish("task.created", 2)
