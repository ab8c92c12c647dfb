"""The subjects' data keys in a SQL database (the SQLite log's own file by default, or
any SQLAlchemy URL: SQLite or PostgreSQL), each wrapped by a master key that is never
stored there (decision 0036).

Tables: ``tidings_keys`` (``kid``, ``lookup``, ``wrapped``, ``created_ms``) and
``tidings_key_erasures`` (``kid``, ``erased_ms``): an erasure deletes the key's row and
records the key id in the same transaction. ``lookup`` is HMAC-SHA256 of the subject
under an index key (itself a wrapped row, ``kid`` ``_index``), so the store holds no
subject in clear and a rotated master key only rewraps rows.

The master key: 32 bytes, given as ``master_key=`` (bytes, or base64/hex text), else
``$TIDINGS_MASTER_KEY`` (base64 or hex), else the file ``$TIDINGS_MASTER_KEY_FILE``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tidings._sql import create_missing, make_engine, safe_url, twice, with_psycopg
from tidings.errors import ConfigError
from tidings.shredding.fields import KeyStoreError, _aesgcm

__all__ = ["SqlKeyStore", "master_key_from"]

_INDEX = "_index"
_MAX_CACHED = 100_000
_meta = sa.MetaData()
KEYS = sa.Table(
    "tidings_keys",
    _meta,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("lookup", sa.String(64), nullable=False, unique=True),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)
ERASURES = sa.Table(
    "tidings_key_erasures",
    _meta,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("erased_ms", sa.BigInteger, nullable=False),
)


def master_key_from(value: bytes | str | None = None) -> bytes:
    """The 32-byte master key: ``value``, else ``$TIDINGS_MASTER_KEY``, else the file
    ``$TIDINGS_MASTER_KEY_FILE`` (raw bytes, or base64/hex text)."""
    where = "master_key="
    if value is None and os.environ.get("TIDINGS_MASTER_KEY"):
        value, where = os.environ["TIDINGS_MASTER_KEY"], "$TIDINGS_MASTER_KEY"
    if value is None and os.environ.get("TIDINGS_MASTER_KEY_FILE"):
        path = os.environ["TIDINGS_MASTER_KEY_FILE"]
        where = f"the file {path} ($TIDINGS_MASTER_KEY_FILE)"
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise KeyStoreError(f"cannot read the master key from {where}: {exc}") from None
        value = raw if len(raw) == 32 else raw.decode("ascii", "replace").strip()
    if value is None:
        raise KeyStoreError(
            "no master key for the key store: set $TIDINGS_MASTER_KEY (32 bytes, base64 "
            "or hex) or $TIDINGS_MASTER_KEY_FILE (in code: master_key=); a new one: "
            "python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    if isinstance(value, str):
        for decode in (bytes.fromhex, base64.b64decode):
            try:
                decoded = decode(value)
            except (ValueError, binascii.Error):
                continue
            if len(decoded) == 32:
                return decoded
        raise KeyStoreError(f"the master key from {where} is not 32 bytes in base64 or hex")
    if len(value) != 32:
        raise KeyStoreError(f"the master key from {where} is {len(value)} bytes, not 32")
    return bytes(value)


class SqlKeyStore:
    """A :class:`~tidings.shredding.KeyStore` in the database ``db`` (a SQLAlchemy URL
    or Engine). Keys read are kept in memory for ``cache_seconds``: an erasure is seen
    at once by this process, by others within that time (decision 0036)."""

    def __init__(
        self,
        db: str | Engine,
        *,
        master_key: bytes | str | None = None,
        cache_seconds: float = 30.0,
    ) -> None:
        self.db = db
        self._master_value = master_key
        self._master: bytes | None = None
        self._engine: Engine | None = None
        self._index: bytes | None = None
        self.cache_seconds = cache_seconds
        self._by_subject: dict[str, tuple[str, bytes, float]] = {}  # in memory only
        self._by_kid: dict[str, tuple[bytes | None, float]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SqlKeyStore({safe_url(self.db)})"

    # -- the KeyStore interface -----------------------------------------------------------

    def key_for(self, subject: str) -> tuple[str, bytes]:
        cached = self._by_subject.get(subject)
        if cached is not None and cached[2] > time.monotonic():
            return cached[0], cached[1]
        lookup = self._lookup(subject)
        with self._lock:
            row = self._select(KEYS.c.lookup == lookup)
            if row is None:
                kid, key = secrets.token_hex(16), os.urandom(32)
                try:
                    self._insert(kid, lookup, key)
                except sa.exc.IntegrityError:  # another process made it first
                    row = self._select(KEYS.c.lookup == lookup)
                    if row is None:
                        raise
            if row is not None:
                kid, key = row.kid, self._unwrap(row.kid, row.wrapped)
            until = time.monotonic() + self.cache_seconds
            if len(self._by_subject) >= _MAX_CACHED:
                self._by_subject.clear()
            self._by_subject[subject] = (kid, key, until)
            self._by_kid[kid] = (key, until)
        return kid, key

    def key(self, kid: str) -> bytes | None:
        cached = self._by_kid.get(kid)
        if cached is not None and (cached[0] is None or cached[1] > time.monotonic()):
            return cached[0]  # an erased key stays erased
        row = self._select(KEYS.c.kid == kid)
        if row is None and not self._was_erased(kid):
            raise KeyStoreError(
                f"key {kid} is neither in the key store {safe_url(self.db)} nor erased "
                "there: a different key store, or one lost or restored from an older "
                "backup; the event is kept (retried, then dead-lettered)"
            )
        key = None if row is None else self._unwrap(kid, row.wrapped)
        self._by_kid[kid] = (key, time.monotonic() + self.cache_seconds)
        return key

    def _was_erased(self, kid: str) -> bool:
        with self._connect() as conn:
            found = conn.execute(sa.select(ERASURES.c.kid).where(ERASURES.c.kid == kid)).first()
        return found is not None

    def erase(self, subject: str) -> str | None:
        lookup = self._lookup(subject)
        with self._lock, self._connect() as conn, conn.begin():
            kid = conn.execute(sa.select(KEYS.c.kid).where(KEYS.c.lookup == lookup)).scalar()
            if kid is None:
                return None
            conn.execute(KEYS.delete().where(KEYS.c.kid == kid))
            conn.execute(ERASURES.insert().values(kid=kid, erased_ms=int(time.time() * 1000)))
            self._by_subject.pop(subject, None)
            self._by_kid[kid] = (None, 0.0)
        return str(kid)

    def forget(self, kid: str | None) -> None:
        """Drop ``kid`` (None: every key) from this process's caches, so that its next
        use reads the key store again: another process erased it (decision 0038)."""
        with self._lock:
            if kid is None:
                self._by_subject.clear()
                self._by_kid.clear()
                return
            self._by_kid.pop(kid, None)
            for subject in [s for s, cached in self._by_subject.items() if cached[0] == kid]:
                del self._by_subject[subject]

    def kids(self) -> list[str]:
        with self._connect() as conn:
            rows = conn.execute(sa.select(KEYS.c.kid).where(KEYS.c.kid != _INDEX))
            return sorted(str(r[0]) for r in rows)

    def erased(self) -> list[tuple[str, int]]:
        """The erased key ids and when (milliseconds since the epoch), oldest first."""
        with self._connect() as conn:
            rows = conn.execute(sa.select(ERASURES).order_by(ERASURES.c.erased_ms))
            return [(str(r.kid), int(r.erased_ms)) for r in rows]

    def close(self) -> None:
        """Close its connections (an Engine given to it is left to its owner); it
        reconnects if used again."""
        engine, self._engine = self._engine, None
        if engine is not None and engine is not self.db:
            engine.dispose()

    # -- inside ---------------------------------------------------------------------------

    def _connect(self) -> Any:
        if self._engine is None:
            if isinstance(self.db, Engine):
                engine = self.db
            else:
                try:
                    engine = make_engine(with_psycopg(sa.make_url(self.db)), is_async=False)
                except (sa.exc.ArgumentError, ImportError) as exc:
                    raise ConfigError(f"key store {safe_url(self.db)}: {exc}") from None

            def create() -> None:
                with engine.begin() as conn:
                    create_missing(conn, _meta.sorted_tables)

            try:
                twice(create, sa.exc.DBAPIError)
            except sa.exc.DBAPIError as exc:
                raise KeyStoreError(f"key store {safe_url(self.db)}: {exc.orig}") from None
            self._engine = engine
        try:
            return self._engine.connect()
        except sa.exc.DBAPIError as exc:
            raise KeyStoreError(f"key store {safe_url(self.db)}: {exc.orig}") from None

    def _select(self, where: Any) -> Any:
        try:
            with self._connect() as conn:
                return conn.execute(sa.select(KEYS).where(where)).first()
        except sa.exc.OperationalError as exc:
            raise KeyStoreError(f"key store {safe_url(self.db)}: {exc.orig}") from None

    def _insert(self, kid: str, lookup: str, key: bytes) -> None:
        with self._connect() as conn, conn.begin():
            conn.execute(
                KEYS.insert().values(
                    kid=kid,
                    lookup=lookup,
                    wrapped=self._wrap(kid, key),
                    created_ms=int(time.time() * 1000),
                )
            )

    def _lookup(self, subject: str) -> str:
        if self._index is None:
            with self._lock:
                self._index = self._index_key()
        return hmac.new(self._index, subject.encode(), hashlib.sha256).hexdigest()

    def _index_key(self) -> bytes:
        row = self._select(KEYS.c.kid == _INDEX)
        if row is None:
            key = os.urandom(32)
            try:
                self._insert(_INDEX, _INDEX, key)
                return key
            except sa.exc.IntegrityError:
                row = self._select(KEYS.c.kid == _INDEX)
        return self._unwrap(_INDEX, row.wrapped)

    def _master_key(self) -> bytes:
        if self._master is None:
            self._master = master_key_from(self._master_value)
        return self._master

    def _wrap(self, kid: str, key: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + _aesgcm()(self._master_key()).encrypt(
            nonce, key, b"tidings-key:" + kid.encode()
        )

    def _unwrap(self, kid: str, wrapped: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return _aesgcm()(self._master_key()).decrypt(
                wrapped[:12], wrapped[12:], b"tidings-key:" + kid.encode()
            )
        except InvalidTag:
            raise KeyStoreError(
                f"the master key does not open the key store's keys ({safe_url(self.db)}, "
                f"key {kid}): another master key wrapped them; set the one they were made with"
            ) from None
