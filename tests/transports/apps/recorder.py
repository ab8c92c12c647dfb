"""A worker app that records every event it handles, one line each, for the tests.

Configured by environment variables, read at import (``tidings run`` imports it):

- ``RECORDER_OUT``: folder for the record files (required); each process appends to
  ``handled-<pid>.txt`` with ``O_APPEND`` and unbuffered writes, so a line is on disk
  the moment the handler returns, even if the process is SIGKILLed right after.
- ``RECORDER_GROUPS``: comma-separated groups to subscribe (default ``g1``); pick
  one per process with ``tidings run --group``.
- ``RECORDER_SLEEP``: seconds each handler takes (default 0); ``~0.002`` means a
  random sleep between 0 and 2 ms, so that partitions interleave.
- ``RECORDER_SLOW_SHARE``: the share of events, chosen at random, that sleep at all
  (default 1): a mix of quick and slow handlers.
- ``RECORDER_SYNC``: ``1`` for a plain (threaded) handler instead of an async one.

A line is ``kind group partition offset event_id key seq pid monotonic_ns`` where
``kind`` is ``begin`` (written when the handler starts) or ``done`` (when it ends).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from tidings import Context, Tidings

TOPIC = "proc-events"

_out = os.environ["RECORDER_OUT"]
_fd = os.open(
    os.path.join(_out, f"handled-{os.getpid()}.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
)
_sleep = os.environ.get("RECORDER_SLEEP", "0")
_random = _sleep.startswith("~")
_seconds = float(_sleep.lstrip("~"))
_share = float(os.environ.get("RECORDER_SLOW_SHARE", "1"))

app = Tidings(service="recorder")


def _line(kind: str, payload: Any, ctx: Context) -> None:
    fields = (
        kind,
        ctx.group,
        ctx.partition,
        ctx.offset,
        ctx.event.id,
        payload["key"],
        payload["seq"],
        os.getpid(),
        time.monotonic_ns(),
    )
    os.write(_fd, (" ".join(map(str, fields)) + "\n").encode())


def _delay() -> float:
    if random.random() >= _share:
        return 0.0
    return random.uniform(0, _seconds) if _random else _seconds


async def handle_async(payload: Any, ctx: Context) -> None:
    _line("begin", payload, ctx)
    if delay := _delay():
        await asyncio.sleep(delay)
    _line("done", payload, ctx)


def handle_sync(payload: Any, ctx: Context) -> None:
    _line("begin", payload, ctx)
    if delay := _delay():
        time.sleep(delay)
    _line("done", payload, ctx)


_handler = handle_sync if os.environ.get("RECORDER_SYNC") == "1" else handle_async
for _group in os.environ.get("RECORDER_GROUPS", "g1").split(","):
    app.subscriber(TOPIC, group=_group)(_handler)
