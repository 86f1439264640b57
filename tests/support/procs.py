"""Real Traverz processes for tests: started as `traverz <command>` subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pipeline.sim.stack import process_env as process_env  # one definition, shared with `traverz simulate`

TRAVERZ = str(Path(sys.executable).with_name("traverz"))


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: the sockets stay bound until all are picked, so no port repeats."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no final commit — a crash."""
        self.stop(signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Stack:
    """Processes of one test, all against the session broker."""

    env: dict[str, str]
    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, *args: str, port_var: str = "", extra_env: dict[str, str] | None = None) -> Proc:
        env = dict(self.env)
        port = 0
        if port_var:
            port = free_port()
            env[port_var] = str(port)
        env.update(extra_env or {})
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                [TRAVERZ, *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.workdir,
            )
        proc = Proc(name, popen, log, port)
        self.procs.append(proc)
        return proc

    def ingest(self, **extra: str) -> Proc:
        p = self.start("ingest", "ingest", port_var="TRAVERZ_INGEST_PORT", extra_env=extra)
        wait_http(p, f"http://127.0.0.1:{p.port}/readyz")
        return p

    def push(self, name: str = "push", **extra: str) -> Proc:
        p = self.start(name, "push", port_var="TRAVERZ_PUSH_PORT", extra_env=extra)
        wait_http(p, f"http://127.0.0.1:{p.port}/readyz")
        return p

    def worker(self, name: str = "worker", **extra: str) -> Proc:
        p = self.start(name, "worker", port_var="TRAVERZ_WORKER_PORT", extra_env=extra)
        wait_http(p, f"http://127.0.0.1:{p.port}/healthz", timeout=90)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} -----\n{p.output()[-4000:]}" for p in self.procs)


def wait_http(proc: Proc, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.output()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"{proc.name} not ready at {url} after {timeout}s:\n{proc.output()[-3000:]}")
