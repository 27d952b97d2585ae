"""The Transformer's suppression look-up overlaps the signing of its batch: it is on its way
to Redis before the transform starts and its answer is applied after. A real Worker, a real
Redis and the real transform, in this process so that the test can see where the look-up is
when the transform starts (the event loop is blocked while the transform runs, so only bytes
already written can reach Redis then)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from manycore_common import item as item_format
from manycore_common import suppression as s
from manycore_common.config import load_config
from manycore_common.suppressionstore import SuppressionStore
from manycore_transformer import batch, service
from manycore_transformer import settings as settings_module
from manycore_transformer.batch import Job
from manycore_transformer.streams import StreamRegistry
from manycore_transformer.suppress import Checker
from tests.eventschema import assert_valid
from tests.helpers import LOOPBACK, RedisServer, stored_item, write_configs, write_dkim_keys
from tests.integration.conftest import build_message
from tests.integration.test_transformer import EVENTS, OUT, P1, enqueue, out_items

UNKNOWN = "news@unknown.example"  # a From domain the Transformer cannot sign for


async def _worker(tmp_path: Path, redis_server: RedisServer, client: Redis) -> service.Worker:
    """A Worker as ``service.serve`` builds one (signing in its own process), on ``client``."""
    global_file, customer_file = write_configs(tmp_path, redis_server.port)
    write_dkim_keys(tmp_path)
    config = load_config(global_file, customer_file, "transformer")
    prepared = service.prepare(config)
    queues = service._queues(config, client)
    for consumer in queues.consumers:
        await consumer.register()
    checker = Checker(SuppressionStore(client), config.customer.common_config.suppression)
    return service.Worker(
        *queues.consumers,
        queues.target,
        queues.events,
        prepared.section,
        None,
        settings_module.build(prepared.spec),
        StreamRegistry(client),
        checker,
    )


@pytest.fixture
async def worker(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[service.Worker]:
    client = Redis(host=LOOPBACK, port=redis_server.port)
    await client.flushall()
    yield await _worker(tmp_path, redis_server, client)
    await client.aclose()


def evalsha_calls(client: SyncRedis) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def suppress(client: SyncRedis, scope: str, address: str) -> None:
    entry = s.new_entry("hard-bounce", time.time(), 30, "ef" * 8, "old-msg")
    client.hset(s.bucket_key(scope, address), address, s.pack(entry))


async def test_suppressed_copies_are_dropped_after_a_transform_the_look_up_overlapped(
    worker: service.Worker, queues: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A suppressed recipient of a multi-recipient message never reaches the Postfix queue
    while the other does; the verdict decides before the transform's outcome (a message
    with every recipient suppressed is acked, not dead-lettered); recipients from To and Cc
    are checked too; the events are those the check made before the transform."""
    assert worker.checker is not None
    await worker.checker.check([(build_message("warm"), ("x@example.org",))])  # script loaded
    for scope, address in [
        ("example.com", "bob@example.org"),
        ("example.com", "carol@example.org"),
        ("unknown.example", "bob@example.org"),
    ]:
        suppress(queues, scope, address)
    enqueue(queues, P1, build_message("multi"), "multi", ["Bob@Example.ORG", "ann@example.org"])
    enqueue(queues, P1, build_message("gone", sender=UNKNOWN), "gone", ["bob@example.org"])
    enqueue(queues, P1, build_message("bad", sender=UNKNOWN), "bad", ["bob@example.org", "c@x.org"])
    queues.lpush(P1, item_format.new_item(build_message("hdrs"), source="test", uuid="hdrs"))

    rcpts_given = [("bob@example.org",), ("bob@example.org", "c@x.org"), None]
    before = evalsha_calls(queues)
    # At the first transform: (look-up run by Redis, events pushed, recipients given).
    seen: list[tuple[bool, int, list[tuple[str, ...] | None]]] = []
    real = batch.transform_batch

    def transform_batch(jobs: Sequence[Job], now: float, settings: Any = None) -> Any:
        if not seen:
            deadline = time.monotonic() + 10
            while evalsha_calls(queues) == before and time.monotonic() < deadline:
                time.sleep(0.01)  # blocks the event loop, as signing does
            ran = evalsha_calls(queues) > before
            seen.append((ran, queues.llen(EVENTS), [rcpts for _, rcpts in jobs]))
        return real(jobs, now, settings)

    monkeypatch.setattr(service, "transform_batch", transform_batch)
    items, consumer = await worker.take()
    assert consumer is not None and len(items) == 4
    await worker.process(items, consumer)

    # Overlapped: Redis had run the look-up, but its answer was not applied yet: every
    # recipient went to the transform, and no event was out.
    assert seen == [(True, 0, [("Bob@Example.ORG", "ann@example.org"), *rcpts_given])]
    out = sorted((i.uuid, r) for i in out_items(queues) for r in i.header["rcpts"])
    assert out == [("hdrs", "alice@example.net"), ("multi", "ann@example.org")]
    got = [json.loads(stored_item(r).payload) for r in queues.lrange(EVENTS, 0, -1)]
    assert_valid(got)
    suppressed = [e for e in got if e["event"] == "suppressed"]
    assert sorted((e["uuid"], e["rcpt"], e["domain"]) for e in suppressed) == [
        ("bad", "bob@example.org", "unknown.example"),
        ("gone", "bob@example.org", "unknown.example"),
        ("hdrs", "bob@example.org", "example.com"),
        ("hdrs", "carol@example.org", "example.com"),
        ("multi", "Bob@Example.ORG", "example.com"),
    ]
    assert all(e["reason"] == "hard-bounce" and e["source"] == "ef" * 8 for e in suppressed)
    assert all(e["source-uuid"] == "old-msg" for e in suppressed)
    # "bad" keeps a recipient, so its transform's error stands: dead-lettered with an event.
    assert [e["uuid"] for e in got if e["event"] == "error"] == ["bad"]
    dead = [stored_item(r).uuid for r in queues.lrange(consumer.queue.dead_key, 0, -1)]
    assert dead == ["bad"]
    assert queues.llen(consumer.processing_key) == 0


