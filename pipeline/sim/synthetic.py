"""A fast synthetic city (no SUMO): drivers on a handful of straight roads.

Each road runs through the centre at its own bearing, with its own traffic
speed (one is congested), so neighbouring cells see several devices in both
directions. Used by ``make demo`` and the throughput benchmarks; the SUMO city
is the realistic one.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import httpx

from pipeline import geo, tokens
from pipeline.settings import Settings

CENTRE = (52.5200, 13.4050)  # Berlin Mitte
ROADS = ((0.0, 13.0), (60.0, 4.0), (120.0, 11.0), (90.0, 15.0))  # bearing, typical speed m/s
ROAD_HALF_LENGTH_M = 2500.0


@dataclass
class Driver:
    device_id: str
    token: str
    road: int
    direction: int  # +1 along the bearing, -1 against it
    pos_m: float
    speed: float
    seq: int = 0

    def step(self, dt: float, rng: random.Random) -> dict[str, float | int]:
        bearing, typical = ROADS[self.road]
        self.speed = max(0.0, min(35.0, typical + rng.gauss(0.0, 1.5)))
        self.pos_m += self.direction * self.speed * dt
        if abs(self.pos_m) > ROAD_HALF_LENGTH_M:  # turn around at the end of the road
            self.direction = -self.direction
            self.pos_m = max(-ROAD_HALF_LENGTH_M, min(ROAD_HALF_LENGTH_M, self.pos_m))
        lat, lon = geo.destination(CENTRE[0], CENTRE[1], bearing, self.pos_m)
        heading = bearing if self.direction > 0 else (bearing + 180.0) % 360.0
        self.seq += 1
        return {
            "seq": self.seq,
            "ts": time.time(),
            "lat": lat,
            "lon": lon,
            "speed_mps": round(self.speed, 2),
            "heading_deg": heading,
            "accuracy_m": 5.0,
        }


def make_drivers(n: int, s: Settings, seed: int = 7) -> list[Driver]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        dev = f"sim-{i:06d}"
        tok = tokens.issue(
            dev, secret=s.token_secret, kid=s.token_kid, issuer=s.token_issuer, audience=s.token_audience
        )
        out.append(
            Driver(
                dev,
                tok,
                road=i % len(ROADS),
                direction=rng.choice((1, -1)),
                pos_m=rng.uniform(-ROAD_HALF_LENGTH_M, ROAD_HALF_LENGTH_M),
                speed=0.0,
            )
        )
    return out


async def drive(base_url: str, s: Settings, devices: int, duration: float, interval: float = 5.0) -> int:
    """Post one ping per driver every ``interval`` s until ``duration`` (0 = forever)."""
    rng = random.Random(11)
    drivers = make_drivers(devices, s)
    end = time.monotonic() + duration if duration > 0 else float("inf")
    sent = failed = 0
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10.0) as client:
        sem = asyncio.Semaphore(32)

        async def post(d: Driver) -> None:
            nonlocal sent, failed
            async with sem:
                try:
                    r = await client.post(
                        "/v1/pings", json=d.step(interval, rng), headers={"authorization": f"Bearer {d.token}"}
                    )
                    if r.status_code == 202:
                        sent += 1
                    else:
                        failed += 1
                except httpx.HTTPError:
                    failed += 1

        while time.monotonic() < end:
            t0 = time.monotonic()
            # spread each round over the interval, like real phones
            for chunk_start in range(0, len(drivers), max(1, len(drivers) // 10)):
                chunk = drivers[chunk_start : chunk_start + max(1, len(drivers) // 10)]
                await asyncio.gather(*(post(d) for d in chunk))
                await asyncio.sleep(max(0.0, interval / 10 - 0.01))
            print(f"simulate: {sent} pings accepted, {failed} failed", flush=True)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))
    return 0 if sent else 1
