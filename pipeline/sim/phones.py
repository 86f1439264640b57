"""Every SUMO vehicle is a phone: its own device token, pings every few seconds, reports and votes.

A phone samples its vehicle every ``ping_interval_s`` of sim time (stamped on the run's
time line, :mod:`pipeline.sim.clock`), adds its GPS error, and posts the ping to
``POST /v1/pings``. Without coverage (inside a ``coverage_gap``) or after a failed post it
keeps the pings and uploads them as one batch (≤ 500, the API's limit) at its next chance,
so the worker sees a backlog in event time, as from a real phone. Drivers who pass an
incident report it (``report_share``), and those who pass a spot with a report vote on it:
``still_there`` when something is there, ``not_there`` when not.

Pure parts (:class:`Phone` sampling and buffering, :func:`chosen`) are unit-tested; the
:class:`Uplink` is the HTTP client, exercised against the real ingest proxy.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import Any

import httpx

from pipeline import geo, tokens
from pipeline.settings import Settings
from pipeline.sim.sumo import Vehicle

MAX_BATCH = 500


def chosen(key: str, share: float, salt: str = "") -> bool:
    """A stable draw: whether ``key`` falls in ``share`` (same answer in every run of a scenario)."""
    h = int.from_bytes(hashlib.blake2b(f"{salt}|{key}".encode(), digest_size=8).digest(), "big")
    return h / 2**64 < share


@dataclass
class Phone:
    device: str
    token: str
    sigma_m: float  # GPS error, 1 σ per axis
    next_ping_s: float
    seq: int = 0
    backlog: list[dict[str, Any]] = field(default_factory=list)
    in_flight: bool = False

    def sample(self, v: Vehicle, ts: float, rng: random.Random) -> dict[str, Any]:
        """The ping this phone makes of its vehicle now (with its GPS error)."""
        self.seq += 1
        lat, lon = v.lat, v.lon
        if self.sigma_m > 0:
            north, east = rng.gauss(0.0, self.sigma_m), rng.gauss(0.0, self.sigma_m)
            lat += north / 111_320.0
            lon += east / (111_320.0 * math.cos(math.radians(v.lat)))
        speed = max(0.0, v.speed + rng.gauss(0.0, 0.1 + 0.02 * self.sigma_m))
        return {
            "seq": self.seq,
            "ts": round(ts, 3),
            "lat": round(lat, 7),
            "lon": round(lon, 7),
            "speed_mps": round(speed, 2),
            "heading_deg": round(v.heading % 360.0, 1),
            "accuracy_m": round(max(3.0, 1.5 * self.sigma_m), 1),
        }

    def take(self, ping: dict[str, Any] | None) -> list[dict[str, Any]]:
        """What to post now: the backlog plus ``ping`` (at most one batch); the rest stays queued."""
        if ping is not None:
            self.backlog.append(ping)
        batch, self.backlog = self.backlog[:MAX_BATCH], self.backlog[MAX_BATCH:]
        return batch

    def give_back(self, batch: list[dict[str, Any]]) -> None:
        """A post failed: keep its pings (in order) for the next try."""
        self.backlog = batch + self.backlog


@dataclass
class Counters:
    pings_posted: int = 0
    pings_accepted: int = 0
    pings_rejected: int = 0
    batches: int = 0  # posts carrying more than one ping (backlogs after a gap or a failure)
    throttled: int = 0
    failed: int = 0
    reports: int = 0
    votes: int = 0
    max_backlog: int = 0


class Uplink:
    """HTTP to the ingest proxy with a bounded number of requests in flight."""

    def __init__(self, base_url: str, s: Settings, concurrency: int = 48) -> None:
        self.s = s
        self.client = httpx.AsyncClient(
            base_url=base_url, timeout=10.0, limits=httpx.Limits(max_connections=concurrency)
        )
        self.sem = asyncio.Semaphore(concurrency)
        self.n = Counters()
        self.tasks: set[asyncio.Task[None]] = set()
        self.report_ids: dict[str, tuple[float, float, str, float]] = {}  # id → lat, lon, type, heading

    def token(self, device: str) -> str:
        s = self.s
        return tokens.issue(
            device, secret=s.token_secret, kid=s.token_kid, issuer=s.token_issuer, audience=s.token_audience
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def backlog(self) -> int:
        return len(self.tasks)

    def send_pings(self, phone: Phone, ping: dict[str, Any] | None) -> None:
        if phone.in_flight:  # one request per phone at a time, like an app; the ping waits in its backlog
            if ping is not None:
                phone.backlog.append(ping)
            return
        batch = phone.take(ping)
        if batch:
            phone.in_flight = True
            self._spawn(self._post_pings(phone, batch))

    async def _post_pings(self, phone: Phone, batch: list[dict[str, Any]]) -> None:
        try:
            async with self.sem:
                body: Any = batch if len(batch) > 1 else batch[0]
                r = await self.client.post("/v1/pings", json=body, headers={"authorization": f"Bearer {phone.token}"})
            if r.status_code == 202:
                doc = r.json()
                self.n.pings_posted += len(batch)
                self.n.pings_accepted += int(doc.get("accepted", 0))
                self.n.pings_rejected += len(doc.get("rejected", []))
                self.n.batches += len(batch) > 1
            elif r.status_code in (429, 503):
                self.n.throttled += 1
                phone.give_back(batch)
            else:
                self.n.failed += 1
                self.n.pings_rejected += len(batch)
        except httpx.HTTPError:
            self.n.failed += 1
            phone.give_back(batch)
        finally:
            phone.in_flight = False
            self.n.max_backlog = max(self.n.max_backlog, len(phone.backlog))

    def report(self, token: str, type_: str, lat: float, lon: float, heading: float, ts: float) -> None:
        self._spawn(self._report(token, type_, lat, lon, heading, ts))

    async def _report(self, token: str, type_: str, lat: float, lon: float, heading: float, ts: float) -> None:
        body = {"type": type_, "lat": lat, "lon": lon, "heading_deg": round(heading % 360.0, 1), "ts": ts}
        try:
            async with self.sem:
                r = await self.client.post("/v1/reports", json=body, headers={"authorization": f"Bearer {token}"})
            if r.status_code == 202:
                self.n.reports += 1
                self.report_ids[str(r.json()["id"])] = (lat, lon, type_, heading)
            else:
                self.n.failed += 1
        except httpx.HTTPError:
            self.n.failed += 1

    def vote(self, token: str, report_id: str, still_there: bool) -> None:
        self._spawn(self._vote(token, report_id, still_there))

    async def _vote(self, token: str, report_id: str, still_there: bool) -> None:
        body = {"vote": "still_there" if still_there else "not_there"}
        try:
            async with self.sem:
                r = await self.client.post(
                    f"/v1/reports/{report_id}/votes", json=body, headers={"authorization": f"Bearer {token}"}
                )
            if r.status_code == 202:
                self.n.votes += 1
            else:
                self.n.failed += 1
        except httpx.HTTPError:
            self.n.failed += 1

    def reports_near(self, lat: float, lon: float, heading: float, within_m: float) -> list[str]:
        """Report ids posted in this run ahead-ish of a driver (same carriageway, within ``within_m``)."""
        return [
            rid
            for rid, (rlat, rlon, _, rh) in self.report_ids.items()
            if geo.angle_diff(rh, heading) <= 45.0 and geo.distance_m(lat, lon, rlat, rlon) <= within_m
        ]

    async def drain(self, timeout: float = 30.0) -> None:
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)

    async def close(self) -> None:
        await self.drain()
        await self.client.aclose()
