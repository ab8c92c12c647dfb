"""Which partition a key goes to: stable across processes, runs and transports.

The hash is Kafka's default partitioner (murmur2 of the UTF-8 key, made positive,
modulo the partition count), so a key lands in the same partition number on the
embedded log, on Kafka with any Java or librdkafka producer, and on NATS.
"""

from __future__ import annotations

import itertools
import struct
from functools import lru_cache

__all__ = ["murmur2", "partition_for"]

_WORDS = struct.Struct("<I")
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``: a signed 32-bit hash of ``data``."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    end4 = length & ~3
    for (k,) in _WORDS.iter_unpack(data[:end4]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    rest = length & 3
    if rest == 3:
        h ^= data[end4 + 2] << 16
    if rest >= 2:
        h ^= data[end4 + 1] << 8
    if rest >= 1:
        h ^= data[end4]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


_round_robin = itertools.count()


@lru_cache(maxsize=65536)
def _keyed(key: str, partitions: int) -> int:
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


def partition_for(key: str | None, partitions: int) -> int:
    """The partition of ``key`` among ``partitions``; keyless records rotate."""
    if key is None:
        return next(_round_robin) % partitions
    return _keyed(key, partitions)
