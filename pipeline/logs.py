"""One logging set-up for every Traverz process: JSON lines for machines, text for people.

``TRAVERZ_LOG_FORMAT=json|text`` (or ``traverz --log-format``) picks the format. The same
``logging.config.dictConfig`` document configures the root logger, uvicorn's loggers (ingest
and push hand it to ``uvicorn.run(log_config=…)``, which would otherwise install its own) and
faust's (the worker sets it as ``app.conf.logging_config``; mode applies it at start), so
every line of every process has one shape. A JSON line carries ``ts`` (epoch s), ``time``
(ISO 8601 UTC), ``level``, ``logger``, ``process`` (ingest/worker/push/…), ``pid``, ``msg``,
``exc`` when there is a traceback, and any ``extra={…}`` fields of the call.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(process_name)s %(name)s: %(message)s"
# attributes every LogRecord has: anything else on a record came from ``extra=`` and is logged
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "process_name", "color_message"}

_process_name = "traverz"


class ProcessNameFilter(logging.Filter):
    """Adds ``process_name`` (ingest, worker, push, …) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.process_name = _process_name
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 6),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": getattr(record, "process_name", _process_name),
            "pid": record.process,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def level_of(name: str) -> str:
    """faust's ``-l`` names (crit, warn, …) as logging level names."""
    return {"crit": "CRITICAL", "warn": "WARNING"}.get(name.lower(), name.upper())


def dict_config(fmt: str, level: str = "INFO") -> dict[str, Any]:
    """The dictConfig document for ``fmt`` (text|json): one stderr handler on the root, uvicorn's propagating."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    formatter: dict[str, Any] = {"()": f"{__name__}.JsonFormatter"} if fmt == "json" else {"format": TEXT_FORMAT}
    lvl = level_of(level)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"process_name": {"()": f"{__name__}.ProcessNameFilter"}},
        "formatters": {"traverz": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "traverz",
                "filters": ["process_name"],
            }
        },
        "root": {"level": lvl, "handlers": ["stderr"]},
        # uvicorn installs handlers of its own on these (propagate False): ours replace them
        "loggers": {
            name: {"level": lvl, "handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
        },
    }


def configure(fmt: str, process: str, level: str = "INFO") -> dict[str, Any]:
    """Configure logging of this process now; returns the document (for uvicorn's and faust's own set-up)."""
    global _process_name
    _process_name = process
    os.environ.setdefault("TRAVERZ_LOG_FORMAT", fmt)  # child processes log the same way
    doc = dict_config(fmt, level)
    logging.config.dictConfig(doc)
    logging.getLogger("traverz").info("traverz %s starting", process, extra={"log_format": fmt})
    return doc
