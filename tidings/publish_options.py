"""What :meth:`Tidings.publish` and :meth:`Tidings.publish_many` make of their
arguments: when an event is due, a payload's own subject and key, extension names."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from tidings.errors import ConfigError

__all__ = ["check_extension_names", "due", "per_payload_options"]

_EXTENSION_RE = re.compile(r"[a-z0-9]{1,20}")


def due(delay: float | timedelta | None, deliver_at: datetime | None) -> datetime | None:
    """The aware UTC time an event is due, from ``delay`` or ``deliver_at``."""
    if delay is not None and deliver_at is not None:
        raise ConfigError("pass delay=... or deliver_at=..., not both")
    if delay is not None:
        if isinstance(delay, timedelta):
            delay = delay.total_seconds()
        if not isinstance(delay, int | float) or delay < 0 or delay != delay:
            raise ConfigError(
                f"delay must be seconds >= 0 or a timedelta, got {delay!r}, e.g. delay=60"
            )
        return datetime.now(UTC) + timedelta(seconds=delay)
    if deliver_at is not None:
        if not isinstance(deliver_at, datetime):
            raise ConfigError(f"deliver_at must be a datetime, got {deliver_at!r}")
        if deliver_at.tzinfo is None:
            raise ConfigError(
                f"deliver_at {deliver_at.isoformat()} has no time zone: pass an aware "
                "datetime, e.g. datetime.now(UTC) + timedelta(hours=1)"
            )
        return deliver_at.astimezone(UTC)
    return None


def per_payload_options(
    options: dict[str, Any],
) -> Callable[[int, Any], dict[str, Any]]:
    """Take ``subject``/``key`` functions out of ``options`` (publish_many's); return
    what gives one payload its own ``subject``/``key`` (the ``i``-th, for errors)."""
    functions: dict[str, Callable[[Any], Any]] = {}
    for name, value in list(options.items()):
        if not callable(value):
            continue
        if name not in ("subject", "key"):
            raise ConfigError(
                f"publish_many({name}=...) takes one value for every payload, not a "
                "function; only subject= and key= take a function of the payload"
            )
        functions[name] = options.pop(name)
    for name in ("subject", "key"):
        value = options.get(name)
        if value is not None and not isinstance(value, str):
            raise ConfigError(
                f"publish_many({name}=...) takes a string or a function of the payload "
                f"that returns one, got {type(value).__name__}; e.g. "
                f"{name}=lambda payload: payload['task_id']"
            )

    def per_payload(i: int, payload: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, function in functions.items():
            value = function(payload)
            if value is not None and not isinstance(value, str):
                raise ConfigError(
                    f"publish_many({name}=...) returned {value!r} for payload {i}; "
                    "it must return a string (or None for the default)"
                )
            out[name] = value
        return out

    return per_payload


def check_extension_names(extensions: dict[str, Any]) -> None:
    bad = [name for name in extensions if _EXTENSION_RE.fullmatch(name) is None]
    if bad:
        raise ConfigError(
            f"extension name(s) {bad} are not valid CloudEvents attribute names: "
            "use 1 to 20 lower-case letters or digits, e.g. 'tenantid'"
        )
