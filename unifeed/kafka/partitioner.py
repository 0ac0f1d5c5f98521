"""Kafka's default partitioner for keyed records, as its Java clients compute it.

``partition = (murmur2(key) & 0x7fffffff) % partitions``: the Java producer's
``BuiltInPartitioner.partitionForKey`` (``Utils.toPositive(Utils.murmur2(key))``), and
librdkafka's ``murmur2``/``murmur2_random`` partitioners. Records a Java client or
Kafka Streams writes with the same key land in the same partition.

Pure: no client, no I/O.
"""

from __future__ import annotations

from typing import Final

_M: Final = 0x5BD1E995
_SEED: Final = 0x9747B28C
_MASK32: Final = 0xFFFFFFFF


def murmur2(key: bytes) -> int:
    """MurmurHash2 of ``key`` as Kafka's ``Utils.murmur2`` returns it (a signed 32-bit int).

    >>> murmur2(b"21"), murmur2(b"foobar")
    (-973932308, -790332482)

    Runtime complexity: O(len(key)).
    """
    length = len(key)
    h = (_SEED ^ length) & _MASK32
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(key[i : i + 4], "little")
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = ((h * _M) & _MASK32) ^ k
    rest = length - whole
    if rest:
        if rest == 3:
            h ^= key[whole + 2] << 16
        if rest >= 2:
            h ^= key[whole + 1] << 8
        h ^= key[whole]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's Java producer picks for a record with this key.

    >>> partition_for_key(b"foobar", 4)   # (-790332482 & 0x7fffffff) % 4
    2
    """
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    return (murmur2(key) & 0x7FFFFFFF) % partitions
