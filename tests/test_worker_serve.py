"""``Worker.serve``: the one call that runs a worker in-process as ``tidings run`` does
(start the app, optionally tune the collector, stop on a signal or an event)."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tidings import ConfigError, Tidings, TransportError, Worker
from tidings.testing import eventually
from tidings.worker import worker as worker_module

TOPIC = "task-events"


def make_app() -> tuple[Tidings, list[Any]]:
    app = Tidings("memory://", service="serve-test")
    handled: list[Any] = []

    @app.subscriber(TOPIC, group="g")
    async def handle(data: Any) -> None:
        handled.append(data)

    return app, handled


@pytest.fixture
def tuned(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the calls serve makes to tune_gc, without tuning this test process."""
    calls: list[int] = []

    def fake_tune_gc() -> tuple[int, int, int]:
        calls.append(1)
        return gc.get_threshold()

    monkeypatch.setattr(worker_module, "_tune_gc", fake_tune_gc)
    return calls


async def test_serve_starts_the_app_runs_until_stop_and_closes_it(tuned: list[int]) -> None:
    app, handled = make_app()
    sigterm = signal.getsignal(signal.SIGTERM)
    worker = Worker(app, commit_interval=0.01)
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop))
    await eventually(lambda: worker.ready.is_set(), what="the group joined")
    assert signal.getsignal(signal.SIGTERM) == sigterm, "a given stop: no signal handler"
    await app.publish(TOPIC, {"n": 1}, type="thing.happened")  # the app is started
    await eventually(lambda: handled == [{"n": 1}], what="the event handled")
    stop.set()
    await serving
    assert worker.stats.handled == 1
    assert tuned == [], "the collector is left alone unless asked"
    with pytest.raises(ConfigError, match="not started"):  # serve closed the app
        await app.publish(TOPIC, {"n": 2}, type="thing.happened")


async def test_serve_inside_a_started_app_leaves_it_started(tuned: list[int]) -> None:
    app, handled = make_app()
    async with app:  # e.g. a FastAPI lifespan, with the worker beside the API
        stop = asyncio.Event()
        worker = Worker(app)
        serving = asyncio.create_task(worker.serve(stop))
        await app.publish(TOPIC, {"n": 1}, type="thing.happened")
        await eventually(lambda: handled == [{"n": 1}], what="the event handled")
        stop.set()
        await serving
        await app.publish(TOPIC, {"n": 2}, type="thing.happened")  # still started


async def test_serve_tunes_the_collector_when_asked(tuned: list[int]) -> None:
    app, _ = make_app()
    stop = asyncio.Event()
    stop.set()  # stops as soon as it runs
    await Worker(app).serve(stop, tune_gc=True)
    assert tuned == [1]


async def test_serve_without_stop_stops_on_sigint_and_removes_its_handlers(
    tuned: list[int],
) -> None:
    app, handled = make_app()
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    worker = Worker(app)
    serving = asyncio.create_task(worker.serve())
    await eventually(lambda: worker.ready.is_set(), what="the group joined")
    for sig, handler in before.items():
        assert signal.getsignal(sig) != handler, f"no handler for {sig.name}"
    await app.publish(TOPIC, {"n": 1}, type="thing.happened")
    await eventually(lambda: handled == [{"n": 1}], what="the event handled")
    signal.raise_signal(signal.SIGINT)  # handled by serve's handler: no KeyboardInterrupt
    await asyncio.wait_for(serving, 30)
    assert {sig: signal.getsignal(sig) for sig in before} == before


async def test_serve_without_stop_off_the_main_thread_says_to_pass_stop() -> None:
    app, _ = make_app()
    started: list[bool] = []
    real_start = app.start

    async def start() -> None:
        started.append(True)
        await real_start()

    app.start = start  # type: ignore[method-assign]
    result: list[BaseException] = []

    def in_a_thread() -> None:
        try:
            asyncio.run(Worker(app).serve())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    await asyncio.to_thread(thread.join, 30)
    [error] = result
    assert isinstance(error, ConfigError)
    assert "pass stop=asyncio.Event()" in str(error)
    assert started == [], "refused before the app started"


async def test_serve_removes_its_signal_handlers_when_the_app_fails_to_start(
    tuned: list[int],
) -> None:
    app, _ = make_app()
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    async def failing_start() -> None:
        raise TransportError("the log is not there")

    app.transport.start = failing_start  # type: ignore[method-assign]
    with pytest.raises(TransportError, match="not there"):
        await Worker(app).serve()
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert tuned == []


def test_tidings_run_serves_with_a_tuned_collector_and_stops_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "gc_app.py").write_text(
        "import gc\n"
        "from tidings import Tidings\n"
        f"app = Tidings('sqlite:///{tmp_path}/log.db', service='s')\n"
        "@app.subscriber('t', group='g')\n"
        "async def h(data):\n"
        "    print('threshold', gc.get_threshold()[0], flush=True)\n"
    )
    publish = subprocess.run(
        [sys.executable, "-m", "tidings", "publish", "t", "thing.happened", "--data", "1",
         "--create", "--url", f"sqlite:///{tmp_path}/log.db"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert publish.returncode == 0, publish.stderr
    env = {k: v for k, v in os.environ.items() if k != "TIDINGS_URL"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidings", "run", "gc_app:app"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == f"threshold {worker_module.YOUNG_COLLECTION_EVERY}\n"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "running group(s) g of s on sqlite:///" in err
    assert "stopped: 1 handled, 0 failed attempts" in err
