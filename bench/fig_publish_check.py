"""Decision 0052: the CPU cost of publishing a plain value of a registered type, now
validated by its model and written as the model's JSON form, against a model instance
(which must cost what it did) and a type without a model.

    .venv/bin/python bench/fig_publish_check.py [--events N] [--rounds R] [--only CASE]

Prints one JSON line: microseconds of CPU time (``time.process_time``) per event, the
median of R rounds, for ``build`` + ``encode`` and for ``await app.publish`` on
``memory://``. It imports whichever ``tidings`` comes first on the path, so that the
tree before a change can be measured with ``PYTHONPATH=<that tree>``, taking turns.
``--only`` runs one case (for ``perf stat -e instructions:u``: run it with N and 2N
events; the difference over N is the instructions per event, start-up left out).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

import tidings
from tidings import Tidings
from tidings.codec import encode

TOPIC = "ticks"


class Ticked(BaseModel):
    task_id: str
    seq: int
    status: str
    note: str


def _payload(n: int) -> dict[str, Any]:
    """bench._common.payload: about 300 bytes of JSON."""
    return {"task_id": f"task-{n:08d}", "seq": n, "status": "open", "note": "x" * 240}


def _per_event_us(run: Callable[[], object], events: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.process_time()
        run()
        times.append((time.process_time() - start) / events * 1e6)
    return round(statistics.median(times), 3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", default="")
    args = parser.parse_args(argv)
    n, rounds = args.events, args.rounds
    app = Tidings("memory://", service="bench")
    app.event("bench.ticked")(Ticked)
    dicts = [_payload(i) for i in range(n)]
    models = [Ticked(**d) for d in dicts]
    has_check = "check" in inspect.signature(app.build).parameters
    build, limit = app.build, app.max_event_bytes

    def coded(payloads: list[Any], **options: Any) -> Callable[[], object]:
        return lambda: [encode(build(p, **options), limit) for p in payloads]

    cases: dict[str, Callable[[], object]] = {
        "build+encode model": coded(models),
        "build+encode dict registered": coded(dicts, type="bench.ticked"),
        "build+encode dict unregistered": coded(dicts, type="bench.noted"),
    }
    if has_check:
        cases["build+encode dict check=False"] = coded(dicts, type="bench.ticked", check=False)
    out: dict[str, Any] = {"tidings": tidings.__file__, "events": n, "rounds": rounds}
    for name, run in cases.items():
        if args.only in ("", name):
            out[name] = _per_event_us(run, n, rounds)
    out.update(asyncio.run(_publish(app, models, dicts, rounds, args.only)))
    print(json.dumps(out))


async def _publish(
    app: Tidings, models: list[Ticked], dicts: list[dict[str, Any]], rounds: int, only: str
) -> dict[str, float]:
    """``await app.publish`` one event at a time (the memory log keeps them all)."""
    out: dict[str, float] = {}
    cases: list[tuple[str, list[Any], dict[str, Any]]] = [
        ("publish model", models, {}),
        ("publish dict registered", dicts, {"type": "bench.ticked"}),
    ]
    async with app:
        for name, payloads, options in cases:
            if only not in ("", name):
                continue
            times = []
            for _ in range(rounds):
                start = time.process_time()
                for p in payloads:
                    await app.publish(TOPIC, p, **options)
                times.append((time.process_time() - start) / len(payloads) * 1e6)
            out[name] = round(statistics.median(times), 3)
    return out


if __name__ == "__main__":
    main()
