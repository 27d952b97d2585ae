"""Failover without loss (issue 17, item 3): the HttpReceiver, configured with the Sentinel
form, takes messages from several clients while the replicas lag and the primary is killed
with SIGKILL. Every message that got 200 must be in the new primary's queue, and ingest must
resume within 15 s. (Without WAIT, min-replicas-ack 0, about 500 of 1,500 acknowledged
messages are lost here.)

The short version runs in `make test` (1,500 messages); `make chaos` (MANYCORE_CHAOS=1) sends
10,000; MANYCORE_FAILOVER_MESSAGES overrides both."""

from __future__ import annotations

import asyncio
import http.client
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from manycore_common import item as item_format
from manycore_common import redisconn
from manycore_common.config import RedisConnection
from manycore_common.queue import ReliableQueue
from tests.helpers import LOOPBACK, running, stored_item
from tests.integration.conftest import build_message
from tests.integration.test_httpreceiver import GOOD_AUTH, P0, P1, RFC822, http_service
from tests.sentinel_set import SentinelSet

CHAOS = bool(os.environ.get("MANYCORE_CHAOS"))
MESSAGES = int(os.environ.get("MANYCORE_FAILOVER_MESSAGES", "10000" if CHAOS else "1500"))
CLIENTS = 6
RESUME_LIMIT_SECONDS = 15.0
#: How long the replicas lag behind before the primary dies (less than the sentinels'
#: down-after-milliseconds, and than min-replicas-max-lag, so the primary still takes writes).
LAG_SECONDS = 0.5


