"""PostfixLog exactly-once under stalls (issue 17 item 4): an item is claimed (atomically,
with the claimer's id) before it is handed to a Postfix; a consumer that finds the claim held
by another does not inject the item; an item whose check fails with a Redis error goes back
to the queue instead of staying held. Real Redis, real PostfixLog processes, real Postfix
instances relaying to the sink MX (postfix_env)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from manycore_postfixlog.state import CLAIM_SECONDS, Held, Message, State
from tests.helpers import RedisServer, wait_for
from tests.integration.postfix_env import INCOMING, Sink, postfixlog_env, wait_quiet


async def test_claim_is_atomic_reentrant_and_ends_with_the_record(redis: Redis) -> None:
    state = State(redis, "t1", "EVENT_QUEUE", INCOMING, ttl=3600)
    first = await state.claim("item-1", "pod-a", 1.0)
    assert (first.status, first.holder) == ("mine", "pod-a")
    assert 0 < await redis.pttl(state.claim_key("item-1")) <= CLAIM_SECONDS * 1000
    assert (await state.claim("item-1", "pod-a", 2.0)).status == "mine"  # re-entrant
    other = await state.claim("item-1", "pod-b", 2.0)
    assert (other.status, other.holder) == ("held", "pod-a")
    await state.unclaim("item-1", "pod-b")  # not b's: nothing happens
    assert (await state.claim("item-1", "pod-b", 2.0)).status == "held"
    msg = Message("u1", None, "example.com", "bounce-u1@b.example", ("x@y.test",), "item-1")
    # Reaped during a stall: our copy is gone (another consumer has it), so the marker lives
    # as long as that copy may, and the claim ends.
    assert await state.record("item-1", "QID1", msg, [], Held("pod-a", "P:processing:a", b"i1"))
    assert not await redis.exists(state.claim_key("item-1"))
    assert await redis.ttl(state.item_key("item-1")) > state.replay_window
    assert (await state.claim("item-1", "pod-b", 3.0)).status == "done"
    # Freshness: a claim older than half its life is asked for again before DATA.
    assert first.fresh(1.0 + CLAIM_SECONDS / 2 - 1)
    assert not first.fresh(1.0 + CLAIM_SECONDS / 2)
    assert not other.fresh(2.0)


async def test_claim_seconds_sets_the_expiry_and_the_freshness(redis: Redis) -> None:
    """``postfixlog.claim-seconds`` (issue 20: tests set it low): the claim's expiry in Redis
    and the age at which a holder claims again before DATA both follow it."""
    state = State(redis, "t1", "EVENT_QUEUE", INCOMING, ttl=3600, claim_seconds=6)
    (claim,) = await state.claim_many(["item-s"], ["pod-a"], 10.0)
    assert claim.status == "mine"
    assert 0 < await redis.pttl(state.claim_key("item-s")) <= 6000
    assert claim.fresh(12.9)
    assert not claim.fresh(13.0)
    again = await state.claim("item-s", "pod-a", 20.0)
    assert again.fresh(22.9) and not again.fresh(23.0)


async def test_the_record_acks_and_what_is_kept_ends_with_the_replay_window(
    redis: Redis,
) -> None:
    """Item 2 of issue 17: the record acks the item in the same step, so the "already
    injected" marker lives only the replay window; once the last recipient has its final
    event the message's state does too; after it, nothing of the message is left."""
    state = State(redis, "t1", "EVENT_QUEUE", INCOMING, ttl=6 * 86400, replay_window=60)
    await redis.lpush("P:processing:a", b"other", b"i2")
    assert (await state.claim("item-2", "pod-a/1", 1.0)).status == "mine"
    msg = Message("u2", None, "example.com", "bounce-u2@b.example", ("a@y.test", "B@y.test"))
    held = Held("pod-a/1", "P:processing:a", b"i2")
    assert await state.record("item-2", "QID2", msg, [], held)
    assert await redis.lrange("P:processing:a", 0, -1) == [b"other"]  # acked
    assert 0 < await redis.ttl(state.item_key("item-2")) <= 60
    assert await redis.ttl(state.msg_key("QID2")) > 60  # recipients still pending
    assert not await state.record("item-2", "QID2", msg, [], held)  # a retry: once
    assert await state.final("QID2", "a@y.test", b"e1") == 1
    assert await redis.ttl(state.msg_key("QID2")) > 60
    assert await state.final("QID2", "b@y.test", b"e2") == 1
    assert 0 < await redis.ttl(state.msg_key("QID2")) <= 60
    assert not await redis.exists(state.claim_key("item-2"))


