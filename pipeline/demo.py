"""``traverz demo``: the whole stack on this machine, with live output.

Starts (or reuses) the embedded broker, creates the topics, starts ingest, one
stream worker and one push worker as child processes, drives simulated drivers
through the ingest proxy and prints what a subscribed driver receives. Ctrl-C
stops everything this command started (the broker only if it started it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

from pipeline import kafka_io, kafka_local, tokens
from pipeline.settings import Settings
from pipeline.sim import synthetic


def _spawn(name: str, args: list[str], env: dict[str, str], logdir: Path) -> subprocess.Popen[bytes]:
    traverz = str(Path(sys.executable).with_name("traverz"))
    with open(logdir / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            [traverz, *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _wait_ok(url: str, proc: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s")


async def _watch(s: Settings, stop_at: float) -> None:
    """A driver at the centre heading north: print every update it is pushed."""
    from websockets.asyncio.client import connect

    token = tokens.issue(
        "demo-viewer", secret=s.token_secret, kid=s.token_kid, issuer=s.token_issuer, audience=s.token_audience
    )
    url = f"ws://{s.push_host}:{s.push_port}/v1/stream"
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        lat, lon = synthetic.CENTRE
        await ws.send(
            orjson.dumps(
                {"type": "subscribe", "lat": lat - 0.01, "lon": lon, "heading_deg": 0.0, "speed_mps": 14.0}
            ).decode()
        )
        while time.monotonic() < stop_at:
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=1.0)
            except TimeoutError:
                continue
            msg = orjson.loads(raw)
            if msg["type"] == "condition":
                c = msg["condition"]
                secs = ", ".join(
                    f"{int(x['heading_deg']):>3}°: {x['median_mps'] * 3.6:5.1f} km/h lvl {x['level']} "
                    f"({x['devices']} dev)"
                    for x in c["sectors"]
                )
                print(f"[{time.strftime('%H:%M:%S')}] condition {c['cell']} v{c['version']} | {secs}", flush=True)
            else:
                print(f"[{time.strftime('%H:%M:%S')}] {msg['type']}: {orjson.dumps(msg).decode()[:160]}", flush=True)


def run(s: Settings, duration: float = 0.0, devices: int = 300) -> int:
    lay = kafka_local.layout(s.home, s.kafka_port, s.kafka_controller_port)
    started_broker = kafka_local.read_pid(lay) is None
    print(f"[demo] starting Kafka {kafka_local.KAFKA_VERSION} on {lay.bootstrap} (first run downloads the jars)")
    kafka_local.start(lay, heap=s.kafka_heap)
    s = s.model_copy(update={"bootstrap": lay.bootstrap})
    created = asyncio.run(kafka_io.create_topics(s.bootstrap, s.partitions, s.replication))
    print(f"[demo] topics ready ({len(created)} created)")
    logdir = Path(".traverz/demo-logs")
    logdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TRAVERZ_BOOTSTRAP": s.bootstrap, "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(_spawn("ingest", ["ingest"], env, logdir))
        procs.append(_spawn("worker", ["worker"], env, logdir))
        procs.append(_spawn("push", ["push"], env, logdir))
        _wait_ok(f"http://{s.ingest_host}:{s.ingest_port}/readyz", procs[0])
        _wait_ok(f"http://{s.worker_host}:{s.worker_port}/healthz", procs[1])
        _wait_ok(f"http://{s.push_host}:{s.push_port}/readyz", procs[2])
        print(
            f"[demo] ingest http://{s.ingest_host}:{s.ingest_port}  push ws://{s.push_host}:{s.push_port}/v1/stream"
            f"  logs {logdir}/  — Ctrl-C stops everything"
        )
        stop_at = time.monotonic() + duration if duration > 0 else float("inf")

        async def main() -> None:
            sim = asyncio.create_task(
                synthetic.drive(f"http://{s.ingest_host}:{s.ingest_port}", s, devices=devices, duration=duration)
            )
            try:
                await _watch(s, stop_at)
            finally:
                sim.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sim

        asyncio.run(main())
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        print("[demo] stopping ...", flush=True)
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        if started_broker:
            kafka_local.stop(lay)
        print("[demo] stopped")
