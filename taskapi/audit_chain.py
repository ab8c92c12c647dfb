"""The audit chain's links: keyed lines (decision 0032), the unkeyed lines written before
them, and the key.

A keyed line is compact JSON with sorted keys, then its MAC as the last member::

    {"audited_at":"…","event":{…},"kid":"<key id>","n":17,"mac":"<HMAC-SHA256 hex>"}

The MAC is HMAC-SHA256(key, previous link + ``"\\n"`` + the line's *body*: the line
without ``,"mac":"…"``, i.e. ending with ``}``), so it covers the line itself and, through
the previous link, every line before it. A line's *link* (what the next line chains to)
is its MAC; line 1 chains to :func:`genesis` of the file's day. Unkeyed lines (the format
until decision 0032: ``"prev"``, the SHA-256 of the previous line) link by their SHA-256;
a keyed line appended after them seals them. ``kid`` names the key (:func:`key_id`), so
that a wrong key reads as a wrong key rather than as every line changed.

The key is outside the audit files: ``$TASKAPI_AUDIT_KEY``, else the key file
(``$TASKAPI_AUDIT_KEY_FILE``, default ``<data>/audit.key``), which the audit service
creates (32 random bytes, hex, mode 0600) on its first start.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass

from taskapi.settings import Settings
from tidings import ConfigError

__all__ = ["AuditKey", "authentic", "genesis", "key_id", "link", "load_key", "seal", "unseal"]

_SUFFIX = re.compile(rb',"mac":"([0-9a-f]{64})"\}\Z')


def genesis(day: str) -> str:
    """What line 1 of the file of ``day`` (``YYYY-MM-DD``) chains to."""
    return hashlib.sha256(f"taskapi-audit:{day}".encode()).hexdigest()


def key_id(key: bytes) -> str:
    """A short public name of ``key`` (it says which key, not the key)."""
    return hmac.new(key, b"taskapi-audit key id", hashlib.sha256).hexdigest()[:16]


def _mac(key: bytes, prev: str, body: bytes) -> str:
    return hmac.new(key, prev.encode() + b"\n" + body, hashlib.sha256).hexdigest()


def seal(key: bytes, prev: str, body: bytes) -> bytes:
    """The keyed line of ``body`` (compact JSON ending with ``}``) chained to ``prev``."""
    return body[:-1] + b',"mac":"' + _mac(key, prev, body).encode() + b'"}'


def unseal(line: bytes) -> tuple[bytes, str] | None:
    """(body, MAC) of a keyed line; None for a line that is not one."""
    found = _SUFFIX.search(line)
    if found is None:
        return None
    return line[: found.start()] + b"}", found[1].decode()


def link(line: bytes) -> str:
    """What the line after ``line`` (without its newline) chains to."""
    sealed = unseal(line)
    return sealed[1] if sealed is not None else hashlib.sha256(line).hexdigest()


def authentic(key: bytes, prev: str, line: bytes) -> bool:
    """Whether keyed ``line`` carries the MAC of its body chained to ``prev``."""
    sealed = unseal(line)
    return sealed is not None and hmac.compare_digest(_mac(key, prev, sealed[0]), sealed[1])


@dataclass(frozen=True)
class AuditKey:
    """The chain's key and where it came from (for messages; never the key itself)."""

    secret: bytes
    source: str

    @property
    def id(self) -> str:
        return key_id(self.secret)

    def __repr__(self) -> str:
        return f"AuditKey(id={self.id}, source={self.source!r})"


def load_key(settings: Settings, *, create: bool = False) -> AuditKey:
    """The audit key: ``$TASKAPI_AUDIT_KEY`` (its UTF-8 bytes), else the key file's hex.
    ``create``: make the key file (0600) if it is absent (the audit service does; a
    verifier never does). ConfigError if there is none, or the file is in the audit
    folder (whoever can change the files could then forge their MACs)."""
    if settings.audit_key:
        if len(settings.audit_key) < 16:
            raise ConfigError("$TASKAPI_AUDIT_KEY must be at least 16 characters")
        return AuditKey(settings.audit_key.encode(), "$TASKAPI_AUDIT_KEY")
    path = settings.audit_key_file.absolute()
    if path.is_relative_to(settings.audit_dir.absolute()):
        raise ConfigError(
            f"the audit key file {path} is inside the audit folder {settings.audit_dir}: "
            "keep it outside ($TASKAPI_AUDIT_KEY_FILE)"
        )
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process of the group made it first: read theirs
        else:
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_hex(32) + "\n")
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"no audit key: set $TASKAPI_AUDIT_KEY, or give the key file ({path} is "
            "absent; the audit service creates it on its first start)"
        ) from None
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"the audit key file {path} does not hold a hex key") from None
    if len(secret) < 16:
        raise ConfigError(f"the audit key in {path} is shorter than 16 bytes")
    return AuditKey(secret, str(path))
