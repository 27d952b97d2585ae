"""The log processor against a real Redis, on real log lines (tests/fixtures/postfix): lines
that arrive before their message's state wait for it, re-reading a log emits nothing twice,
and lines of unknown messages are dropped after the wait."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from manycore_postfixlog.follower import LogFollower
from manycore_postfixlog.processor import LogProcessor
from manycore_postfixlog.state import Message, State
from tests.helpers import stored_item

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "postfix" / "outcomes.log"
SINGLE, MULTI = "4jbsyQ5tcCzKffX", "4jbsyQ5sHyzKffW"
#: The fixture's lines were written at 2026-11-28 01:24:30..35 UTC.
LOG_TIME = 1795829070.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def message(uuid: str, rcpts: list[str]) -> Message:
    return Message(uuid, "s1", "example.com", f"bounce-{uuid}@b.example", tuple(rcpts), uuid)


async def events(redis: Redis) -> list[dict[str, Any]]:
    raws = await redis.lrange("EVENT_QUEUE", 0, -1)
    return [json.loads(stored_item(raw).payload) for raw in reversed(raws)]


def processor(state: State, log: Path, clock: Clock) -> LogProcessor:
    return LogProcessor(
        state,
        LogFollower(log),
        wait_seconds=30,
        clock=clock,
        wall_clock=lambda: LOG_TIME + 5,
    )


async def test_lines_wait_for_their_state_and_a_reread_emits_nothing_twice(
    redis: Redis, tmp_path: Path
) -> None:
    log = tmp_path / "mail.log"
    shutil.copy(FIXTURE, log)
    state = State(redis, "t1", "EVENT_QUEUE", "INCOMING-TO-POSTFIX", ttl=3600)
    clock = Clock(100.0)
    first = processor(state, log, clock)
    await first.start()
    await first.step()
    # The log is ahead of Redis (the injector's reply had not been recorded yet).
    assert await events(redis) == []
    assert {w.record.queue_id for w in first.waiting} == {SINGLE, MULTI}
    saved = first.safe_position()
    assert saved is not None and saved.offset > 0 and saved == first.waiting[0].line.start

    multi = ["ok1@sink.test", "Ok2@Sink.Test", "bad1@sink.test", "later1@sink.test"]
    multi.append("someone@refused.test")
    assert await state.record("item-s", SINGLE, message("single1", ["ok-single@sink.test"]), [])
    assert await state.record("item-m", MULTI, message("multi1", multi), [])
    await first.step()
    await first.save(force=True)
    got = await events(redis)
    assert sorted((e["rcpt"], e["event"], e.get("type")) for e in got) == [
        ("Ok2@Sink.Test", "delivered", None),
        ("bad1@sink.test", "bounce", "hard"),
        ("later1@sink.test", "bounce", "soft"),
        ("ok-single@sink.test", "delivered", None),
        ("ok1@sink.test", "delivered", None),
        ("someone@refused.test", "bounce", "soft"),
    ]
    assert not first.waiting
    assert await state.load_position() == first.follower.position

    # A restart that lost its position reads everything again: nothing is emitted twice.
    await redis.delete("postfixlog:t1:log-position")
    again = processor(state, log, clock)
    await again.start()
    await again.drain()
    assert len(await events(redis)) == 6
    # The injection is recorded once; a second record of the same item changes nothing.
    assert not await state.record("item-s", SINGLE, message("single1", ["x@y"]), [])


async def test_lines_of_unknown_messages_are_dropped_after_the_wait(
    redis: Redis, tmp_path: Path
) -> None:
    log = tmp_path / "mail.log"
    shutil.copy(FIXTURE, log)
    state = State(redis, "t2", "EVENT_QUEUE", "INCOMING-TO-POSTFIX", ttl=3600)
    clock = Clock(0.0)
    proc = processor(state, log, clock)
    await proc.start()
    await proc.step()
    assert proc.waiting
    clock.now = 31.0
    await proc.step()
    await proc.save(force=True)
    assert not proc.waiting
    assert await events(redis) == []
    position = await state.load_position()
    assert position is not None and position.offset == log.stat().st_size


async def hgetall_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


async def test_a_message_just_recorded_is_not_read_back(redis: Redis, tmp_path: Path) -> None:
    """The feeder's ``remember`` (issue 20) saves the read of the hash for a queue id's first
    record, and the events are those of a processor that reads every message from Redis."""
    multi = ["ok1@sink.test", "Ok2@Sink.Test", "bad1@sink.test", "later1@sink.test"]
    msgs = {SINGLE: message("single1", ["ok-single@sink.test"]), MULTI: message("multi1", multi)}
    got: dict[str, list[tuple[Any, ...]]] = {}
    reads: dict[str, int] = {}
    for instance, remember in (("r1", False), ("r2", True)):
        log = tmp_path / f"{instance}.log"
        shutil.copy(FIXTURE, log)
        state = State(redis, instance, f"EV-{instance}", "INCOMING-TO-POSTFIX", ttl=3600)
        proc = processor(state, log, Clock(100.0))
        await proc.start()
        for qid, msg in msgs.items():
            assert await state.record(f"item-{instance}-{qid}", qid, msg, [])
            if remember:
                proc.remember(qid, msg)
        before = await hgetall_calls(redis)
        await proc.drain()
        reads[instance] = await hgetall_calls(redis) - before
        raws = await redis.lrange(f"EV-{instance}", 0, -1)
        payloads = [json.loads(stored_item(raw).payload) for raw in raws]
        got[instance] = sorted(
            (e["uuid"], e["rcpt"], e["event"], e.get("type"), e.get("reason"), e.get("ip"))
            for e in payloads
        )
    assert len(got["r1"]) == 5
    assert got["r2"] == got["r1"]
    # One read saved per remembered queue id; later records of MULTI read Redis as before.
    assert reads["r2"] == reads["r1"] - 2