@dataclass
class Tally:
    """What the clients saw, shared by their threads (under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    next_index: int = 0
    acked: dict[str, float] = field(default_factory=dict)  # uuid -> when 200 came
    refused: Counter[str] = field(default_factory=Counter)  # uuid -> non-200 answers
    started_after_kill: list[float] = field(default_factory=list)  # 200s sent after the kill
    kill_at: float | None = None

    def take(self) -> int | None:
        with self.lock:
            if self.next_index >= MESSAGES:
                return None
            self.next_index += 1
            return self.next_index - 1


def send(port: int, body: bytes) -> int:
    """One POST; a connection problem counts as a refusal (the client retries)."""
    try:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=15)
        conn.request(
            "POST",
            "/v1/mail/send",
            body=body,
            headers={"Authorization": GOOD_AUTH, "Content-Type": RFC822},
        )
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return 0


def client(port: int, tally: Tally, deadline: float) -> None:
    """Like a real client: a refused message is retried until it is accepted."""
    while (index := tally.take()) is not None:
        uuid = f"fo-{index}"
        body = build_message(uuid, None)
        while time.monotonic() < deadline:
            sent_at = time.monotonic()
            status = send(port, body)
            with tally.lock:
                if status == 200:
                    tally.acked[uuid] = time.monotonic()
                    if tally.kill_at is not None and sent_at > tally.kill_at:
                        tally.started_after_kill.append(time.monotonic())
                    break
                tally.refused[uuid] += 1
            time.sleep(0.05)


def queued_uuids(port: int) -> Counter[str]:
    redis = SyncRedis(host=LOOPBACK, port=port)
    raws = redis.lrange(P0, 0, -1) + redis.lrange(P1, 0, -1)
    return Counter(stored_item(raw).uuid or "" for raw in raws)


def test_no_acknowledged_message_is_lost_when_the_primary_dies(tmp_path: Path) -> None:
    group = SentinelSet(tmp_path / "redis").start()
    try:
        section = {"httpreceiver__reliable-queue__redis": group.connection_config()}
        service = http_service(tmp_path / "http", group.primary_port, **section)
        with running(service):
            figures = drive(service.port or 0, group)
        old_port = group.primary_port
        new_port = group.master_port()
        assert new_port != old_port
        tally, resume = figures
        queued = queued_uuids(new_port)
    finally:
        group.stop()
    missing = sorted(set(tally.acked) - set(queued))
    duplicates = {u for u, n in queued.items() if n > 1}
    print(
        f"\nfailover: {MESSAGES} messages, {len(tally.acked)} acknowledged, "
        f"{sum(tally.refused.values())} refusals (retried), ingest resumed "
        f"{resume:.2f}s after SIGKILL, {len(missing)} acknowledged but missing, "
        f"{len(duplicates)} duplicated by a client retry"
    )
    assert len(tally.acked) == MESSAGES, "the clients gave up on some messages"
    assert not missing, f"acknowledged but lost in the failover: {missing[:10]}"
    # Only a message refused once (the write may have landed; the client sent it again) may
    # be there twice.
    assert duplicates <= set(tally.refused)
    assert resume < RESUME_LIMIT_SECONDS


def drive(port: int, group: SentinelSet) -> tuple[Tally, float]:
    """Send everything, kill the primary after a third is acknowledged; returns what the
    clients saw and how long after the kill the first message sent after it was accepted."""
    tally = Tally()
    deadline = time.monotonic() + 120 + MESSAGES / 50
    threads = [
        threading.Thread(target=client, args=(port, tally, deadline), daemon=True)
        for _ in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    while len(tally.acked) < MESSAGES // 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert group.primary.process is not None
    # The replicas fall behind first (as over a slow network): what the primary acknowledges
    # meanwhile exists only there when it dies. Without WAIT those messages got 200 and are
    # lost (min-replicas-to-write does not see a lag this short); with it they got 503 and
    # were sent again.
    group.hold_replication()
    time.sleep(LAG_SECONDS)
    with tally.lock:
        group.primary.process.kill()  # SIGKILL: no saving, no goodbye to the replicas
        tally.kill_at = time.monotonic()
    group.primary.process.wait(10)
    for thread in threads:
        thread.join(max(1.0, deadline - time.monotonic()))
    assert tally.kill_at is not None and tally.started_after_kill, "ingest never resumed"
    return tally, tally.started_after_kill[0] - tally.kill_at


CONSUMED = int(os.environ.get("MANYCORE_FAILOVER_ITEMS", "3000" if CHAOS else "600"))


async def test_a_consumer_follows_the_failover(tmp_path: Path) -> None:
    """A consumer in the Sentinel form (as the Transformer, PostfixLog and BackData are)
    hands items from one queue to another while the replicas lag and the primary dies. Its
    own retry loop carries it over; hand-overs the promoted replica never got are back in
    its source queue there, or (when it got the take) in the consumer's processing list,
    which ``recover_strays`` returns: every item ends in the target queue exactly once."""
    group = SentinelSet(tmp_path / "redis").start()
    try:
        settings = RedisConnection.model_validate(group.connection_config())
        client = redisconn.connect(settings, blocking_timeout=1)
        source = ReliableQueue(client, "SRC", heartbeat_timeout=2)
        target = ReliableQueue(client, "DST")
        raws = [item_format.new_item(b"x", source="test", uuid=f"c{i}") for i in range(CONSUMED)]
        await source.push_many(raws)
        resume, moved = await consume(source, target, group)
        final = await target_uuids(client)
        await client.aclose()
    finally:
        group.stop()
    print(
        f"\nconsumer failover: {CONSUMED} items, resumed {resume:.2f}s after SIGKILL, "
        f"{moved - CONSUMED} hand-overs lost with the primary and done again"
    )
    assert final == Counter(f"c{i}" for i in range(CONSUMED))
    assert resume < RESUME_LIMIT_SECONDS


async def consume(
    source: ReliableQueue, target: ReliableQueue, group: SentinelSet
) -> tuple[float, int]:
    """Hand items over until the target holds them all; kill the primary halfway. Returns
    how long after the kill the first hand-over succeeded, and how many succeeded."""
    consumer = source.consumer("c1")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60 + CONSUMED / 20
    moved, hold_at, kill_at, resumed, reaped_at = 0, 0.0, 0.0, 0.0, 0.0
    while loop.time() < deadline:
        if moved >= CONSUMED // 3 and not hold_at:
            group.hold_replication()  # what follows reaches no replica...
            hold_at = loop.time()
        if hold_at and not kill_at and loop.time() - hold_at > LAG_SECONDS:
            assert group.primary.process is not None
            group.primary.process.kill()  # ...and dies with the primary
            kill_at = loop.time()
        try:
            if loop.time() - reaped_at > 0.5:
                reaped_at = loop.time()
                await source.reap()
                # As keep_alive does in the services: a hand-over the promoted replica never
                # got, of an item whose take it did get, left the item in our processing list
                # there, though we no longer hold it. Taking resets our holder mark, so the
                # reaper never returns it: recover_strays does (CI: 600 items, c199 stuck).
                await consumer.recover_strays()
                # Not before the kill: a fast consumer can move every item while the
                # replicas lag, and the failover would then go untested.
                if kill_at and await target.size() == CONSUMED:
                    break
            item = await consumer.take(0.2)
            if item is not None and await consumer.hand_over(item, target, item.raw):
                moved += 1
                if kill_at and not resumed:
                    resumed = loop.time()
        except (RedisError, OSError):
            await asyncio.sleep(0.1)  # as the services' consumers do
    assert kill_at and resumed, "the consumer never got going again"
    return resumed - kill_at, moved


async def target_uuids(client: Redis) -> Counter[str]:
    raws = await client.lrange("DST", 0, -1)
    return Counter(stored_item(raw).uuid or "" for raw in raws)
