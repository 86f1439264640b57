"""``traverz bench push``: one push worker, many WebSocket drivers, against a bare broadcast.

Phases, in one run: (1) a real ``traverz push`` process and ``CLIENT_PROCS`` client
processes holding ``clients`` sockets on loopback, in groups of ``FANOUT`` drivers at one
spot heading north; conditions for the cells they watch are produced to the real
conditions topic at ``rate``/s, each one news (speeds alternate), and the client processes
count what arrives (frame headers only) and sample the published→received latency
(``updated_at`` is stamped at produce time). Counting starts ``WARMUP_S`` after 'go'.
(2) The same client processes against a bare broadcast server (uvicorn, same WebSocket
implementation, no Kafka, no hub) writing the same number of messages of the same size to
the same fan-out, each encoded once. (3) Route latency on the Berlin net, in-process and
over HTTP. Results go to ``artifacts/bench-push.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from pipeline import geo
from pipeline.bench import wsclient
from pipeline.push.dispatch import SLICES
from pipeline.push.frames import text_frame
from pipeline.push.watch import cone_watch
from pipeline.settings import TOPIC_CONDITIONS, Settings

FANOUT = 100  # drivers per spot; each condition reaches about this many
CLIENT_PROCS = 2  # client processes sharing the drivers (one would be the bottleneck before the server)
WARMUP_S = 1.0  # after 'go', before counting: the producer and the consumer get going
SPOT_LAT, SPOT_LON = 52.3000, 13.9000  # away from every test's and the demo's cells
SPEED_MPS = 10.0  # the drivers' speed: a cone of ~20 cells
# Cells updated per spot, in turn: at RATE, 12 news/s per driver are 12 cells' once a second each —
# not one cell's twelve times a second, which the outbox would rightly coalesce to its latest state.
CELLS_PER_SPOT = 12
# Conditions/s offered by default: x FANOUT = 120k messages/s, above the 100k target, so the
# figure delivered (not the offered load) is what can fall short of it — for either server.
RATE = 1200.0
SERVER_SESSION = True  # each server in a session of its own (see _spawn)
OUT = Path("artifacts/bench-push.json")


def raise_fd_limit() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def spots(clients: int) -> list[tuple[float, float]]:
    n = max(1, clients // FANOUT)
    return [geo.destination(SPOT_LAT, SPOT_LON, 90.0, 2500.0 * i) for i in range(n)]


def target_cells(clients: int, res: int) -> list[str]:
    """``CELLS_PER_SPOT`` cells of each spot's cone, nearest first, ordered so that message ``i``
    (``cells[i % len(cells)]``) is for spot ``i % spots``: every driver gets rate/spots news
    per second, each cell's once every CELLS_PER_SPOT of them."""
    cones = []
    for lat, lon in spots(clients):
        cone = cone_watch(lat, lon, 0.0, SPEED_MPS, res)
        cones.append(sorted(cone, key=lambda c: geo.distance_m(lat, lon, *geo.cell_center(c)))[:CELLS_PER_SPOT])
    return [cone[k] for k in range(CELLS_PER_SPOT) for cone in cones]


def condition(cell: str, version: int, fast: bool, at: float | None = None) -> dict[str, Any]:
    """A condition for ``cell``, news for its drivers; ``updated_at`` = ``at``, when it was due (default now)."""
    lat, lon = geo.cell_center(cell)
    v = 13.0 if fast else 3.0
    sec = {
        "sector": 0,
        "heading_deg": 0.0,
        "mean_mps": v,
        "median_mps": v,
        "p85_mps": v,
        "samples": 9,
        "devices": 3,
        "free_flow_mps": 13.9,
        "level": 0 if fast else 3,
        "jam_factor": 0.0 if fast else 7.8,
    }
    return {"cell": cell, "version": version, "updated_at": time.time() if at is None else at, "lat": lat, "lon": lon,
            "level": sec["level"], "jam_factor": sec["jam_factor"], "sectors": [sec], "incidents": [],
            "sample_bucket": "3-9", "window_s": 300}  # fmt: skip


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def hist_pct(hist: list[int], q: float) -> float:
    """The ``q`` quantile (ms) of a per-millisecond histogram."""
    total, seen = sum(hist), 0
    for ms, k in enumerate(hist):
        seen += k
        if total and seen > q * total:
            return float(ms)
    return float("nan")


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# -- the client processes -----------------------------------------------------------------


