"""JSON logging to stdout: one object per line with ``ts``, ``level``, ``service``, ``msg``
and whatever ``extra`` ids the call site passes (docs/ARCHITECTURE.md#runtime-contract). Never
message bodies or passwords; recipient addresses only at DEBUG (call sites' responsibility).

A service that logs a line per request (HttpReceiver) can buffer the lines below WARNING
(``buffer_info``): they are written together, one ``write`` for up to ``lines`` lines and at
least every ``seconds``, instead of one write and flush each. A WARNING or above first writes
what is buffered, then itself, at once, so order is kept and problems are never held back.
Buffered lines are written at a graceful stop and at interpreter exit (``logging.shutdown``);
a process killed outright (SIGKILL, OOM) loses at most ``lines`` lines or ``seconds`` of them.

A service that relays many lines of another program (PostfixLog's ``echo-postfix-log``) can log
them with ``info_lines``: the same JSON lines, built without a LogRecord each and written in
one ``write``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

# Attributes every LogRecord has; anything else was passed through ``extra``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}

# One encoder for every line: json.dumps() with ``default`` builds a new one per call.
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)


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
        return _ENCODER.encode(data)


def _plain_json_handler(logger: logging.Logger) -> logging.StreamHandler[TextIO] | None:
    """The one handler an INFO record of ``logger`` reaches, if that is a plain stream
    handler with our formatter and nothing filters on the way (``setup_logging``'s)."""
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        found.extend(current.handlers)
        current = current.parent if current.propagate else None
    if len(found) != 1:
        return None
    handler = found[0]
    if (
        type(handler) is not logging.StreamHandler
        or not isinstance(handler.formatter, JsonFormatter)
        or handler.filters
        or handler.level > logging.INFO
    ):
        return None
    return handler


def info_lines(logger: logging.Logger, msg: str, key: str, values: Sequence[str]) -> None:
    """``logger.info(msg, extra={key: value})`` for each of ``values``. Behind
    ``setup_logging``'s handler alone, the lines are those ``JsonFormatter`` writes (same keys
    in the same order; one ``ts`` for all, the moment they are written) in one write: a
    record and a write each cost several times the line's JSON. Anywhere else (other
    handlers, filters, tests capturing records) each goes through ``logger.info``."""
    if not values or not logger.isEnabledFor(logging.INFO):
        return
    handler = _plain_json_handler(logger)
    if handler is None:
        for value in values:
            logger.info(msg, extra={key: value})
        return
    formatter = handler.formatter
    assert isinstance(formatter, JsonFormatter)
    data: dict[str, Any] = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": "info",
        "service": formatter.service,
        "msg": msg,
        "logger": logger.name,
    }
    if formatter.worker is not None:
        data["worker"] = formatter.worker
    encoded = []
    for value in values:
        data[key] = value
        encoded.append(_ENCODER.encode(data))
    with handler.lock:  # type: ignore[union-attr]  # created by Handler.__init__
        try:
            handler.stream.write("\n".join(encoded) + "\n")
            handler.flush()
        except Exception:  # noqa: BLE001 - logging's own rule: report, never raise
            handler.handleError(logging.makeLogRecord({"msg": msg, "name": logger.name}))


class BufferedLines(logging.StreamHandler[TextIO]):
    """Formatted lines below ``flush_level`` kept and written together: when ``lines`` are
    held, or ``seconds`` after the oldest one (a timer thread), or before a record at
    ``flush_level`` or above, which is written at once behind them."""

    def __init__(
        self,
        stream: TextIO,
        lines: int,
        seconds: float,
        flush_level: int = logging.WARNING,
    ) -> None:
        super().__init__(stream)
        self.capacity = lines
        self.seconds = seconds
        self.flush_level = flush_level
        self._held: list[str] = []
        self._stopped = threading.Event()
        self._timer = threading.Thread(target=self._tick, name="log-flush", daemon=True)
        self._timer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._held.append(self.format(record))
            if record.levelno >= self.flush_level or len(self._held) >= self.capacity:
                self._write()
        except Exception:  # noqa: BLE001 - logging's own rule: report, never raise
            self.handleError(record)

    def _write(self) -> None:
        """Write what is held (the caller holds the handler's lock)."""
        if self._held:
            text = "\n".join(self._held) + "\n"
            self._held.clear()
            self.stream.write(text)
            self.stream.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._write()

    def _tick(self) -> None:
        while not self._stopped.wait(self.seconds):
            try:
                self.flush()
            except (OSError, ValueError):  # stdout closed under us: nothing to do
                return

    def close(self) -> None:
        self._stopped.set()
        self.flush()
        super().close()


def setup_logging(service: str, level: str | None = None, worker: int | None = None) -> None:
    """Route all logging to stdout as JSON. ``MANYCORE_LOG_LEVEL`` overrides the level. A
    worker process (see workers) adds its index to every line."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service, worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("MANYCORE_LOG_LEVEL", "INFO")).upper())
    # Nothing in a line shows the caller's file, thread or process, so do not look them up
    # for each record (the logging HOWTO's "Optimization": a frame walk and three lookups).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # aiosmtpd logs every command (including recipient addresses) at INFO; keep it quiet
    # unless debugging.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def buffer_info(lines: int, seconds: float) -> None:
    """Put the root logger's stdout handler behind ``BufferedLines`` (after
    ``setup_logging``); ``lines`` 0 or 1 leaves it writing each line at once."""
    root = logging.getLogger()
    if lines <= 1:
        return
    for index, handler in enumerate(root.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, BufferedLines):
            buffered = BufferedLines(handler.stream, lines, seconds)
            buffered.setFormatter(handler.formatter)
            root.handlers[index] = buffered


def unbuffer() -> None:
    """Write what is buffered and go back to writing each line at once (a graceful stop)."""
    root = logging.getLogger()
    for index, handler in enumerate(root.handlers):
        if isinstance(handler, BufferedLines):
            plain = logging.StreamHandler(handler.stream)
            plain.setFormatter(handler.formatter)
            root.handlers[index] = plain
            handler.close()
