"""The push benchmark's offered load: above the target, and news for every driver (nothing to coalesce)."""

from __future__ import annotations

from pipeline.bench import push
from pipeline.push.hub import Client, Hub
from pipeline.push.watch import cone_watch


def test_offered_load_is_above_the_target_and_each_message_is_news_for_its_spots_drivers() -> None:
    assert push.RATE * push.FANOUT >= 1.2 * 100_000  # delivered, not offered, is what may fall short
    clients = 2000
    cells, spots = push.target_cells(clients, 9), push.spots(clients)
    assert len(cells) == len(set(cells)) == push.CELLS_PER_SPOT * len(spots)  # each cell once a second at RATE
    hub = Hub()
    for lat, lon in spots:  # one driver per spot, as the client processes subscribe them
        hub.add(cl := Client(f"{lat},{lon}"))
        hub.subscribe(cl, cone_watch(lat, lon, 0.0, push.SPEED_MPS, 9), (lat, lon, 0.0))
    for rnd in range(3):  # the bench's speeds alternate round by round: each condition is news
        got = [hub.on_condition(c, push.condition(c, i, fast=rnd % 2 == 0)) for i, c in enumerate(cells, rnd * 10**4)]
        assert got == [1] * len(cells)  # each for exactly one spot's driver, every time
    assert {len(cl.outbox) for cl in hub.clients} == {push.CELLS_PER_SPOT}  # distinct cells: nothing coalesced away