async def run_clients(ports: list[int], clients: int, part: int, parts: int, seconds: float, token: str) -> None:
    """Hold drivers ``part``, ``part + parts``, … of ``clients`` on each server of ``ports``; 'ready'; per
    round, on 'go PORT' count for ``seconds`` after ``WARMUP_S`` and on 'end' report (window counts,
    frames from that server since 'go', CPU seconds); any other line ends it."""
    raise_fd_limit()
    tally = wsclient.Tally()
    loop = asyncio.get_running_loop()
    conns: dict[int, list[wsclient.WsClient]] = {port: [] for port in ports}
    places = spots(clients)
    mine = list(range(part, clients, parts))
    for port in ports:
        for k in range(0, len(mine), 500):
            idx = mine[k : k + 500]
            batch = await asyncio.gather(*(wsclient.connect("127.0.0.1", port, token, tally=tally) for _ in idx))
            for i, c in zip(idx, batch, strict=True):
                lat, lon = places[i % len(places)]
                c.send_text(orjson.dumps({"type": "subscribe", "lat": lat, "lon": lon, "heading_deg": 0.0,
                                          "speed_mps": SPEED_MPS}).decode())  # fmt: skip
            conns[port] += batch
    await asyncio.sleep(2.0)
    print(json.dumps({"ready": min(len(c) for c in conns.values())}), flush=True)
    while (line := (await loop.run_in_executor(None, sys.stdin.readline)).split())[:1] == ["go"]:
        these = conns[int(line[1])]
        tally.reset()
        texts0 = sum(c.texts for c in these)
        await asyncio.sleep(WARMUP_S)
        cpu0, t0 = _cpu_s(), time.monotonic()
        tally.on = True
        await asyncio.sleep(seconds)
        tally.on = False
        elapsed, cpu = time.monotonic() - t0, _cpu_s() - cpu0
        await loop.run_in_executor(None, sys.stdin.readline)
        closed, since_go = sum(1 for c in these if c.closed.done()), sum(c.texts for c in these) - texts0
        print(json.dumps({"received": tally.frames, "seconds": elapsed, "cpu_s": cpu, "closed": closed,
                          "all_since_go": since_go, "hist": tally.hist}), flush=True)  # fmt: skip
    for c in (c for cs in conns.values() for c in cs):
        if c.transport is not None:
            c.transport.abort()


def _cpu_s(pid: int | None = None, kernel: bool = True) -> float:
    """User (+ system, with ``kernel``) CPU seconds of a process (this one by default)."""
    if pid is None:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + (ru.ru_stime if kernel else 0.0)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + (int(fields[12]) if kernel else 0)) / os.sysconf("SC_CLK_TCK")


# -- the bare broadcast server -------------------------------------------------------------


