"""Middleware: what happens around every handler call, written once for every transport.

A worker runs each handler call through a list of middleware, outermost first. The
default list is :func:`default_middleware`; pass your own to ``Worker(middleware=...)``,
e.g. ``[*default_middleware(), Timed()]``.
"""

from __future__ import annotations

from tidings.errors import RetriesExhausted
from tidings.middleware.base import Delivery, Middleware, Next, Stats, compose
from tidings.middleware.cancellation import Cancellation
from tidings.middleware.dead_letters import DeadLetters
from tidings.middleware.deadline import Deadline
from tidings.middleware.inbox import InboxMiddleware
from tidings.middleware.rate import RateLimit
from tidings.middleware.retry import Retry

__all__ = [
    "Cancellation",
    "DeadLetters",
    "Deadline",
    "Delivery",
    "InboxMiddleware",
    "Middleware",
    "Next",
    "RateLimit",
    "RetriesExhausted",
    "Retry",
    "Stats",
    "compose",
    "default_middleware",
]


def default_middleware(retry: Retry | None = None) -> list[Middleware]:
    """Failing handlers retried in place (``retry``, default :class:`Retry`), then
    dead-lettered with bad payloads; cancelled chains' calls stopped and their events
    skipped (subscribers that opt in); handlers with an inbox deduplicated inside;
    calls past their subscriber's ``timeout=`` failed, innermost."""
    return [DeadLetters(), retry or Retry(), Cancellation(), InboxMiddleware(), Deadline()]
