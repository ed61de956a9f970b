"""One log-line format for server and worker (see docs/internals.md, "Log lines").

A line is ``<UTC time with ms>Z LEVEL logger message key=value ...``. Pass the key/value pairs
with ``logger.info("unblock pass", extra=kv(workflow_id=1, ready=3))``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

_KV_ATTR = "torc_kv"


def kv(**fields: Any) -> dict[str, Any]:
    """Wraps key/value pairs for a log call's ``extra=`` argument."""
    return {_KV_ATTR: fields}


def _render_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 0.1 or value == 0 else f"{value:.3g}"
    text = str(value)
    if not text or any(c.isspace() for c in text) or '"' in text or "=" in text:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


class LineFormatter(logging.Formatter):
    """Formats records as one line: time, level, logger, message, key=value pairs."""

    def format(self, record: logging.LogRecord) -> str:
        """Renders one record (exception text, if any, follows on the next lines)."""
        seconds = int(record.created)
        millis = int((record.created - seconds) * 1000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"
        line = f"{stamp} {record.levelname} {record.name} {record.getMessage()}"
        fields = getattr(record, _KV_ATTR, None)
        if fields:
            line += " " + " ".join(f"{k}={_render_value(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str | int = "info", file: Path | str | None = None) -> None:
    """Sends every log record of the process to ``file`` (or stderr) in the line format.

    Args:
        level: a level name (``debug``, ``info``, ``warning``, ``error``) or number.
        file: the log file (appended to); ``None`` logs to stderr.
    """
    numeric = level if isinstance(level, int) else logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}; use debug, info, warning or error")
    handler: logging.Handler
    if file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(file, encoding="utf-8")
    handler.setFormatter(LineFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
