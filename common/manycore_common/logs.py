"""JSON logging to stdout: one object per line with ``ts``, ``level``, ``service``, ``msg``
and whatever ``extra`` ids the call site passes (docs/ARCHITECTURE.md#runtime-contract). Never
message bodies or passwords; recipient addresses only at DEBUG (call sites' responsibility)."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else was passed through ``extra``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, worker: int | None = None) -> None:
        super().__init__()
        self.service = service
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "msg": record.getMessage(),
            "logger": record.name,
        }
        if self.worker is not None:
            data["worker"] = self.worker
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


def setup_logging(service: str, level: str | None = None, worker: int | None = None) -> None:
    """Route all logging to stdout as JSON. ``MANYCORE_LOG_LEVEL`` overrides the level. A
    worker process (see workers) adds its index to every line."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service, worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("MANYCORE_LOG_LEVEL", "INFO")).upper())
    # aiosmtpd logs every command (including recipient addresses) at INFO; keep it quiet
    # unless debugging.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
