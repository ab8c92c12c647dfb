"""The encrypted form of an event's personal fields, and the walks that seal, open and
mask them (decisions 0036 and 0044).

The sealed form v2: each personal field holds :data:`MASK`, and the data gets one more
member, :data:`SEALED`, a string with one line per subject::

    KID BASE64 PATH [PATH...]

``BASE64`` is the AES-GCM nonce (12 bytes), ciphertext and tag of the JSON list of that
subject's field values (in the order of the paths), under the subject's data key
``KID``, authenticated with ``2/<event id>/<paths, space-separated>``: a line moved to
another event, or given other paths, fails to open. One key lookup, one cipher call and
one string per subject and event, where v1 (:mod:`tidings.shredding.form_v1`, still
read) had them per field. A reader without the keys drops :data:`SEALED` and has the
masks in place. An event with sealed fields carries the extension
``personaldata: "v2"``: readers skip every other event at the cost of one dict lookup.
"""

from __future__ import annotations

import binascii
import itertools
import os
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from pydantic import BaseModel

from tidings.errors import ConfigError, DecodeError, TidingsError
from tidings.personal import PersonalField, personal_fields
from tidings.shredding.form_v1 import ENCRYPTED, mask_v1, open_v1, walk_v1

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "ENCRYPTED",
    "ERASED",
    "EXTENSION",
    "FORM",
    "MASK",
    "SEALED",
    "KeyStore",
    "KeyStoreError",
    "Shredder",
    "mask",
    "sealed_values",
    "shown",
]

