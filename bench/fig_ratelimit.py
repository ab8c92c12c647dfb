"""429s from a rate-limited endpoint, with and without the group's rate limit.

A fake endpoint (in-process, no HTTP: the OpenAI-compatible stand-in is another
branch's) admits ``LIMIT`` calls per second, as a token bucket of ``LIMIT`` tokens,
the way providers count requests per minute; a call over it is refused with a 429,
which the handler raises as :class:`tidings.errors.RateLimited` with the endpoint's
``Retry-After``. Each call takes ``CALL_SECONDS``. ``EVENTS`` events on 4 partitions
of a memory log, one worker, the default middleware (Retry: 10 attempts, 0.1 s
doubling):

- ``without``: the group has no limit: the 429s are failed attempts, retried with
  backoff (and dead-lettered once a policy gives up);
- ``with``: ``app.group("agents", rate=LIMIT)``: the calls keep under the endpoint's
  limit;
- ``over``: ``app.group("agents", rate=1.5 * LIMIT)``, a limit set too high: each 429
  pauses the group for its Retry-After and the call is made again, outside the retry
  policy.

Runs alternate (without, with, over) ``ROUNDS`` times; each is bounded by ``TIMEOUT``
seconds. ``python -m bench.fig_ratelimit`` prints every round.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from tidings import Tidings, Worker
from tidings.errors import RateLimited

EVENTS = 60
LIMIT = 10.0  # calls per second the endpoint admits
CALL_SECONDS = 0.02
ROUNDS = 3
TIMEOUT = 120.0  # seconds per run, at most
TOPIC = "prompts"


class Endpoint:
    """Admits ``rate`` calls per second (a bucket of ``rate`` tokens); counts 429s."""

    def __init__(self, rate: float) -> None:
        self.rate, self.tokens, self.at = rate, rate, time.monotonic()
        self.ok = self.refused = 0

    async def call(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            self.refused += 1
            raise RateLimited(retry_after=(1 - self.tokens) / self.rate)
        self.tokens -= 1
        self.ok += 1
        await asyncio.sleep(CALL_SECONDS)


@dataclass
class Run:
    seconds: float
    refused: int
    handled: int
    failed_attempts: int
    dead_lettered: int


async def run(rate: float | None) -> Run:
    app = Tidings("memory://", service="bench")
    app.topic(TOPIC, partitions=4)
    if rate is not None:
        app.group("agents", rate=rate)
    endpoint = Endpoint(LIMIT)

    @app.subscriber(TOPIC, group="agents")
    async def ask(data: Any) -> None:
        await endpoint.call()

    async with app:
        for n in range(EVENTS):
            await app.publish(TOPIC, {"n": n}, type="prompt.sent", key=f"k{n}")
        worker = Worker(app)
        start = time.perf_counter()
        task = asyncio.create_task(worker.run())
        stats = worker.stats
        while stats.handled + stats.dead_lettered < EVENTS:
            if time.perf_counter() - start > TIMEOUT:
                break
            await asyncio.sleep(0.01)
        seconds = time.perf_counter() - start
        worker.stop()
        await task
    return Run(seconds, endpoint.refused, stats.handled, stats.failed_attempts, stats.dead_lettered)


def line(name: str, r: Run) -> str:
    return (
        f"{name}: {r.refused} 429s, {r.handled}/{EVENTS} handled, {r.dead_lettered} dead-lettered,"
        f" {r.failed_attempts} failed attempts, {r.seconds:.1f} s"
    )


async def main() -> None:
    print(f"{EVENTS} events, endpoint {LIMIT:g} calls/s, calls of {CALL_SECONDS * 1000:g} ms")
    for round_ in range(1, ROUNDS + 1):
        for name, rate in (("without", None), ("with", LIMIT), ("over", 1.5 * LIMIT)):
            label = name if rate is None else f"{name} rate={rate:g}"
            print(f"round {round_}: {line(label, await run(rate))}")


if __name__ == "__main__":
    asyncio.run(main())
