"""Log lines with the handled event's coordinates (tidings.logs): a handler's own line,
the worker's retry and dead-letter lines, the formatters, ``tidings.logs.configure``,
and ``tidings run --log-format json|text`` in a real process."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

import tidings.logs
from tidings import ConfigError, Context, Tidings, correlation_scope
from tidings.logs import Fields, JsonFormatter, TextFormatter
from tidings.middleware import Delivery, Middleware, Next, Retry, default_middleware
from tidings.testing import eventually, running

TOPIC = "task-events"
COORDINATES = {
    "group",
    "subscriber",
    "topic",
    "partition",
    "offset",
    "event_id",
    "correlation_id",
    "type",
}


class TaskCreated(BaseModel):
    task_id: str


class PassThrough(Middleware):
    """Acts on every call: the worker hands events through the chains one at a time."""

    async def handle(self, delivery: Delivery, call_next: Next) -> None:
        await call_next(delivery)


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog with the fields filter on its handler, as a user adds it to their own."""
    caplog.set_level(logging.INFO)
    fields = Fields()
    caplog.handler.addFilter(fields)
    yield caplog
    caplog.handler.removeFilter(fields)


def make_app() -> Tidings:
    app = Tidings("memory://?partitions=4", service="test")
    app.event("task.created", subject="task_id")(TaskCreated)
    return app


def the_record(caplog: pytest.LogCaptureFixture, says: str) -> logging.LogRecord:
    found = [r for r in caplog.records if says in r.getMessage()]
    assert len(found) == 1, [r.getMessage() for r in caplog.records]
    return found[0]


# -- in process -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "def", "one at a time"])
async def test_a_handlers_own_log_line_carries_the_events_coordinates(
    captured: pytest.LogCaptureFixture, kind: str
) -> None:
    """Whichever way the worker calls the handler: async ones in runs on the loop, plain
    def ones in runs in a thread, or one at a time through a chain."""
    app = make_app()
    seen: list[Context] = []
    mine = logging.getLogger("my.service")

    if kind == "def":

        @app.subscriber(TOPIC, group="mailer")
        def send(payload: TaskCreated, ctx: Context) -> None:
            mine.info("sending for %s", payload.task_id)
            seen.append(ctx)

    else:

        @app.subscriber(TOPIC, group="mailer")
        async def send(payload: TaskCreated, ctx: Context) -> None:
            mine.info("sending for %s", payload.task_id)
            seen.append(ctx)

    options: dict[str, Any] = {}
    if kind == "one at a time":
        options["middleware"] = [PassThrough(), *default_middleware()]
    async with app, running(app, **options):
        with correlation_scope("req-42"):
            event = await app.publish(TOPIC, TaskCreated(task_id="t-1"))
        await eventually(lambda: bool(seen), what="handled")
    (ctx,) = seen
    record = the_record(captured, "sending for t-1")
    assert record.name == "my.service"
    assert record.tidings == {  # type: ignore[attr-defined]
        "group": "mailer",
        "subscriber": send.__qualname__,
        "topic": TOPIC,
        "partition": ctx.partition,
        "offset": ctx.offset,
        "event_id": event.id,
        "correlation_id": "req-42",
        "type": "task.created",
    }
    assert tidings.logs.current_fields() == {}  # nothing leaks out of the call


async def test_a_retry_and_a_dead_letter_line_carry_the_events_coordinates(
    captured: pytest.LogCaptureFixture,
) -> None:
    app = make_app()

    @app.subscriber(TOPIC, group="mailer", retry=Retry(max_attempts=2, base_delay=0.005))
    async def send(payload: TaskCreated) -> None:
        raise RuntimeError("smtp is down")

    async with app:
        event = await app.publish(TOPIC, TaskCreated(task_id="t-1"))
        middleware = default_middleware(Retry(base_delay=0.005, max_delay=0.01))
        async with running(app, middleware=middleware) as worker:
            await eventually(lambda: worker.stats.dead_lettered == 1, what="dead-lettered")
    retried = the_record(captured, "retrying in")
    dead = the_record(captured, "dead-lettered")
    for record in (retried, dead):
        fields = record.tidings  # type: ignore[attr-defined]
        assert set(fields) >= COORDINATES, record.getMessage()
        assert (fields["group"], fields["topic"]) == ("mailer", TOPIC)
        assert fields["subscriber"] == send.__qualname__
        assert (fields["event_id"], fields["correlation_id"]) == (event.id, event.id)
    assert retried.tidings["offset"] == dead.tidings["offset"]  # type: ignore[attr-defined]
    assert dead.tidings["dead_letter"]  # type: ignore[attr-defined]


def test_fields_given_with_extra_win_and_records_outside_a_call_have_none() -> None:
    out = io.StringIO()
    handler = tidings.logs.configure("json", stream=out)
    log = logging.getLogger("tidings.test_logs")
    try:
        log.warning("nothing known")
        log.warning("commit failed", extra=tidings.logs.fields(group="g", partition=None))
        with correlation_scope("req-7"):
            log.warning("serving a request")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [set(line) - {"time", "level", "logger", "message"} for line in lines] == [
        set(),
        {"group"},
        {"correlation_id"},
    ]
    assert lines[1]["group"] == "g"
    assert lines[2]["correlation_id"] == "req-7"


