"""The encrypted form of a personal field, and the walks that seal, open and mask the
fields of an event's data (decision 0036).

A sealed field holds ``{"$enc": "v1", "kid": KID, "ct": BASE64}``: ``ct`` is the
AES-GCM nonce (12 bytes), ciphertext and tag of the field's JSON value, under the data
key ``KID`` of the field's subject, authenticated with ``<event id>/<field path>`` (so a
ciphertext copied into another event, or to another field, fails to open). An event
with sealed fields carries the extension ``personaldata: "v1"``: readers skip every
other event at the cost of one dict lookup.
"""

from __future__ import annotations

import binascii
import itertools
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from pydantic import BaseModel

from tidings.errors import ConfigError, DecodeError, TidingsError
from tidings.personal import PersonalField, personal_fields

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "ENCRYPTED",
    "ERASED",
    "EXTENSION",
    "MASK",
    "KeyStore",
    "KeyStoreError",
    "Shredder",
    "mask",
    "shown",
]

ENCRYPTED = "$enc"
"""The member that makes an object of an event's data a sealed personal field."""
VERSION = "v1"
EXTENSION = "personaldata"
"""The envelope extension of an event with sealed fields (value ``"v1"``)."""
MASK = "[personal]"
"""What a reader without the key store (or not asking for personal data) sees."""
ERASED = "[erased]"
"""What every reader sees of a field whose subject's key was deleted."""

_NONCE = 12
_MAX_CIPHERS = 10_000
_NONCES = 1 << 32  # a nonce field's counter values


class KeyStoreError(TidingsError):
    """The key store cannot be used: unreachable, no master key, or a master key that
    does not open its keys. Raised where a key is needed; an event being handled is
    retried, then dead-lettered with this reason, never dropped."""


class KeyStore(Protocol):
    """Where the subjects' data keys live (:class:`~tidings.shredding.SqlKeyStore`;
    a KMS can implement it). Every method may block: callers run them as they are."""

    def key_for(self, subject: str) -> tuple[str, bytes]:
        """The key id and 32-byte data key of ``subject``, created on first use."""
        ...

    def key(self, kid: str) -> bytes | None:
        """The data key ``kid``; None if it was erased (or never made here)."""
        ...

    def erase(self, subject: str) -> str | None:
        """Delete ``subject``'s key durably (and record it); its key id, None if none."""
        ...

    def kids(self) -> list[str]:
        """The key ids held."""
        ...


def _aesgcm() -> type[AESGCM]:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:  # pragma: no cover - the extra is missing
        raise ConfigError(
            "personal data encryption needs the 'cryptography' package: "
            "pip install 'tidings[personal]'"
        ) from None
    return AESGCM


def _invalid_tag() -> type[Exception]:
    from cryptography.exceptions import InvalidTag

    return InvalidTag


class Shredder:
    """Seals and opens the personal fields of events with the keys of ``keys``."""

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys
        self._fields: dict[type[BaseModel], list[tuple[PersonalField, list[str], list[str]]]] = {}
        self._ciphers: dict[bytes, AESGCM] = {}
        self._fixed, self._counter = os.urandom(8), itertools.count()

    def _cipher(self, key: bytes) -> AESGCM:
        cipher = self._ciphers.get(key)
        if cipher is None:
            if len(self._ciphers) >= _MAX_CIPHERS:
                self._ciphers.clear()
            cipher = self._ciphers[key] = _aesgcm()(key)
        return cipher

    def fields(self, model: type[BaseModel]) -> list[tuple[PersonalField, list[str], list[str]]]:
        """``model``'s personal fields, with their paths' and subjects' tokens."""
        found = self._fields.get(model)
        if found is None:
            found = self._fields[model] = [
                (f, _tokens(f.path), _tokens(f.subject)) for f in personal_fields(model)
            ]
        return found

    def seal(self, event_id: str, payload: BaseModel) -> dict[str, Any] | None:
        """``payload``'s JSON data with its personal fields sealed for event
        ``event_id``; None if its model has none (the payload goes as it is)."""
        fields = self._fields.get(type(payload))
        if fields is None:
            fields = self.fields(type(payload))
        if not fields:
            return None
        data: dict[str, Any] = payload.__pydantic_serializer__.to_python(payload, mode="json")
        found = []  # every subject read before any field (a field may be its own subject)
        for field, tokens, subject_tokens in fields:
            if len(tokens) == 1 and len(subject_tokens) == 1:  # a field of the payload itself
                name = tokens[0]
                value = data.get(name)
                if value is None:
                    continue
                subject = data.get(subject_tokens[0])
                if subject is None:
                    raise self._no_subject(payload, name, field)
                found.append((data, name, name, value, str(subject)))
                continue
            for holder, key, where, indices in _places(data, tokens, "", ()):
                value = holder[key]
                if value is None:
                    continue
                if len(subject_tokens) == 1:
                    subject = data.get(subject_tokens[0])
                else:
                    subject = _value_at(data, subject_tokens, indices)
                if subject is None:
                    raise self._no_subject(payload, where, field)
                found.append((holder, key, where, value, str(subject)))
        # The loop below is the cost of every event with personal fields: its calls and
        # lookups are hoisted. The nonce: this instance's random 64-bit field, then a
        # 32-bit counter (NIST SP 800-38D's deterministic construction; a new random
        # field before the counter wraps).
        key_for, ciphers, cipher_for = self.keys.key_for, self._ciphers, self._cipher
        prefix, dumps, b64 = event_id + "/", orjson.dumps, binascii.b2a_base64
        for holder, key, where, value, subject in found:
            kid, data_key = key_for(subject)
            cipher = ciphers.get(data_key) or cipher_for(data_key)
            count = next(self._counter)
            if count >= _NONCES:
                self._fixed, self._counter = os.urandom(8), itertools.count(1)
                count = 0
            nonce = self._fixed + count.to_bytes(4, "big")
            ct = cipher.encrypt(nonce, dumps(value), (prefix + where).encode())
            text = b64(nonce + ct, newline=False).decode("ascii")
            holder[key] = {ENCRYPTED: VERSION, "kid": kid, "ct": text}
        return data

    @staticmethod
    def _no_subject(payload: BaseModel, where: str, field: PersonalField) -> ConfigError:
        return ConfigError(
            f"{type(payload).__name__}.{where} is personal data, but its subject "
            f"{field.subject} is empty: no key to encrypt it with"
        )

    def open(self, event_id: str, data: Any) -> Any:
        """A copy of ``data`` with its sealed fields in clear (:data:`ERASED` where the
        key is gone). A field that fails authentication raises DecodeError."""
        return _rewrite(data, "", self._open, event_id + "/")

    def _open(self, prefix: str, sealed: dict[str, Any], where: str) -> Any:
        """The clear value of the field ``sealed`` at ``where`` of the event whose id
        and a slash are ``prefix``."""
        kid = sealed.get("kid")
        try:
            raw = binascii.a2b_base64(sealed["ct"], strict_mode=True)
        except (KeyError, TypeError, ValueError):
            raise DecodeError(
                f"personal field {where} of event {prefix[:-1]} is malformed"
            ) from None
        key = self.keys.key(kid) if type(kid) is str else None
        if key is None:
            return ERASED
        cipher = self._ciphers.get(key) or self._cipher(key)
        try:
            clear = cipher.decrypt(raw[:_NONCE], raw[_NONCE:], (prefix + where).encode())
        except _invalid_tag():
            raise DecodeError(
                f"personal field {where} of event {prefix[:-1]} fails authentication with "
                f"key {kid}: changed since it was sealed, or moved from another event"
            ) from None
        return orjson.loads(clear)

    def erase(self, subject: str) -> str | None:
        return self.keys.erase(subject)

    def forget(self, kid: str | None) -> None:
        """Drop key ``kid`` (None: every key) from the key store's caches, if it has a
        ``forget()``: another process erased it (``tidings.shredding.erasure``)."""
        forget = getattr(self.keys, "forget", None)
        if forget is not None:
            forget(kid)

    def close(self) -> None:
        """Close the key store's connections, if it has a ``close()``."""
        close = getattr(self.keys, "close", None)
        if close is not None:
            close()


