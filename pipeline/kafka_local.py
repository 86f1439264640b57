"""The embedded single-node Apache Kafka broker (KRaft) behind ``traverz kafka``.

The jars are the official Apache Kafka artifacts that Maven resolves from Maven
Central through ``kafka_runtime/pom.xml``; they are copied once into a cache and
the broker runs as ``java -cp 'libs/*' kafka.Kafka server.properties``. State
(data, log, pid) lives in one directory per port, so a test session can run its
own broker on a free port beside a user's broker on 9092.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

KAFKA_VERSION = "4.1.1"
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"


_CHILDREN: list[subprocess.Popen[bytes]] = []


class KafkaError(RuntimeError):
    """The embedded broker could not be installed, started or stopped."""


@dataclass(frozen=True)
class BrokerLayout:
    """Where one embedded broker keeps its files."""

    home: Path
    port: int
    controller_port: int

    @property
    def libs(self) -> Path:
        return self.home / f"kafka-{KAFKA_VERSION}" / "libs"

    @property
    def base(self) -> Path:
        return self.home / "brokers" / str(self.port)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "broker.log"

    @property
    def pidfile(self) -> Path:
        return self.base / "broker.pid"

    @property
    def config(self) -> Path:
        return self.base / "server.properties"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def layout(home: Path, port: int, controller_port: int = 0) -> BrokerLayout:
    return BrokerLayout(home=home, port=port, controller_port=controller_port or port + 1)


def server_properties(lay: BrokerLayout) -> str:
    """KRaft combined broker+controller config, loopback only."""
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{lay.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{lay.port},CONTROLLER://127.0.0.1:{lay.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{lay.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={lay.data}",
            "num.partitions=8",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=8",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "group.initial.rebalance.delay.ms=0",
            # a laptop broker: keep segments small so compaction is visible
            "log.segment.bytes=67108864",
            "log.retention.hours=48",
            # and at most 1 GiB a partition: a load test writes ~10 GB of pings in minutes
            "log.retention.bytes=1073741824",
            "auto.create.topics.enable=true",
            "",
        ]
    )


def ensure_jars(lay: BrokerLayout) -> Path:
    """Resolve the broker jars through Maven once; later calls are free."""
    marker = lay.libs / ".complete"
    if marker.exists():
        return lay.libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaError("Maven (mvn) is not on PATH; it resolves the Kafka jars")
    lay.libs.mkdir(parents=True, exist_ok=True)
    pom = resources.files("pipeline") / "kafka_runtime" / "pom.xml"
    with resources.as_file(pom) as pom_path:
        proc = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom_path),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={lay.libs}",
                "-DincludeScope=runtime",
                f"-Dkafka.version={KAFKA_VERSION}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        raise KafkaError(f"mvn failed to resolve Kafka {KAFKA_VERSION}:\n{proc.stdout}{proc.stderr}")
    marker.write_text(KAFKA_VERSION)
    return lay.libs


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise KafkaError("java is not on PATH (Java 17 runs the broker)")
    return java


def _classpath(lay: BrokerLayout) -> str:
    return str(lay.libs / "*")


def format_storage(lay: BrokerLayout) -> bool:
    """Format the KRaft log dir on first start; returns True if it formatted."""
    if (lay.data / "meta.properties").exists():
        return False
    lay.data.mkdir(parents=True, exist_ok=True)
    cluster_id = _cluster_id()
    proc = subprocess.run(
        [
            _java(),
            "-cp",
            _classpath(lay),
            STORAGE_TOOL,
            "format",
            # one argument: a base64url id may begin with "-" (1 in 64) and
            # would otherwise be parsed as an option
            f"--cluster-id={cluster_id}",
            "-c",
            str(lay.config),
            "--ignore-formatted",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise KafkaError(f"formatting {lay.data} failed:\n{proc.stdout}{proc.stderr}")
    return True


def _cluster_id() -> str:
    # Kafka cluster ids are 16 random bytes in URL-safe base64 without padding.
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def read_pid(lay: BrokerLayout) -> int | None:
    try:
        pid = int(lay.pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); treat it as dead
    with contextlib.suppress(FileNotFoundError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def start(lay: BrokerLayout, heap: str = "768m", timeout: float = 90.0, full_jit: bool = False) -> int:
    """Start the broker detached (it outlives this process); returns its pid.

    By default the JIT stops at C1: the broker answers a few seconds sooner, which is what
    tests and the demo want. ``full_jit`` lets C2 compile the hot paths too: a benchmark's
    broker then spends less CPU a request on the cores it shares with what is measured.
    """
    running = read_pid(lay)
    if running is not None:
        return running
    if port_open(lay.port):
        raise KafkaError(f"port {lay.port} is taken by a process that is not our broker")
    ensure_jars(lay)
    lay.base.mkdir(parents=True, exist_ok=True)
    lay.config.write_text(server_properties(lay))
    format_storage(lay)
    log4j = resources.files("pipeline") / "kafka_runtime" / "log4j2.yaml"
    with resources.as_file(log4j) as log4j_path:
        cmd = [
            _java(),
            f"-Xmx{heap}",
            f"-Xms{heap}",
            "-XX:+UseG1GC",
            *([] if full_jit else ["-XX:TieredStopAtLevel=1"]),
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j_path}",
            "-cp",
            _classpath(lay),
            MAIN_CLASS,
            str(lay.config),
        ]
        with open(lay.log, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
    _CHILDREN.append(proc)  # the broker outlives this call; keep its handle alive
    lay.pidfile.write_text(str(proc.pid))
    wait_ready(lay, proc, timeout)
    return proc.pid


def wait_ready(lay: BrokerLayout, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Wait until the broker answers a metadata request, not just until the port opens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise KafkaError(f"broker exited with {proc.returncode}; see {lay.log}")
        if port_open(lay.port) and _metadata_ok(lay.bootstrap):
            return
        time.sleep(0.3)
    raise KafkaError(f"broker did not answer on {lay.bootstrap} within {timeout:.0f}s; see {lay.log}")


def _metadata_ok(bootstrap: str) -> bool:
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.list_topics()
            return True
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    return asyncio.run(probe())


def stop(lay: BrokerLayout, timeout: float = 30.0) -> bool:
    """Stop the broker: SIGTERM (controlled shutdown), SIGKILL after ``timeout``."""
    pid = read_pid(lay)
    if pid is None:
        lay.pidfile.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        _reap(pid)
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        _reap(pid)
    for child in [c for c in _CHILDREN if c.pid == pid]:
        # reaped through its handle too, so Popen does not report it as still running
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(5)
        _CHILDREN.remove(child)
    lay.pidfile.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wipe(lay: BrokerLayout) -> None:
    """Remove a stopped broker's data (tests use a fresh broker per session)."""
    if read_pid(lay) is not None:
        raise KafkaError("refusing to wipe the data of a running broker")
    shutil.rmtree(lay.base, ignore_errors=True)
