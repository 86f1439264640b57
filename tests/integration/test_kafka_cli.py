"""`traverz kafka up|down|status` against a broker of its own on a free port."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pipeline import kafka_local
from tests.support.procs import TRAVERZ, free_port, free_ports

pytestmark = pytest.mark.integration


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TRAVERZ, *args], env=env, capture_output=True, text=True, timeout=180, check=False)


def test_kafka_up_status_down(tmp_path: Path) -> None:
    port, controller_port = free_ports(2)
    home = Path(os.environ.get("TRAVERZ_HOME", Path.home() / ".cache" / "traverz"))
    env = {
        **os.environ,
        "TRAVERZ_HOME": str(home),
        "TRAVERZ_KAFKA_PORT": str(port),
        "TRAVERZ_KAFKA_CONTROLLER_PORT": str(controller_port),
        "TRAVERZ_KAFKA_HEAP": "384m",
    }
    lay = kafka_local.layout(home, port)
    try:
        st = run(["kafka", "status"], env)
        assert st.returncode == 3 and "not running" in st.stdout

        up = run(["kafka", "up"], env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"127.0.0.1:{port}" in up.stdout and "data:" in up.stdout and "log:" in up.stdout
        assert kafka_local.port_open(port)

        st = run(["kafka", "status"], env)
        assert st.returncode == 0 and "is running" in st.stdout

        again = run(["kafka", "up"], env)  # idempotent: same broker, no second start
        assert again.returncode == 0
        assert again.stdout.split("pid ")[1].split()[0] == up.stdout.split("pid ")[1].split()[0]

        down = run(["kafka", "down", "--wipe"], env)
        assert down.returncode == 0 and "stopped" in down.stdout
        assert not kafka_local.port_open(port)
        assert run(["kafka", "status"], env).returncode == 3
        assert not lay.base.exists()
    finally:
        kafka_local.stop(lay)


def test_storage_formats_with_a_cluster_id_that_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # base64url cluster ids begin with "-" one time in 64; the storage tool must not read it as an option
    home = Path(os.environ.get("TRAVERZ_HOME", Path.home() / ".cache" / "traverz"))
    lay = kafka_local.layout(home, free_port())
    monkeypatch.setattr(kafka_local, "_cluster_id", lambda: "-bcdefghijklmnopqrstuv")
    kafka_local.ensure_jars(lay)
    lay.base.mkdir(parents=True, exist_ok=True)
    lay.config.write_text(kafka_local.server_properties(lay))
    try:
        assert kafka_local.format_storage(lay) is True
        assert "cluster.id=-bcdefghijklmnopqrstuv" in (lay.data / "meta.properties").read_text()
    finally:
        kafka_local.wipe(lay)
