"""What lag sampling adds to a SQLite member's heartbeat (decision 0025).

``python -m bench.fig_lag_samples``: one member holding every partition of a topic
(8, then 64) heartbeats in blocks, alternately with the sampling statement and with it
replaced by a no-op, in the same process and run; prints the median time per heartbeat
of each and their ratio. The commit path does not sample, so ``bench.bench_sqlite
--only e2e`` shows no change by construction; this is where the cost is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from typing import Any
from unittest import mock

import tidings.transports.sqlite.consumer as member_module
from tidings.transports.sqlite import SQLiteTransport

BEATS = 100  # heartbeats per block
BLOCKS = 6  # blocks per mode, alternating which goes first


def _skip(*_: Any) -> None:
    return None


def _sampling(on: bool) -> contextlib.AbstractContextManager[object]:
    """The heartbeat as it is, or with its sampling statement replaced by a no-op."""
    if on:
        return contextlib.nullcontext()
    return mock.patch.object(member_module, "record_samples", _skip)


async def measure(partitions: int) -> dict[str, list[float]]:
    """Microseconds per heartbeat, per block, with and without sampling."""
    folder = tempfile.mkdtemp(prefix="tidings-bench-")
    t = SQLiteTransport(f"sqlite:///{folder}/events.db?partitions={partitions}&lease=3600")
    await t.start()
    out: dict[str, list[float]] = {"with": [], "without": []}
    try:
        await t.create_topic("t", partitions)
        await t.append("t", [(f"k{i}", b"v") for i in range(partitions * 20)])
        member = t.consumer("g", ["t"])
        await member.start()
        for block in range(BLOCKS):
            for mode in ("with", "without") if block % 2 == 0 else ("without", "with"):
                with _sampling(mode == "with"):
                    start = time.perf_counter()
                    for _ in range(BEATS):
                        await member._heartbeat()  # type: ignore[attr-defined]
                    out[mode].append((time.perf_counter() - start) / BEATS * 1e6)
        await member.close()
    finally:
        await t.close()
    return out


def main() -> int:
    for partitions in (8, 64):
        res = asyncio.run(measure(partitions))
        with_, without = statistics.median(res["with"]), statistics.median(res["without"])
        print(
            f"{partitions} partitions held: heartbeat {without:.0f} us without sampling, "
            f"{with_:.0f} us with (ratio {with_ / without:.2f}); per block with "
            f"{[round(x) for x in res['with']]}, without {[round(x) for x in res['without']]};"
            f" load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
