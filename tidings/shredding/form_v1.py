"""The first sealed form (decision 0036), read only: events sealed before decision 0044
are in logs, dead letters and outboxes for as long as those are kept, and still open
(and read as erased once their subject's key is deleted).

A v1 sealed field holds ``{"$enc": "v1", "kid": KID, "ct": BASE64}``: ``ct`` is the
AES-GCM nonce (12 bytes), ciphertext and tag of the field's JSON value, under the data
key ``KID``, authenticated with ``<event id>/<field path>``.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from typing import Any

from tidings.errors import DecodeError

__all__ = ["ENCRYPTED", "Decrypt", "mask_v1", "open_v1", "walk_v1"]

ENCRYPTED = "$enc"
"""The member that makes an object of an event's data a v1 sealed personal field."""
_NONCE = 12

Decrypt = Callable[[str | None, bytes, bytes, bytes, str], Any]
"""``decrypt(kid, nonce, ciphertext, aad, where)``: the field's clear value (or the
erased mark); raises DecodeError if it fails authentication."""


def open_v1(event_id: str, data: Any, decrypt: Decrypt) -> Any:
    """A copy of ``data`` with its v1 sealed fields opened by ``decrypt``."""

    def one(prefix: str, sealed: dict[str, Any], where: str) -> Any:
        kid = sealed.get("kid")
        try:
            raw = binascii.a2b_base64(sealed["ct"], strict_mode=True)
        except (KeyError, TypeError, ValueError):
            raise DecodeError(
                f"personal field {where} of event {prefix[:-1]} is malformed"
            ) from None
        aad = (prefix + where).encode()
        return decrypt(kid if type(kid) is str else None, raw[:_NONCE], raw[_NONCE:], aad, where)

    return _rewrite(data, "", one, event_id + "/")


def mask_v1(data: Any, mask: str) -> Any:
    """A copy of ``data`` with every v1 sealed field replaced by ``mask``."""
    return _rewrite(data, "", lambda context, sealed, where: mask, "")


def _rewrite(
    value: Any, where: str, sealed: Callable[[str, dict[str, Any], str], Any], context: str
) -> Any:
    """A copy of ``value`` with each sealed field ``sealed(context, field, path)``."""
    if isinstance(value, dict):
        if ENCRYPTED in value:
            return sealed(context, value, where)
        out = {}
        for k, v in value.items():
            kind = type(v)
            if kind is dict:
                if ENCRYPTED in v:
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


def walk_v1(sealed: Any, opened: Any, found: Callable[[Any], None]) -> None:
    """Call ``found`` with each value of ``opened`` where ``sealed`` (the same data, v1
    sealed) holds a sealed field."""
    if isinstance(sealed, dict):
        if ENCRYPTED in sealed:
            found(opened)
        elif isinstance(opened, dict):
            for k, v in sealed.items():
                if isinstance(v, dict | list):
                    walk_v1(v, opened.get(k), found)
    elif isinstance(sealed, list) and isinstance(opened, list):
        for s, o in zip(sealed, opened, strict=False):
            if isinstance(s, dict | list):
                walk_v1(s, o, found)
