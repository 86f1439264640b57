"""Session fixtures: one real Kafka broker (KRaft) on a free port for the whole run."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import kafka_io, kafka_local, tokens
from pipeline.settings import Settings
from tests.support.procs import Stack, free_ports, process_env


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A broker for this test session; an outside one if TRAVERZ_TEST_BOOTSTRAP is set."""
    outside = os.environ.get("TRAVERZ_TEST_BOOTSTRAP")
    if outside:
        yield outside
        return
    home = Path(os.environ.get("TRAVERZ_HOME", Path.home() / ".cache" / "traverz"))
    lay = kafka_local.layout(home, *free_ports(2))
    kafka_local.start(lay, heap="512m")
    try:
        asyncio.run(kafka_io.create_topics(lay.bootstrap, 8, 1))
        yield lay.bootstrap
    finally:
        kafka_local.stop(lay)
        kafka_local.wipe(lay)


@pytest.fixture
def settings(kafka_bootstrap: str, tmp_path: Path) -> Settings:
    return Settings(bootstrap=kafka_bootstrap, data_dir=tmp_path / "state", app_id=f"traverz-t{uuid.uuid4().hex[:8]}")


@pytest.fixture
def stack(settings: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    env = process_env(settings)
    s = Stack(env=env, workdir=tmp_path)
    yield s
    s.stop_all()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(s.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


def token_for(settings: Settings, device: str, ttl: int = 3600) -> str:
    return tokens.issue(
        device,
        secret=settings.token_secret,
        kid=settings.token_kid,
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        ttl_s=ttl,
    )
