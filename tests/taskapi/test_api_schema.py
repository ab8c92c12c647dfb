"""Property tests of the Task API against its own OpenAPI document (schemathesis).

Every operation is called with generated valid and invalid requests (through ASGI, on a
SQLite file): none may answer 5xx, and every answer must be one the document declares,
with the declared content type and body schema. Requests that name a task pick one of
a few real tasks half of the time, so that the 2xx paths are exercised, not only 404s.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python import asgi

from taskapi.api import create_app
from taskapi.settings import Settings

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
EXAMPLES = 25  # per operation and mode: the file runs in seconds, not minutes
SEEDED = 6  # real tasks made before each operation is tested
OPERATIONS = {
    "POST /tasks",
    "GET /tasks",
    "GET /tasks/{task_id}",
    "PATCH /tasks/{task_id}",
    "DELETE /tasks/{task_id}",
    "POST /tasks/{task_id}/complete",
    "GET /health",
    "GET /board",
    "DELETE /people/{person_id}",
}
BOUNDED = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases on every run: a failure here is reproducible
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FastAPI]:
    # The relay is not under test here; without it the database has one writer fewer.
    # A key store: DELETE /people/{id} erases (without one it answers 409).
    monkeypatch.setenv("TIDINGS_MASTER_KEY", "11" * 32)
    env = {"TASKAPI_KEYS": f"sqlite:///{tmp_path / 'keys.db'}"}
    app = create_app(Settings.from_env(tmp_path, env=env).ensure(), relay=False)
    try:
        yield app
    finally:
        # schemathesis started the app's lifespan on its first call and keeps it for
        # the process: end it now, before the temporary folder goes.
        asgi.shutdown_lifespans()


def _seed(schema: Any) -> list[str]:
    create = schema["/tasks"]["POST"]
    ids = []
    for n in range(SEEDED):
        response = create.Case(body={"title": f"seed {n}", "assignee": "ann"}).call()
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


Operation = APIOperation[Any, Any, Any, Any]


def _cases(op: Operation, mode: GenerationMode, ids: list[str]) -> st.SearchStrategy[Case[Any]]:
    generated = op.as_strategy(generation_mode=mode)
    if op.get_parameter("task_id", "path") is None:
        return generated
    real = st.sampled_from(ids).flatmap(
        lambda task_id: op.as_strategy(generation_mode=mode, path_parameters={"task_id": task_id})
    )
    return st.one_of(generated, real)


def test_every_operation_keeps_to_the_document(api: FastAPI) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api)
    statuses: dict[str, Counter[int]] = defaultdict(Counter)

    def call_and_check(case: Case[Any]) -> None:
        response = case.call()
        statuses[case.operation.label][response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an Err fails the test
        ids = _seed(schema)
        for mode in GenerationMode:
            strategy = _cases(operation, mode, ids)
            test = BOUNDED(given(case=strategy)(call_and_check))
            try:
                test()
            except Unsatisfiable:
                # Nothing in this operation can be made invalid (GET /health, GET /board, or a
                # path parameter that is any string): only positive cases exist.
                assert mode is GenerationMode.NEGATIVE, operation.label

    # Not vacuous: every operation ran (GET /health and GET /board have one possible
    # request; the others at least EXAMPLES), and each reached its success path.
    assert set(statuses) == OPERATIONS
    for label, seen in statuses.items():
        least = 1 if label in ("GET /health", "GET /board") else EXAMPLES  # no parameters
        assert sum(seen.values()) >= least, (label, seen)
        assert any(200 <= code < 300 for code in seen), (label, seen)
    assert sum(seen[422] for seen in statuses.values()) > 0  # invalid input was refused
