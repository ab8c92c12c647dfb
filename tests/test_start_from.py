"""Where a new group starts, through the app and its worker, on every log (decision
0053; the transports' own tests are the conformance suite's ``conformance_start``)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from tests.conftest import LOGS, log_url
from tidings import Tidings
from tidings.testing import eventually, running


class Task(BaseModel):
    task_id: str


@pytest.fixture(params=LOGS)
def url(request: pytest.FixtureRequest) -> str:
    return log_url(request, partitions=4)


async def test_a_latest_worker_stopped_before_any_event_handles_what_came_while_down(
    url: str,
) -> None:
    app = Tidings(url, service="test")
    app.event("task.created", subject="task_id")(Task)
    handled: list[str] = []

    @app.subscriber("tasks", group="late", start_from="latest")
    async def handle(task: Task) -> None:
        handled.append(task.task_id)

    async with app:
        await app.publish_many("tasks", [Task(task_id=f"old-{i}") for i in range(6)])
        async with running(app):  # joins at the end of the topic; nothing comes
            pass
        await app.publish_many("tasks", [Task(task_id=f"new-{i}") for i in range(6)])
        async with running(app):
            await eventually(lambda: len(handled) >= 6, what="the 6 published while down")
        # Not one of those before the group first joined.
        assert sorted(handled) == [f"new-{i}" for i in range(6)]
