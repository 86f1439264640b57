"""In-memory cell state in front of a faust table, written back per partition.

Faust binds a table write to the partition of the event being processed (its
changelog partition and its RocksDB instance). So the hot state lives in plain
dicts, and each partition's dirty keys are written back only while an event of
*that* partition is current — never from a timer, never into another
partition's changelog.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Generic, TypeVar

T = TypeVar("T")


class PartitionedState(Generic[T]):
    """key → value cache with per-partition dirty tracking over a byte table."""

    def __init__(
        self,
        table: MutableMapping[bytes, bytes],
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
        empty: Callable[[T], bool],
    ) -> None:
        self.table = table
        self.encode, self.decode, self.empty = encode, decode, empty
        self.values: dict[str, T] = {}
        self.partition_of: dict[str, int] = {}
        self.dirty: dict[int, set[str]] = {}

    def get(self, key: str, partition: int) -> T | None:
        """The value of ``key``; reads the table only inside an event of ``partition``."""
        v = self.values.get(key)
        if v is None:
            raw = self.table.get(key.encode())
            if raw is not None:
                v = self.values[key] = self.decode(raw)
                self.partition_of[key] = partition
        return v

    def put(self, key: str, value: T, partition: int) -> None:
        self.values[key] = value
        self.partition_of[key] = partition
        self.mark(key)

    def mark(self, key: str) -> None:
        """Note that ``key`` changed (e.g. a timer expired part of it)."""
        p = self.partition_of.get(key)
        if p is not None:
            self.dirty.setdefault(p, set()).add(key)

    def flush(self, partition: int) -> int:
        """Write back ``partition``'s dirty keys. Call only inside one of its events."""
        keys = self.dirty.pop(partition, None)
        if not keys:
            return 0
        for key in keys:
            v = self.values.get(key)
            if v is None or self.empty(v):
                self.values.pop(key, None)
                self.partition_of.pop(key, None)
                self.table.pop(key.encode(), None)
            else:
                self.table[key.encode()] = self.encode(v)
        return len(keys)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self.values.items()))

    def forget_partitions(self, keep: set[int]) -> None:
        """Drop cached keys of partitions this worker no longer owns."""
        for key in [k for k, p in self.partition_of.items() if p not in keep]:
            self.values.pop(key, None)
            self.partition_of.pop(key, None)
        for p in [p for p in self.dirty if p not in keep]:
            del self.dirty[p]
