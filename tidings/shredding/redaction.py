"""Personal values cut out of what a handler raises (decision 0038): a handler given
personal fields in clear may put one into an exception's message, which the worker then
logs and keeps in a dead letter. :func:`redact` replaces each of those values in the
exception (its arguments, notes, an ``OSError``'s file names, and the exceptions it was
raised from) with :data:`~tidings.shredding.MASK` before any middleware sees it: the
worker calls a handler it gives clear values through :func:`guarded`, or, in a run
(where a wrapper per call would cost a coroutine per event), redacts what the run's
call raised before its chain sees it (``tidings.worker.personal``).

What it cannot reach: an exception whose ``__str__`` builds its text from something
other than its arguments, values that are not strings (or shorter than
:data:`MIN_LENGTH`), and what a handler logs itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tidings.shredding.fields import ERASED, MASK, sealed_values

__all__ = ["MIN_LENGTH", "clear_values", "guarded", "redact"]

MIN_LENGTH = 3
"""Shorter values are left in messages: cutting every "a" out of a text hides nothing."""
_CHAIN = 10  # exceptions followed through __cause__ / __context__ at most


def clear_values(sealed: Any, opened: Any) -> list[str]:
    """The strings of ``opened`` where ``sealed`` (the same data) holds a sealed field,
    longest first."""
    found: set[str] = set()
    for value in sealed_values(sealed, opened):
        _strings(value, found)
    found -= {MASK, ERASED}
    return sorted((v for v in found if len(v) >= MIN_LENGTH), key=len, reverse=True)


def _strings(value: Any, found: set[str]) -> None:
    if isinstance(value, str):
        found.add(value)
    elif isinstance(value, dict):
        for v in value.values():
            _strings(v, found)
    elif isinstance(value, list):
        for v in value:
            _strings(v, found)


def redact(exc: BaseException, values: list[str]) -> None:
    """Replace each of ``values`` in ``exc`` (and the exceptions it came from) with
    :data:`MASK`, in place: its type, and so how it is retried, stays."""
    if not values:
        return
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < _CHAIN:
        seen.add(id(current))
        current.args = tuple(_cut(a, values) for a in current.args)
        notes = getattr(current, "__notes__", None)
        if isinstance(notes, list):
            notes[:] = [_cut(n, values) for n in notes]
        if isinstance(current, OSError):  # its text is made of these, not of its args
            for name in ("strerror", "filename", "filename2"):
                if isinstance(getattr(current, name), str):
                    setattr(current, name, _cut(getattr(current, name), values))
        current = current.__cause__ or current.__context__


def _cut(text: Any, values: list[str]) -> Any:
    if not isinstance(text, str):
        return text
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text


async def guarded(call: Callable[[], Awaitable[Any]], sealed: Any, opened: Any) -> Any:
    """Await ``call()`` (a handler given ``opened``, the clear form of ``sealed``), with
    the personal values cut out of what it raises."""
    try:
        return await call()
    except Exception as exc:
        redact(exc, clear_values(sealed, opened))
        raise