SEALED = "$sealed"
"""The member of an event's data that holds its sealed personal fields (form v2)."""
FORM = "v2"
EXTENSION = "personaldata"
"""The envelope extension of an event with sealed fields (value :data:`FORM`; ``"v1"``
on events sealed before decision 0044)."""
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
        # A model's fields as (name, subject name) when all are the payload's own: the
        # common case, sealed without a walk. None: some are nested.
        self._flat: dict[type[BaseModel], list[tuple[str, str]] | None] = {}
        # A model whose fields are all its own and of one subject field: (their names,
        # that subject's name, their paths joined), sealed in one step.
        self._one: dict[type[BaseModel], tuple[tuple[str, ...], str, str]] = {}
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
            found = [(f, _tokens(f.path), _tokens(f.subject)) for f in personal_fields(model)]
            for f, _, _ in found:
                if " " in f.path or "\n" in f.path:  # the separators of the sealed form
                    raise ConfigError(
                        f"{model.__name__}.{f.path} is personal data, but its name has a "
                        "space or a line break: it cannot be sealed"
                    )
            flat = all(len(t) == 1 and len(s) == 1 for _, t, s in found)
            self._flat[model] = [(t[0], s[0]) for _, t, s in found] if flat else None
            if flat and found and len({s[0] for _, _, s in found}) == 1:
                names = tuple(t[0] for _, t, _ in found)
                self._one[model] = (names, found[0][2][0], " ".join(names))
            self._fields[model] = found
        return found

    def seal(self, event_id: str, payload: BaseModel) -> dict[str, Any] | None:
        """``payload``'s JSON data with its personal fields sealed for event
        ``event_id``; None if its model has none (the payload goes as it is)."""
        model = type(payload)
        one = self._one.get(model)
        if one is None:
            fields = self._fields.get(model)
            if fields is None:
                fields = self.fields(model)
            if not fields:
                return None
        data: dict[str, Any] = payload.__pydantic_serializer__.to_python(payload, mode="json")
        if one is not None:  # the common case, without the walk below (the same result)
            names, subject_name, paths = one
            values = list(map(data.get, names))
            subject = data.get(subject_name)
            if subject is not None and None not in values:
                data[SEALED] = self._line(event_id, str(subject), values, paths)
                for name in names:
                    data[name] = MASK
                return data
        # Every subject is read before any field is masked (a field may be its own subject).
        found: list[tuple[Any, Any, str, Any, Any]] = []
        flat = self._flat[model]
        if flat is not None:
            for name, subject_name in flat:
                value = data.get(name)
                if value is not None:
                    subject = data.get(subject_name)
                    if subject is None:
                        raise self._no_subject(payload, name, subject_name)
                    found.append((data, name, name, value, subject))
        else:
            self._find(payload, data, self._fields[model], found)
        if not found:
            return data
        groups: dict[Any, list[tuple[Any, Any, str, Any, Any]]] = {}
        for f in found:
            groups.setdefault(f[4], []).append(f)
        lines = []
        for subject, group in groups.items():
            paths = " ".join([f[2] for f in group])
            lines.append(self._line(event_id, str(subject), [f[3] for f in group], paths))
            for holder, key, _, _, _ in group:
                holder[key] = MASK
        data[SEALED] = "\n".join(lines)
        return data

    def _line(self, event_id: str, subject: str, values: list[Any], paths: str) -> str:
        """The sealed line of ``subject``'s ``values`` at ``paths`` of event ``event_id``.
        The nonce: this instance's random 64-bit field, then a 32-bit counter (NIST SP
        800-38D's deterministic construction; a new random field before the counter
        wraps)."""
        kid, data_key = self.keys.key_for(subject)
        cipher = self._ciphers.get(data_key) or self._cipher(data_key)
        count = next(self._counter)
        if count >= _NONCES:
            self._fixed, self._counter = os.urandom(8), itertools.count(1)
            count = 0
        nonce = self._fixed + count.to_bytes(4, "big")
        ct = cipher.encrypt(nonce, orjson.dumps(values), f"2/{event_id}/{paths}".encode())
        return f"{kid} {binascii.b2a_base64(nonce + ct, newline=False).decode()} {paths}"

    def _find(
        self,
        payload: BaseModel,
        data: dict[str, Any],
        fields: list[tuple[PersonalField, list[str], list[str]]],
        found: list[tuple[Any, Any, str, Any, Any]],
    ) -> None:
        """Each (holder, key, path, value, subject) of a personal field of ``data``."""
        for field, tokens, subject_tokens in fields:
            for holder, key, where, indices in _places(data, tokens, "", ()):
                value = holder[key]
                if value is None:
                    continue
                subject = _value_at(data, subject_tokens, indices)
                if subject is None:
                    raise self._no_subject(payload, where, field.subject)
                found.append((holder, key, where, value, subject))

    @staticmethod
    def _no_subject(payload: BaseModel, where: str, subject: str) -> ConfigError:
        return ConfigError(
            f"{type(payload).__name__}.{where} is personal data, but its subject "
            f"{subject} is empty: no key to encrypt it with"
        )

    def open(self, event_id: str, data: Any) -> Any:
        """A copy of ``data`` with its sealed fields in clear (:data:`ERASED` where the
        key is gone), v2 or v1. A field that fails authentication raises DecodeError."""
        if type(data) is dict:
            lines = data.get(SEALED)
            if lines is not None:
                return self._open(event_id, data, lines)
        return open_v1(event_id, data, partial(self._open_v1, event_id))

    def _open(self, event_id: str, data: dict[str, Any], lines: Any) -> dict[str, Any]:
        out = data.copy()
        del out[SEALED]
        if type(lines) is not str:
            raise _malformed(event_id, SEALED)
        copied: set[int] | None = None  # the containers copied on the way to nested fields
        for line in lines.split("\n") if "\n" in lines else (lines,):
            parts = line.split(" ", 2)  # KID BASE64 PATHS
            if len(parts) != 3:
                raise _malformed(event_id, SEALED)
            kid, text, paths = parts
            where = paths.split(" ")
            key = self.keys.key(kid)
            if key is None:
                values = [ERASED] * len(where)
            else:
                try:
                    raw = binascii.a2b_base64(text, strict_mode=True)
                except ValueError:
                    raise _malformed(event_id, paths) from None
                cipher = self._ciphers.get(key) or self._cipher(key)
                try:
                    clear = cipher.decrypt(
                        raw[:_NONCE], raw[_NONCE:], f"2/{event_id}/{paths}".encode()
                    )
                except _invalid_tag():
                    raise DecodeError(
                        f"personal field {paths} of event {event_id} fails authentication "
                        f"with key {kid}: changed since it was sealed, or moved from another "
                        "event or field"
                    ) from None
                values = orjson.loads(clear)
                if type(values) is not list or len(values) != len(where):
                    raise _malformed(event_id, paths)
            for path, value in zip(where, values, strict=False):  # lengths checked
                if path in out:  # a field of the payload itself (a nested path has . or [)
                    out[path] = value
                else:
                    if copied is None:
                        copied = set()
                    _put(out, path, value, copied, event_id)
        return out

    def _open_v1(
        self, event_id: str, kid: str | None, nonce: bytes, ct: bytes, aad: bytes, where: str
    ) -> Any:
        """One v1 sealed field's clear value (:mod:`tidings.shredding.form_v1`)."""
        key = self.keys.key(kid) if kid is not None else None
        if key is None:
            return ERASED
        cipher = self._ciphers.get(key) or self._cipher(key)
        try:
            return orjson.loads(cipher.decrypt(nonce, ct, aad))
        except _invalid_tag():
            raise DecodeError(
                f"personal field {where} of event {event_id} fails authentication with "
                f"key {kid}: changed since it was sealed, or moved from another event"
            ) from None

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
    if type(data) is dict and SEALED in data:  # v2: the masks are in place already
        return {k: v for k, v in data.items() if k != SEALED}
    return mask_v1(data, MASK)


