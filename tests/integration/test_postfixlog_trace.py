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
    )


async def test_outcomes_are_traced_by_uuid(redis: Redis, tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    shutil.copy(FIXTURE, log)
    state = State(
        redis, "t1", "EVENT_QUEUE", "INCOMING-TO-POSTFIX", ttl=3600, trace_settings=SETTINGS
    )
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
    # The scripts write the records with the outcomes (trace.LUA): lines read again push
    # nothing, so they trace nothing either.
    await redis.delete("postfixlog:t1:log-position")
    again = processor(state, log, echo=False)
    await again.start()
    await again.drain()
    assert len(await trace.read(redis, "single1")) == 1


async def test_the_injection_is_traced_by_its_record_once(redis: Redis) -> None:
    state = State(
        redis, "t3", "EVENT_QUEUE", "INCOMING-TO-POSTFIX", ttl=3600, trace_settings=SETTINGS
    )
    msg = message("inj1", ["a@sink.test"])
    traced = ("inj1", trace.entry("injected", "postfixlog", queue_id="QINJ1"))
    assert await state.record("item-i", "QINJ1", msg, [], traced=traced)
    assert not await state.record("item-i", "QINJ1", msg, [], traced=traced)  # a retry
    assert [r["stage"] for r in await trace.read(redis, "inj1")] == ["injected"]
    off = State(redis, "t3", "EVENT_QUEUE", "INCOMING-TO-POSTFIX", ttl=3600)
    assert await off.record("item-j", "QINJ2", message("inj2", ["a@sink.test"]), [], traced=traced)
    assert len(await trace.read(redis, "inj1")) == 1  # tracing off: nothing written
    assert not await redis.exists("trace:-")


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
