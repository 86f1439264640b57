"""pipeline.push.heap: freeze what arrived, collect once enough drivers left (gc calls recorded, not made)."""

from __future__ import annotations

from pipeline.push.heap import MIN_COLLECT_AFTER, HeapKeeper


def _keeper(calls: list[str]) -> HeapKeeper:
    def collect() -> int:
        calls.append("collect")
        return 0

    return HeapKeeper(freeze=lambda: calls.append("freeze"), unfreeze=lambda: calls.append("unfreeze"), collect=collect)


def test_freezes_only_after_arrivals() -> None:
    calls: list[str] = []
    k = _keeper(calls)
    assert k.tick() == "" and calls == []
    k.arrive()
    k.arrive()
    assert k.tick() == "freeze" and calls == ["freeze"]
    assert k.tick() == "" and calls == ["freeze"]  # nothing new: no freeze


def test_collects_once_enough_drivers_left() -> None:
    calls: list[str] = []
    k = _keeper(calls)
    for _ in range(8 * MIN_COLLECT_AFTER):
        k.arrive()
    k.tick()
    calls.clear()
    for _ in range(MIN_COLLECT_AFTER):
        k.depart()
    assert k.tick() == ""  # 1,000 of 8,000 gone: under a quarter, not yet worth a pause
    for _ in range(MIN_COLLECT_AFTER):
        k.depart()
    assert k.tick() == "collect" and calls == ["unfreeze", "collect", "freeze"]
    assert k.departed == 0 and k.collections == 1 and k.connected == 6 * MIN_COLLECT_AFTER