async def test_a_look_up_unanswered_in_time_leaves_the_batch_held_unsent(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis
) -> None:
    """Redis runs the look-up late (paused) and the reply, read after the transform, times
    out: as when the look-up was awaited first, nothing is handed over, no event is pushed,
    nothing is acked (the batch is still in the processing list when ``process`` raises;
    ``run`` then backs off and has it returned to the queue, test_transformer_faults.py), and
    the next batch gets its own answer."""
    suppress(queues, "example.com", "bob@example.org")
    client = Redis(host=LOOPBACK, port=redis_server.port, socket_timeout=0.5)
    worker = await _worker(tmp_path, redis_server, client)
    try:
        enqueue(queues, P1, build_message("late"), "late", ["bob@example.org", "ann@example.org"])
        items, consumer = await worker.take()
        assert consumer is not None
        queues.client_pause(1500)  # CLIENT PAUSE ... ALL: the look-up too
        with pytest.raises(RedisTimeoutError):
            await worker.process(items, consumer)
        time.sleep(1.6)  # the pause ends
        assert queues.llen(OUT) == queues.llen(EVENTS) == 0
        assert queues.llen(consumer.processing_key) == 1
        enqueue(queues, P1, build_message("next"), "next", ["cid@example.org"])
        items, consumer = await worker.take()
        assert consumer is not None and [i.uuid for i in items] == ["next"]
        await worker.process(items, consumer)
        assert [(i.uuid, i.header["rcpts"]) for i in out_items(queues)] == [
            ("next", ["cid@example.org"])
        ]
        assert queues.llen(EVENTS) == 0
    finally:
        await client.aclose()
