"""A worker of the counting projection that SIGKILLs itself at a chosen point:
``python -m tests.projections.child LOG DB MODE K``.

- ``in-handler``: inside the K-th event's transaction, after its handler wrote (the
  write and the position not committed);
- ``after-commit``: right after the K-th event's transaction committed (its write and
  position committed, its offset not).

It gives up after 120 s (exit 3) if it was never killed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from typing import Any

from tests.projections.helpers import board_app
from tidings import Context, Worker


def main(log: str, db: str, mode: str, k: int) -> int:
    board = board_app(log, db)
    projection = board.projection
    calls = 0

    def kill_at_k() -> None:
        nonlocal calls
        calls += 1
        if calls == k:
            os.kill(os.getpid(), signal.SIGKILL)

    if mode == "in-handler":

        def killer(payload: Any, ctx: Context) -> None:  # after the counting handler
            kill_at_k()

        projection.handlers["task.created"].append(killer)
    else:
        subs = board.app.subscribers
        (i, sub) = next((i, s) for i, s in enumerate(subs) if s.group == projection.name)

        def applied_then_killed(payload: Any, ctx: Context) -> None:
            sub.handler(payload, ctx)  # the projection's transaction, committed
            kill_at_k()

        subs[i] = dataclasses.replace(sub, handler=applied_then_killed)

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(120, stop.set)
        await Worker(board.app, commit_interval=0.5).serve(stop)

    asyncio.run(serve())
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
