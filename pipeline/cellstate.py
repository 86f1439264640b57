"""In-memory keyed state in front of a faust table, written back per partition.

Faust binds a table write to the partition of the event being processed (its
changelog partition and its RocksDB instance). So the hot state lives in plain
dicts, and each partition's dirty keys are written back only while an event of
*that* partition is current — never from a timer, never into another
partition's changelog.

Two write-back policies:

* ``every_s=0`` (default): every :meth:`flush` writes — call it at the end of
  each record, so what is in the changelog matches the offsets faust commits
  (faust flushes the producer before committing). Used where exactness matters
  (the speed windows and their dedupe state).
* ``every_s>0``: a partition's dirty keys are written at most that often.
  After a crash the state of the last interval is lost, not doubled: used for
  state that is cheap to relearn (baselines, per-device motion).

``persist(value)`` False keeps a value in memory only (and removes a stored
copy): e.g. a moving device's last ping, which only matters for its next ping.

Once a partition's stored rows have all been read (:meth:`adopt` ran to its end), a key
missing from memory is missing from the table too: :meth:`get` no longer reads it. Every
device that enters a new res-7 key was such a miss — a RocksDB read each (~1.5 % of a busy
worker). A partition stops being complete when it is forgotten or a key of it is evicted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
Row = tuple[bytes, bytes | None]  # (key, value); None deletes the key


class PartitionTable(Protocol):
    """A byte table split in partitions (a faust table: one RocksDB and changelog partition each)."""

    def read(self, partition: int, key: bytes) -> bytes | None: ...

    def write(self, partition: int, rows: list[Row]) -> None: ...

    def scan(self, partition: int) -> Iterator[tuple[bytes, bytes]]: ...


class DictTable(dict[bytes, bytes]):
    """Every partition in one dict: for tests and tools (keys never repeat across partitions)."""

    def __init__(self, rows: dict[bytes, bytes] | None = None, partition: int = 0) -> None:
        super().__init__(rows or {})
        self.partition_of: dict[bytes, int] = dict.fromkeys(self, partition)

    def read(self, partition: int, key: bytes) -> bytes | None:
        return self.get(key)

    def write(self, partition: int, rows: list[Row]) -> None:
        for key, value in rows:
            if value is None:
                self.pop(key, None)
                self.partition_of.pop(key, None)
            else:
                self[key] = value
                self.partition_of[key] = partition

    def scan(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        return iter([(k, v) for k, v in self.items() if self.partition_of.get(k) == partition])


def _always(_: object) -> bool:
    return True


class PartitionedState(Generic[T]):
    """key → value cache with per-partition dirty tracking over a byte table."""

    def __init__(
        self,
        table: PartitionTable,
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
        empty: Callable[[T], bool],
        *,
        every_s: float = 0.0,
        persist: Callable[[T], bool] = _always,
    ) -> None:
        self.table = table
        self.encode, self.decode, self.empty = encode, decode, empty
        self.every_s = every_s
        self.persist = persist
        self.values: dict[str, T] = {}
        self.partition_of: dict[str, int] = {}
        self.dirty: dict[int, set[str]] = {}
        self.stored: set[str] = set()  # keys known to have a copy in the table
        self.flushed_at: dict[int, float] = {}
        self.writes = 0
        # partitions whose stored rows are all in ``values`` (or deleted from it since): no reads
        self.complete: set[int] = set()

    def get(self, key: str, partition: int) -> T | None:
        """The value of ``key``; reads the table only inside an event of ``partition``."""
        v = self.values.get(key)
        if v is None and partition not in self.complete:
            raw = self.table.read(partition, key.encode())
            if raw is not None:
                v = self.values[key] = self.decode(raw)
                self.partition_of[key] = partition
                self.stored.add(key)
        return v

    def put(self, key: str, value: T, partition: int) -> None:
        self.values[key] = value
        self.partition_of[key] = partition
        self.dirty.setdefault(partition, set()).add(key)

    def touch(self, keys: set[str], partition: int) -> None:
        """Note that ``keys`` (already in :attr:`values`) changed in an event of ``partition``.

        The hot loop writes ``values`` directly and marks once per record.
        """
        if keys:
            # a key's partition never changes (its cell's key decides it): only new keys need one
            new = keys.difference(self.partition_of)  # set.difference(dict): looks each of keys up
            if new:
                self.partition_of.update(dict.fromkeys(new, partition))
            self.dirty.setdefault(partition, set()).update(keys)

    def mark_known(self, keys: set[str], partition: int) -> None:
        """:meth:`touch` for keys whose partition is already noted (put, got, or noted by the caller).

        The speed windows of a record: ~64 cells, each a look-up in a dict of every cell when
        :meth:`touch` checks for new ones (~2 % of a busy worker).
        """
        if keys:
            self.dirty.setdefault(partition, set()).update(keys)

    def mark(self, key: str) -> None:
        """Note that ``key`` changed (e.g. a timer expired part of it)."""
        p = self.partition_of.get(key)
        if p is not None:
            self.dirty.setdefault(p, set()).add(key)

    def drop(self, key: str) -> None:
        """Forget ``key``; its stored copy is deleted at the next flush of its partition.

        Until then a :meth:`get` of a complete partition does not bring the dropped value back.
        """
        self.mark(key)
        self.values.pop(key, None)

    def evict(self, key: str) -> None:
        """Forget the in-memory copy of a clean key (the table keeps it)."""
        p = self.partition_of.get(key)
        if p is not None and key in self.dirty.get(p, ()):
            return
        if p is not None:
            self.complete.discard(p)  # the table holds a row memory does not
        self.values.pop(key, None)
        self.partition_of.pop(key, None)

    def flush(self, partition: int, now: float = 0.0) -> int:
        """Write back ``partition``'s dirty keys (if due). Call only inside one of its events."""
        if self.every_s > 0:
            if now - self.flushed_at.get(partition, 0.0) < self.every_s:
                return 0
            self.flushed_at[partition] = now
        keys = self.dirty.pop(partition, None)
        if not keys:
            return 0
        values, stored, encode = self.values, self.stored, self.encode
        rows: list[Row] = []
        for key in keys:
            v = values.get(key)
            if v is None or self.empty(v):
                values.pop(key, None)
                self.partition_of.pop(key, None)
                if key in stored:
                    stored.discard(key)
                    rows.append((key.encode(), None))
            elif self.persist(v):
                rows.append((key.encode(), encode(v)))
                stored.add(key)
            elif key in stored:
                stored.discard(key)
                rows.append((key.encode(), None))
        if rows:
            self.table.write(partition, rows)
            self.writes += len(rows)
        return len(keys)

    def adopt(self, partition: int) -> Iterator[tuple[str, T]]:
        """Load ``partition``'s stored rows not in memory yet (lazily: a generator), yielding each.

        A key only the table holds is otherwise read when a record touches it again,
        so after a restart or a takeover its timers (expiry, lifetimes) would never run.
        """
        values, decode = self.values, self.decode
        for raw_key, raw in self.table.scan(partition):
            key = raw_key.decode()
            if key in values:
                continue  # a record loaded it (and maybe changed it) already
            v = values[key] = decode(raw)
            self.partition_of[key] = partition
            self.stored.add(key)
            yield key, v
        # every stored row is in memory now: a key absent from it is absent from the table
        self.complete.add(partition)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self.values.items()))

    def forget_partitions(self, keep: set[int]) -> None:
        """Drop cached keys of partitions this worker no longer owns."""
        for key in [k for k, p in self.partition_of.items() if p not in keep]:
            self.values.pop(key, None)
            self.partition_of.pop(key, None)
            self.stored.discard(key)
        for p in [p for p in self.dirty if p not in keep]:
            del self.dirty[p]
        self.complete &= keep
