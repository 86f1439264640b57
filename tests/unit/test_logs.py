"""pipeline.logs: one JSON object per line, or text, for every logger including uvicorn's."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator

import pytest

from pipeline import logs

_NAMES = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "traverz", "traverz.x")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """dictConfig is process-wide: put back what pytest (and other tests) had."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    loggers = {n: (list(lg.handlers), lg.level, lg.propagate) for n in _NAMES for lg in [logging.getLogger(n)]}
    yield
    root.handlers[:], root.level = saved
    for n, (handlers, level, propagate) in loggers.items():
        lg = logging.getLogger(n)
        lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate
    logs._process_name = "traverz"


def _capture(fmt: str) -> tuple[io.StringIO, logging.Handler]:
    doc = logs.dict_config(fmt, "info")
    logging.config.dictConfig(doc)
    buf = io.StringIO()
    handler = logging.root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buf)
    return buf, handler


def test_json_lines_carry_level_logger_process_extra_and_traceback() -> None:
    buf, _ = _capture("json")
    logs._process_name = "ingest"
    logging.getLogger("uvicorn.error").warning("port %d busy", 8080, extra={"port": 8080})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("traverz.x").exception("failed")
    first, second = (json.loads(line) for line in buf.getvalue().splitlines())
    assert first["msg"] == "port 8080 busy" and first["level"] == "warning" and first["logger"] == "uvicorn.error"
    assert first["process"] == "ingest" and first["port"] == 8080 and first["time"].endswith("+00:00")
    assert second["level"] == "error" and "RuntimeError: boom" in second["exc"]


def test_text_lines_are_not_json() -> None:
    buf, _ = _capture("text")
    logging.getLogger("traverz").info("hello")
    line = buf.getvalue().strip()
    assert line.endswith("traverz: hello") and " INFO " in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_faust_level_names_and_unknown_formats() -> None:
    assert logs.dict_config("json", "warn")["root"]["level"] == "WARNING"
    assert logs.dict_config("text", "crit")["loggers"]["uvicorn.access"]["level"] == "CRITICAL"
    with pytest.raises(ValueError):
        logs.dict_config("xml")