def shown(event_id: str, data: Any, shredder: Shredder | None) -> Any:
    """``data`` as a reader may see it: opened with ``shredder``, else masked."""
    return mask(data) if shredder is None else shredder.open(event_id, data)


def sealed_values(sealed: Any, opened: Any) -> list[Any]:
    """The values of ``opened`` (``sealed``'s data, opened) at ``sealed``'s sealed
    fields."""
    found: list[Any] = []
    lines = sealed.get(SEALED) if type(sealed) is dict else None
    if lines is None:
        walk_v1(sealed, opened, found.append)
    elif type(lines) is str:
        for line in lines.split("\n"):
            for path in line.split(" ")[2:]:
                try:
                    found.append(_get(opened, _steps(path)))
                except (KeyError, IndexError, TypeError, ValueError):
                    continue
    return found


def _malformed(event_id: str, where: str) -> DecodeError:
    return DecodeError(f"personal field {where} of event {event_id} is malformed")


def _steps(path: str) -> list[str | int]:
    """``members[0].phones[1]`` as ``["members", 0, "phones", 1]``."""
    steps: list[str | int] = []
    for part in path.split("."):
        name, _, rest = part.partition("[")
        steps.append(name)
        if rest:
            steps.extend(int(index) for index in rest.removesuffix("]").split("]["))
    return steps


def _get(data: Any, steps: list[str | int]) -> Any:
    for step in steps:
        data = data[step]
    return data


def _put(out: dict[str, Any], path: str, value: Any, copied: set[int], event_id: str) -> None:
    """Set ``value`` at ``path`` of ``out``, copying each container on the way once (the
    data read is shared by every reader of the event)."""
    try:
        steps = _steps(path)
        holder: Any = out
        for step in steps[:-1]:
            child = holder[step]
            if id(child) not in copied:
                child = holder[step] = child.copy()
                copied.add(id(child))
            holder = child
        if type(holder) is dict and steps[-1] not in holder:
            raise KeyError(path)  # a sealed field is always there, masked
        holder[steps[-1]] = value
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise _malformed(event_id, path) from None


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
