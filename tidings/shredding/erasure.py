"""The app's key store from ``Tidings(personal=...)``, erasing a subject (``app.erase``,
``tidings erase``; decision 0036), and following the erasures of other processes
(:class:`ErasureWatch`, decision 0038)."""

from __future__ import annotations

import asyncio
from typing import Any

from tidings.envelope import Event
from tidings.errors import ConfigError
from tidings.shredding.fields import Shredder
from tidings.transport import Transport
from tidings.transports.follow import Follower

__all__ = ["ERASED_TYPE", "ERASURES_TOPIC", "ErasureWatch", "erase", "shredder_for", "watching"]

ERASURES_TOPIC = "_tidings.erasures"
ERASED_TYPE = "tidings.subject_erased"


def shredder_for(personal: Any, log_url: str) -> Shredder | None:
    """``Tidings(personal=...)``: None/False (no encryption), True (a key store in the
    SQLite log's own file), a SQLAlchemy URL or Engine, or a :class:`KeyStore`."""
    if personal is None or personal is False:
        return None
    if personal is True:
        if not log_url.startswith("sqlite://"):
            raise ConfigError(
                f"Tidings(personal=True) keeps the keys in the SQLite log's file; the log "
                f"is {log_url.partition('://')[0]}://...: give the key store's URL, e.g. "
                "personal='postgresql://...' or 'sqlite:///keys.db'"
            )
        personal = "sqlite://" + log_url.removeprefix("sqlite://").partition("?")[0]
    if callable(getattr(personal, "key_for", None)):
        return Shredder(personal)
    from tidings.shredding.keystore import SqlKeyStore

    return Shredder(SqlKeyStore(personal))


async def erase(app: Any, subject: str) -> str | None:
    """Delete ``subject``'s data key and publish ``tidings.subject_erased`` (its key id,
    never the subject) to ``_tidings.erasures``; the key id, None if it had none."""
    shredder: Shredder | None = app.shredder
    if shredder is None:
        raise ConfigError("erase() needs a key store: Tidings(..., personal=...)")
    if not subject:
        raise ConfigError("erase() needs the subject whose data to erase")
    kid = await asyncio.to_thread(shredder.erase, subject)
    if kid is not None:
        await app.publish(
            ERASURES_TOPIC, {"kid": kid, "by": app.service}, type=ERASED_TYPE, key=kid
        )
    return kid


class ErasureWatch:
    """Follows :data:`ERASURES_TOPIC` for an app with a key store: each erased key id is
    dropped from ``shredder``'s caches (:meth:`Shredder.forget`), so its next use asks
    the key store, which answers "erased". Erasures made by other processes so reach
    this one within ``poll`` seconds, instead of when its cache expires.

    It starts at the topic's end, dropping what was cached before (decision 0038)."""

    def __init__(self, transport: Transport, shredder: Shredder, *, poll: float = 0.5) -> None:
        self.transport = transport
        self.shredder = shredder
        self.follower = Follower(transport, ERASURES_TOPIC, self._learn, poll)
        self.seen = 0  # erasure events read

    async def start(self) -> None:
        """Create the topic if missing, start at its end, drop what was cached before."""
        info = await self.transport.create_topic(ERASURES_TOPIC, 1)
        self.follower.positions.update({p.partition: p.end for p in info.partitions})
        self.shredder.forget(None)

    def _learn(self, event: Event) -> None:
        kid = event.data.get("kid") if isinstance(event.data, dict) else None
        if event.type == ERASED_TYPE and isinstance(kid, str):
            self.shredder.forget(kid)
            self.seen += 1


async def watching(
    transport: Transport, shredder: Shredder
) -> tuple[asyncio.Event, asyncio.Task[None]]:
    """Start an :class:`ErasureWatch` (what ``Tidings.start`` does for an app with a key
    store); set the event returned, then await the task, to stop it."""
    watch = ErasureWatch(transport, shredder)
    await watch.start()
    stop = asyncio.Event()
    return stop, asyncio.create_task(watch.follower.follow(stop), name="tidings erasure watch")
