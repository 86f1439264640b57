"""Contract tests for docker/Dockerfile and docker/compose.yaml (parsed, never run).

The services must be configured through TRAVERZ_* variables only: faust reads unprefixed
variables (BROKER_URL, WEB_PORT, ...) and lets them override code.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "docker"
COMPOSE = DOCKER_DIR / "compose.yaml"
DOCKERFILE = DOCKER_DIR / "Dockerfile"

OUR_SERVICES = ("topics", "ingest", "worker", "push")
LONG_RUNNING = ("ingest", "worker", "push")
COMMANDS = {
    "topics": ["topics", "create"],
    "ingest": ["ingest"],
    "worker": ["worker"],
    "push": ["push"],
}
# Unprefixed variables faust (or its CLI) reads; the faust source adds the rest below.
FAUST_ENV = {
    "BROKER",
    "BROKER_URL",
    "BROKER_CREDENTIALS",
    "WEB_PORT",
    "WEB_HOST",
    "WEB_BIND",
    "WEB_TRANSPORT",
    "STORE",
    "STORE_URL",
    "CACHE_URL",
    "DATADIR",
    "APP_DATADIR",
    "F_DATADIR",
    "FAUST_DATADIR",
    "F_WORKDIR",
    "FAUST_LOOP",
    "F_LOOP",
    "NODE_CANONICAL_URL",
    "CANONICAL_URL",
    "TOPIC_PARTITIONS",
    "TOPIC_REPLICATION_FACTOR",
}
INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def settings_fields() -> dict[str, Any]:
    from pipeline.settings import Settings

    return dict(Settings.model_fields)


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = [item.split("=", 1) if "=" in item else [item, ""] for item in env]
        return {k: v for k, v in pairs}
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _published(service: dict[str, Any]) -> list[tuple[int, int]]:
    """(published, target) pairs of a service's ports, short or long syntax."""
    result = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            result.append((int(port["published"]), int(port["target"])))
            continue
        spec = str(port).split("/", 1)[0]
        parts = spec.rsplit(":", 2)
        assert len(parts) >= 2, f"port {port!r} publishes nothing explicit"
        result.append((int(parts[-2]), int(parts[-1])))
    return result


def _interpolate_default(value: str) -> str | None:
    """The value compose would use with an empty environment; None if it has none."""
    missing = False

    def sub(match: re.Match[str]) -> str:
        nonlocal missing
        if match["op"] in (":-", "-"):
            return match["arg"]
        missing = True
        return ""

    result = INTERPOLATION.sub(sub, value)
    return None if missing else result


def _faust_env_names() -> set[str]:
    """env_name="..." of faust's settings, read from its source without importing it.

    The path finder, not ``importlib.util.find_spec``: once another test module imported faust,
    ``sys.modules["faust"]`` is faust's lazy module object, whose ``__spec__`` is None.
    """
    spec = importlib.machinery.PathFinder.find_spec("faust")
    if spec is None or not spec.submodule_search_locations:
        return set()
    source = (
        Path(next(iter(spec.submodule_search_locations))) / "types" / "settings" / "settings.py"
    )
    if not source.is_file():
        return set()
    return set(re.findall(r"env_name=[\"']([A-Z0-9_]+)[\"']", source.read_text()))


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = DOCKERFILE.read_text()
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    text = re.sub(r"\\\n", " ", text)
    result = []
    for line in text.splitlines():
        if line.strip():
            instruction, _, args = line.strip().partition(" ")
            result.append((instruction.upper(), args.strip()))
    return result


# -- compose: services ---------------------------------------------------------------------


def test_services_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "topics", "ingest", "worker", "push"} <= set(services)


@pytest.mark.parametrize("name", OUR_SERVICES)
def test_service_builds_our_image(name: str, compose: dict[str, Any]) -> None:
    service = compose["services"][name]
    build = service["build"]
    assert (DOCKER_DIR / build["context"]).resolve() == REPO
    assert (REPO / build["dockerfile"]).resolve() == DOCKERFILE
    assert _command(service) == COMMANDS[name]