def bare_app(rate: float, clients: int, tick_s: float) -> Any:
    """On POST /go?seconds=S: ``rate`` condition messages/s for S s, each to its spot's FANOUT sockets.

    The least a broadcast of the same news can do: each message encoded once as one frame,
    and each socket written once per ``tick_s`` (the push worker's spacing; 5 ms for 0) with
    the frames due for its spot joined (pipeline/push/frames.py), the spots spread over the
    tick in ``SLICES`` passes as the push worker spreads its drivers. No Kafka, no hub, no
    per-driver state. ``updated_at`` is when a message was due, so a broadcast that falls
    behind shows it in its latency.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from pipeline.push.frames import RawSocket, raw_socket

    groups: list[list[RawSocket]] = [[] for _ in spots(clients)]
    cells = target_cells(clients, 9)

    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        await ws.receive_text()  # the subscribe
        sock = raw_socket(ws)
        assert sock is not None, "the bare server runs on uvicorn's websockets-sansio"
        groups[sum(len(g) for g in groups) % len(groups)].append(sock)
        # held open across rounds (returning would close the socket) until the client leaves
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await ws.receive_text()

    async def go(request: Request) -> Any:
        seconds = float(request.query_params["seconds"])

        async def blast() -> None:
            slices = SLICES if tick_s else 1
            step = tick_s / slices if tick_s else 0.005
            pending: list[list[bytes]] = [[] for _ in groups]
            t0, wall0, n, k = time.monotonic(), time.time(), 0, 0
            while (now := time.monotonic()) - t0 < seconds:
                due = int((now - t0) * rate)
                for i in range(n, due):
                    cell = cells[i % len(cells)]
                    cond = condition(cell, i, (i // len(cells)) % 2 == 0, wall0 + i / rate)
                    pending[i % len(groups)].append(text_frame(orjson.dumps(
                        {"type": "condition", "condition": cond})))  # fmt: skip
                n = max(n, due)
                for g in range(k % slices, len(groups), slices):  # this pass's share of the spots
                    fs = pending[g]
                    if fs:
                        data = fs[0] if len(fs) == 1 else b"".join(fs)
                        for sock in groups[g]:
                            sock.write(data)
                        pending[g] = []
                k += 1
                await asyncio.sleep(max(0.0, t0 + k * step - time.monotonic()))

        asyncio.get_running_loop().create_task(blast())
        return PlainTextResponse("ok")

    return Starlette(routes=[WebSocketRoute("/v1/stream", stream), Route("/go", go, methods=["POST"])])


# -- the orchestrator ------------------------------------------------------------------------


def _spawn(args: list[str], env: dict[str, str], stdin: bool = False, server: bool = False) -> subprocess.Popen[str]:
    """A child process; a ``server`` (the push worker, the bare broadcast) in its own session when
    ``SERVER_SESSION``: Linux's autogroup scheduler shares the CPU between sessions first, so in this
    one it would share its session's part with the clients and the producer, while each engineer's
    other work (``nice`` does not reach across sessions) has a session's part of its own."""
    return subprocess.Popen(
        args, env=env, text=True, stdout=subprocess.PIPE, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        start_new_session=server and SERVER_SESSION,
    )  # fmt: skip


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


