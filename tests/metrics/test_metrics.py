"""tidings.metrics: a real worker on a real SQLite file, scraped; the exposition parsed
with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from tidings import Outbox, Retry, Tidings, Worker
from tidings.metrics import METRICS, WorkerMetrics, asgi_app, serve_metrics
from tidings.middleware import Delivery, Middleware, Next, default_middleware
from tidings.testing import eventually

TOPIC = "t"
GROUPS = ("a", "d")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, of every sample in ``text``."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def lag(found: dict[Any, float], name: str, group: str) -> float:
    """The sum over the partitions of ``group`` on TOPIC of a lag metric."""
    return sum(
        v for (n, labels), v in found.items()
        if n == name and ("group", group) in labels and ("topic", TOPIC) in labels
    )  # fmt: skip


def make_app(path: Path) -> tuple[Tidings, dict[str, list[int]]]:
    """Group "a": async, its first call on n=1 raises once (a retry); "d": plain def."""
    app = Tidings(f"sqlite:///{path}/log.db", service="metrics-test")
    app.topic(TOPIC, partitions=2)
    seen: dict[str, list[int]] = {"a": [], "d": []}
    failed: list[int] = []

    @app.subscriber(TOPIC, group="a", retry=Retry(base_delay=0.01, jitter=0))
    async def handle_a(data: Any) -> None:
        if data["n"] == 1 and not failed:
            failed.append(1)
            raise RuntimeError("once")
        seen["a"].append(data["n"])

    @app.subscriber(TOPIC, group="d")
    def handle_d(data: Any) -> None:
        seen["d"].append(data["n"])

    return app, seen


async def publish(app: Tidings, numbers: range) -> None:
    await app.publish_many(TOPIC, [{"n": n} for n in numbers], type="thing.happened",
                           subject=lambda p: str(p["n"]))  # fmt: skip


async def run_until(worker: Worker, seen: dict[str, list[int]], count: int) -> None:
    """Run ``worker`` until each group has handled ``count`` events and committed."""
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await eventually(
            lambda: all(len(seen[g]) == count for g in GROUPS), what=f"{count} events handled"
        )
    finally:
        stop.set()
        await running


async def test_lag_counters_and_durations_of_a_worker_on_a_sqlite_file(tmp_path: Path) -> None:
    app, seen = make_app(tmp_path)
    worker = Worker(app, commit_interval=0.01)
    # Ages seen from a minute later than the events were appended: a positive age
    # however fast the machine.
    metrics = WorkerMetrics(worker, cache_seconds=0, wall=lambda: time.time() + 60)
    async with app:
        await publish(app, range(10))
        await run_until(worker, seen, 10)
        found = samples((await metrics.exposition()).decode())
        for group in GROUPS:
            assert lag(found, "tidings_consumer_lag_messages", group) == 0
            assert lag(found, "tidings_consumer_lag_seconds", group) == 0
            count = value(found, "messaging_process_duration_seconds_count", group=group)
            assert count == 10, f"{group}: every handled event timed once"
            inf = value(found, "messaging_process_duration_seconds_bucket", group=group, le="+Inf")
            assert inf == 10
            assert value(found, "messaging_process_duration_seconds_sum", group=group) > 0
        assert value(found, "tidings_events_consumed_total") == 20
        assert value(found, "tidings_retries_total") == 1
        assert value(found, "tidings_handler_failures_total") == 1
        assert value(found, "tidings_events_sent_total", topic=TOPIC) == 10
        assert value(found, "tidings_dead_letters", group="a") == 0
        # Each group's lag health, as `tidings groups` rates it: all caught up, OK.
        for group in GROUPS:
            for status, expected in (("OK", 1), ("WARN", 0), ("ERR", 0)):
                assert value(found, "tidings_consumer_group_status", group=group, topic=TOPIC,
                             status=status) == expected  # fmt: skip
        assert value(found, "tidings_events_skipped_total", group="a", topic=TOPIC,
                     reason="retention") == 0  # fmt: skip

        # The worker stopped: what is published now waits, and shows as lag.
        await publish(app, range(10, 13))
        found = samples((await metrics.exposition()).decode())
        for group in GROUPS:
            assert lag(found, "tidings_consumer_lag_messages", group) == 3
            assert lag(found, "tidings_consumer_lag_seconds", group) >= 59
        # It runs again and catches up: no lag.
        await run_until(worker, seen, 13)
        found = samples((await metrics.exposition()).decode())
        for group in GROUPS:
            assert lag(found, "tidings_consumer_lag_messages", group) == 0
            assert lag(found, "tidings_consumer_lag_seconds", group) == 0
            count = value(found, "messaging_process_duration_seconds_count", group=group)
            assert count == 13


async def test_every_exposed_family_is_documented(tmp_path: Path) -> None:
    app, seen = make_app(tmp_path)
    worker = Worker(app, commit_interval=0.01)
    metrics = WorkerMetrics(worker, cache_seconds=0)
    async with app:
        await publish(app, range(2))
        await run_until(worker, seen, 2)
        families = list(text_string_to_metric_families((await metrics.exposition()).decode()))
    exposed = {f.name + ("_total" if f.type == "counter" else "") for f in families}
    assert exposed == set(METRICS)
    for f in families:
        kind, labels, _ = METRICS[f.name + ("_total" if f.type == "counter" else "")]
        assert f.type == kind, f.name
        for s in f.samples:
            assert set(s.labels) - {"le"} == set(labels), s


async def test_the_outbox_and_scheduler_backlogs(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path)
    outbox = Outbox(app, f"sqlite:///{tmp_path}/service.db", topic=TOPIC)
    app.add_component(outbox.relay())
    outbox.create_table()
    with outbox.engine.begin() as conn:  # type: ignore[union-attr]
        for n in range(4):
            outbox.add(conn, {"n": n}, type="thing.happened")
    metrics = WorkerMetrics(Worker(app), cache_seconds=0)  # not run: the rows wait
    async with app:
        await app.publish(TOPIC, {"n": 99}, type="thing.happened", delay=3600)
        found = samples((await metrics.exposition()).decode())
    assert value(found, "tidings_outbox_backlog", table="tidings_outbox") == 4
    assert value(found, "tidings_outbox_oldest_age_seconds", table="tidings_outbox") >= 0
    assert value(found, "tidings_scheduler_backlog") == 1
    assert value(found, "tidings_metrics_read_errors") == 0


async def test_a_scrape_storm_reads_the_log_once_per_cache_period(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path)
    now = [100.0]
    metrics = WorkerMetrics(Worker(app), cache_seconds=5, clock=lambda: now[0])
    assert (await metrics.refresh()).lag == ()
    assert metrics.readings == 0, "the app is not started: nothing to read"
    async with app:
        texts = await asyncio.gather(*(metrics.exposition() for _ in range(20)))
        assert metrics.readings == 1
        # The worker never ran: the scheduler's relay has not made its table yet, and
        # that reads as nothing waiting, not as an error.
        found = samples(texts[0].decode())
        assert value(found, "tidings_scheduler_backlog") == 0
        assert value(found, "tidings_metrics_read_errors") == 0
        now[0] += 4.9
        await metrics.exposition()
        assert metrics.readings == 1
        now[0] += 0.2
        await metrics.exposition()
        assert metrics.readings == 2


async def test_the_asgi_app_mounted_in_fastapi_and_the_http_endpoint(tmp_path: Path) -> None:
    app, seen = make_app(tmp_path)
    worker = Worker(app, commit_interval=0.01)
    metrics = WorkerMetrics(worker, cache_seconds=0)
    api = FastAPI()
    api.mount("/metrics", asgi_app(metrics))
    async with app:
        await publish(app, range(3))
        await run_until(worker, seen, 3)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t")
        async with client:
            response = await client.get("/metrics/")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert value(samples(response.text), "tidings_events_consumed_total") == 6
        server = await serve_metrics(metrics, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                scraped = await http.get("/metrics")
                other = await http.get("/")
        finally:
            server.close()
            await server.wait_closed()
    assert scraped.status_code == 200
    assert value(samples(scraped.text), "tidings_events_consumed_total") == 6
    assert other.status_code == 404


class Around(Middleware):
    """Acts around every call (not only on errors): events go one at a time through
    their chains, not in runs."""

    async def handle(self, delivery: Delivery, call_next: Next) -> None:
        await call_next(delivery)


async def test_events_handled_one_at_a_time_are_timed_too(tmp_path: Path) -> None:
    app, seen = make_app(tmp_path)
    worker = Worker(app, commit_interval=0.01, middleware=[Around(), *default_middleware()])
    metrics = WorkerMetrics(worker, cache_seconds=0)
    async with app:
        await publish(app, range(5))
        await run_until(worker, seen, 5)
        found = samples((await metrics.exposition()).decode())
    for group in GROUPS:
        assert value(found, "messaging_process_duration_seconds_count", group=group) == 5
    assert value(found, "tidings_retries_total") == 1


async def test_each_call_of_a_run_is_timed_in_its_own_bucket() -> None:
    """Runs read the clock once per event and count their times at the run's end: one
    slow call among quick ones is still above its bucket bound, not averaged into its
    neighbours', in a run on the loop (async) and in a thread (def)."""
    app = Tidings("memory://", service="metrics-test")
    app.topic(TOPIC, partitions=1)
    seen: dict[str, list[int]] = {"a": [], "d": []}
    slow = 0.06  # above the 0.05 bound; the other calls are immediate

    @app.subscriber(TOPIC, group="a")
    async def handle_a(data: Any) -> None:
        if data["n"] == 3:
            await asyncio.sleep(slow)
        seen["a"].append(data["n"])

    @app.subscriber(TOPIC, group="d")
    def handle_d(data: Any) -> None:
        if data["n"] == 3:
            time.sleep(slow)
        seen["d"].append(data["n"])

    worker = Worker(app, commit_interval=0.01)
    durations = worker.time_handlers()
    async with app:
        await publish(app, range(10))
        await run_until(worker, seen, 10)
    for group in GROUPS:
        histogram = dict(durations[group].cumulative())
        assert histogram[float("inf")] == 10, f"{group}: every call once"
        assert histogram[0.05] <= 9, f"{group}: the slow call above 0.05 s"
        assert durations[group].sum >= slow
    assert worker.stats.handled == 20


async def test_the_group_status_on_a_log_that_keeps_no_lag_samples() -> None:
    """The memory log keeps no samples: the worker's metrics keep them, one a reading,
    and rate the group from its first one (too few to judge: OK, as tidings groups)."""
    app = Tidings("memory://", service="metrics-test")
    seen: list[int] = []
    app.subscriber(TOPIC, group="a")(lambda data: seen.append(data["n"]))
    worker = Worker(app, commit_interval=0.01)
    metrics = WorkerMetrics(worker, cache_seconds=0)
    async with app:
        await app.publish(TOPIC, {"n": 1}, type="thing.happened")
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        try:
            await eventually(lambda: seen == [1])
            await eventually(lambda: worker.stats.handled == 1)
            for _ in range(2):
                found = samples((await metrics.exposition()).decode())
        finally:
            stop.set()
            await running
    assert len(metrics.windows.samples()) >= 1  # kept across readings
    assert value(found, "tidings_consumer_group_status", group="a", topic=TOPIC, status="OK") == 1
    assert value(found, "tidings_consumer_group_status", group="a", topic=TOPIC, status="ERR") == 0
