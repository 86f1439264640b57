"""Analysts' views against the real broker: `traverz tail` as a process, the Waze feed of a real push worker.

One ingest proxy, one worker and one push worker serve the module (a worker takes ~10-20 s to
join its group). The spots are random around Hamburg on every run, far from the Berlin spots of
the other modules, so records left on the shared topics never fall into these cells.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from pipeline import geo
from pipeline.settings import Settings
from tests.conftest import token_for
from tests.support.procs import Proc, Stack, process_env

pytestmark = pytest.mark.integration

EAST = 90.0
WAIT_S = 60.0


@dataclass
class Running:
    settings: Settings
    stack: Stack
    ingest_url: str
    push_url: str
    run: str
    spots: list[tuple[float, float]]  # res-9 cell centres ≥ 2 km apart, one per scene

    def headers(self, device: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token_for(self.settings, device)}"}


@pytest.fixture(scope="module")
def running(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    workdir = tmp_path_factory.mktemp("analysts")
    settings = Settings(
        bootstrap=kafka_bootstrap, data_dir=workdir / "state", app_id=f"traverz-an{uuid.uuid4().hex[:8]}"
    )
    env = process_env(settings, TRAVERZ_MIN_DEVICES="3")
    rng = random.Random()
    lat0, lon0 = rng.uniform(53.50, 53.60), rng.uniform(9.90, 10.10)
    spots = [geo.cell_center(geo.cell(*geo.destination(lat0, lon0, 90.0 * i, 2500.0 * i), 9)) for i in range(4)]
    stack = Stack(env=env, workdir=Path(workdir))
    try:
        ingest = stack.ingest()
        push = stack.push()
        stack.worker()
        yield Running(
            settings,
            stack,
            f"http://127.0.0.1:{ingest.port}",
            f"http://127.0.0.1:{push.port}",
            uuid.uuid4().hex[:6],
            spots,
        )
    finally:
        stack.stop_all()


@pytest.fixture
def env(running: Running, request: pytest.FixtureRequest) -> Iterator[Running]:
    """The module's processes; their logs are printed when the test fails."""
    yield running
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(running.stack.logs())


def traffic(env: Running, at: tuple[float, float], speed: float, name: str, devices: int = 3) -> list[str]:
    """``devices`` phones driving east through the cell at ``at`` at about ``speed``, a few pings each."""
    now = time.time()
    names = [f"an-{env.run}-{name}{d}" for d in range(devices)]
    with httpx.Client(base_url=env.ingest_url) as http:
        for d, device in enumerate(names):
            batch = []
            for i in range(3):
                lat, lon = geo.destination(*at, EAST, speed * 5.0 * (i - 1))
                batch.append(
                    {
                        "seq": i + 1,
                        "ts": now - 15.0 + 5.0 * i + 0.1 * d,
                        "lat": lat,
                        "lon": lon,
                        "speed_mps": speed + 0.1 * d,
                        "heading_deg": EAST,
                        "accuracy_m": 5.0,
                    }
                )
            r = http.post("/v1/pings", json=batch, headers=env.headers(device))
            assert r.status_code == 202, r.text
    return names


def report(env: Running, device: str, type_: str, at: tuple[float, float]) -> None:
    body = {"type": type_, "lat": at[0], "lon": at[1], "heading_deg": EAST, "ts": time.time()}
    r = httpx.post(f"{env.ingest_url}/v1/reports", json=body, headers=env.headers(device))
    assert r.status_code == 202, r.text


def lines_of(proc: Proc) -> list[str]:
    return [ln for ln in proc.output().splitlines() if ln.strip()]


def wait_for_line(proc: Proc, pred: Any, what: str) -> str:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for ln in lines_of(proc):
            if pred(ln):
                return ln
        assert proc.popen.poll() is None, f"tail exited:\n{proc.output()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no {what} after {WAIT_S}s:\n{proc.output()[-3000:]}")


