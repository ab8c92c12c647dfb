"""Rate limits per group (``app.group(..., rate=, max_calls=)``): the token bucket by an
injected clock, the 429 pause, the concurrency limit, a worker's share of a group's
limits, and the limit held by two worker processes on one SQLite log."""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tidings import ConfigError, Tidings, Worker
from tidings.errors import RateLimited, TransportError
from tidings.middleware import Retry, default_middleware
from tidings.middleware.rate import DEFAULT_RETRY_AFTER, Bucket, RateLimit, retry_after
from tidings.subscriber import GroupSettings
from tidings.testing import eventually, running
from tidings.transport import GroupInfo, MemberInfo
from tidings.worker.slow import rate_limits, with_rate_limit

TOPIC = "calls"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def calls_in(bucket: Bucket, clock: FakeClock, seconds: float) -> list[float]:
    """The times at which back-to-back callers get their tokens over ``seconds``."""
    end, times = clock.now + seconds, []
    while True:
        clock.now += bucket.reserve()
        if clock.now >= end:
            return times
        times.append(clock.now)


def test_bucket_gives_its_rate_after_a_burst_of_its_capacity() -> None:
    clock = FakeClock()
    start = clock.now
    times = calls_in(Bucket(5.0, clock=clock), clock, 12.0)
    assert len([t for t in times if t == start]) == 5, "a burst of max(1, rate) tokens"
    steady = [t for t in times if start + 2 <= t < start + 12]
    assert abs(len(steady) - 50) <= 5, f"{len(steady)} calls in 10 s at 5/s"
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(steady)}
    assert gaps == {0.2}


def test_bucket_below_one_call_per_second_has_a_burst_of_one() -> None:
    clock = FakeClock()
    bucket = Bucket(0.5, clock=clock)
    assert bucket.reserve() == 0
    assert bucket.reserve() == pytest.approx(2.0)


def test_a_paused_bucket_gives_no_token_then_no_burst() -> None:
    clock = FakeClock()
    bucket = Bucket(4.0, clock=clock)
    bucket.pause(3.0)
    assert bucket.reserve() == pytest.approx(3.0)
    assert bucket.reserve() == pytest.approx(3.25), "the rate after the pause, no burst"


def test_a_slower_rate_spaces_the_tokens_out() -> None:
    clock = FakeClock()
    bucket = Bucket(10.0, capacity=1, clock=clock)
    bucket.reserve()
    bucket.set_rate(5.0, capacity=1)
    clock.now += 0.1
    assert bucket.reserve() == pytest.approx(0.0)
    assert bucket.reserve() == pytest.approx(0.2)


def response(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, request=httpx.Request("POST", "http://x/"))


def test_retry_after_reads_rate_limited_and_429_responses() -> None:
    assert retry_after(RateLimited(2.5)) == 2.5
    assert retry_after(ValueError("no")) is None
    bad = httpx.HTTPStatusError("429", request=httpx.Request("GET", "http://x/"), response=None)  # type: ignore[arg-type]
    assert retry_after(bad) is None
    too_many = response(429, **{"Retry-After": "3"})
    assert retry_after(httpx.HTTPStatusError("", request=too_many.request, response=too_many)) == 3
    server = response(500, **{"Retry-After": "3"})
    assert retry_after(httpx.HTTPStatusError("", request=server.request, response=server)) is None
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    dated = response(429, **{"Retry-After": when})
    seconds = retry_after(httpx.HTTPStatusError("429", request=dated.request, response=dated))
    assert seconds is not None
    assert 25 < seconds <= 30
    bare = response(429)
    assert retry_after(httpx.HTTPStatusError("429", request=bare.request, response=bare)) == (
        DEFAULT_RETRY_AFTER
    )


def test_retry_after_reads_openais_rate_limit_error() -> None:
    openai = pytest.importorskip("openai")
    http = sys.modules.get("httpx2", httpx)  # the HTTP client this openai is built on
    reply = http.Response(
        429, headers={"retry-after": "7"}, request=http.Request("POST", "http://127.0.0.1/")
    )
    assert retry_after(openai.RateLimitError("slow down", response=reply, body=None)) == 7


@pytest.mark.parametrize(
    "settings",
    [{"rate": 0}, {"rate": -1.0}, {"rate": "5"}, {"rate": True}, {"max_calls": 0},
     {"max_calls": 1.5}, {"max_calls": True}],
)  # fmt: skip
def test_bad_limits_are_config_errors(settings: dict[str, Any]) -> None:
    app = Tidings("memory://", service="s")
    with pytest.raises(ConfigError, match=r"group (rate|max_calls)"):
        app.group("agents", **settings)


