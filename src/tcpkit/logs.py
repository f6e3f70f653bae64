"""Logging set-up for the command line: everything on stderr, text or JSON.

stdout carries only data (replies), so pipes work; every log line goes to
stderr.  Text lines read like the article's transcripts (``accept HOST:PORT``);
JSON lines are one object each, for log shippers.
"""

from __future__ import annotations

import json
import logging
import sys

LEVELS = ("debug", "info", "warning", "error")


class TextFormatter(logging.Formatter):
    """``2026-11-25 10:00:00 accept 127.0.0.1:5555 (reverse)``; problems say their level."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING:
            record.message = f"{record.levelname.lower()}: {record.message}"
        return super().formatMessage(record)


# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, event, message, and the ``extra`` fields.

    Connection events carry ``event``, ``peer``, ``service``, ``lines`` and
    ``duration`` (see :mod:`tcpkit.serving.observe.events`); other lines get
    ``"event": "log"``.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "event": "log",
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "info", fmt: str = "text") -> None:
    """Send tcpkit's logs to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger = logging.getLogger("tcpkit")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