def test_tail_with_cell_prints_the_condition_of_that_cell(env: Running) -> None:
    here, elsewhere = env.spots[0], env.spots[1]
    cell, other = geo.cell(*here, 9), geo.cell(*elsewhere, 9)
    as_json = env.stack.start("tail-json", "tail", "conditions", "--cell", cell, "--json", "--from-beginning")
    readable = env.stack.start("tail-text", "tail", "conditions", "--cell", cell, "--from-beginning")
    res7 = geo.parent(cell, 7)
    wide = env.stack.start("tail-res7", "tail", "conditions", "--cell", res7, "--json", "--from-beginning")
    traffic(env, elsewhere, 12.0, "other")  # a condition the --cell filter must leave out
    devices = traffic(env, here, 14.0, "tail")

    line = wait_for_line(as_json, lambda ln: ln.startswith("{"), f"JSON condition of {cell}")
    cond = orjson.loads(line)
    assert cond["cell"] == cell
    (sector,) = [s for s in cond["sectors"] if s["sector"] == geo.sector(EAST)]
    assert sector["devices"] == 3 and sector["samples"] == 9
    assert 13.5 <= sector["median_mps"] <= 14.5
    assert not any(d in line for d in devices) and "device_id" not in line

    text = wait_for_line(readable, lambda ln: cell in ln, f"readable condition of {cell}")
    assert re.search(r" L0 jam \d+\.\d  E 5\dkm/h L0 \(free 50\)$", text), text  # eastbound at ~51 km/h: free flow

    wait_for_line(wide, lambda ln: cell in ln, f"{cell} through its res-7 parent")
    # the other cell got its condition too: it shows up only where it is asked for
    assert all(orjson.loads(ln)["cell"] == cell for ln in lines_of(as_json) if ln.startswith("{"))
    assert all(other not in ln for ln in lines_of(readable))


def test_waze_feed_shows_an_accident_after_a_crash_report_and_a_jam_after_slow_traffic(env: Running) -> None:
    crash_at, jam_at = env.spots[2], env.spots[3]
    jam_cell = geo.cell(*jam_at, 9)
    report(env, f"an-{env.run}-reporter", "crash", crash_at)
    report(env, f"an-{env.run}-witness", "crash", crash_at)  # a crash takes two drivers' word
    devices = traffic(env, jam_at, 2.5, "slow", devices=4)  # 9 km/h against 50 km/h free flow: level 4

    south, north = min(crash_at[0], jam_at[0]) - 0.01, max(crash_at[0], jam_at[0]) + 0.01
    west, east = min(crash_at[1], jam_at[1]) - 0.01, max(crash_at[1], jam_at[1]) + 0.01
    url = f"{env.push_url}/v1/feed/waze.json"
    deadline = time.monotonic() + WAIT_S
    accidents: list[dict[str, Any]] = []
    jams: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        r = httpx.get(url, params={"bbox": f"{south},{west},{north},{east}"}, timeout=5.0)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/json")
        doc = r.json()
        accidents = [
            a
            for a in doc["alerts"]
            if a["type"] == "ACCIDENT" and geo.distance_m(a["location"]["y"], a["location"]["x"], *crash_at) < 50.0
        ]
        jams = [j for j in doc["jams"] if j["uuid"].startswith(jam_cell)]
        if accidents and jams:
            break
        time.sleep(0.5)
    assert accidents, f"no ACCIDENT near {crash_at} in {doc}"
    assert jams, f"no jam in {jam_cell} in {doc}"
    assert {"alerts", "jams", "startTimeMillis", "endTimeMillis"} <= set(doc)
    assert doc["startTimeMillis"] < doc["endTimeMillis"] <= time.time() * 1000 + 1000

    (acc,) = accidents
    assert acc["reliability"] in (7, 8)  # two reports: confidence 0.75 less a little age decay, ×10 rounded
    assert acc["magvar"] == 90 and acc["nThumbsUp"] == 0
    assert acc["pubMillis"] <= time.time() * 1000

    (jam,) = jams
    assert jam["level"] == 4
    assert 2.4 <= jam["speed"] <= 2.9 and jam["speedKMH"] == pytest.approx(jam["speed"] * 3.6, abs=0.1)
    assert jam["delay"] > 60 and 250 <= jam["length"] <= 400
    (a, b) = jam["line"]
    assert geo.bearing_deg(a["y"], a["x"], b["y"], b["x"]) == pytest.approx(EAST, abs=1.0)
    assert geo.distance_m((a["y"] + b["y"]) / 2, (a["x"] + b["x"]) / 2, *jam_at) < 5.0

    text = r.text
    assert "device" not in text and not any(d in text for d in devices)

    # a box elsewhere shows none of it; a malformed one is refused
    far = httpx.get(url, params={"bbox": "-10,-10,-9,-9"}, timeout=5.0).json()
    assert far["alerts"] == [] and far["jams"] == []
    assert httpx.get(url, params={"bbox": "1,2,3"}, timeout=5.0).status_code == 400