async def _produce(s: Settings, clients: int, rate: float, seconds: float) -> dict[str, float]:
    """``rate`` conditions/s for ``seconds``, each news for its spot's drivers; what was really offered."""
    from aiokafka import AIOKafkaProducer

    cells = target_cells(clients, s.cell_resolution)
    p = AIOKafkaProducer(bootstrap_servers=s.bootstrap, linger_ms=2)
    await p.start()
    base, n, t0, wall0 = int(time.time() * 1000), 0, time.monotonic(), time.time()
    try:
        while (now := time.monotonic()) - t0 < seconds:
            for i in range(n, int((now - t0) * rate)):
                cell = cells[i % len(cells)]
                cond = condition(cell, base + i, (i // len(cells)) % 2 == 0, wall0 + i / rate)
                await p.send(TOPIC_CONDITIONS, orjson.dumps(cond), key=cell.encode())
                n = i + 1
            await asyncio.sleep(0.002)
        await p.flush()
        elapsed = time.monotonic() - t0
    finally:
        await p.stop()
    return {"produced": n, "seconds": elapsed, "conditions_per_s": n / elapsed}


def _clients(
    ports: list[int], clients: int, seconds: float, token: str, env: dict[str, str]
) -> list[subprocess.Popen[str]]:
    """Client processes holding ``clients`` drivers on each server of ``ports``."""
    procs = []
    for part in range(CLIENT_PROCS):
        args = [sys.executable, "-m", "pipeline.bench.push", "clients", ",".join(map(str, ports)), str(clients),
                str(part), str(CLIENT_PROCS), str(seconds), token]  # fmt: skip
        procs.append(_spawn(args, env, stdin=True))
    ready = 0
    for proc in procs:
        assert proc.stdout is not None
        ready += json.loads(proc.stdout.readline()).get("ready", 0)
    if ready != clients:
        raise RuntimeError(f"client processes: {ready} of {clients} connected")
    return procs


def _tell(procs: list[subprocess.Popen[str]], line: str) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()


def _results(procs: list[subprocess.Popen[str]], offered: float) -> dict[str, Any]:
    """Say 'end', sum what the client processes counted in this round."""
    _tell(procs, "end")
    rs = []
    for proc in procs:
        assert proc.stdout is not None
        rs.append(json.loads(proc.stdout.readline()))
    hist = [sum(col) for col in zip(*(r["hist"] for r in rs), strict=True)]
    received, seconds = sum(r["received"] for r in rs), max(r["seconds"] for r in rs)
    return {"msgs_per_s": received / seconds, "offered_msgs_per_s": offered, "received": received,
            "window_s": seconds, "received_since_go": sum(r["all_since_go"] for r in rs),
            "clients_closed": sum(r["closed"] for r in rs), "client_cpu_s": sum(r["cpu_s"] for r in rs),
            "latency_p50_ms": hist_pct(hist, 0.5), "latency_p99_ms": hist_pct(hist, 0.99),
            "latency_max_ms": max((ms for ms, k in enumerate(hist) if k), default=float("nan")),
            "latency_samples": sum(hist)}  # fmt: skip


def _quit(procs: list[subprocess.Popen[str]]) -> None:
    _tell(procs, "quit")
    for proc in procs:
        proc.wait(30)


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per numeric field, the median over the rounds (the rounds themselves are kept beside it)."""
    out: dict[str, Any] = {}
    for key, v in rounds[0].items():
        if isinstance(v, int | float):
            out[key] = statistics.median(float(r[key]) for r in rounds)
    return out


def _settled(push_port: int, timeout: float = 60.0) -> float:
    """The worker's count of messages written, once it stopped growing (1 s apart)."""
    last, deadline = -1.0, time.monotonic() + timeout
    while (now := _sent(push_port)) != last and time.monotonic() < deadline:
        last = now
        time.sleep(1.0)
    return now


def _sent(push_port: int, name: str = "traverz_push_messages_sent_total") -> float:
    """The push worker's own count of messages written (or of ``name``, another counter of it)."""
    import httpx

    for line in httpx.get(f"http://127.0.0.1:{push_port}/metrics").text.splitlines():
        if line.startswith(name):
            return float(line.split()[-1])
    return 0.0


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


def main(s: Settings, clients: int = 10_000, seconds: float = 10.0, rate: float = RATE, rounds: int = 3) -> int:
    import logging

    from pipeline import tokens

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per route request otherwise
    raise_fd_limit()
    token = tokens.issue("bench-driver", secret=s.token_secret, kid=s.token_kid, issuer=s.token_issuer,
                         audience=s.token_audience, ttl_s=3600)  # fmt: skip
    env = dict(os.environ)
    env.update(TRAVERZ_BOOTSTRAP=s.bootstrap, TRAVERZ_TOKEN_SECRET=s.token_secret, PYTHONUNBUFFERED="1")
    out: dict[str, Any] = {"clients": clients, "fanout": FANOUT, "rate_conditions_per_s": rate, "seconds": seconds,
                           "rounds": rounds, "warmup_s": WARMUP_S, "client_processes": CLIENT_PROCS,
                           "server_session": SERVER_SESSION, "tick_ms": s.push_tick_ms,
                           "cpus": os.cpu_count(), "load_before": os.getloadavg()}  # fmt: skip
    push_port, bare_port = 18181, 18182
    push = _spawn([sys.executable, "-m", "pipeline.cli", "push", "--port", str(push_port)], env, server=True)
    bare = None
    try:
        _wait_http(f"http://127.0.0.1:{push_port}/readyz")
        rss0 = rss_kb(push.pid)
        bare = _spawn([sys.executable, "-m", "pipeline.bench.push", "bare", str(bare_port), str(rate), str(clients),
                       str(s.push_tick_ms / 1000.0)], env, server=True)  # fmt: skip
        _wait_http(f"http://127.0.0.1:{bare_port}/healthz")
        # the same client processes hold a socket per driver on each server; the rounds alternate, so
        # each push round has its bare round under the same machine load right after it
        cl = _clients([push_port, bare_port], clients, seconds, token, env)
        out["push_rss_mb"] = rss_kb(push.pid) / 1024
        out["bytes_per_driver"] = (rss_kb(push.pid) - rss0) * 1024 / clients
        out["push_rounds"], out["bare_rounds"] = [], []
        for _ in range(rounds):
            out["push_rounds"].append(_push_round(s, cl, push_port, push.pid, clients, rate, seconds))
            out["bare_rounds"].append(_bare_round(cl, bare_port, bare.pid, rate, seconds))
        _quit(cl)
        out["route"] = _route_latency(s, push_port)
    finally:
        if bare is not None:
            bare.kill()  # its handlers hold sockets open: a graceful stop would wait for them
            bare.wait(15)
        push.terminate()
        try:
            push.wait(15)
        except subprocess.TimeoutExpired:
            push.kill()
    out["push"], out["bare"] = median_of(out["push_rounds"]), median_of(out["bare_rounds"])
    out["push_over_bare"] = out["push"]["msgs_per_s"] / max(1.0, out["bare"]["msgs_per_s"])
    pairs = zip(out["push_rounds"], out["bare_rounds"], strict=True)
    out["push_over_bare_per_round"] = [p["msgs_per_s"] / max(1.0, b["msgs_per_s"]) for p, b in pairs]
    out["load_after"] = os.getloadavg()
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2))
    _print(out)
    return 0


