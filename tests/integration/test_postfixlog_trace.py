"""PostfixLog's side of ``trace:<uuid>`` against a real Redis, on the real log fixture: each
outcome read from Postfix's log becomes one trace record (deferrals too, without
``deferred-events``), a re-read pushes no event twice; and each line read is echoed to stdout
as a JSON log line when ``echo-postfix-log`` is on."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from redis.asyncio import Redis

from manycore_common import trace
from manycore_common.logs import JsonFormatter
from manycore_postfixlog.follower import LogFollower
from manycore_postfixlog.processor import LogProcessor
from manycore_postfixlog.state import State
from tests.integration.test_postfixlog_processor import (
    FIXTURE,
    LOG_TIME,
    MULTI,
    SINGLE,
    Clock,
    message,
)

SETTINGS = trace.TraceSettings(retention_seconds=3600, max_entries=50)


def processor(state: State, log: Path, echo: bool) -> LogProcessor:
    return LogProcessor(
        state,
        LogFollower(log),
        clock=Clock(100.0),
        wall_clock=lambda: LOG_TIME + 5,
        echo=echo,
        trace_settings=SETTINGS,
    )


async def test_outcomes_are_traced_by_uuid(redis: Redis, tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    shutil.copy(FIXTURE, log)
    state = State(redis, "t1", "EVENT_QUEUE", "INCOMING-TO-POSTFIX", ttl=3600)
    multi = ["ok1@sink.test", "Ok2@Sink.Test", "bad1@sink.test", "later1@sink.test"]
    assert await state.record("item-s", SINGLE, message("single1", ["ok-single@sink.test"]), [])
    assert await state.record("item-m", MULTI, message("multi1", multi), [])
    proc = processor(state, log, echo=False)
    await proc.start()
    await proc.drain()

    single = await trace.read(redis, "single1")
    assert [(r["stage"], r["outcome"], r["rcpt"]) for r in single] == [
        ("log", "delivered", "ok-single@sink.test")
    ]
    assert single[0]["queue_id"] == SINGLE and single[0]["instance"] == "t1"
    outcomes = {(r["outcome"], r["rcpt"], r.get("type")) for r in await trace.read(redis, "multi1")}
    assert ("delivered", "ok1@sink.test", None) in outcomes
    assert ("bounce", "bad1@sink.test", "hard") in outcomes
    assert ("deferred", "later1@sink.test", None) in outcomes
    assert ("bounce", "later1@sink.test", "soft") in outcomes
    assert 0 < await redis.ttl("trace:multi1") <= 3600


async def test_postfix_lines_are_echoed_as_json(
    redis: Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "mail.log"
    shutil.copy(FIXTURE, log)
    state = State(redis, "t2", "EVENT_QUEUE", "INCOMING-TO-POSTFIX", ttl=3600)
    lines = FIXTURE.read_text().splitlines()
    with caplog.at_level(logging.INFO, logger="postfix"):
        quiet = processor(state, log, echo=False)
        await quiet.start()
        await quiet.step()
        assert not [r for r in caplog.records if r.name == "postfix"]
        await redis.delete("postfixlog:t2:log-position")
        loud = processor(state, log, echo=True)
        await loud.start()
        await loud.step()
    echoed = [r for r in caplog.records if r.name == "postfix"]
    assert [r.__dict__["postfix"] for r in echoed] == lines
    line = json.loads(JsonFormatter("postfixlog").format(echoed[0]))
    assert line["postfix"] == lines[0] and line["msg"] == "postfix" and line["logger"] == "postfix"
