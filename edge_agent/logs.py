"""Logging set-up: readable lines for a terminal or journald, or one JSON object per line."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for journald / Loki pipelines: ``ts`` (UTC, ISO 8601),
    ``level``, ``logger``, ``msg``, and the context the call passed with ``extra=``: ``source``
    (a PLC connection's name), ``line`` (a line's name) or ``component`` (``broker``, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("source", "line", "component"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


# Loggers of the libraries the agent drives. Their records say what the library saw (a closed
# socket, a frame it could not parse) in their words and often with a traceback or a hex dump;
# the agent's own one line says what it means for the PLC or broker, so theirs is detail.
LIBRARY_LOGGERS = ("asyncua", "pymodbus", "paho", "aiomqtt", "amqtt", "transitions")


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once. Under journald (``$JOURNAL_STREAM``) no timestamp is
    printed: the journal keeps its own.

    The libraries' loggers (:data:`LIBRARY_LOGGERS`) pass only CRITICAL records, unless the
    agent runs at DEBUG: then every record of theirs is written too, through the same handler
    (and in the same JSON form)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    library_level = logging.DEBUG if root.level <= logging.DEBUG else logging.CRITICAL
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)
