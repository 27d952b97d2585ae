"""logs: the JSON line format and the buffered handler's write rules (real handler, a real
in-memory stream that counts its writes)."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator

import pytest

from manycore_common.logs import (
    BufferedLines,
    JsonFormatter,
    buffer_info,
    info_lines,
    unbuffer,
)


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("test_logs")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    for handler in log.handlers:
        if isinstance(handler, BufferedLines):
            handler.close()
            log.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def buffered(log: logging.Logger, capacity: int, seconds: float = 60.0) -> CountingStream:
    stream = CountingStream()
    handler = BufferedLines(stream, capacity, seconds)
    handler.setFormatter(JsonFormatter("svc"))
    log.addHandler(handler)
    return stream


def test_format_is_one_json_object_with_the_extras() -> None:
    record = logging.makeLogRecord(
        {"msg": "message %s", "args": ("enqueued",), "levelno": 20, "levelname": "INFO"}
    )
    record.__dict__.update({"uuid": "ü1", "bytes": 5120, "when": object()})
    data = json.loads(JsonFormatter("svc", worker=2).format(record))
    assert data["msg"] == "message enqueued" and data["level"] == "info"
    assert (data["service"], data["worker"], data["uuid"], data["bytes"]) == ("svc", 2, "ü1", 5120)
    assert data["when"].startswith("<object") and data["ts"].endswith("+00:00")
    assert "ü" in JsonFormatter("svc").format(record)  # not escaped: ensure_ascii off


def test_info_lines_are_written_together_when_the_buffer_fills(logger: logging.Logger) -> None:
    stream = buffered(logger, 3)
    logger.info("one")
    logger.info("two")
    assert stream.getvalue() == "" and stream.writes == 0
    logger.info("three")
    assert [d["msg"] for d in lines(stream)] == ["one", "two", "three"]
    assert stream.writes == 1


def test_a_warning_is_written_at_once_behind_what_is_held(logger: logging.Logger) -> None:
    stream = buffered(logger, 100)
    logger.info("before")
    logger.warning("problem")
    assert [d["msg"] for d in lines(stream)] == ["before", "problem"]
    logger.error("worse")
    assert lines(stream)[-1]["msg"] == "worse"


def test_held_lines_are_written_after_the_interval(logger: logging.Logger) -> None:
    stream = buffered(logger, 100, seconds=0.05)
    logger.info("quiet")
    deadline = time.monotonic() + 5
    while not stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [d["msg"] for d in lines(stream)] == ["quiet"]


def test_close_and_flush_write_what_is_held(logger: logging.Logger) -> None:
    stream = buffered(logger, 100)
    logger.info("held")
    next(h for h in logger.handlers if isinstance(h, BufferedLines)).close()
    assert [d["msg"] for d in lines(stream)] == ["held"]


def test_buffer_info_swaps_the_root_handler_and_unbuffer_restores_it() -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.setLevel(logging.INFO)
    stream = CountingStream()
    plain = logging.StreamHandler(stream)
    plain.setFormatter(JsonFormatter("svc"))
    root.handlers[:] = [plain]
    try:
        buffer_info(1, 1.0)  # 1: nothing to gain, left as it is
        assert root.handlers == [plain]
        buffer_info(50, 1.0)
        assert isinstance(root.handlers[0], BufferedLines)
        logging.getLogger("test_logs_root").warning("seen at once")
        assert lines(stream)[-1]["msg"] == "seen at once"
        logging.getLogger("test_logs_root").info("held until unbuffer")
        writes = stream.writes
        unbuffer()
        assert lines(stream)[-1]["msg"] == "held until unbuffer" and stream.writes == writes + 1
        assert type(root.handlers[0]) is logging.StreamHandler
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


class Collecting(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_info_lines_write_what_info_would_in_one_write(logger: logging.Logger) -> None:
    """Behind a plain JSON stream handler: one write, the lines ``logger.info`` writes (but
    for ``ts``); behind anything else (here a second handler), records as usual."""
    values = ["first line", 'second "quoted" line', "dritte Zeile ü"]
    expected = CountingStream()
    plain = logging.StreamHandler(expected)
    plain.setFormatter(JsonFormatter("svc", worker=2))
    # Only ours (pytest's capture handlers may sit on this logger too).
    kept, logger.handlers[:] = logger.handlers[:], [plain]
    for value in values:
        logger.info("relayed", extra={"line": value})
    fast = CountingStream()
    plain.setStream(fast)
    info_lines(logger, "relayed", "line", values)
    assert fast.writes == 1
    strip = [{k: v for k, v in line.items() if k != "ts"} for line in lines(fast)]
    assert strip == [{k: v for k, v in line.items() if k != "ts"} for line in lines(expected)]
    assert [list(line) for line in lines(fast)] == [list(line) for line in lines(expected)]

    records: list[logging.LogRecord] = []
    second = Collecting(records)
    logger.addHandler(second)
    try:
        info_lines(logger, "relayed", "line", values)
    finally:
        logger.handlers[:] = kept
    assert [r.__dict__["line"] for r in records] == values
    assert len(lines(fast)) == 6