async def test_a_workers_share_of_the_limits_follows_the_members() -> None:
    limit = RateLimit("agents", GroupSettings(rate=6.0, max_calls=4))
    await limit.share(3)
    assert limit.bucket is not None
    assert limit.bucket.rate == pytest.approx(2.0)
    assert limit.most_calls == 1
    await limit.share(0)  # no member holds partitions (yet): the whole limit
    assert limit.bucket.rate == pytest.approx(6.0)
    assert limit.most_calls == 4
    await limit.share(8)
    assert limit.most_calls == 1, "at least one call at once"


def limited_app(url: str = "memory://", **limits: Any) -> Tidings:
    app = Tidings(url, service="rate-test")
    app.topic(TOPIC, partitions=4)
    app.group("agents", **limits)
    return app


async def publish(app: Tidings, count: int) -> None:
    for n in range(count):
        await app.publish(TOPIC, {"n": n}, type="call.made", key=f"k{n}")


async def test_max_calls_bounds_the_calls_under_way_across_partitions() -> None:
    app = limited_app(max_calls=2)
    running, most, done = 0, 0, []
    two = asyncio.Event()  # the first calls wait until two are under way at once

    @app.subscriber(TOPIC, group="agents")
    async def call(data: Any) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        if running == 2:
            two.set()
        await two.wait()
        await asyncio.sleep(0.02)
        running -= 1
        done.append(data["n"])

    async with app:
        await publish(app, 20)
        worker = Worker(app)
        task = asyncio.create_task(worker.run())
        await eventually(lambda: len(done) == 20, what="every event handled")
        worker.stop()
        await task
    assert most == 2, "four partitions, two calls at once"


async def test_a_429_pauses_the_group_then_the_call_is_made_again_uncounted() -> None:
    app = limited_app(rate=50.0)
    calls: list[float] = []

    @app.subscriber(TOPIC, group="agents")
    async def call(data: Any) -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RateLimited(retry_after=0.3)

    async with app:
        await publish(app, 1)
        worker = Worker(app)
        task = asyncio.create_task(worker.run())
        await eventually(lambda: worker.stats.handled == 1, what="the event handled")
        worker.stop()
        await task
    assert len(calls) == 2
    assert calls[1] - calls[0] >= 0.3, "the call waited for Retry-After"
    assert worker.stats.rate_limited == 1
    assert worker.stats.failed_attempts == 0, "a 429 is not a failed attempt"
    assert worker.stats.retries == 0


async def test_a_worker_holds_its_groups_rate() -> None:
    app = limited_app(rate=20.0)
    times: list[float] = []

    @app.subscriber(TOPIC, group="agents")
    async def call(data: Any) -> None:
        times.append(time.monotonic())

    async with app:
        await publish(app, 120)
        worker = Worker(app)
        task = asyncio.create_task(worker.run())
        await eventually(lambda: len(times) >= 100, timeout=30, what="100 calls")
        worker.stop()
        await task
    steady = [t for t in times if times[0] + 1 <= t < times[0] + 4]  # after the burst
    assert abs(len(steady) - 60) <= 6, f"{len(steady)} calls in 3 s at 20/s"


async def test_groups_without_limits_have_no_rate_limit_in_their_chains() -> None:
    app = limited_app(rate=5.0)

    @app.subscriber(TOPIC, group="agents")
    async def call(data: Any) -> None: ...

    @app.subscriber(TOPIC, group="plain")
    async def other(data: Any) -> None: ...

    limits = rate_limits(app, ["agents", "plain"])
    assert set(limits) == {"agents"}
    chain = with_rate_limit(default_middleware(), limits["agents"])
    assert isinstance(chain[chain.index(limits["agents"]) - 1], Retry), "just inside Retry"
    plain = default_middleware()
    assert with_rate_limit(plain, limits.get("plain")) == plain


WORKER = """
import asyncio, sys, time
from tidings import Tidings, Worker
from tidings.middleware import rate

rate.REFRESH_SECONDS = 0.5
app = Tidings(sys.argv[1], service="rate-test")
app.topic("calls", partitions=4)
app.group("agents", rate=float(sys.argv[3]))
out = open(sys.argv[2], "a", buffering=1)

@app.subscriber("calls", group="agents")
async def call(data):
    out.write(f"{time.time()}\\n")

asyncio.run(Worker(app).serve())
"""


