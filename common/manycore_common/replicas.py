"""Writes that count only once a replica has them (Redis ``WAIT``).

Redis replicates asynchronously: a primary that dies right after answering a write may take
it along, and the replica Sentinel promotes never saw it. A push acknowledged to a client
(250 / 200) must not be lost that way, so such a write is followed by ``WAIT <n> <timeout>``
*on the same connection* (WAIT counts the replicas that acknowledged that connection's
writes): the script call and WAIT go out as one pipeline, which redis-py sends on one
connection, in one round trip. Fewer than ``n`` replicas within the timeout raises
``NotReplicated`` (a ``RedisError``, so every caller's existing Redis-error handling answers
451 / 503 or retries). The write may still be in Redis and reach the replica later, so a
client's retry can duplicate it; the idempotency of issue 19 makes that harmless.

Which writes wait (every one whose success is told to someone outside Redis):
``ReliableQueue.push`` / ``push_many`` (the receivers' 250 / 200), ``events.emit`` and
``emit_once_many`` (MxServer's 250 for a bounce or complaint, HttpReceiver's unsubscribe
answer), and PostfixLog's claim, record, final, deferral and requeue scripts (a claim or
record decides what goes to Postfix; final and deferral emit events). Not waited for: moves
inside Redis (take, hand-over, ack, retry, reap, heartbeats): replication keeps the order of
writes, so a promoted replica that missed the last ones holds an earlier consistent state in
which the item is still in a processing list, and the reaper hands it out again (at least
once, as after a consumer's crash: BackData may post that event again). WAIT counts the
replication offset, so a waited write also covers every write before it: a hand-over that
PostfixLog then claimed is on the replica with the claim. Nor do PostfixLog's log position
(read again from an earlier point; final and deferral skip what is already recorded) and
MxServer's store of unclassified messages (a debugging aid, trimmed anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

NOT_REPLICATED = Counter(
    "redis_writes_not_replicated",
    "Writes refused because fewer replicas than min-replicas-ack had them in time",
)


@dataclass(frozen=True)
class ReplicaAck:
    replicas: int
    timeout_ms: int


class NotReplicated(RedisError):
    """Fewer replicas than required acknowledged a write within the timeout."""


class Client(Redis):
    """A Redis client that knows how many replicas must have a write before it counts
    (``None``: acknowledged by the primary alone; single-node form)."""

    replica_ack: ReplicaAck | None = None


def ack_of(redis: Redis) -> ReplicaAck | None:
    return redis.replica_ack if isinstance(redis, Client) else None


async def call(redis: Redis, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """Run ``script``; with a replica ack configured, return only once enough replicas have
    its writes (else raise ``NotReplicated``)."""
    ack = ack_of(redis)
    if ack is None:
        return await script(keys=keys, args=args)
    for _ in range(2):
        # EVALSHA directly (not ``script(client=pipe)``): redis-py would send SCRIPT EXISTS
        # before every such pipeline, one more round trip per write.
        result = await _then_wait(redis, ack, ("EVALSHA", script.sha, len(keys), *keys, *args))
        if not isinstance(result, NoScriptError):
            return result
        # Not run (a new or restarted primary): load it and send again, which is safe.
        await redis.script_load(script.script)
    raise NoScriptError("script vanished twice in a row")


async def command(redis: Redis, *args: Any) -> Any:
    """One command, acknowledged like ``call``."""
    ack = ack_of(redis)
    if ack is None:
        return await redis.execute_command(*args)  # type: ignore[no-untyped-call]
    return await _then_wait(redis, ack, args)


async def _then_wait(redis: Redis, ack: ReplicaAck, args: Sequence[Any]) -> Any:
    """``args`` then WAIT in one pipeline (one connection, one round trip). Returns the
    command's reply, or a NoScriptError (to be handled by the caller) without waiting."""
    pipe = redis.pipeline(transaction=False)
    pipe.execute_command(*args)
    pipe.execute_command("WAIT", ack.replicas, ack.timeout_ms)
    result, replicas = await pipe.execute(raise_on_error=False)
    if isinstance(result, NoScriptError):
        return result
    if isinstance(result, Exception):
        raise result
    if isinstance(replicas, Exception):
        raise replicas
    if int(replicas) < ack.replicas:
        NOT_REPLICATED.inc()
        raise NotReplicated(
            f"{replicas} of {ack.replicas} replicas acknowledged within {ack.timeout_ms} ms"
        )
    return result
