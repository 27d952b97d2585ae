"""Several state-script calls, and the trace records that go with them, in one pipelined
round trip (issue 20: PostfixLog set the end-to-end pace with about six round trips per
message).

The scripts go out as plain EVALSHA commands: a redis-py pipeline holding ``Script`` objects
first sends ``SCRIPT EXISTS`` for them, one more round trip on every execute. A script Redis
does not know (a new or restarted server) answers NOSCRIPT and has run nothing: each call
that got it is sent again on its own, in order, through ``replicas.call`` (which loads it).

With a replica ack configured (``replicas``), one ``WAIT`` follows the scripts on the same
connection: WAIT counts the replication offset, so it covers every write before it. Trace
records come last, after the WAIT: a record never claims an outcome that Redis might lose.
Their failures are counted, not raised (``trace.write``'s rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from manycore_common import replicas, trace


@dataclass(frozen=True)
class Call:
    """One script call: its KEYS (every key it touches) and ARGV."""

    script: AsyncScript
    keys: Sequence[Any]
    args: Sequence[Any]


def command(call: Call) -> tuple[Any, ...]:
    """EVALSHA's arguments for ``call`` (tests/integration/test_slots.py records these)."""
    return (call.script.sha, len(call.keys), *call.keys, *call.args)


async def run(
    redis: Redis,
    calls: Sequence[Call],
    traced: Sequence[tuple[str, bytes]] = (),
    settings: trace.TraceSettings = trace.OFF,
) -> list[Any]:
    """The replies of ``calls`` in order, in one round trip (more after NOSCRIPT). The
    first error reply of a script is raised (a ``RedisError``) after the round trip: calls
    before and after it ran, so callers use scripts that are safe to run again (they are:
    each checks what it already did)."""
    if not calls:
        await trace.write(redis, settings, traced)
        return []
    ack = replicas.ack_of(redis)
    if len(calls) == 1 and ack is None and not (traced and settings.enabled):
        return [await _single(redis, calls[0])]
    results, waited = await _send(redis, ack, calls, traced, settings)
    for i, reply in enumerate(results):
        if isinstance(reply, NoScriptError):
            # Not run: sent again on its own, which loads the script (and waits, with an ack).
            results[i] = await replicas.call(redis, calls[i].script, calls[i].keys, calls[i].args)
    for reply in results:
        if isinstance(reply, Exception):
            raise reply
    if ack is not None:
        _check_ack(ack, waited)
    return results


async def _single(redis: Redis, call: Call) -> Any:
    """One call as a plain EVALSHA: no pipeline to build (a feeder's record, a claim)."""
    try:
        return await redis.evalsha(*command(call))
    except NoScriptError:
        return await replicas.call(redis, call.script, call.keys, call.args)


async def _send(
    redis: Redis,
    ack: replicas.ReplicaAck | None,
    calls: Sequence[Call],
    traced: Sequence[tuple[str, bytes]] = (),
    settings: trace.TraceSettings = trace.OFF,
) -> tuple[list[Any], Any]:
    """One pipeline: the scripts' replies and WAIT's (None without an ack)."""
    pipe = redis.pipeline(transaction=False)
    for call in calls:
        pipe.evalsha(*command(call))
    if ack is not None:
        pipe.wait(ack.replicas, ack.timeout_ms)
    traces = trace.queue(pipe, settings, traced)
    replies = await pipe.execute(raise_on_error=False)
    if traces and any(isinstance(r, Exception) for r in replies[len(replies) - traces :]):
        trace.WRITE_FAILURES.inc()
    return list(replies[: len(calls)]), replies[len(calls)] if ack is not None else None


def _check_ack(ack: replicas.ReplicaAck, reply: Any) -> None:
    if isinstance(reply, Exception):
        raise reply
    if int(reply) < ack.replicas:
        replicas.NOT_REPLICATED.inc()
        raise replicas.NotReplicated(
            f"{reply} of {ack.replicas} replicas acknowledged within {ack.timeout_ms} ms"
        )
