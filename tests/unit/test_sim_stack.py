"""One environment builder for `traverz` children: the simulator's stack and the tests' processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.settings import Settings
from pipeline.sim.stack import process_env
from tests.support import procs


def test_children_get_the_settings_and_none_of_the_parents_traverz_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRAVERZ_INGEST_PORT", "1")  # the parent's own: must not leak into a child
    monkeypatch.setenv("PATH_FOR_TEST", "kept")
    s = Settings(bootstrap="127.0.0.1:1", data_dir=tmp_path, app_id="a1", token_secret="s" * 32, token_kid="k9")
    env = process_env(s, TRAVERZ_MIN_DEVICES="3")
    assert "TRAVERZ_INGEST_PORT" not in env and env["PATH_FOR_TEST"] == "kept"
    assert env["TRAVERZ_BOOTSTRAP"] == "127.0.0.1:1" and env["TRAVERZ_DATA_DIR"] == str(tmp_path)
    assert (env["TRAVERZ_APP_ID"], env["TRAVERZ_TOKEN_KID"], env["TRAVERZ_MIN_DEVICES"]) == ("a1", "k9", "3")
    assert procs.process_env is process_env
