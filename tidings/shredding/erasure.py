"""The app's key store from ``Tidings(personal=...)``, and erasing a subject
(``app.erase``, ``tidings erase``; decision 0036)."""

from __future__ import annotations

import asyncio
from typing import Any

from tidings.errors import ConfigError
from tidings.shredding.fields import Shredder

__all__ = ["ERASED_TYPE", "ERASURES_TOPIC", "erase", "shredder_for"]

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