# -- formatters and configure ---------------------------------------------------------


def a_record(fields: dict[str, Any] | None, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("tidings.worker", logging.ERROR, __file__, 1, "x %d", (1,), exc_info)
    if fields is not None:
        record.tidings = fields
    return record


FIELDS = {
    "group": "email",
    "topic": "task-events",
    "partition": 3,
    "offset": 1042,
    "event_id": "0193a1b2-0000-7000-8000-00000000c4d8",
    "correlation_id": "0193a1b2-0000-7000-8000-000000009e11",
}


def test_text_appends_the_coordinates_compactly_before_a_traceback() -> None:
    text = TextFormatter().format(a_record(FIELDS, exc=True))
    first, *rest = text.splitlines()
    assert first.endswith(
        "ERROR tidings.worker: x 1 [task-events/3@1042 g=email e=…0000c4d8 c=…00009e11]"
    )
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: boom"
    first_of_chain = {**FIELDS, "correlation_id": FIELDS["event_id"]}
    text = TextFormatter().format(a_record(first_of_chain))
    assert text.endswith("x 1 [task-events/3@1042 g=email e=…0000c4d8]")
    relayed = {"outbox_id": 17, "topic": "task-events", "event_id": FIELDS["event_id"]}
    text = TextFormatter().format(a_record(relayed))
    assert text.endswith("x 1 [task-events row=17 e=…0000c4d8]")
    plain = TextFormatter().format(a_record(None))
    assert plain.endswith("ERROR tidings.worker: x 1")  # today's look without fields


def test_json_is_one_object_per_line_with_the_fields_and_the_exception() -> None:
    text = JsonFormatter().format(a_record({**FIELDS, "odd": object()}, exc=True))
    assert "\n" not in text
    line = orjson.loads(text)
    assert line["time"].endswith("Z")
    assert "T" in line["time"]
    assert (line["level"], line["logger"], line["message"]) == ("ERROR", "tidings.worker", "x 1")
    assert {k: line[k] for k in FIELDS} == FIELDS
    assert line["odd"].startswith("<object object")
    assert line["exception"].endswith("ValueError: boom")


def test_configure_replaces_its_own_handler_and_refuses_unknown_settings() -> None:
    root = logging.getLogger()
    level = root.level
    first = tidings.logs.configure("text", "warning", stream=io.StringIO())
    try:
        second = tidings.logs.configure("json", logging.DEBUG, stream=io.StringIO())
        assert first not in root.handlers
        assert second in root.handlers
        assert root.level == logging.DEBUG
        saved = root.handlers[:]
        root.handlers = [second]
        assert not tidings.logs.set_up_elsewhere()  # the CLI may configure
        root.handlers = [second, logging.NullHandler()]
        assert tidings.logs.set_up_elsewhere()  # the CLI leaves it alone
    finally:
        root.handlers = saved
        root.removeHandler(second)
        root.setLevel(level)
    with pytest.raises(ConfigError, match="log format must be one of text, json, not 'xml'"):
        tidings.logs.configure("xml")
    with pytest.raises(ConfigError, match=r"log level must be DEBUG, .* not 'loud'"):
        tidings.logs.configure("text", "loud")


# -- tidings run, in a process of its own -----------------------------------------------


def test_tidings_run_log_format_json_prints_json_lines_with_the_fields(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    (tmp_path / "json_app.py").write_text(
        "import logging\n"
        "from tidings import Tidings\n"
        f"app = Tidings({url!r}, service='s')\n"
        "@app.subscriber('tasks', group='mailer')\n"
        "async def send(data):\n"
        "    logging.getLogger('my.service').info('sending %s', data['n'])\n"
        "    print('handled', flush=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    publish = subprocess.run(
        [sys.executable, "-m", "tidings", "publish", "tasks", "task.created", "--data",
         '{"n": 7}', "--subject", "t-1", "--create", "--json", "--url", url],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert publish.returncode == 0, publish.stderr
    (published,) = orjson.loads(publish.stdout)
    event_id = published["id"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidings", "run", "json_app:app", "--log-format", "json"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "handled\n"  # waits for the handler, no timer
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    lines = [orjson.loads(line) for line in err.splitlines()]  # every line is JSON
    (mine,) = [line for line in lines if line["logger"] == "my.service"]
    assert mine["message"] == "sending 7"
    assert mine["level"] == "INFO"
    assert {k: mine[k] for k in ("group", "subscriber", "topic", "offset", "type")} == {
        "group": "mailer",
        "subscriber": "send",
        "topic": "tasks",
        "offset": 0,
        "type": "task.created",
    }
    assert (mine["event_id"], mine["correlation_id"]) == (event_id, event_id)
    assert isinstance(mine["partition"], int)
    assert any(line["message"].startswith("stopped: 1 handled") for line in lines)


@pytest.mark.parametrize(
    ("option", "says"),
    [
        (["--log-format", "xml"], "argument --log-format: invalid choice: 'xml'"),
        (["--log-level", "loud"], "argument --log-level: invalid choice: 'LOUD'"),
    ],
)
def test_tidings_run_refuses_a_bad_log_option_as_a_usage_error(
    tmp_path: Path, option: list[str], says: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tidings", "run", "nowhere:app", *option],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("tidings: error: "), line
    assert says in line
    assert "(see 'tidings run --help')" in line