def test_a_stalled_feeder_and_the_one_that_took_over_deliver_once(
    tmp_path: Path, flushed: int, sink: Sink
) -> None:
    """PostfixLog A claims an item and stalls inside the SMTP transaction with its Postfix
    (the Postfix sleeps at RCPT; A is SIGSTOPped there), long enough for its heartbeat to
    lapse: B reaps the item and takes it, finds A's claim and does not inject it. A wakes up,
    reads Postfix's answer and records it; B then acks it. The sink gets it once. (A sent
    the message with its commands, as one BDAT chunk: A's Postfix may queue and deliver it
    while A is stopped; what B must not do is inject it.)"""
    slow_postfix = {"smtpd_relay_restrictions": "sleep 4, permit_mynetworks, reject"}
    with (
        postfixlog_env(tmp_path / "a", flushed, sink, main_cf=slow_postfix) as env_a,
        postfixlog_env(tmp_path / "b", flushed, sink) as env_b,
    ):
        env_a.push("stall1", ["ok-stall@sink.test"])
        a = env_a.start()
        assert a.process is not None
        wait_for(lambda: env_a.held() == 1, timeout=20, what="A to take the item")
        time.sleep(1)  # A is now waiting for its Postfix's answer to RCPT TO
        os.kill(a.process.pid, signal.SIGSTOP)
        try:
            b = env_b.start()
            wait_for(
                lambda: b.metric("postfix_emails_polled_total") >= 1,
                timeout=30,
                what="B to take the item A held",
            )
            time.sleep(2)  # what B would inject would reach the sink by now
            assert sink.deliveries("ok-stall@sink.test") <= 1
            assert b.metric("postfix_items_claimed_elsewhere_total") >= 1
            assert b.metric("postfix_emails_to_postfix_total") == 0
        finally:
            os.kill(a.process.pid, signal.SIGCONT)
        wait_for(lambda: sink.deliveries("ok-stall@sink.test") >= 1, timeout=30, what="delivery")
        wait_for(
            lambda: env_b.redis.llen(INCOMING) == 0 and env_b.held() == 0,
            timeout=30,
            what="the item acked, nothing held",
        )
        wait_quiet(3)
        assert sink.deliveries("ok-stall@sink.test") == 1
        assert b.metric("postfix_emails_to_postfix_total") == 0
        assert a.metric("postfix_emails_to_postfix_total") == 1
        delivered = [e for e in env_a.events() if e["rcpt"] == "ok-stall@sink.test"]
        assert [e["event"] for e in delivered] == ["delivered"]


def test_an_item_whose_check_fails_goes_back_to_the_queue(
    tmp_path: Path, flushed: int, sink: Sink
) -> None:
    """The claim fails with a Redis error (WRONGTYPE: the claim key is, wrongly, a list):
    the item is not kept in the feeder's hands for good, it comes back to the queue without
    counting an attempt; once the error is gone it is delivered once."""
    with postfixlog_env(tmp_path, flushed, sink) as env:
        env.push("broken1", ["ok-broken@sink.test"])
        (item,) = env.incoming()
        claim_key = State.claim_key(str(item.id))
        env.redis.lpush(claim_key, b"not a claim")
        service = env.start()
        log = env.directory / "postfixlog.log"

        def returned() -> int:
            return log.read_text().count('"msg": "returned stray items"')

        # Returned as a stray (two sightings by keep_alive), then taken and failing again;
        # each time it is back in the queue only for a moment (a feeder is waiting). More
        # returns than max-attempts (5), and no dead letter: no attempt was counted.
        wait_for(lambda: returned() >= 6, timeout=40, what="the item returned 6 times")
        assert sink.deliveries("ok-broken@sink.test") == 0
        assert not env.redis.llen(f"{{{INCOMING}}}:dead")
        env.redis.delete(claim_key)
        wait_for(lambda: sink.deliveries("ok-broken@sink.test") >= 1, timeout=30, what="delivery")
        wait_for(
            lambda: env.redis.llen(INCOMING) == 0 and env.held() == 0,
            timeout=20,
            what="nothing held",
        )
        wait_quiet(2)
        assert sink.deliveries("ok-broken@sink.test") == 1
        assert service.metric("postfix_emails_to_postfix_total") == 1
        (event,) = [e for e in env.events() if e["rcpt"] == "ok-broken@sink.test"]
        assert event["event"] == "delivered"


# A claim whose reply the stall swallowed is held until it expires (CLAIM_SECONDS): the item
# waits that long, then goes, so the test may take two minutes more than the stall.
@pytest.mark.timeout(420)
def test_a_redis_stall_under_two_instances_delivers_each_message_once(
    tmp_path: Path, flushed: int, sink: Sink, redis_server: RedisServer
) -> None:
    """Redis is SIGSTOPped while two PostfixLog instances feed their Postfixes (each slowed
    to one injection per second per connection, so the stall lands mid-flow), for three
    heartbeat timeouts (MANYCORE_REDIS_STALL_SECONDS, 8 by default; the issue's check uses
    45): commands time out, replies are lost, records are retried. Every message reaches the
    sink exactly once, and no processing list stays non-empty."""
    stall = float(os.environ.get("MANYCORE_REDIS_STALL_SECONDS", "8"))
    slow = {"smtpd_relay_restrictions": "sleep 1, permit_mynetworks, reject"}
    n = 40
    with (
        postfixlog_env(tmp_path / "a", flushed, sink, main_cf=slow) as env_a,
        postfixlog_env(tmp_path / "b", flushed, sink, main_cf=slow) as env_b,
    ):
        for i in range(n):
            env_a.push(f"rs{i}", [f"ok-rs{i}@sink.test"])
        env_a.start()
        env_b.start()

        def delivered() -> int:
            return sum(min(1, sink.deliveries(f"ok-rs{i}@sink.test")) for i in range(n))

        wait_for(lambda: delivered() >= 6, timeout=60, what="the flow under way")
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            time.sleep(stall)
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        assert delivered() < n, "the stall came too late to prove anything"
        wait_for(
            lambda: delivered() == n,
            timeout=CLAIM_SECONDS + 120,
            what="every message delivered",
        )
        wait_for(
            lambda: env_a.redis.llen(INCOMING) == 0 and env_a.held() == 0,
            timeout=60,
            what="nothing waiting or held",
        )
        wait_quiet(3)
        twice = {i: sink.deliveries(f"ok-rs{i}@sink.test") for i in range(n)}
        assert all(count == 1 for count in twice.values()), twice
        assert not env_a.redis.llen(f"{{{INCOMING}}}:dead")