def _push_round(
    s: Settings, cl: list[subprocess.Popen[str]], port: int, pid: int, clients: int, rate: float, seconds: float
) -> dict[str, Any]:
    sent0, cpu0, user0, m0 = _sent(port), _cpu_s(pid), _cpu_s(pid, kernel=False), _machine(cl)
    writes0 = _sent(port, "traverz_push_socket_writes_total")
    _tell(cl, f"go {port}")
    produced = asyncio.run(_produce(s, clients, rate, WARMUP_S + seconds + 0.5))
    sent1 = _settled(port)  # a worker behind is still writing: both counts once it is done
    r = _results(cl, rate * FANOUT)
    r["server_sent_since_go"] = sent1 - sent0
    writes = _sent(port, "traverz_push_socket_writes_total") - writes0  # 0: a worker without that counter
    r["frames_per_write"] = (sent1 - sent0) / writes if writes else float("nan")
    r["server_cpu_s"] = _cpu_s(pid) - cpu0
    r["server_user_cpu_s"] = _cpu_s(pid, kernel=False) - user0
    r["conditions_per_s"] = produced["conditions_per_s"]
    r.update(_others(m0, _machine(cl), r["server_cpu_s"]))
    return r


def _bare_round(cl: list[subprocess.Popen[str]], port: int, pid: int, rate: float, seconds: float) -> dict[str, Any]:
    import httpx

    cpu0, user0, m0 = _cpu_s(pid), _cpu_s(pid, kernel=False), _machine(cl)
    _tell(cl, f"go {port}")
    httpx.post(f"http://127.0.0.1:{port}/go", params={"seconds": WARMUP_S + seconds + 0.5})
    time.sleep(WARMUP_S + seconds + 1.5)
    r = _results(cl, rate * FANOUT)
    r["server_cpu_s"] = _cpu_s(pid) - cpu0
    r["server_user_cpu_s"] = _cpu_s(pid, kernel=False) - user0
    r.update(_others(m0, _machine(cl), r["server_cpu_s"]))
    return r


def _machine(cl: list[subprocess.Popen[str]]) -> tuple[float, float, float]:
    """(wall s, busy CPU s of the whole machine, CPU s of this process and the client processes)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    return time.monotonic(), busy, _cpu_s() + sum(_cpu_s(p.pid) for p in cl)


def _others(m0: tuple[float, float, float], m1: tuple[float, float, float], server_s: float) -> dict[str, float]:
    """How busy the machine was during a round, and how much of it was not this benchmark (in cores):
    other engineers' work, and the broker (it serves the push rounds only)."""
    wall = m1[0] - m0[0]
    busy = m1[1] - m0[1]
    return {"machine_busy_cores": busy / wall, "others_cores": (busy - (m1[2] - m0[2]) - server_s) / wall,
            "load1": os.getloadavg()[0]}  # fmt: skip


