"""Crypto-shredding of personal data (decision 0036): fields marked
:class:`~tidings.personal.Personal` are encrypted at publish with their subject's data
key, opened at consume for the subscribers that ask (``personal=True``), masked for
every other reader, and erased for good by deleting the subject's key.

``tidings.shredding.fields`` (the encrypted form, masking, opening) imports neither
SQLAlchemy nor ``cryptography`` until a key store is used;
:class:`SqlKeyStore` (``tidings.shredding.keystore``) needs the ``personal`` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tidings.shredding.fields import (
    ENCRYPTED,
    ERASED,
    EXTENSION,
    MASK,
    KeyStore,
    KeyStoreError,
    Shredder,
    mask,
)

if TYPE_CHECKING:
    from tidings.shredding.keystore import SqlKeyStore

__all__ = [
    "ENCRYPTED",
    "ERASED",
    "EXTENSION",
    "MASK",
    "KeyStore",
    "KeyStoreError",
    "Shredder",
    "SqlKeyStore",
    "mask",
]


def __getattr__(name: str) -> Any:
    if name == "SqlKeyStore":  # SQLAlchemy and cryptography: only when asked for
        from tidings.shredding.keystore import SqlKeyStore

        return SqlKeyStore
    raise AttributeError(name)
