"""Transport adapters, one package (or module) per log engine, chosen by the URL's scheme."""

from __future__ import annotations

from urllib.parse import urlsplit

from tidings.errors import ConfigError
from tidings.transport import Transport

__all__ = ["open_transport"]

_SCHEMES = ("memory", "sqlite", "kafka", "nats")


def open_transport(url: str, *, create: bool = True) -> Transport:
    """A transport for ``url`` (not yet started).

    ``create=False``: refuse to start on a log that does not exist yet, instead of
    making an empty one (operating commands pointed at a mistyped path).
    """
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from tidings.transports.memory import MemoryTransport

        return MemoryTransport(url)
    if scheme == "sqlite":
        from tidings.transports.sqlite import SQLiteTransport

        return SQLiteTransport(url, create=create)
    if scheme == "kafka":
        from tidings.transports.kafka import KafkaTransport

        return KafkaTransport(url)
    if scheme == "nats":
        from tidings.transports.nats import NatsTransport

        return NatsTransport(url)
    raise ConfigError(
        f"unknown transport URL {url!r}: the scheme must be one of "
        f"{', '.join(s + '://' for s in _SCHEMES)}, e.g. sqlite:///./tidings.db"
    )