def mask(data: Any) -> Any:
    """A copy of ``data`` with every sealed field replaced by :data:`MASK`."""
    return _rewrite(data, "", _masked, "")


def _masked(context: str, sealed: dict[str, Any], where: str) -> str:
    return MASK


def shown(event_id: str, data: Any, shredder: Shredder | None) -> Any:
    """``data`` as a reader may see it: opened with ``shredder``, else masked."""
    return mask(data) if shredder is None else shredder.open(event_id, data)


def _rewrite(
    value: Any, where: str, sealed: Callable[[str, dict[str, Any], str], Any], context: str
) -> Any:
    """A copy of ``value`` with each sealed field ``sealed(context, field, path)``;
    scalars are copied inline (this runs for every event with personal fields)."""
    if isinstance(value, dict):
        if ENCRYPTED in value:
            return sealed(context, value, where)
        out = {}
        for k, v in value.items():
            kind = type(v)
            if kind is dict:
                if ENCRYPTED in v:  # a sealed field: no call of _rewrite for it
                    v = sealed(context, v, f"{where}.{k}" if where else k)
                else:
                    v = _rewrite(v, f"{where}.{k}" if where else k, sealed, context)
            elif kind is list:
                v = _rewrite(v, f"{where}.{k}" if where else k, sealed, context)
            out[k] = v
        return out
    if isinstance(value, list):
        return [
            _rewrite(v, f"{where}[{i}]", sealed, context) if type(v) in (dict, list) else v
            for i, v in enumerate(value)
        ]
    return value


def _tokens(path: str) -> list[str]:
    """``contacts[].email`` as ``["contacts", "[]", "email"]``."""
    tokens: list[str] = []
    for part in path.split("."):
        depth = 0
        while part.endswith("[]"):
            part, depth = part[:-2], depth + 1
        tokens.append(part)
        tokens.extend(["[]"] * depth)
    return tokens


def _places(
    data: Any, tokens: list[str], where: str, indices: tuple[int, ...]
) -> Iterator[tuple[Any, Any, str, tuple[int, ...]]]:
    """Each (holder, key, concrete path, list indices) of a value at ``tokens``."""
    head, rest = tokens[0], tokens[1:]
    if head == "[]":
        if isinstance(data, list):
            for i, item in enumerate(data):
                here, at = f"{where}[{i}]", (*indices, i)
                if rest:
                    yield from _places(item, rest, here, at)
                else:
                    yield data, i, here, at
    elif isinstance(data, dict) and head in data:
        here = f"{where}.{head}" if where else head
        if rest:
            yield from _places(data[head], rest, here, indices)
        else:
            yield data, head, here, indices


def _value_at(data: Any, tokens: list[str], indices: tuple[int, ...]) -> Any:
    """The value at ``tokens``, its ``[]`` taken as ``indices`` in order."""
    left = iter(indices)
    for token in tokens:
        if token == "[]":
            i = next(left, None)
            data = data[i] if isinstance(data, list) and i is not None and i < len(data) else None
        else:
            data = data.get(token) if isinstance(data, dict) else None
        if data is None:
            return None
    return data
