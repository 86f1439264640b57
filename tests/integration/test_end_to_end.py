"""One path through the whole system, all real: HTTP → Kafka → faust → Kafka → WebSocket."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from pipeline import geo
from pipeline.settings import Settings
from tests.conftest import token_for
from tests.support.procs import Stack

pytestmark = pytest.mark.integration

# A spot no other test uses (Berlin-Lichtenberg), so shared topics do not mix tests.
LAT, LON = 52.5155, 13.4990


async def test_ping_reaches_subscribed_driver_as_condition(stack: Stack, settings: Settings) -> None:
    ingest = stack.ingest()
    stack.worker()
    push = stack.push()
    target = geo.cell(LAT, LON, settings.cell_resolution)
    now = time.time()
    speeds = {"e2e-a": [10.0, 11.0], "e2e-b": [12.0, 13.0], "e2e-c": [14.0, 15.0]}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ingest.port}") as http:
        for dev, values in speeds.items():
            batch = [
                {
                    "seq": i + 1,
                    "ts": now - 10 + i,
                    "lat": LAT,
                    "lon": LON,
                    "speed_mps": v,
                    "heading_deg": 90.0,
                    "accuracy_m": 4.0,
                }
                for i, v in enumerate(values)
            ]
            r = await http.post(
                "/v1/pings", json=batch, headers={"authorization": f"Bearer {token_for(settings, dev)}"}
            )
            assert r.status_code == 202, r.text
            assert r.json()["accepted"] == 2

    # a driver 400 m west of the cell, heading east toward it
    lat0, lon0 = geo.destination(LAT, LON, 270.0, 400.0)
    url = f"ws://127.0.0.1:{push.port}/v1/stream"
    headers = {"Authorization": f"Bearer {token_for(settings, 'e2e-driver')}"}
    async with connect(url, additional_headers=headers) as ws:
        await ws.send(
            orjson.dumps(
                {"type": "subscribe", "lat": lat0, "lon": lon0, "heading_deg": 90.0, "speed_mps": 12.0}
            ).decode()
        )
        cond = await asyncio.wait_for(_first_condition(ws, target), timeout=90)
    assert cond["cell"] == target
    (sector,) = [s for s in cond["sectors"] if s["sector"] == geo.sector(90.0)]
    assert sector["samples"] == 6
    assert sector["devices"] == 3
    assert sector["mean_mps"] == pytest.approx(12.5, abs=0.01)
    assert 11.5 <= sector["median_mps"] <= 13.5
    assert "device_id" not in orjson.dumps(cond).decode()


async def _first_condition(ws: object, cell: str) -> dict:  # type: ignore[type-arg]
    async for raw in ws:  # type: ignore[attr-defined]
        msg = orjson.loads(raw)
        if msg["type"] == "condition" and msg["condition"]["cell"] == cell:
            return msg["condition"]  # type: ignore[no-any-return]
    raise AssertionError("stream closed")
