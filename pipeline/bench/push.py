"""``traverz bench push``: one push worker, many WebSocket drivers, against a bare broadcast.

Phases, in one run: (1) a real ``traverz push`` process and a client process holding
``clients`` sockets on loopback, in groups of ``FANOUT`` drivers at one spot heading north;
conditions for the cells they watch are produced to the real conditions topic at
``rate``/s, each one news (speeds alternate), and the client process counts what arrives
and the published→received latency (``updated_at`` is stamped at produce time). (2) The
same client process against a bare broadcast server (uvicorn, same WebSocket
implementation, no Kafka, no hub) sending the same number of messages of the same size to
the same fan-out. (3) Route latency on the Berlin net, in-process and over HTTP.
Results go to ``artifacts/bench-push.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from pipeline import geo
from pipeline.bench import wsclient
from pipeline.settings import TOPIC_CONDITIONS, Settings

FANOUT = 100  # drivers per spot; each condition reaches about this many
SPOT_LAT, SPOT_LON = 52.3000, 13.9000  # away from every test's and the demo's cells
OUT = Path("artifacts/bench-push.json")


def raise_fd_limit() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def spots(clients: int) -> list[tuple[float, float]]:
    n = max(1, clients // FANOUT)
    return [geo.destination(SPOT_LAT, SPOT_LON, 90.0, 2500.0 * i) for i in range(n)]


def target_cells(clients: int, res: int) -> list[str]:
    """Per spot, the cell 400 m ahead (north) of it: watched by that spot's drivers."""
    return [geo.cell(*geo.destination(lat, lon, 0.0, 400.0), res) for lat, lon in spots(clients)]


def condition(cell: str, version: int, fast: bool) -> dict[str, Any]:
    lat, lon = geo.cell_center(cell)
    v = 13.0 if fast else 3.0
    sec = {"sector": 0, "heading_deg": 0.0, "mean_mps": v, "median_mps": v, "p85_mps": v, "samples": 9,
           "devices": 3, "free_flow_mps": 13.9, "level": 0 if fast else 3, "jam_factor": 0.0 if fast else 7.8}
    return {"cell": cell, "version": version, "updated_at": time.time(), "lat": lat, "lon": lon,
            "level": sec["level"], "jam_factor": sec["jam_factor"], "sectors": [sec], "incidents": [],
            "sample_bucket": "3-9", "window_s": 300}  # fmt: skip


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# -- the client process ------------------------------------------------------------------


