"""A running load on the ingest proxy: devices posting pings over HTTP until told to stop.

Every ping is retried until it is answered 202 (a 503 or a connection error says nothing
about whether Kafka has it), and every ``resend_every``-th request carries the previous
request's pings again (a phone that did not hear the 202): so the set of pings sent is the
set a correct pipeline must count, each (device_id, seq) once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

import httpx

from pipeline import geo, pings


@dataclass
class Device:
    device_id: str
    token: str
    lat: float
    lon: float
    heading: float
    seq: int = 0
    last: list[pings.Ping] = field(default_factory=list)


@dataclass
class PingLoad:
    url: str
    devices: list[Device]
    interval_s: float = 0.6
    resend_every: int = 5
    sent: list[pings.Ping] = field(default_factory=list)  # every ping answered 202 (some more than once)
    requests: int = 0
    refused: dict[int, int] = field(default_factory=dict)  # status → count of answers other than 202
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    rng: random.Random = field(default_factory=random.Random)

    def ping(self, d: Device) -> pings.Ping:
        d.seq += 1
        lat, lon = geo.destination(d.lat, d.lon, self.rng.uniform(0, 360), self.rng.uniform(0, 15))
        return {
            "device_id": d.device_id,
            "seq": d.seq,
            "ts": round(time.time(), 3),
            "lat": lat,
            "lon": lon,
            "speed_mps": round(self.rng.uniform(8.0, 12.0), 1),
            "heading_deg": d.heading,
            "accuracy_m": 5.0,
        }

    async def post(self, client: httpx.AsyncClient, d: Device, batch: list[pings.Ping]) -> None:
        """Until 202: the pings are in Kafka exactly when the proxy says so."""
        while True:
            self.requests += 1
            with contextlib.suppress(httpx.HTTPError):
                r = await client.post(
                    f"{self.url}/v1/pings", json=batch, headers={"authorization": f"Bearer {d.token}"}
                )
                if r.status_code == 202:
                    assert r.json()["accepted"] == len(batch), r.text
                    self.sent.extend(batch)
                    return
                self.refused[r.status_code] = self.refused.get(r.status_code, 0) + 1
                assert r.status_code in (429, 503), r.text
            await asyncio.sleep(0.3)

    async def drive(self, client: httpx.AsyncClient, d: Device, offset: float) -> None:
        await asyncio.sleep(offset)
        n = 0
        while not self.stop.is_set():
            batch = [self.ping(d)]
            n += 1
            if n % self.resend_every == 0 and d.last:
                batch = d.last + batch  # a retry merged with a newer ping
            await self.post(client, d, batch)
            d.last = batch[-1:]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.interval_s)

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=10.0) as client:
            await asyncio.gather(
                *(self.drive(client, d, i * self.interval_s / len(self.devices)) for i, d in enumerate(self.devices))
            )

    def unique(self) -> list[pings.Ping]:
        seen: dict[tuple[str, int], pings.Ping] = {}
        for p in self.sent:
            seen.setdefault((p["device_id"], p["seq"]), p)
        return list(seen.values())