def _print(out: dict[str, Any]) -> None:
    p, b, r = out["push"], out["bare"], out["route"]
    n = out["rounds"]
    print(f"medians of {n} rounds       {'push worker':>14s}{'bare broadcast':>16s}")
    print(f"{'messages/s delivered':28s}{p['msgs_per_s']:14,.0f}{b['msgs_per_s']:16,.0f}   (offered "
          f"{p['offered_msgs_per_s']:,.0f}: {p['conditions_per_s']:,.0f} conditions/s x {FANOUT}); "
          f"push/bare {out['push_over_bare']:.2f}")  # fmt: skip
    print(f"{'  per round':28s}{_each(out['push_rounds'], 'msgs_per_s', 1e-3, 'k'):>14s}"
          f"{_each(out['bare_rounds'], 'msgs_per_s', 1e-3, 'k'):>16s}")  # fmt: skip
    ratios = "/".join(f"{x:.2f}" for x in out["push_over_bare_per_round"])
    print(f"{'  push/bare per round pair':28s}{ratios:>14s}")
    print(f"{'published->received p50 ms':28s}{p['latency_p50_ms']:14.1f}{b['latency_p50_ms']:16.1f}")
    print(f"{'published->received p99 ms':28s}{p['latency_p99_ms']:14.1f}{b['latency_p99_ms']:16.1f}")
    print(f"{'  p99 per round':28s}{_each(out['push_rounds'], 'latency_p99_ms'):>14s}"
          f"{_each(out['bare_rounds'], 'latency_p99_ms'):>16s}")  # fmt: skip
    print(f"{'server CPU s per 100k msgs':28s}{_per100k(p):14.2f}{_per100k(b):16.2f}")
    print(f"{'  of which user (Python)':28s}{_per100k(p, 'server_user_cpu_s'):14.2f}"
          f"{_per100k(b, 'server_user_cpu_s'):16.2f}")  # fmt: skip
    print(f"{'client CPU s per 100k msgs':28s}{_per100k(p, 'client_cpu_s', 'received'):14.2f}"
          f"{_per100k(b, 'client_cpu_s', 'received'):16.2f}")  # fmt: skip
    print(f"{'machine busy, cores':28s}{p['machine_busy_cores']:14.2f}{b['machine_busy_cores']:16.2f}")
    print(f"{'  not this bench, per round':28s}{_each(out['push_rounds'], 'others_cores', 1.0, '', 2):>14s}"
          f"{_each(out['bare_rounds'], 'others_cores', 1.0, '', 2):>16s}   (others' work + broker)")  # fmt: skip
    print(f"{'clients closed':28s}{p['clients_closed']:14.0f}{b['clients_closed']:16.0f}")
    sent, got = p["server_sent_since_go"], p["received_since_go"]
    print(f"push worker wrote {sent:,.0f} messages after 'go' (median round), its clients got {got:,.0f}; "
          f"frames per socket write {_each(out['push_rounds'], 'frames_per_write', 1.0, '', 2)}")  # fmt: skip
    print(f"memory per driver: {out['bytes_per_driver'] / 1024:.1f} KiB (push RSS {out['push_rss_mb']:.0f} MB)")
    own = "each in a session of its own" if out["server_session"] else "in the bench's session"
    print(f"spacing (TRAVERZ_PUSH_TICK_MS) {out['tick_ms']:.0f} ms for both servers; servers {own}")
    print(f"load average before/after: {out['load_before'][0]:.1f} / {out['load_after'][0]:.1f} on {out['cpus']} CPUs")
    print(
        f"route on {r['net']} ({r['nodes']} nodes, {r['edges']} edges): in-process p50 {r['inproc_p50_ms']:.2f} ms "
        f"p95 {r['inproc_p95_ms']:.2f} ms; HTTP p50 {r['http_p50_ms']:.2f} ms p95 {r['http_p95_ms']:.2f} ms"
    )
    print(f"written to {OUT}")


def _each(rounds: list[dict[str, Any]], key: str, scale: float = 1.0, unit: str = "", digits: int = 0) -> str:
    return "/".join(f"{r[key] * scale:.{digits}f}{unit}" for r in rounds)


def _per100k(r: dict[str, Any], key: str = "server_cpu_s", per: str = "received_since_go") -> float:
    """CPU seconds per 100,000 messages received (``per``: over the producer's whole run, or the window)."""
    return float(r[key]) / max(1, int(r[per])) * 100_000


if __name__ == "__main__":
    import uvloop

    if sys.argv[1] == "clients":
        a = sys.argv[2:]
        uvloop.run(run_clients([int(p) for p in a[0].split(",")], int(a[1]), int(a[2]), int(a[3]), float(a[4]), a[5]))
    elif sys.argv[1] == "bare":
        import uvicorn
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        raise_fd_limit()
        app = bare_app(float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
        app.router.routes.append(Route("/healthz", lambda request: PlainTextResponse("ok")))
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", ws="websockets-sansio",
                    loop="uvloop", access_log=False)  # fmt: skip