async def run_clients(port: int, clients: int, seconds: float, token: str) -> None:
    """Connect, subscribe, say 'ready', count for ``seconds`` after 'go' on stdin, print results."""
    raise_fd_limit()
    lat_samples: list[float] = []
    state = {"on": False, "n": 0}

    def on_text(payload: bytes, now: float) -> None:
        if not state["on"]:
            return
        state["n"] += 1
        if state["n"] % 8 == 0:  # a sample, not every frame: parsing costs the client CPU
            i = payload.find(b'"updated_at":')
            if i >= 0:
                j = payload.find(b",", i)
                lat_samples.append(now - float(payload[i + 13 : j]))

    conns: list[wsclient.WsClient] = []
    places = spots(clients)
    for k in range(0, clients, 500):
        batch = await asyncio.gather(
            *(wsclient.connect("127.0.0.1", port, token, on_text=on_text) for _ in range(min(500, clients - k)))
        )
        for i, c in enumerate(batch, start=k):
            lat, lon = places[i % len(places)]
            c.send_text(orjson.dumps({"type": "subscribe", "lat": lat, "lon": lon, "heading_deg": 0.0,
                                      "speed_mps": 5.0}).decode())  # fmt: skip
        conns += batch
    await asyncio.sleep(2.0)
    print(json.dumps({"ready": len(conns)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    state["on"] = True
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    got, elapsed = state["n"], time.monotonic() - t0
    state["on"] = False
    closed = sum(1 for c in conns if c.closed.done())
    print(json.dumps({"received": got, "seconds": elapsed, "closed": closed, "lat": lat_samples}), flush=True)
    for c in conns:
        if c.transport is not None:
            c.transport.abort()


# -- the bare broadcast server -------------------------------------------------------------


def bare_app(seconds: float, rate: float, clients: int) -> Any:
    """Sends ``rate`` condition messages/s, each to its spot's FANOUT sockets, once POST /go arrives."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    groups: list[list[WebSocket]] = [[] for _ in spots(clients)]
    cells = target_cells(clients, 9)
    done = asyncio.Event()

    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        await ws.receive_text()  # the subscribe
        groups[sum(len(g) for g in groups) % len(groups)].append(ws)
        await done.wait()

    async def go(request: Any) -> Any:
        async def blast() -> None:
            t0, n = time.monotonic(), 0
            while (now := time.monotonic()) - t0 < seconds:
                due = int((now - t0) * rate)
                for i in range(n, due):
                    cell = cells[i % len(cells)]
                    text = orjson.dumps({"type": "condition", "condition": condition(cell, i, i % 2 == 0)})
                    msg = {"type": "websocket.send", "text": text.decode()}
                    for ws in groups[i % len(groups)]:
                        await ws.send(msg)
                n = max(n, due)
                await asyncio.sleep(0.005)
            done.set()

        asyncio.get_running_loop().create_task(blast())
        return PlainTextResponse("ok")

    return Starlette(routes=[WebSocketRoute("/v1/stream", stream), Route("/go", go, methods=["POST"])])


# -- the orchestrator ------------------------------------------------------------------------


def _spawn(args: list[str], env: dict[str, str], stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args, env=env, text=True, stdout=subprocess.PIPE, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL
    )


def _wait_http(url: str, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"not ready: {url}")


async def _produce(s: Settings, clients: int, rate: float, seconds: float) -> int:
    from aiokafka import AIOKafkaProducer

    cells = target_cells(clients, s.cell_resolution)
    p = AIOKafkaProducer(bootstrap_servers=s.bootstrap, linger_ms=2)
    await p.start()
    base, n, t0 = int(time.time() * 1000), 0, time.monotonic()
    try:
        while (now := time.monotonic()) - t0 < seconds:
            for i in range(n, int((now - t0) * rate)):
                cell = cells[i % len(cells)]
                cond = condition(cell, base + i, (i // len(cells)) % 2 == 0)
                await p.send(TOPIC_CONDITIONS, orjson.dumps(cond), key=cell.encode())
                n = i + 1
            await asyncio.sleep(0.002)
        await p.flush()
    finally:
        await p.stop()
    return n


def _clients(port: int, clients: int, seconds: float, token: str, env: dict[str, str]) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "pipeline.bench.push", "clients", str(port), str(clients), str(seconds), token]
    proc = _spawn(args, env, stdin=True)
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    if ready.get("ready") != clients:
        raise RuntimeError(f"client process: {ready}")
    return proc


def _results(proc: subprocess.Popen[str], offered: float) -> dict[str, Any]:
    assert proc.stdout is not None
    r = json.loads(proc.stdout.readline())
    proc.wait(30)
    lat = r.pop("lat")
    return {"msgs_per_s": r["received"] / r["seconds"], "offered_msgs_per_s": offered, "received": r["received"],
            "clients_closed": r["closed"], "latency_p50_ms": pct(lat, 0.5) * 1000,
            "latency_p99_ms": pct(lat, 0.99) * 1000, "latency_samples": len(lat)}  # fmt: skip


def _route_latency(s: Settings, push_port: int) -> dict[str, Any]:
    import httpx

    from pipeline.push.service import load_router

    r = load_router(s.routing_net or "DRT", s.cell_resolution)
    rnd = random.Random(5)
    pts = [(float(r.net.node_lat[n]), float(r.net.node_lon[n])) for n in r._snap_nodes]
    pairs = [(rnd.choice(pts), rnd.choice(pts)) for _ in range(2000)]
    inproc = []
    for a, b in pairs:
        t0 = time.perf_counter()
        r.route(a, b)
        inproc.append(time.perf_counter() - t0)
    http = []
    with httpx.Client(base_url=f"http://127.0.0.1:{push_port}") as c:
        for a, b in pairs[:300]:
            t0 = time.perf_counter()
            c.get("/v1/route", params={"from": f"{a[0]},{a[1]}", "to": f"{b[0]},{b[1]}"}).raise_for_status()
            http.append(time.perf_counter() - t0)
    return {"net": r.net.name, "nodes": len(r.net.node_ids), "edges": len(r.net.edges),
            "inproc_p50_ms": pct(inproc, 0.5) * 1000, "inproc_p95_ms": pct(inproc, 0.95) * 1000,
            "http_p50_ms": pct(http, 0.5) * 1000, "http_p95_ms": pct(http, 0.95) * 1000}  # fmt: skip


def main(s: Settings, clients: int = 10_000, seconds: float = 10.0, rate: float = 1000.0) -> int:
    from pipeline import tokens

    raise_fd_limit()
    token = tokens.issue("bench-driver", secret=s.token_secret, kid=s.token_kid, issuer=s.token_issuer,
                         audience=s.token_audience, ttl_s=3600)  # fmt: skip
    env = dict(os.environ)
    env.update(TRAVERZ_BOOTSTRAP=s.bootstrap, TRAVERZ_TOKEN_SECRET=s.token_secret, PYTHONUNBUFFERED="1")
    offered = rate * FANOUT
    out: dict[str, Any] = {"clients": clients, "fanout": FANOUT, "rate_conditions_per_s": rate, "seconds": seconds}
    push_port, bare_port = 18181, 18182
    push = _spawn([sys.executable, "-m", "pipeline.cli", "push", "--port", str(push_port)], env)
    try:
        _wait_http(f"http://127.0.0.1:{push_port}/readyz")
        rss0 = rss_kb(push.pid)
        cl = _clients(push_port, clients, seconds, token, env)
        out["push_rss_mb"] = rss_kb(push.pid) / 1024
        out["bytes_per_driver"] = (rss_kb(push.pid) - rss0) * 1024 / clients
        assert cl.stdin is not None
        cl.stdin.write("go\n")
        cl.stdin.flush()
        asyncio.run(_produce(s, clients, rate, seconds + 1.0))
        out["push"] = _results(cl, offered)
        out["route"] = _route_latency(s, push_port)
    finally:
        push.terminate()
        try:
            push.wait(15)
        except subprocess.TimeoutExpired:
            push.kill()
    bare = _spawn([sys.executable, "-m", "pipeline.bench.push", "bare", str(bare_port), str(seconds + 1.0),
                   str(rate), str(clients)], env)  # fmt: skip
    try:
        time.sleep(2.0)
        cl = _clients(bare_port, clients, seconds, token, env)
        assert cl.stdin is not None
        cl.stdin.write("go\n")
        cl.stdin.flush()
        import httpx

        httpx.post(f"http://127.0.0.1:{bare_port}/go")
        out["bare"] = _results(cl, offered)
    finally:
        bare.kill()  # its handlers hold sockets open: a graceful stop would wait for them
        bare.wait(15)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2))
    p, b, r = out["push"], out["bare"], out["route"]
    print(f"{'':28s}{'push worker':>14s}{'bare broadcast':>16s}")
    print(f"{'messages/s delivered':28s}{p['msgs_per_s']:14,.0f}{b['msgs_per_s']:16,.0f}   (offered {offered:,.0f})")
    print(f"{'published->received p50 ms':28s}{p['latency_p50_ms']:14.1f}{b['latency_p50_ms']:16.1f}")
    print(f"{'published->received p99 ms':28s}{p['latency_p99_ms']:14.1f}{b['latency_p99_ms']:16.1f}")
    print(f"{'clients closed':28s}{p['clients_closed']:14d}{b['clients_closed']:16d}")
    print(f"memory per driver: {out['bytes_per_driver'] / 1024:.1f} KiB (push RSS {out['push_rss_mb']:.0f} MB)")
    print(f"route on {r['net']} ({r['nodes']} nodes, {r['edges']} edges): in-process p50 {r['inproc_p50_ms']:.2f} ms "
          f"p95 {r['inproc_p95_ms']:.2f} ms; HTTP p50 {r['http_p50_ms']:.2f} ms p95 {r['http_p95_ms']:.2f} ms")
    print(f"written to {OUT}")
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "clients":
        asyncio.run(run_clients(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]))
    elif sys.argv[1] == "bare":
        import uvicorn

        raise_fd_limit()
        app = bare_app(float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", ws="websockets-sansio",
                    loop="uvloop", access_log=False)  # fmt: skip