def test_kafka_is_single_node_kraft(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"] == "apache/kafka:4.1.1"
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{node_id}@")
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in env["KAFKA_LISTENERS"]
    assert env.get("CLUSTER_ID"), "the apache/kafka image needs CLUSTER_ID in KRaft mode"
    assert "ZOOKEEPER" not in " ".join(env)
    for name, value in env.items():
        if name.endswith(("REPLICATION_FACTOR", "MIN_ISR", "MIN_INSYNC_REPLICAS")):
            assert value == "1", name
    assert "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR" in env


def test_services_reach_the_advertised_broker(compose: dict[str, Any]) -> None:
    advertised = _env(compose["services"]["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    hosts = {entry.split("://", 1)[1] for entry in advertised.split(",")}
    for name in OUR_SERVICES:
        bootstrap = _env(compose["services"][name])["TRAVERZ_BOOTSTRAP"]
        assert set(bootstrap.split(",")) <= hosts, name


def test_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "healthcheck" in services["kafka"]
    for name in LONG_RUNNING:
        condition = services[name]["depends_on"]["topics"]["condition"]
        assert condition == "service_completed_successfully", name


# -- compose: environment -------------------------------------------------------------------


@pytest.mark.parametrize("name", OUR_SERVICES)
def test_env_names_are_settings_fields(
    name: str, compose: dict[str, Any], settings_fields: dict[str, Any]
) -> None:
    known = {f"TRAVERZ_{field.upper()}" for field in settings_fields}
    env = _env(compose["services"][name])
    assert env, f"{name} has no environment"
    not_prefixed = sorted(k for k in env if not k.startswith("TRAVERZ_"))
    assert not not_prefixed, f"{name}: only TRAVERZ_* variables allowed, got {not_prefixed}"
    unknown = sorted(set(env) - known)
    assert not unknown, f"{name}: not fields of Settings: {unknown}"


@pytest.mark.parametrize("name", OUR_SERVICES)
def test_env_values_are_valid_settings(
    name: str, compose: dict[str, Any], settings_fields: dict[str, Any]
) -> None:
    from pipeline.settings import Settings

    values = {}
    for key, raw in _env(compose["services"][name]).items():
        value = _interpolate_default(raw)
        if value is not None:
            values[key.removeprefix("TRAVERZ_").lower()] = value
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    for field in values:
        assert field in settings_fields
    if name in LONG_RUNNING:
        assert getattr(settings, f"{name}_host") == "0.0.0.0", "bind all interfaces in a container"


def test_no_unprefixed_faust_variables(compose: dict[str, Any]) -> None:
    forbidden = FAUST_ENV | _faust_env_names()
    assert "BROKER_URL" in forbidden and "WEB_PORT" in forbidden
    for name, service in compose["services"].items():
        clash = sorted(set(_env(service)) & forbidden)
        assert not clash, f"{name} sets faust variables {clash}"
    for anchor, block in compose.items():
        if anchor.startswith("x-") and isinstance(block, dict):
            clash = sorted(set(map(str, block)) & forbidden)
            assert not clash, f"{anchor} sets faust variables {clash}"
    assert not (set(_interpolated_names()) & forbidden)


def _interpolated_names() -> list[str]:
    return [m["name"] for m in INTERPOLATION.finditer(COMPOSE.read_text())]


def test_every_traverz_name_in_compose_is_a_field(settings_fields: dict[str, Any]) -> None:
    """Also catches names only used in ${...} interpolations or comments."""
    known = {f"TRAVERZ_{field.upper()}" for field in settings_fields}
    used = set(re.findall(r"\bTRAVERZ_[A-Z0-9_]+\b", COMPOSE.read_text()))
    assert used, "compose.yaml configures nothing"
    assert used <= known, sorted(used - known)


# -- compose: ports -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "field"), [("ingest", "ingest_port"), ("push", "push_port")])
def test_published_ports_match_settings(
    name: str, field: str, compose: dict[str, Any], settings_fields: dict[str, Any]
) -> None:
    default = settings_fields[field].default
    service = compose["services"][name]
    assert _published(service) == [(default, default)]
    env_port = _env(service).get(f"TRAVERZ_{field.upper()}")
    assert env_port is None or int(env_port) == default


def test_worker_and_topics_publish_nothing(compose: dict[str, Any]) -> None:
    for name in ("worker", "topics"):
        assert not compose["services"][name].get("ports"), name


def test_worker_state_is_on_a_volume(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    data_dir = Path(_env(worker)["TRAVERZ_DATA_DIR"])
    mounts = [Path(str(v).split(":")[1]) for v in worker.get("volumes", [])]
    assert any(data_dir == m or m in data_dir.parents for m in mounts)


# -- Dockerfile -----------------------------------------------------------------------------


def test_dockerfile_is_multi_stage() -> None:
    instructions = _dockerfile_instructions()
    froms = [args for ins, args in instructions if ins == "FROM"]
    assert len(froms) >= 2
    args = dict(a.split("=", 1) for ins, a in instructions if ins == "ARG" and "=" in a)
    images = [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), f.split()[0]) for f in froms]
    assert all(image == "python:3.11-slim" for image in images), images
    assert any("--from=" in a for ins, a in instructions if ins == "COPY")


def test_dockerfile_runs_as_traverz() -> None:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM")
    runtime = instructions[last_from:]
    users = [args for ins, args in runtime if ins == "USER"]
    assert users, "the runtime stage must switch user"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    run = " ".join(args for ins, args in runtime if ins == "RUN")
    assert "--uid 10001" in run and "traverz" in run


def test_dockerfile_entrypoint() -> None:
    entrypoints = [args for ins, args in _dockerfile_instructions() if ins == "ENTRYPOINT"]
    assert entrypoints[-1].replace(" ", "") == '["traverz"]'


def test_dockerfile_env_is_prefixed(settings_fields: dict[str, Any]) -> None:
    known = {f"TRAVERZ_{field.upper()}" for field in settings_fields}
    text = " ".join(args for ins, args in _dockerfile_instructions() if ins == "ENV")
    names = set(re.findall(r"\b([A-Z][A-Z0-9_]*)=", text))
    assert names.isdisjoint(FAUST_ENV | _faust_env_names())
    assert {n for n in names if n.startswith("TRAVERZ_")} <= known


def test_dockerfile_copies_existing_paths() -> None:
    for ins, args in _dockerfile_instructions():
        if ins != "COPY" or "--from=" in args:
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), f"COPY source {source} missing from the repo"
