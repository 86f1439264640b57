"""The live map page (`GET /map` on the push worker) in Debian's headless chromium, against the real broker.

Conditions and an alert are produced to the real topics; the page must draw a hexagon per cell
in its level's colour and a marker per incident, then follow a change live over /v1/stream
(a level change, a new cell, a cleared incident). The browser may reach nothing but the push
worker. The screenshot is kept as artifacts/map.png.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.async_api import BrowserContext, async_playwright

from pipeline import geo
from pipeline.push import mappage
from pipeline.settings import TOPIC_ALERTS, TOPIC_CONDITIONS, Settings
from tests.conftest import token_for
from tests.support.procs import Stack
from tests.support.streams import durable_producer, send_all

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "schemas" / "examples"
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def condition(cell: str, level: int, now: float) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((EXAMPLES / "condition" / "valid-one-sector.json").read_text())
    lat, lon = geo.cell_center(cell)
    doc.update(cell=cell, lat=lat, lon=lon, level=level, jam_factor=2.0 * level, version=int(now * 1000))
    doc["updated_at"] = now
    doc["sectors"][0].update(level=min(level, 4))
    return doc


def alert(cell: str, state: str, version: int, now: float) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((EXAMPLES / "alert" / "valid-opened-crash.json").read_text())
    lat, lon = geo.cell_center(cell)
    doc.update(id=f"i-map-{cell}", cell=cell, lat=lat, lon=lon, state=state, version=version, updated_at=now)
    return doc


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """Debian's chromium (make chromium), a fresh profile per test; playwright only drives it."""
    async with async_playwright() as pw:
        ctx = await pw.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",
            executable_path=CHROMIUM,
            args=FLAGS,
            headless=True,
            viewport={"width": 900, "height": 600},
        )
        try:
            yield ctx
        finally:
            await ctx.close()


def test_extent_pads_the_cells_and_bbox_watch_covers_the_box() -> None:
    c = geo.cell(48.137, 11.575, 9)
    box = mappage.extent([c])
    assert box is not None and box[0] < 48.137 < box[2] and box[1] < 11.575 < box[3]
    assert mappage.extent([]) is None
    watch = mappage.bbox_watch(box, 9)
    assert c in watch and set(watch.values()) == {mappage.ALL_DIRECTIONS}
    with pytest.raises(ValueError):
        mappage.bbox_watch([40.0, 0.0, 55.0, 20.0], 9)  # a continent is not a map view
    assert mappage.check_bbox({"bbox": [1, 2, 3]}) and mappage.check_bbox({"bbox": [3, 0, 1, 1]})
    assert mappage.check_bbox({"bbox": [1, 2, 3, 4]}) == ""


async def test_map_draws_cells_and_incidents_and_follows_changes_live(
    stack: Stack, settings: Settings, browser: BrowserContext
) -> None:
    rng = random.Random()
    lat0, lon0 = rng.uniform(48.10, 48.18), rng.uniform(11.50, 11.65)  # Munich: no other test's cells
    cells = [geo.cell(*geo.destination(lat0, lon0, 90.0, 400.0 * i), 9) for i in range(4)]
    now = time.time()
    producer = durable_producer(settings.bootstrap)
    await producer.start()
    try:
        first = [
            (c.encode(), orjson.dumps(condition(c, lvl, now))) for c, lvl in zip(cells[:3], (1, 3, 5), strict=True)
        ]
        await send_all(producer, TOPIC_CONDITIONS, first)
        crash = alert(cells[1], "opened", 1, now)
        await send_all(producer, TOPIC_ALERTS, [(cells[1].encode(), orjson.dumps(crash))])

        push = stack.push()
        base = f"http://127.0.0.1:{push.port}"
        box = mappage.extent(cells)
        assert box is not None
        token = token_for(settings, "map-viewer")
        page = await browser.new_page()
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        page.on("websocket", lambda ws: requested.append(ws.url))
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        t0 = time.monotonic()
        await page.goto(f"{base}/map?token={token}&bbox={','.join(f'{v:.6f}' for v in box)}")
        for c, lvl in zip(cells[:3], (1, 3, 5), strict=True):
            await page.wait_for_selector(
                f'polygon[data-cell="{c}"][data-level="{lvl}"]', state="attached", timeout=20_000
            )
        await page.wait_for_selector(f'circle[data-incident="{crash["id"]}"]', state="attached", timeout=10_000)
        shown = time.monotonic() - t0
        colour = await page.get_attribute(f'polygon[data-cell="{cells[2]}"]', "fill")
        assert colour == "#5b0d6e"  # level 5 (closed)

        # live: a level change, a new cell, the incident cleared
        later = time.time()
        changed = condition(cells[0], 4, later)
        changed["sectors"][0]["median_mps"] = 1.0
        await send_all(
            producer,
            TOPIC_CONDITIONS,
            [
                (cells[0].encode(), orjson.dumps(changed)),
                (cells[3].encode(), orjson.dumps(condition(cells[3], 2, later))),
            ],
        )
        cleared = copy.deepcopy(crash) | {"state": "cleared", "version": 2, "updated_at": later}
        await send_all(producer, TOPIC_ALERTS, [(cells[1].encode(), orjson.dumps(cleared))])
        await page.wait_for_selector(
            f'polygon[data-cell="{cells[0]}"][data-level="4"]', state="attached", timeout=10_000
        )
        await page.wait_for_selector(
            f'polygon[data-cell="{cells[3]}"][data-level="2"]', state="attached", timeout=10_000
        )
        await page.wait_for_selector(f'circle[data-incident="{crash["id"]}"]', state="detached", timeout=10_000)
        assert await page.get_attribute("#status", "data-ws") == "live"

        # a tombstoned cell (its condition expired) disappears from the map live
        await (await producer.send(TOPIC_CONDITIONS, key=cells[3].encode(), value=None))
        await page.wait_for_selector(f'polygon[data-cell="{cells[3]}"]', state="detached", timeout=10_000)
        assert await page.get_attribute(f'polygon[data-cell="{cells[0]}"]', "data-level") == "4"  # others stay

        await send_all(producer, TOPIC_ALERTS, [(cells[2].encode(), orjson.dumps(alert(cells[2], "opened", 1, later)))])
        await page.wait_for_selector(f'circle[data-incident="i-map-{cells[2]}"]', state="attached", timeout=10_000)
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "map.png"
        await page.screenshot(path=str(shot))
        assert shot.stat().st_size > 5_000
        assert not errors, errors
        outside = [u for u in requested if not u.startswith((base, base.replace("http", "ws")))]
        assert not outside, f"the page reached beyond the push worker: {outside}"
        print(f"map: first state drawn {shown:.2f}s after navigation; screenshot {shot}")
    finally:
        await producer.stop()


async def test_map_without_a_token_says_how_to_get_one(stack: Stack, browser: BrowserContext) -> None:
    push = stack.push()
    page = await browser.new_page()
    resp = await page.goto(f"http://127.0.0.1:{push.port}/map")
    assert resp is not None and resp.status == 200
    await page.wait_for_selector('#status[data-ws="no-token"]', state="attached", timeout=10_000)
    assert "traverz tokens issue" in (await page.text_content("#status") or "")
