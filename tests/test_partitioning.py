"""Partitioning: Kafka's murmur2, stable across processes, keyless records spread."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections import Counter

import pytest

from tidings.partitioning import murmur2, partition_for

# The values Kafka's own tests pin (clients/src/test/.../utils/UtilsTest.java,
# testMurmur2), which any Kafka producer's default partitioner reproduces.
KAFKA_VECTORS = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize(("data", "expected"), KAFKA_VECTORS)
def test_murmur2_matches_kafka(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_murmur2_is_a_signed_32_bit_value() -> None:
    for i in range(2000):
        value = murmur2(f"key-{i}".encode())
        assert -(2**31) <= value < 2**31


@pytest.mark.parametrize("length", range(9))
def test_murmur2_covers_every_tail_length(length: int) -> None:
    data = bytes(range(1, length + 1))
    assert murmur2(data) == murmur2(bytes(data))  # deterministic
    if length:
        assert murmur2(data) != murmur2(data[:-1])  # the last byte counts


def test_partition_of_a_key_is_kafkas_positive_murmur2_modulo() -> None:
    for key in ("t1", "task-42", "ünïcode", "", "a" * 300):
        for partitions in (1, 3, 8, 16, 100):
            expected = (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions
            assert partition_for(key, partitions) == expected


def test_partition_of_a_key_is_known_in_advance() -> None:
    # (murmur2(b"21") & 0x7fffffff) == 1173551340
    assert partition_for("21", 8) == 1173551340 % 8 == 4
    assert partition_for("foobar", 3) == (-790332482 & 0x7FFFFFFF) % 3


def test_one_partition_takes_everything() -> None:
    assert {partition_for(f"k{i}", 1) for i in range(100)} == {0}
    assert {partition_for(None, 1) for _ in range(10)} == {0}


def test_keys_spread_over_partitions() -> None:
    counts = Counter(partition_for(f"task-{i}", 8) for i in range(8000))
    assert set(counts) == set(range(8))
    assert min(counts.values()) > 800  # about 1000 each


_CHILD = """
import json, sys
from tidings.partitioning import partition_for
keys = json.loads(sys.stdin.read())
print(json.dumps([partition_for(k, 12) for k in keys]))
"""


def test_partition_for_is_the_same_in_another_process() -> None:
    # str hashing is randomized per process; the partition must not be.
    keys = [f"task-{i}" for i in range(200)] + ["", "ü", "日本語", "a" * 100]
    result = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=json.dumps(keys),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert json.loads(result.stdout) == [partition_for(k, 12) for k in keys]


def test_records_without_a_key_spread_over_every_partition() -> None:
    chosen = [partition_for(None, 4) for _ in range(400)]
    counts = Counter(chosen)
    assert set(counts) == {0, 1, 2, 3}
    assert max(counts.values()) - min(counts.values()) <= 1  # rotation, not clumps
    # Consecutive keyless records do not pile onto one partition.
    assert all(a != b for a, b in itertools.pairwise(chosen))
