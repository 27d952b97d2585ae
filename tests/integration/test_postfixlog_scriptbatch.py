"""Several state scripts and trace records in one pipeline (scriptbatch): replies in order,
scripts Redis does not know yet loaded and run once, an error reply raised after the others
ran, trace records written."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from manycore_common import trace
from manycore_postfixlog import scriptbatch
from manycore_postfixlog.state import Deferral, Message, State

TRACE = trace.TraceSettings(True, 600, 10)


async def recorded(redis: Redis) -> State:
    state = State(redis, "pod-0", "EVENT_QUEUE", "INCOMING-TO-POSTFIX", ttl=3600)
    msg = Message("u1", None, "ex.com", "bounce@ex.com", ("a@x.org", "b@x.org"), "item-1")
    assert await state.record("item-1", "QID1", msg, [])
    return state


async def test_a_batch_runs_unknown_scripts_once_in_order(redis: Redis) -> None:
    state = await recorded(redis)
    await redis.script_flush()
    calls = [
        state.deferral_call("QID1", "a@x.org", Deferral("busy", "4.2.1", None), "t1", b"d"),
        state.final_call("QID1", "a@x.org", b"delivered-a"),
        state.final_call("QID1", "a@x.org", b"delivered-a-again"),
        state.final_call("QID9", "c@x.org", b"unknown"),
    ]
    traced = [("u1", trace.entry("log", "test"))]
    assert await scriptbatch.run(redis, calls, traced, TRACE) == [2, 1, 0, -1]
    assert await redis.lrange("EVENT_QUEUE", 0, -1) == [b"delivered-a", b"d"]
    assert len(await trace.read(redis, "u1")) == 1
    # Known now: the same calls again change nothing but the deferral's memory.
    assert await scriptbatch.run(redis, calls[1:]) == [0, 0, -1]


async def test_an_error_reply_is_raised_after_the_other_calls_ran(redis: Redis) -> None:
    state = await recorded(redis)
    await redis.set(state.msg_key("QID2"), "not a hash")
    calls = [
        state.final_call("QID2", "a@x.org", b"broken"),
        state.final_call("QID1", "b@x.org", b"delivered-b"),
    ]
    with pytest.raises(ResponseError):
        await scriptbatch.run(redis, calls)
    assert await redis.lrange("EVENT_QUEUE", 0, -1) == [b"delivered-b"]


async def test_messages_are_read_in_one_call(redis: Redis) -> None:
    state = await recorded(redis)
    found = await state.messages(["QID1", "NONE", "QID1"])
    assert [m and m.rcpts for m in found] == [("a@x.org", "b@x.org"), None, ("a@x.org", "b@x.org")]
    assert await state.messages([]) == []
