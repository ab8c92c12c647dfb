"""The research pipeline (examples/agents) against its stand-in model API (issue 21):
200 requests, each 3 researcher calls and 1 summariser call of ``latency`` seconds.

Two figures, each run against a fresh SQLite log of 4 partitions:

- **concurrency**: wall time until every request is summarised, with the agent groups
  handling one request at a time per partition (``concurrency=1``) against
  ``concurrency=16``; no rate limit, a stand-in without faults. Ratio: K=1 / K=16.
- **429s**: the stand-in refuses, with a 429, any request past ``limit`` in the last
  second (as a hosted API does); ``concurrency=16``; the 429s it sent with no group
  limit (each 429 is then a failed attempt, retried by the policy) against the
  pipeline's ``rate`` set to ``limit``, model calls per second, which it shares
  between its two agent groups (each a rate in handler calls: a research makes 3
  model calls, a summary 1).

The issue asks for calls of 2 s; ``--latency 2`` does that (the K=1 run then takes
about 400 s); the default, 0.1 s, keeps the run short and the same shape.
``python -m bench.fig_agents [--requests 200] [--latency 0.1] [--limit 40]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path

from examples.agents import demo
from examples.agents.settings import Settings
from examples.agents.standin import Faults, Server

GOOD = [q for q in demo.QUESTIONS if q and "Sargasso" not in q]


async def one_run(
    requests: int, latency: float, concurrency: int, rate: float | None, limit: float | None
) -> tuple[float, dict[str, int], int]:
    """(seconds, outcomes by kind, 429s sent) for ``requests`` through the pipeline."""
    faults = Faults(latency=(latency, latency), limit_per_second=limit, retry_after=1)
    questions = [f"{GOOD[i % len(GOOD)]} (#{i})" for i in range(requests)]
    with tempfile.TemporaryDirectory() as folder, Server(faults) as server:
        settings = Settings(
            base_url=server.url,
            log_url=f"sqlite:///{Path(folder) / 'log.db'}?partitions=4",
            timeout=max(10.0, 20 * latency),
            backoff=0.2,
            progress_every=1.0,
            rate=rate,
            max_calls=None,
            concurrency=concurrency,
        )
        started = time.perf_counter()
        report = await demo.run(
            settings, faults, questions, cancel=None, out=lambda _: None, deadline=1800
        )
        seconds = time.perf_counter() - started
        kinds: dict[str, int] = {}
        for outcome in report.outcomes.values():
            kind = outcome.split(":")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
        return seconds, kinds, server.standin.fault_counts["429"]


async def main(requests: int, latency: float, limit: float) -> None:
    print(f"{requests} requests, 4 model calls each of {latency:g} s, 4 partitions")
    one, kinds1, _ = await one_run(requests, latency, 1, None, None)
    many, kinds16, _ = await one_run(requests, latency, 16, None, None)
    print(f"concurrency=1:  {one:7.1f} s  {kinds1}")
    print(f"concurrency=16: {many:7.1f} s  {kinds16}")
    print(f"ratio (1 / 16): {one / many:.2f}")
    free, kinds_free, refused_free = await one_run(requests, latency, 16, None, limit)
    held, kinds_held, refused_held = await one_run(requests, latency, 16, limit, limit)
    print(f"stand-in limit {limit:g} requests/s, concurrency=16:")
    print(f"  no group limit:        {refused_free:5d} 429s  {free:7.1f} s  {kinds_free}")
    print(f"  rate={limit:g} (shared):    {refused_held:5d} 429s  {held:7.1f} s  {kinds_held}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--limit", type=float, default=40.0)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # every 429 is a warning line: not for this figure
    asyncio.run(main(args.requests, args.latency, args.limit))
