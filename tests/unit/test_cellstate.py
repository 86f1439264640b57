"""pipeline.cellstate: in-memory cell state written back per partition into a byte table."""

from __future__ import annotations

import orjson

from pipeline.cellstate import DictTable, PartitionedState
from pipeline.speed import CellSpeedWindow


def _state(table: dict[bytes, bytes] | None = None) -> tuple[PartitionedState[list[int]], DictTable]:
    t = DictTable(table or {})
    st: PartitionedState[list[int]] = PartitionedState(
        t, encode=orjson.dumps, decode=orjson.loads, empty=lambda v: not v
    )
    return st, t


def test_flush_writes_only_that_partitions_keys() -> None:
    st, table = _state()
    st.put("a", [1], 0)
    st.put("b", [2], 1)
    st.put("c", [3], 0)
    assert table == {}  # nothing is written before a flush
    assert st.flush(0) == 2
    assert table == {b"a": b"[1]", b"c": b"[3]"}
    assert st.flush(0) == 0  # nothing dirty any more
    assert st.flush(1) == 1
    assert table[b"b"] == b"[2]"
    assert st.flush(7) == 0


def test_changes_after_flush_are_written_on_next_flush() -> None:
    st, table = _state()
    st.put("a", [1], 0)
    st.flush(0)
    v = st.get("a", 0)
    assert v is not None
    v.append(9)
    assert table[b"a"] == b"[1]"
    st.mark("a")
    st.flush(0)
    assert table[b"a"] == b"[1,9]"


def test_empty_values_are_deleted_on_flush() -> None:
    st, table = _state()
    st.put("a", [1], 3)
    st.put("b", [2], 3)
    st.flush(3)
    st.put("a", [], 3)
    assert b"a" in table  # still there until the flush
    st.flush(3)
    assert table == {b"b": b"[2]"}
    assert "a" not in st.values and "a" not in st.partition_of
    assert st.get("a", 3) is None


def test_mark_of_unknown_key_is_ignored() -> None:
    st, table = _state()
    st.mark("ghost")
    assert st.dirty == {}
    assert st.flush(0) == 0 and table == {}


def test_get_reads_through_to_the_table() -> None:
    st, _ = _state({b"x": b"[5,6]"})
    assert st.get("missing", 2) is None
    assert st.get("x", 2) == [5, 6]
    assert st.partition_of["x"] == 2
    # a later change is written back into the partition it was read in
    v = st.get("x", 2)
    assert v is not None
    v.append(7)
    st.mark("x")
    assert st.dirty == {2: {"x"}}
    st.flush(2)
    assert st.table[b"x"] == b"[5,6,7]"


def test_get_prefers_the_cache() -> None:
    st, table = _state({b"x": b"[1]"})
    assert st.get("x", 0) == [1]
    table[b"x"] = b"[2]"
    assert st.get("x", 0) == [1]


def test_forget_partitions_drops_other_partitions() -> None:
    st, table = _state()
    st.put("keep", [1], 0)
    st.put("lose", [2], 1)
    st.put("lose-too", [3], 2)
    st.flush(1)
    st.put("lose", [2, 2], 1)
    st.forget_partitions({0})
    assert dict(st.items()) == {"keep": [1]}
    assert set(st.partition_of) == {"keep"}
    assert set(st.dirty) == {0}
    # the table (the partition's changelog) is not touched; the new owner reads from it
    assert table == {b"lose": b"[2]"}
    assert st.flush(1) == 0
    assert st.flush(0) == 1
    assert table[b"keep"] == b"[1]"


def test_items_is_a_snapshot() -> None:
    st, _ = _state()
    st.put("a", [1], 0)
    it = st.items()
    st.put("b", [2], 0)
    assert list(it) == [("a", [1])]


def test_with_speed_windows() -> None:
    st: PartitionedState[CellSpeedWindow] = PartitionedState(
        DictTable(), encode=CellSpeedWindow.to_bytes, decode=CellSpeedWindow.from_bytes, empty=CellSpeedWindow.is_empty
    )
    w = CellSpeedWindow()
    w.add("d", 1, 1000.0, 10.0, 0.0, 1000.0)
    st.put("cell", w, 4)
    st.flush(4)
    restored: PartitionedState[CellSpeedWindow] = PartitionedState(
        st.table, encode=CellSpeedWindow.to_bytes, decode=CellSpeedWindow.from_bytes, empty=CellSpeedWindow.is_empty
    )
    w2 = restored.get("cell", 4)
    assert w2 is not None and w2.stats(1000.0) == w.stats(1000.0)
    assert not w2.add("d", 1, 1000.0, 10.0, 0.0, 1000.0)
    w2.expire(1_000_000.0)
    restored.mark("cell")
    restored.flush(4)
    assert st.table == {}


class CountingTable(DictTable):
    """A DictTable that counts reads: a complete partition must not be read."""

    def __init__(self, rows: dict[bytes, bytes] | None = None, partition: int = 0) -> None:
        super().__init__(rows, partition)
        self.reads = 0

    def read(self, partition: int, key: bytes) -> bytes | None:
        self.reads += 1
        return super().read(partition, key)


def _counting(rows: dict[bytes, bytes]) -> tuple[PartitionedState[list[int]], CountingTable]:
    t = CountingTable(rows, partition=2)
    st: PartitionedState[list[int]] = PartitionedState(
        t, encode=orjson.dumps, decode=orjson.loads, empty=lambda v: not v
    )
    return st, t


def test_a_partition_read_whole_is_not_read_again_for_missing_keys() -> None:
    st, t = _counting({b"a": b"[1]"})
    assert st.get("x", 2) is None
    assert t.reads == 1  # not adopted yet: a miss may be in the table
    assert [k for k, _ in st.adopt(2)] == ["a"]
    assert st.get("y", 2) is None and st.get("a", 2) == [1]
    assert t.reads == 1  # every stored row is in memory: nothing to read
    assert st.get("z", 5) is None
    assert t.reads == 2  # another partition still reads


def test_a_half_read_partition_still_reads() -> None:
    st, t = _counting({b"a": b"[1]", b"b": b"[2]"})
    rows = st.adopt(2)
    next(rows)  # the budgeted adoption of speed windows stops between rows
    missing = "b" if "a" in st.values else "a"
    assert st.get(missing, 2) is not None
    assert t.reads == 1


def test_forgotten_or_evicted_partitions_read_again() -> None:
    st, t = _counting({b"a": b"[1]"})
    list(st.adopt(2))
    st.forget_partitions({0})
    assert st.get("a", 2) == [1]  # read back: the partition was forgotten
    assert t.reads == 1
    list(st.adopt(2))
    st.evict("a")  # clean: only the table has it now
    assert st.get("a", 2) == [1]
    assert t.reads == 2


def test_a_dropped_key_of_a_complete_partition_stays_dropped() -> None:
    st, t = _counting({b"a": b"[1]"})
    list(st.adopt(2))
    st.drop("a")
    assert st.get("a", 2) is None  # the stored copy is on its way out: not brought back
    st.flush(2)
    assert b"a" not in t