def start_worker(script: Path, url: str, calls: Path, rate: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    command = [sys.executable, str(script), url, str(calls), str(rate)]
    return subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)


def call_times(path: Path) -> list[float]:
    text = path.read_text() if path.exists() else ""
    return [float(line) for line in text.splitlines() if line.endswith(tuple("0123456789"))]


async def test_two_worker_processes_share_the_groups_rate(tmp_path: Path) -> None:
    rate, window = 20.0, 6.0
    url = f"sqlite:///{tmp_path}/log.db"
    app = limited_app(url, rate=rate)
    async with app:
        await publish(app, 600)  # a backlog for 30 s at the limit: the window never runs dry
    (tmp_path / "worker.py").write_text(WORKER)
    files = [tmp_path / "a.calls", tmp_path / "b.calls"]
    procs = [start_worker(tmp_path / "worker.py", url, f, rate) for f in files]
    try:
        await eventually(lambda: all(call_times(f) for f in files), timeout=60, what="both call")
        both = max(call_times(f)[0] for f in files)
        # Past start-up (the burst, the rebalance, the first reading of the members).
        start, end = both + 2.0, both + 2.0 + window
        await eventually(
            lambda: all(call_times(f)[-1] >= end for f in files), timeout=60, what="the window"
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
    per_process = [sum(start <= t < end for t in call_times(f)) for f in files]
    measured = sum(per_process) / window
    assert abs(measured - rate) <= rate * 0.1, f"{measured:.1f}/s, limit {rate}: {per_process}"
    assert min(per_process) > 0, "both processes took part"


class Members:
    """A transport's groups(), as RateLimit.follow reads it: scripted answers."""

    def __init__(self, *answers: list[GroupInfo] | Exception) -> None:
        self.answers = list(answers)
        self.read = asyncio.Event()

    async def groups(self) -> list[GroupInfo]:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        self.read.set()
        if isinstance(answer, Exception):
            raise answer
        return answer


def group_of(*partitions: int) -> list[GroupInfo]:
    """Group "agents" with a member per entry, holding that many partitions."""
    members = tuple(
        MemberInfo(f"m{i}", "host", i, tuple((TOPIC, p) for p in range(n)))
        for i, n in enumerate(partitions)
    )
    return [GroupInfo("other", (), (MemberInfo("x", "h", 1, ((TOPIC, 0),)),)),
            GroupInfo("agents", (), members)]  # fmt: skip


async def test_follow_shares_among_the_members_holding_partitions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limit = RateLimit("agents", GroupSettings(rate=8.0, max_calls=4))
    transport = Members(group_of(2, 2, 0), TransportError("log gone"), TransportError("again"))
    stop = asyncio.Event()
    following = asyncio.create_task(limit.follow(transport, stop, every=0.001))  # type: ignore[arg-type]
    await eventually(lambda: len(transport.answers) == 1, what="three readings")
    await eventually(lambda: "cannot read its members" in caplog.text, what="the warning")
    stop.set()
    await following
    assert limit.members == 2, "the member without partitions makes no calls: not counted"
    assert limit.bucket is not None
    assert limit.bucket.rate == pytest.approx(4.0), "kept through the failed readings"
    assert limit.most_calls == 2
    assert caplog.text.count("cannot read its members") == 1, "once per outage"


async def test_a_call_waiting_for_a_token_at_shutdown_is_left_for_the_next_worker() -> None:
    app = limited_app(rate=0.01)  # a token every 100 s: the second call waits for it
    seen: list[int] = []

    @app.subscriber(TOPIC, group="agents")
    async def call(data: Any) -> None:
        seen.append(data["n"])

    async with app:
        for n in range(2):
            await app.publish(TOPIC, {"n": n}, type="call.made", key="same")
        worker = Worker(app, shutdown_timeout=120)
        task = asyncio.create_task(worker.run())
        await eventually(lambda: seen == [0], what="the first call, on the burst token")
        worker.stop()
        await asyncio.wait_for(task, 30)  # the wait for the token ends with the worker
        assert worker.stats.handled == 1
        app.group("agents", rate=1000.0)
        async with running(app):
            await eventually(lambda: seen == [0, 1], what="the second event, uncommitted")
