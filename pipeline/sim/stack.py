"""A Traverz stack of its own for a simulation run: broker, topics, ingest, worker, push.

Each run gets a fresh broker (on free ports, under ``TRAVERZ_HOME/brokers/<port>``, the
jars shared) and a fresh worker state, so a score never depends on what an earlier run left
in the topics or tables. The simulated phones are many devices posting from one host at
``speedup`` × their real rate: the stack's per-device rate limit is raised to match
(``TRAVERZ_INGEST_RATE``/``_BURST`` of the children only).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pipeline import kafka_io, kafka_local
from pipeline.settings import Settings

SIM_RATE = "50"  # requests/s per device: a phone at 10× posts 2/s, its backlog uploads burst
SIM_BURST = "500"


def process_env(s: Settings, **extra: str) -> dict[str, str]:
    """The environment of a ``traverz`` child process built from ``s`` (and ``extra``).

    The parent's own ``TRAVERZ_`` variables are left out, so ``s`` alone decides: broker, worker
    state, app id and the token key the children verify with. Used by :func:`start` and the
    tests' process helpers (``tests/support/procs.py``).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAVERZ_")}
    env.update(
        TRAVERZ_BOOTSTRAP=s.bootstrap,
        TRAVERZ_DATA_DIR=str(s.data_dir),
        TRAVERZ_APP_ID=s.app_id,
        TRAVERZ_TOKEN_SECRET=s.token_secret,
        TRAVERZ_TOKEN_KID=s.token_kid,
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class SimStack:
    settings: Settings  # bootstrap and ports of the running stack
    logdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    broker: kafka_local.BrokerLayout | None = None  # set when this stack started (and must stop) it

    @property
    def ingest_url(self) -> str:
        return f"http://{self.settings.ingest_host}:{self.settings.ingest_port}"

    @property
    def push_url(self) -> str:
        return f"ws://{self.settings.push_host}:{self.settings.push_port}/v1/stream"

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self.procs = []
        if self.broker is not None:
            kafka_local.stop(self.broker)
            with contextlib.suppress(OSError):
                shutil.copy(self.broker.log, self.logdir / "broker.log")
            kafka_local.wipe(self.broker)
            self.broker = None


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


def start(s: Settings, logdir: Path, *, own_broker: bool = True, say: bool = True, routing_net: str = "") -> SimStack:
    """Start the stack (and a fresh broker unless ``own_broker`` is False: then ``s.bootstrap`` is used)."""
    logdir.mkdir(parents=True, exist_ok=True)
    lay = None
    if own_broker:
        kport, cport = free_ports(2)
        lay = kafka_local.layout(s.home, kport, cport)
        if say:
            print(f"[sim] starting a fresh Kafka broker on {lay.bootstrap}", file=sys.stderr, flush=True)
        kafka_local.start(lay, heap=s.kafka_heap)
        s = s.model_copy(update={"bootstrap": lay.bootstrap})
    ip, pp, wp = free_ports(3)
    run = uuid.uuid4().hex[:8]
    s = s.model_copy(
        update={
            "ingest_port": ip,
            "push_port": pp,
            "worker_port": wp,
            "app_id": f"traverz-sim-{run}",
            "data_dir": logdir / "state",
        }
    )
    st = SimStack(s, logdir, broker=lay)
    try:
        asyncio.run(kafka_io.create_topics(s.bootstrap, s.partitions, s.replication))
        env = process_env(
            s,
            TRAVERZ_INGEST_PORT=str(ip),
            TRAVERZ_PUSH_PORT=str(pp),
            TRAVERZ_WORKER_PORT=str(wp),
            TRAVERZ_MIN_DEVICES=str(s.min_devices),
            TRAVERZ_PARTITIONS=str(s.partitions),
            TRAVERZ_INGEST_RATE=SIM_RATE,
            TRAVERZ_INGEST_BURST=SIM_BURST,
        )
        if routing_net:  # the push worker routes (and reroutes) on the network the vehicles drive
            env["TRAVERZ_ROUTING_NET"] = routing_net
        if say:
            print(
                f"[sim] starting ingest :{ip}, worker :{wp}, push :{pp} (logs {logdir}/)", file=sys.stderr, flush=True
            )
        for name in ("ingest", "worker", "push"):
            st.procs.append(_spawn(name, [name], env, logdir))
        _wait_ok(f"http://127.0.0.1:{ip}/readyz", st.procs[0])
        _wait_ok(f"http://127.0.0.1:{wp}/healthz", st.procs[1])
        _wait_ok(f"http://127.0.0.1:{pp}/readyz", st.procs[2])
    except BaseException:
        st.stop()
        raise
    return st
