"""Slow consumers (docs/agents.md): handler deadlines, progress events, cancellation;
on a real SQLite log."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tidings import ConfigError, Context, Event, Tidings, TopicNotFound, Worker, decode
from tidings.dead_letters import DeadLetterLog
from tidings.errors import HandlerTimeout
from tidings.inbox import Inbox
from tidings.middleware import Deadline, Retry, default_middleware
from tidings.middleware.cancellation import CANCELLED_TYPE
from tidings.progress import Throttle, progress_type
from tidings.testing import eventually, running

TOPIC = "research"
TYPE = "research.requested"
HUNG = "research.hung"  # what the handlers that hang on purpose get
# The timeout of a plain def handler that should succeed: its wait for a pool thread
# counts, and a loaded machine can stretch that past any short deadline, never this far.
AMPLE = 60.0


@pytest.fixture
async def released() -> AsyncIterator[tuple[asyncio.Event, threading.Event]]:
    """What hung handlers wait on; set at teardown, so that none outlives its test."""
    loop_gate, thread_gate = asyncio.Event(), threading.Event()
    yield loop_gate, thread_gate
    loop_gate.set()
    thread_gate.set()


def make_app(sqlite_url: str, partitions: int = 1) -> Tidings:
    return Tidings(f"{sqlite_url}?partitions={partitions}", service="agents", schemas="off")


async def dead_letters(app: Tidings, group: str) -> list[Any]:
    log = DeadLetterLog(app.transport, group)
    await log.refresh()
    return [entry for entry, _ in log.listing()]


# -- deadlines ------------------------------------------------------------------------


async def test_an_async_handler_past_its_timeout_is_cancelled_and_the_partition_moves_on(
    sqlite_url: str, released: tuple[asyncio.Event, threading.Event]
) -> None:
    app = make_app(sqlite_url)
    gate, _ = released
    handled: list[int] = []
    cancelled: list[int] = []

    # 0.2 s cuts only the call that hangs: the others never await, and a deadline fires
    # only at an await (a loaded machine cannot make them late).
    @app.subscriber(TOPIC, group="g", timeout=0.2, retry=Retry(max_attempts=2, base_delay=0.01))
    async def summarise(payload: dict[str, int]) -> None:
        if payload["n"] == 0:
            try:
                await gate.wait()  # hangs: never set while the worker runs
            except asyncio.CancelledError:
                cancelled.append(payload["n"])
                raise
        handled.append(payload["n"])

    async with app, running(app) as worker:
        for n in range(3):
            await app.publish(TOPIC, {"n": n}, type=TYPE, subject="doc-1")
        await eventually(lambda: handled == [1, 2], what="the later events handled")
        (entry,) = await dead_letters(app, "g")
        assert entry.error_type == "tidings.errors.HandlerTimeout"
        assert entry.attempts == 2
        assert "ran past its timeout (0.2 s)" in entry.error_message
        assert cancelled == [0, 0]
        assert worker.stats.timed_out == 2
        assert worker.stats.failed_attempts == 2


async def test_a_def_handler_past_its_timeout_is_left_running_and_its_late_work_discarded(
    sqlite_url: str,
    tmp_path: Path,
    released: tuple[asyncio.Event, threading.Event],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(sqlite_url)
    _, gate = released
    db = f"sqlite:///{tmp_path / 'effects.db'}"
    engine = sa.create_engine(db)
    effects = sa.Table("effects", sa.MetaData(), sa.Column("what", sa.String(64)))
    effects.metadata.create_all(engine)
    inbox = Inbox(db)
    finished = threading.Event()

    once = Retry(max_attempts=1)

    @app.subscriber(TOPIC, group="g", types=[HUNG], timeout=0.3, inbox=inbox, retry=once)
    def hang(payload: dict[str, int], ctx: Context) -> None:
        ctx.session.execute(effects.insert().values(what=f"{payload['n']}"))
        gate.wait()  # hangs until the test releases it
        ctx.session.execute(effects.insert().values(what="late"))
        finished.set()

    @app.subscriber(TOPIC, group="g", types=[TYPE], timeout=AMPLE, inbox=inbox, retry=once)
    def write(payload: dict[str, int], ctx: Context) -> None:
        ctx.session.execute(effects.insert().values(what=f"{payload['n']}"))

    caplog.set_level(logging.WARNING, "tidings.worker")
    async with inbox, app, running(app) as worker:
        for n, type_ in enumerate([HUNG, TYPE]):  # one partition: the second waits
            await app.publish(TOPIC, {"n": n}, type=type_, subject="doc-1")

        def rows() -> list[str]:
            with engine.connect() as conn:
                return sorted(r[0] for r in conn.execute(sa.select(effects.c.what)))

        await eventually(lambda: rows() == ["1"], what="the next event's effect committed")
        assert "still running after 0.3 s; its result will be discarded" in caplog.text
        (entry,) = await dead_letters(app, "g")
        assert entry.error_type == "tidings.errors.HandlerTimeout"
        assert "left running, its result discarded" in entry.error_message
        gate.set()
        await asyncio.to_thread(finished.wait, 30)
        await eventually(lambda: "finished after" in caplog.text, what="the late end logged")
        assert rows() == ["1"]  # neither its first write nor its late one committed
        assert worker.stats.timed_out == 1
    engine.dispose()


async def test_past_max_abandoned_a_timed_out_def_handler_is_waited_for(
    sqlite_url: str, released: tuple[asyncio.Event, threading.Event]
) -> None:
    app = make_app(sqlite_url)
    _, gate = released
    handled: list[int] = []

    @app.subscriber(TOPIC, group="g", types=[HUNG], timeout=0.2, retry=Retry(max_attempts=1))
    def slow(payload: dict[str, int]) -> None:
        gate.wait()
        handled.append(payload["n"])

    @app.subscriber(TOPIC, group="g", types=[TYPE], timeout=AMPLE, retry=Retry(max_attempts=1))
    def fast(payload: dict[str, int]) -> None:
        handled.append(payload["n"])

    middleware = default_middleware(Retry(base_delay=0.01))
    deadline = middleware[-1]
    assert isinstance(deadline, Deadline)
    deadline.max_abandoned = 0
    async with app, running(app, middleware=middleware) as worker:
        for n, type_ in enumerate([HUNG, TYPE]):
            await app.publish(TOPIC, {"n": n}, type=type_, subject="doc-1")
        await eventually(lambda: worker.stats.timed_out == 1, what="the deadline passed")
        assert handled == []  # the lane waits for the thread rather than leave it running
        gate.set()
        await eventually(lambda: handled == [0, 1], what="both handled, in order")
        (entry,) = await dead_letters(app, "g")  # the first still counts as timed out
        assert entry.error_type == "tidings.errors.HandlerTimeout"
        assert worker.stats.timed_out == 1


async def test_a_handler_that_swallows_its_cancellation_has_timed_out_all_the_same(
    sqlite_url: str, released: tuple[asyncio.Event, threading.Event]
) -> None:
    app = make_app(sqlite_url)
    gate, _ = released
    returned: list[int] = []

    @app.subscriber(TOPIC, group="g", timeout=0.2, retry=Retry(max_attempts=1))  # as above
    async def stubborn(payload: dict[str, int]) -> None:
        if payload["n"] == 0:
            with contextlib.suppress(asyncio.CancelledError):
                await gate.wait()
        returned.append(payload["n"])

    async with app, running(app) as worker:
        for n in range(2):
            await app.publish(TOPIC, {"n": n}, type=TYPE, subject="doc-1")
        await eventually(lambda: returned == [0, 1], what="both calls returned")
        await eventually(lambda: worker.stats.handled == 2, what="both finished with")
        (entry,) = await dead_letters(app, "g")
        assert entry.error_type == "tidings.errors.HandlerTimeout"
        assert worker.stats.timed_out == 1


def test_timeout_settings_are_checked(sqlite_url: str) -> None:
    app = make_app(sqlite_url)
    for bad in (0, -1, "30", True):
        with pytest.raises(ConfigError, match="timeout"):
            app.subscriber(TOPIC, group="g", timeout=bad)  # type: ignore[arg-type]
    assert issubclass(HandlerTimeout, TimeoutError)


# -- progress -------------------------------------------------------------------------


async def test_progress_events_arrive_in_order_with_the_handled_event_as_cause(
    sqlite_url: str,
) -> None:
    app = make_app(sqlite_url, partitions=4)
    seen: list[Event] = []

    @app.subscriber(TOPIC, group="agent", types=[TYPE], progress_every=1e-9)
    async def research(payload: dict[str, Any], ctx: Context) -> None:
        for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
            await ctx.progress(fraction, f"step {fraction}")

    @app.subscriber(TOPIC, group="watch", types=[progress_type(TYPE)])
    async def watch(payload: dict[str, Any], ctx: Context) -> None:
        seen.append(ctx.event)

    async with app, running(app):
        asked = await app.publish(TOPIC, {"q": "tides"}, type=TYPE, subject="q-1")
        await eventually(lambda: len(seen) == 5, what="five progress events")
    assert [e.data["fraction"] for e in seen] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [e.data["note"] for e in seen][1] == "step 0.25"
    for event in seen:
        assert event.type == "research.requested.progressed"
        assert event.causationid == asked.id
        assert event.correlationid == asked.correlationid
        assert event.data["of"] == asked.id
        assert event.data["group"] == "agent"
        assert event.subject == "q-1"


async def test_progress_of_a_retried_call_goes_where_its_subscriber_says(sqlite_url: str) -> None:
    app = make_app(sqlite_url)  # one group in the worker: a retry reads the event afresh

    @app.subscriber(TOPIC, group="agent", progress_topic="progress", retry=Retry(base_delay=0.01))
    async def research(payload: Any, ctx: Context) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("the model's API is down")
        await ctx.progress(0.5, "second try")

    async def reports() -> list[Event]:
        with contextlib.suppress(TopicNotFound):
            return [decode(r.value) for r in await app.transport.read("progress", 0, 0, 10)]
        return []

    async with app, running(app):
        asked = await app.publish(TOPIC, {"q": "tides"}, type=TYPE, subject="q-1")
        await eventually(lambda: app.sent.get("progress") == 1, what="the progress published")
    async with app:
        (report,) = await reports()
    assert report.causationid == asked.id
    assert report.data["handler"].endswith("research")


class _Publisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, dict[str, Any]]] = []

    async def publish(self, topic: str, payload: Any, **options: Any) -> Event:
        self.sent.append((topic, payload, options))
        return Tidings("memory://", service="t").build(payload, type=options["type"])


async def test_progress_is_throttled_per_call_and_the_final_report_always_goes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(Context, "clock", staticmethod(lambda: now[0]))
    publisher = _Publisher()
    event = Tidings("memory://", service="t").build({}, type=TYPE, subject="s")
    ctx = Context(publisher, event, topic=TOPIC, partition=0, offset=0, group="g")
    assert await ctx.progress(0.1) is not None  # the first goes
    now[0] += 0.5
    assert await ctx.progress(0.2) is None  # under a second since the last
    now[0] += 0.5
    assert await ctx.progress(0.3, "a third") is not None
    now[0] += 0.1
    assert await ctx.progress(1.0) is not None  # the final one always goes
    assert [p["fraction"] for _, p, _ in publisher.sent] == [0.1, 0.3, 1.0]
    assert {topic for topic, _, _ in publisher.sent} == {TOPIC}
    assert publisher.sent[1][2]["causation_id"] == event.id
    with pytest.raises(ConfigError, match="from 0 to 1"):
        await ctx.progress(1.5)
    throttle = Throttle(2.0)
    assert [throttle.due(0.5, t) for t in (0.0, 1.9, 2.0, 3.0)] == [True, False, True, False]


async def test_no_progress_is_reported_of_a_progress_event() -> None:
    publisher = _Publisher()
    event = Tidings("memory://", service="t").build({}, type=progress_type(TYPE))
    ctx = Context(publisher, event, topic=TOPIC, partition=0, offset=0, group="g")
    assert await ctx.progress(0.5) is None
    assert publisher.sent == []


# -- cancellation -----------------------------------------------------------------------


async def test_a_cancel_stops_the_chain_in_an_opt_in_group_and_not_in_the_others(
    sqlite_url: str, released: tuple[asyncio.Event, threading.Event]
) -> None:
    app = make_app(sqlite_url)
    app.group("agents", cancellable=True)
    gate, _ = released
    started: list[str] = []
    stopped: list[str] = []
    agents: list[str] = []
    others: list[str] = []

    @app.subscriber(TOPIC, group="agents")
    async def research(payload: dict[str, str], ctx: Context) -> None:
        started.append(payload["name"])
        if payload["name"] == "first":
            try:
                await gate.wait()  # an LLM call that takes forever
            except asyncio.CancelledError:
                stopped.append(payload["name"])
                raise
        agents.append(payload["name"])

    @app.subscriber(TOPIC, group="audit")
    async def audit(payload: dict[str, str]) -> None:
        others.append(payload["name"])

    async with app, running(app) as worker:
        first = await app.publish(TOPIC, {"name": "first"}, type=TYPE, subject="k")
        await eventually(lambda: started == ["first"], what="the first call under way")
        cancel = await app.cancel(first.correlationid, reason="the user gave up")
        assert cancel.type == CANCELLED_TYPE
        await eventually(lambda: stopped == ["first"], what="the call under way cancelled")
        chain = first.correlationid
        await app.publish(TOPIC, {"name": "later"}, type=TYPE, subject="k", correlation_id=chain)
        await app.publish(TOPIC, {"name": "other"}, type=TYPE, subject="k")
        await eventually(lambda: agents == ["other"], what="the other chain handled")
        await eventually(lambda: others == ["first", "later", "other"], what="audit saw all")
        assert started == ["first", "other"]  # "later" was skipped, not called
        assert worker.stats.cancelled == 2
        assert worker.stats.failed_attempts == 0
        assert await dead_letters(app, "agents") == []


@pytest.mark.parametrize("kind", ["async def", "def"])
async def test_an_event_waiting_for_its_retry_is_skipped_once_its_chain_is_cancelled(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.setattr("tidings.middleware.cancellation.POLL", 0.02)
    app = make_app(sqlite_url)
    calls: list[str] = []
    # A wait that no test run sees the end of: the cancellation must cut it short.
    retry = Retry(max_attempts=5, base_delay=600.0, max_delay=600.0, jitter=0)

    def fail(payload: dict[str, str]) -> None:
        calls.append(payload["name"])
        raise ConnectionError("the model's API is down")

    async def fail_async(payload: dict[str, str]) -> None:
        fail(payload)

    app.subscriber(TOPIC, group="agents", cancellable=True, retry=retry)(
        fail_async if kind == "async def" else fail
    )
    async with app, running(app) as worker:
        failing = await app.publish(TOPIC, {"name": "failing"}, type=TYPE, subject="k")
        await eventually(lambda: worker.stats.retries == 1, what="a retry waiting")
        await app.cancel(failing.correlationid, reason="no point")
        await eventually(lambda: worker.stats.cancelled == 1, what="the retry skipped", timeout=60)
        assert calls == ["failing"]  # not called again
        assert worker.stats.handled == 1  # skipped: done with, committed
        assert await dead_letters(app, "agents") == []


async def test_a_worker_started_after_a_cancel_still_skips_its_chain(sqlite_url: str) -> None:
    app = make_app(sqlite_url)
    handled: list[str] = []

    @app.subscriber(TOPIC, group="agents", cancellable=True)
    async def research(payload: dict[str, str]) -> None:
        handled.append(payload["name"])

    async with app:
        doomed = await app.publish(TOPIC, {"name": "doomed"}, type=TYPE, subject="k")
        await app.cancel(doomed.correlationid, reason="too late")
        await app.publish(TOPIC, {"name": "kept"}, type=TYPE, subject="k")
        async with running(app) as worker:
            await eventually(lambda: handled == ["kept"], what="the later chain handled")
            assert worker.stats.cancelled == 1


async def test_a_cancel_by_subject_covers_what_was_published_until_then(sqlite_url: str) -> None:
    app = make_app(sqlite_url)
    handled: list[str] = []

    @app.subscriber(TOPIC, group="agents", cancellable=True)
    async def research(payload: dict[str, str]) -> None:
        handled.append(payload["name"])

    async with app:
        await app.publish(TOPIC, {"name": "before"}, type=TYPE, subject="doc-7")
        await app.publish(TOPIC, {"name": "elsewhere"}, type=TYPE, subject="doc-8")
        await app.cancel(subject="doc-7", reason="deleted")
        await app.publish(TOPIC, {"name": "after"}, type=TYPE, subject="doc-7")
        async with running(app) as worker:
            await eventually(lambda: sorted(handled) == ["after", "elsewhere"], what="handled")
            assert worker.stats.cancelled == 1


async def test_cancel_needs_one_target_and_cancellable_needs_the_middleware(
    sqlite_url: str,
) -> None:
    app = make_app(sqlite_url)

    @app.subscriber(TOPIC, group="agents", cancellable=True, timeout=5)
    async def research(payload: Any) -> None: ...

    with pytest.raises(ConfigError, match="not started"):
        await app.cancel("c")
    async with app:
        with pytest.raises(ConfigError, match="correlation_id= or subject="):
            await app.cancel()
        with pytest.raises(ConfigError, match="correlation_id= or subject="):
            await app.cancel("c", subject="s")
    with pytest.raises(ConfigError, match="Deadline"):
        Worker(app, middleware=[Retry()])
    with pytest.raises(ConfigError, match="Cancellation"):
        Worker(app, middleware=[Retry(), Deadline()])


def reporting_app(sqlite_url: str, note: str) -> Tidings:
    """An app whose group ``agent`` reports progress 40% with ``note`` on each request."""
    app = make_app(sqlite_url)

    @app.subscriber(TOPIC, group="agent", types=[TYPE], progress_every=1e-9)
    async def research(payload: Any, ctx: Context) -> None:
        await ctx.progress(0.4, note)

    return app


async def ask_with_progress(app: Tidings) -> Event:
    """Publish a request to the started ``app`` and run a worker until its progress
    event is published; the request."""
    asked = await app.publish(TOPIC, {"q": "tides"}, type=TYPE, subject="q-1")
    async with running(app):
        await eventually(lambda: app.sent.get(TOPIC, 0) == 2, what="the progress event published")
    return asked


async def test_trace_shows_progress_under_its_event_and_the_cancellation(sqlite_url: str) -> None:
    from tidings.cli.trace import tree_lines
    from tidings.trace import Tracer

    app = reporting_app(sqlite_url, "read 12 of 30 passages")
    async with app:
        asked = await ask_with_progress(app)
        await app.cancel(asked.correlationid, reason="enough")
        tracer = Tracer(app.transport, str(asked.correlationid))
        await tracer.refresh()
        found = tracer.trace()
    (request,) = found.roots
    assert request.event.id == asked.id
    assert [n.event.type for n in request.children] == [progress_type(TYPE), CANCELLED_TYPE]
    text = "\n".join(tree_lines(found))
    assert "(progress 40%: read 12 of 30 passages)" in text
    assert f"(cancelled {asked.correlationid}: enough)" in text


def test_the_cancel_command_appends_a_cancellation_workers_learn(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tidings.cli import main
    from tidings.middleware.cancellation import Cancellations

    assert main(["cancel", "req-1", "--reason", "user left", "--url", sqlite_url]) == 0
    assert "cancelled req-1 (event " in capsys.readouterr().out
    assert main(["cancel", "--url", sqlite_url]) == 2  # neither an id nor --subject

    async def learned() -> Any:
        async with make_app(sqlite_url) as app:
            known = Cancellations(app.transport)
            await known.start()
            return known.by_correlation["req-1"]

    cancel = asyncio.run(learned())
    assert (cancel.subject, cancel.reason) == (None, "user left")


async def test_a_cancelled_call_with_an_inbox_commits_nothing_and_the_lane_goes_on(
    sqlite_url: str, tmp_path: Path, released: tuple[asyncio.Event, threading.Event]
) -> None:
    app = make_app(sqlite_url)
    gate, _ = released
    db = f"sqlite:///{tmp_path / 'effects.db'}"
    engine = sa.create_engine(db)
    effects = sa.Table("effects", sa.MetaData(), sa.Column("what", sa.String(64)))
    effects.metadata.create_all(engine)
    inbox = Inbox(db)
    started: list[str] = []

    @app.subscriber(TOPIC, group="agents", inbox=inbox, cancellable=True)
    async def write(payload: dict[str, str], ctx: Context) -> None:
        started.append(payload["name"])
        await ctx.session.execute(effects.insert().values(what=payload["name"]))
        if payload["name"] == "doomed":
            await gate.wait()

    def rows() -> list[str]:
        with engine.connect() as conn:
            return sorted(r[0] for r in conn.execute(sa.select(effects.c.what)))

    async with inbox, app, running(app) as worker:
        await app.publish(TOPIC, {"name": "first"}, type=TYPE, subject="k")
        doomed = await app.publish(TOPIC, {"name": "doomed"}, type=TYPE, subject="k")
        await eventually(lambda: "doomed" in started, what="the doomed call under way")
        await app.cancel(doomed.correlationid)
        await app.publish(TOPIC, {"name": "last"}, type=TYPE, subject="k")
        await eventually(lambda: rows() == ["first", "last"], what="the others committed")
        assert worker.stats.cancelled == 1
    with engine.connect() as conn:
        marks = conn.execute(sa.select(inbox.table.c.event_id)).scalars().all()
    assert doomed.id not in marks
    assert len(marks) == 2
    engine.dispose()


@pytest.mark.integration
async def test_on_nats_a_worker_started_after_a_cancel_skips_its_chain(nats_url: str) -> None:
    app = Tidings(f"{nats_url}&partitions=2", service="agents", schemas="off")
    handled: list[str] = []

    @app.subscriber(TOPIC, group="agents", cancellable=True)
    async def research(payload: dict[str, str]) -> None:
        handled.append(payload["name"])

    async with app:
        doomed = await app.publish(TOPIC, {"name": "doomed"}, type=TYPE, subject="k")
        await app.cancel(doomed.correlationid, reason="too late")
        await app.publish(TOPIC, {"name": "kept"}, type=TYPE, subject="k")
        async with running(app) as worker:
            await eventually(lambda: handled == ["kept"], what="the later chain handled")
            assert worker.stats.cancelled == 1
