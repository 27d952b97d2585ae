"""BackData writes each event's webhook delivery into ``trace:<uuid>`` (a real process, real
Redis, real local webhook): the retry with the webhook's answer, then the delivery; an event
without a uuid leaves no trace; a rejected batch is traced as rejected."""

from __future__ import annotations

import json
from pathlib import Path

from redis import Redis as SyncRedis

from manycore_common import events
from tests.helpers import RedisServer, running, wait_for
from tests.integration.test_backdata import QUEUE, backdata, delivered_all, wait_settled
from tests.integration.webhook import Answer, Webhook


def _trace(client: SyncRedis, uuid: str) -> list[dict[str, object]]:
    return [json.loads(r) for r in client.lrange(f"trace:{uuid}", 0, -1)]


def test_webhook_answers_are_traced_per_uuid(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis
) -> None:
    hook = Webhook()
    hook.script = [Answer(503, b"maintenance")]
    hook.start()
    try:
        bounce = events.new_event(
            "bounce", uuid="tr-1", type="hard", reason="550 5.1.1 no such user", rcpt="b@x.org"
        )
        loose = events.new_event("error", service="transformer", msg="no uuid")
        for event in (bounce, loose):
            queues.lpush(QUEUE, events.encode_event(event, source="postfixlog"))
        with running(backdata(tmp_path, redis_server.port, hook.url, concurrency=1)) as service:
            wait_for(lambda: delivered_all(hook, [bounce["id"], loose["id"]]), what="delivered")
            wait_settled(service, queues, 2)
            wait_for(lambda: len(_trace(queues, "tr-1")) == 2, what="two trace records")
            retry, delivered = _trace(queues, "tr-1")
            assert retry["webhook"] == "retry" and "503" in str(retry["answer"])
            assert delivered["webhook"] == "delivered" and delivered["stage"] == "event"
            assert delivered["event"] == "bounce" and delivered["rcpt"] == "b@x.org"
            assert delivered["id"] == bounce["id"] and delivered["source"] == "postfixlog"
            assert delivered["by"] == "backdata" and delivered["type"] == "hard"
            assert 0 < queues.ttl("trace:tr-1") <= 86400
            assert queues.keys("trace:*") == [b"trace:tr-1"]

            hook.default = Answer(400, b"unknown field")
            rejected = events.new_event("delivered", uuid="tr-2", rcpt="a@x.org")
            queues.lpush(QUEUE, events.encode_event(rejected, source="postfixlog"))
            wait_for(lambda: len(_trace(queues, "tr-2")) == 1, what="rejection traced")
            (record,) = _trace(queues, "tr-2")
            assert record["webhook"] == "rejected" and "unknown field" in str(record["answer"])
    finally:
        hook.close()
