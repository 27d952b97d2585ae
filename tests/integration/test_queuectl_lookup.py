"""``manycore-queues`` look-ups against a real Redis: one dead letter by id (peek, drop,
requeue), where a uuid is now (``trace``), and the unclassified list."""

from __future__ import annotations

import json
from pathlib import Path

from redis.asyncio import Redis

from manycore_common import item as item_format
from manycore_common import keyspace, queueinspect, trace
from manycore_common.queue import ReliableQueue
from tests.helpers import RedisServer, stored_item, write_configs
from tests.integration.test_queuectl import queues_cmd


async def _bury(queue: ReliableQueue, uuids: list[str]) -> list[str]:
    """Push, take and dead-letter one item per uuid; their item ids."""
    await queue.push_many(
        [item_format.new_item(b"body " + u.encode(), source="t", uuid=u) for u in uuids]
    )
    consumer = queue.consumer("c")
    ids = []
    for _ in uuids:
        taken = await consumer.take(timeout=1)
        assert taken is not None
        await consumer.dead_letter(taken, f"poison {taken.uuid}")
        ids.append(taken.id)
    return ids


async def test_peek_drop_and_requeue_one_dead_letter(
    tmp_path: Path, redis: Redis, redis_server: RedisServer
) -> None:
    g, c = write_configs(tmp_path, redis_server.port)
    queue = ReliableQueue(redis, "INCOMING-TO-POSTFIX")
    first, second, third = await _bury(queue, ["a1", "a2", "a3"])

    peek = queues_cmd(g, c, "peek", second)
    assert peek.returncode == 0, peek.stderr
    assert "reason" in peek.stdout and "poison a2" in peek.stdout and "body a2" in peek.stdout
    raw = queues_cmd(g, c, "peek", second, "--raw")
    assert raw.stdout == "body a2"

    drop = queues_cmd(g, c, "--json", "drop", first)
    assert drop.returncode == 0, drop.stderr
    assert json.loads(drop.stdout) == {"dropped": first, "queue": "INCOMING-TO-POSTFIX"}
    requeue = queues_cmd(g, c, "requeue", third)
    assert requeue.returncode == 0 and requeue.stdout.strip().startswith("requeued " + third)

    # Exactly the chosen ones moved: a2 is still dead, a3 waits again with zero attempts.
    assert [i.uuid for i in await queue.dead_letters(0, 10)] == ["a2"]
    (back,) = await redis.lrange(queue.name, 0, -1)
    header = stored_item(back).header
    assert header["uuid"] == "a3" and header["attempts"] == 0 and "dead" not in header

    again = queues_cmd(g, c, "drop", first)
    assert again.returncode == 1 and "no dead letter" in again.stderr
    typo = queues_cmd(g, c, "requeue", "IB-MAIL-QUEUE-PX")
    assert typo.returncode == 1 and "nor a queue; known:" in typo.stderr


async def test_dead_letter_moved_meanwhile_is_not_pushed(redis: Redis) -> None:
    """The drop/requeue script goes by the exact bytes: a letter requeued by someone else
    between the look-up and the script is not pushed twice."""
    queue = ReliableQueue(redis, "IB-MAIL-QUEUE-P0")
    (wanted,) = await _bury(queue, ["b1"])
    found_queue, item, _ = await queueinspect.find_dead(redis, [queue], wanted)
    assert found_queue is queue and item is not None
    assert await queue.requeue_dead() == 1
    assert await queueinspect.take_dead(redis, queue, item, requeue=True) is False
    assert await queue.size() == 1


async def test_scan_cap_is_reported(redis: Redis) -> None:
    queue = ReliableQueue(redis, "IB-MAIL-QUEUE-P1")
    await queue.push_many([item_format.new_item(b"x", source="t", uuid=f"n{i}") for i in range(30)])
    found = await queueinspect.scan(redis, queue.name, queueinspect.by_uuid("n0"), cap=10)
    assert found.found == [] and found.read == 10 and found.capped
    whole = await queueinspect.scan(redis, queue.name, queueinspect.by_uuid("n0"), cap=100)
    assert [i.uuid for _, i in whole.found] == ["n0"] and not whole.capped


async def test_trace_shows_records_and_where_the_uuid_is_now(
    tmp_path: Path, redis: Redis, redis_server: RedisServer
) -> None:
    g, c = write_configs(tmp_path, redis_server.port)
    p1 = ReliableQueue(redis, "IB-MAIL-QUEUE-P1")
    await p1.push_many([item_format.new_item(b"m", source="smtp", uuid=u) for u in ("t-1", "t-2")])
    held = await p1.consumer("transformer-x").take(timeout=1)
    assert held is not None and held.uuid == "t-1"
    settings = trace.TraceSettings(retention_seconds=600, max_entries=3)
    records = [
        ("t-1", trace.entry("log", "postfixlog", 1.0 + n, outcome="deferred")) for n in range(5)
    ]
    await trace.write(redis, settings, records)
    assert await redis.llen("trace:t-1") == 3  # capped, newest kept
    assert 0 < await redis.ttl("trace:t-1") <= 600

    out = queues_cmd(g, c, "--json", "trace", "t-1")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [r["at"] for r in data["records"]] == [3.0, 4.0, 5.0]
    held_rows = [r for r in data["now"] if r["items"]]
    assert [(r["queue"], r["where"]) for r in held_rows] == [
        ("IB-MAIL-QUEUE-P1", "processing:transformer-x")
    ]
    text = queues_cmd(g, c, "trace", "t-2")
    assert "IB-MAIL-QUEUE-P1 waiting: id=" in text.stdout and "0 record(s)" in text.stdout


async def test_unclassified_list_and_show(
    tmp_path: Path, redis: Redis, redis_server: RedisServer
) -> None:
    g, c = write_configs(tmp_path, redis_server.port)
    for n in range(3):
        raw = item_format.new_item(
            f"Subject: odd {n}\r\n\r\nhello".encode(),
            source="mxserver",
            extra={
                "mail_from": f"s{n}@example.net",
                "rcpts": ["postmaster@bounce.example.com"],
                "note": "no rule matched",
                "bytes": 30,
            },
        )
        await redis.lpush(keyspace.current().unclassified(), raw)
    junk = item_format.new_item(b"junk", source="mxserver", extra={"mail_from": "j@x.example"})
    await redis.lpush(keyspace.current().unclassified_untagged(), junk)
    listing = queues_cmd(g, c, "unclassified", "--count", "2")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].startswith("MXSERVER-UNCLASSIFIED: 3 tagged message(s)")
    assert "(MXSERVER-UNCLASSIFIED-UNTAGGED: 1, --untagged to list them)" in lines[0]
    assert "from=<s2@example.net>" in lines[1] and "from=<s1@example.net>" in lines[2]
    assert len(lines) == 3
    show = queues_cmd(g, c, "unclassified", "--show", "2", "--raw")
    assert show.stdout == "Subject: odd 0\n\nhello"  # text mode reads CRLF as LF
    missing = queues_cmd(g, c, "unclassified", "--show", "9")
    assert missing.returncode == 1
    untagged = queues_cmd(g, c, "--json", "unclassified", "--untagged")
    listed = json.loads(untagged.stdout)
    assert (listed["list"], listed["total"], listed["other_total"]) == ("untagged", 1, 3)
    assert [m["sender"] for m in listed["messages"]] == ["j@x.example"]
    shown = queues_cmd(g, c, "unclassified", "--untagged", "--show", "0", "--raw")
    assert shown.stdout == "junk"
