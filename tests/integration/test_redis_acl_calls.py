"""The services' real Redis code, run as their own ACL users (issue 18, item 2): every
queue operation a producer or a consumer does (push with claims and doorbells, take, batch
take, heartbeat, hand-over, split hand-over, retry, dead letter with its event, reaper,
release, stray recovery, requeue), events with once-markers, suppression writes and
look-ups, traces, stream ids and the exporter's readings. A command or key Redis refuses
raises NoPermissionError, so each step passing is the proof; ``ACL LOG`` stays empty."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from manycore_common import events, trace
from manycore_common import item as item_format
from manycore_common.config import GlobalTrace, SuppressionSettings
from manycore_common.idempotency import Claim
from manycore_common.queue import ReliableQueue, wait_for_doorbells
from manycore_common.suppressionpolicy import ops_for_event
from manycore_common.suppressionstore import SuppressionStore, emit_once_suppressing
from manycore_mxserver.record import Recorder
from manycore_redis import acl, exporter
from tests.helpers import LOOPBACK, RedisServer
from tests.integration.test_redis_acl import EV, IN, KS, P0, P1, PASSWORD, settings
from tests.integration.test_redis_module import NO_RETRY


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    args = [arg for line in acl.service_rules(settings(), KS) for arg in ("--" + line).split()]
    server = RedisServer(tmp_path_factory.mktemp("acl-calls"), None, *args).start()
    try:
        yield server.port
    finally:
        server.stop()


@pytest.fixture
async def login(port: int) -> AsyncIterator[Any]:
    clients: list[Redis] = []

    def connect(service: str) -> Redis:
        client = Redis(host=LOOPBACK, port=port, username=f"mc-{service}", password=PASSWORD)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.aclose()
    admin = SyncRedis(host=LOOPBACK, port=port, retry=NO_RETRY)
    try:
        refused = admin.execute_command("ACL", "LOG")  # type: ignore[no-untyped-call]
        admin.execute_command("ACL", "LOG", "RESET")  # type: ignore[no-untyped-call]
        admin.flushall()
    finally:
        admin.close()
    assert refused == []


def new(uuid: str) -> bytes:
    return item_format.new_item(b"payload", source="test", uuid=uuid)


async def test_front_door_pushes_with_claims_and_doorbells(login: Any) -> None:
    redis = login("receiver")
    for name in (P0, P1):
        queue = ReliableQueue(redis, name, high_water_mark=1000, doorbell=True)
        claim = Claim("idem:abc" + name, b"1", 60)
        pushed = await queue.push_claimed([(new("a"), claim), (new("b"), None)])
        assert not pushed.full
        assert (await queue.push_claimed([(new("a"), claim)])).full is False
        assert await queue.push(new("c")) == 3
        assert await queue.push_many([new("d"), new("e")]) == 5
        assert await queue.size() == 5


async def test_transformer_consumes_hands_over_and_dead_letters(login: Any) -> None:
    front, redis = login("receiver"), login("transformer")
    for name in (P0, P1):
        await ReliableQueue(front, name, doorbell=True).push_many([new(f"u{i}") for i in range(6)])
    p0 = ReliableQueue(redis, P0, doorbell=True, max_attempts=1)
    p1 = ReliableQueue(redis, P1, doorbell=True)
    target = ReliableQueue(redis, IN, high_water_mark=1000)
    event_queue = ReliableQueue(redis, EV)
    assert await wait_for_doorbells(redis, [p0, p1], 0.1)
    c0, c1 = p0.consumer("t1"), p1.consumer("t1")
    await c0.register()
    await c1.register()
    taken = await c0.take_batch(5, 0.1)
    assert len(taken) == 5
    assert await c0.hand_over(taken[0], target, new("h"))
    assert await c0.hand_over_many([(taken[1], new("h2"))], target) == 1
    assert await c0.hand_over_split([(taken[2], [new("s1"), new("s2")])], target) == (1, 2)
    assert await c0.retry(taken[3], "test") == "dead"
    assert await c0.dead_letter(taken[4], "bad", (event_queue, new("ev")))
    one = await c1.take(0.1)
    assert one is not None and await c1.ack(one)
    assert await c1.ack_many([i for i in await c1.take_batch(2, 0.1)]) == 2
    assert await c1.recover_strays() >= 0
    await p0.reap()
    assert await p0.requeue_dead() == 2
    assert await c0.release() >= 0
    assert await target.size() == 4 and await p0.processing_size() == 0
    await trace.write(
        redis, trace.TraceSettings.of(GlobalTrace()), [("u1", trace.entry("signed", "transformer"))]
    )
    store = SuppressionStore(redis)
    assert await store.lookup([("example.com", "a@example.net")], 0) == [None]
    assert await store.size() == 0
    pipe = redis.pipeline(transaction=True)
    pipe.hmget("MANYCORE-FEEDBACK-STREAMS", ["f"])
    pipe.hset("MANYCORE-FEEDBACK-STREAMS", items=["f", "stream"])
    await pipe.execute()


def bounce(uuid: str, rcpt: str) -> dict[str, Any]:
    return events.new_event(
        "bounce", uuid=uuid, type="hard", rcpt=rcpt, reason="550", category="invalid-recipient"
    )


async def test_mxserver_and_httpreceiver_emit_once_and_suppress(login: Any) -> None:
    settings = SuppressionSettings()
    for service in ("mxserver", "httpreceiver", "postfixlog"):
        redis = login(service)
        event_queue = ReliableQueue(redis, EV)
        await events.emit(event_queue, bounce("u1", "a@example.net"), source=service)
        if service == "postfixlog":
            continue
        pairs = [(f"unsubscribed:{service}", bounce("u2", "b@example.net"))]
        ops = [ops_for_event(pairs[0][1], ["example.com"], settings)]
        assert ops[0]
        assert await emit_once_suppressing(event_queue, pairs, ops, source=service, ttl=60) == 1
        assert await events.emit_once(
            event_queue, bounce("u3", "c@example.net"), source=service,
            once_key=f"unsubscribed:u3{service}", ttl=60,
        )  # fmt: skip
    mx = login("mxserver")
    assert await mx.hmget("MANYCORE-FEEDBACK-STREAMS", ["f"]) == [None]
    await mx.set("unsubscribed:u9", "1", ex=60)
    # Both unclassified lists, as MxServer's Recorder writes them (LPUSH + LTRIM in MULTI).
    recorder = Recorder(mx, ReliableQueue(mx, EV))
    await recorder.store_unclassified(b"odd", {"mail_from": "a@x.net"}, "no rule", "u1", "c")
    await recorder.store_unclassified(b"junk", {"mail_from": "b@x.net"}, "no rule", None, "c")
    http = login("httpreceiver")
    store = SuppressionStore(http)
    writes = ops_for_event(bounce("u4", "d@example.net"), ["example.com"], settings)
    assert await store.add(writes) == 1
    assert await store.add_entries(writes) == 0
    assert await store.get(["example.com"], "d@example.net", 0)
    assert (await store.page("example.com", 0, 10, 0))[0]
    assert await store.delete([("example.com", "d@example.net")]) == 1
    assert await store.purge("example.com", 10**10) >= 1  # b@ and c@, expired by then
    await http.set("unsubscribe:untimed-since", 1, nx=True, get=True)


async def test_backdata_consumes_events_and_writes_traces(login: Any) -> None:
    await events.emit(ReliableQueue(login("mxserver"), EV), bounce("u1", "a@x.net"), source="t")
    redis = login("backdata")
    queue = ReliableQueue(redis, EV)
    consumer = queue.consumer("b1")
    await consumer.register()
    items = await consumer.take_batch(10, 0.1)
    assert len(items) == 1
    assert await consumer.ack_many(items) == 1
    await trace.write(
        redis, trace.TraceSettings.of(GlobalTrace()), [("u1", trace.entry("posted", "backdata"))]
    )
    await queue.reap()
    await consumer.release()


async def test_exporter_reads_queues_traces_and_unclassified(login: Any) -> None:
    await ReliableQueue(login("receiver"), P0, doorbell=True).push(new("u1"))
    redis = login("exporter")
    snapshot = await exporter.read(redis, {"p0": P0, "p1": P1, "in": IN, "ev": EV})
    assert snapshot.up and snapshot.queues[P0].waiting == 1
    queue = ReliableQueue(redis, P0)
    assert await queue.dead_size() == 0 and await queue.dead_letters() == []
    assert await trace.read(redis, "u1") == []
    assert await redis.lrange("MXSERVER-UNCLASSIFIED", 0, 19) == []
    assert await redis.llen("MXSERVER-UNCLASSIFIED-UNTAGGED") == 0
