"""``taskapi demo``: task events fanned out to five independent groups.

This is the first slice of the reference system: the Task API's events on the
embedded log, each of the five services in its own consumer group. The FastAPI app,
the outbox and the real sinks (SMTP, webhooks, audit files, reminders) come with the
taskapi issue; until then each service prints what it would do.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from tidings import Context, Tidings, Worker, correlation_scope

TOPIC = "task-events"


class TaskCreated(BaseModel):
    task_id: str
    title: str
    assignee: str | None = None
    due: datetime | None = None


class TaskCompleted(BaseModel):
    task_id: str
    completed_by: str


def build_app(url: str) -> Tidings:
    app = Tidings(url, service="taskapi")
    app.topic(TOPIC, partitions=4)
    app.event("task.created", subject="task_id")(TaskCreated)
    app.event("task.completed", subject="task_id")(TaskCompleted)

    def say(service: str, ctx: Context, text: str) -> None:
        print(f"  [{service:<9}] {text}  (event {ctx.id[:13]}…, partition {ctx.partition})")

    @app.subscriber(TOPIC, group="email", types=["task.created", "task.completed"])
    async def email(event: TaskCreated | TaskCompleted, ctx: Context) -> None:
        if isinstance(event, TaskCreated):
            say("email", ctx, f"mail to {event.assignee}: new task {event.title!r}")
        else:
            say("email", ctx, f"mail: task {event.task_id} completed by {event.completed_by}")

    @app.subscriber(TOPIC, group="slack", types=["task.created", "task.completed"])
    async def slack(event: TaskCreated | TaskCompleted, ctx: Context) -> None:
        say("slack", ctx, f"post to #tasks: {ctx.type} {event.task_id}")

    @app.subscriber(TOPIC, group="push", types=["task.created"])
    async def push(event: TaskCreated, ctx: Context) -> None:
        say("push", ctx, f"push to {event.assignee}'s phone: {event.title!r}")

    @app.subscriber(TOPIC, group="audit")
    async def audit(event: BaseModel, ctx: Context) -> None:
        say("audit", ctx, f"append {ctx.type} (correlation {ctx.correlationid[:13]}…)")

    @app.subscriber(TOPIC, group="reminders", types=["task.created"])
    async def reminders(event: TaskCreated, ctx: Context) -> None:
        when = event.due.isoformat() if event.due else "no due date"
        say("reminders", ctx, f"schedule reminder for {event.task_id}: {when}")

    return app


async def demo(url: str, tasks: int, timeout: float) -> int:
    app = build_app(url)
    async with app:
        print(f"tidings log: {url}")
        print(f"publishing {tasks} tasks (created, then completed) to topic {TOPIC!r}\n")
        for i in range(tasks):
            task_id = f"task-{i + 1}"
            with correlation_scope():
                await app.publish(
                    TOPIC,
                    TaskCreated(
                        task_id=task_id,
                        title=f"Write report {i + 1}",
                        assignee="alice@example.com",
                        due=datetime.now(UTC) + timedelta(days=1),
                    ),
                )
                await app.publish(TOPIC, TaskCompleted(task_id=task_id, completed_by="alice"))
        worker = Worker(app)
        stop = asyncio.Event()
        runner = asyncio.create_task(worker.run(stop))
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
            groups = await app.transport.groups()
            if len(groups) == 5 and all(g.lag == 0 for g in groups):
                break
        stop.set()
        await runner
        print("\nwhere each group stands (the same as `tidings groups --url " + url + "`):")
        for g in await app.transport.groups():
            print(f"  {g.group:<10} lag {g.lag}")
        lagging = [g.group for g in await app.transport.groups() if g.lag]
    return 1 if lagging else 0


def run_demo(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="taskapi demo")
    parser.add_argument("--data", default="demo-data", help="folder for the log (%(default)s)")
    parser.add_argument("--tasks", type=int, default=3, help="tasks to create (%(default)s)")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    os.makedirs(args.data, exist_ok=True)
    url = os.environ.get("TIDINGS_URL") or f"sqlite:///{os.path.join(args.data, 'tidings.db')}"
    return asyncio.run(demo(url, args.tasks, args.timeout))
