"""The suppression list against a real Redis: entries written by the scripts that push the
events causing them (PostfixLog on real log lines), merges that never shorten an entry, batched
look-ups, paged listings and deletes that keep the size counter right."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from manycore_common import suppression as s
from manycore_common.config import SuppressionSettings
from manycore_common.events import encode_event
from manycore_common.suppressionpolicy import ops_for_event
from manycore_common.suppressionstore import Op, SuppressionStore
from manycore_postfixlog.follower import LogFollower
from manycore_postfixlog.outcomes import refusal_event
from manycore_postfixlog.processor import LogProcessor
from manycore_postfixlog.state import Message, State
from tests.eventschema import assert_valid
from tests.helpers import RedisServer, Service, running, stored_item, wait_for, write_configs
from tests.integration.conftest import build_message
from tests.integration.test_httpreceiver import GOOD_AUTH, http_service, post
from tests.integration.test_transformer import (
    EVENTS,
    P1,
    enqueue,
    out_items,
    transformer_service,
)

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "postfix" / "outcomes.log"
MULTI = "4jbsyQ5sHyzKffW"
LOG_TIME = 1795829070.0
NOW = 1_800_000_000.0


def op(address: str, reason: s.Reason, days: int, now: float = NOW, scope: str = "ex.com") -> Op:
    return Op(scope, address, s.new_entry(reason, now, days, "ab" * 8, "u-1"))


async def test_entries_merge_without_shortening_and_the_size_follows(redis: Redis) -> None:
    store = SuppressionStore(redis)
    assert await store.add([op("a@x.org", "unsubscribe", 0), op("b@x.org", "hard-bounce", 1)])
    # A later hard bounce of a never-expiring unsubscribe: still never expires, first kept.
    assert await store.add([op("a@x.org", "hard-bounce", 365, NOW + 50)]) == 0
    assert await store.size() == 2
    found = await store.lookup([("ex.com", "a@x.org"), ("ex.com", "c@x.org")], NOW + 60)
    first = found[0]
    assert first is not None and found[1] is None
    assert (first[1].reason, first[1].first, first[1].last) == ("unsubscribe", NOW, NOW + 50)
    assert first[1].expires == s.NEVER
    # b expires after a day: not suppressed then, although still stored.
    assert await store.lookup([("ex.com", "b@x.org")], NOW + 2 * 86400) == [None]
    assert await store.delete([("ex.com", "a@x.org"), ("ex.com", "zz@x.org")]) == 1
    assert await store.scopes() == {"ex.com": 1}


async def test_pages_cover_every_entry_once(redis: Redis) -> None:
    store = SuppressionStore(redis)
    addresses = [f"user{i}@x.org" for i in range(500)]
    await store.add([op(a, "manual", 0) for a in addresses], chunk=64)
    await store.add([op("other@x.org", "spam-report", 0, scope="other.com")])
    seen: list[str] = []
    cursor: int | None = 0
    pages = 0
    while cursor is not None:
        entries, cursor = await store.page("ex.com", cursor, 100, NOW, max_buckets=20000)
        seen += [str(e["address"]) for e in entries]
        pages += 1
    assert sorted(seen) == sorted(addresses) and pages >= 5
    only_spam, _ = await store.page("ex.com", 0, 1000, NOW, reason="spam-report")
    assert only_spam == []


async def test_postfixlog_suppresses_a_user_unknown_with_its_event(
    redis: Redis, tmp_path: Path
) -> None:
    log = tmp_path / "mail.log"
    shutil.copy(FIXTURE, log)
    state = State(redis, "t1", "EVENT_QUEUE", "INCOMING-TO-POSTFIX", ttl=3600)
    rcpts = ("ok1@sink.test", "bad1@sink.test", "later1@sink.test", "someone@refused.test")
    msg = Message("m1", "s1", "shop.example", "b@b.example", rcpts, "item-m")
    assert await state.record("item-m", MULTI, msg, [])
    proc = LogProcessor(
        state,
        LogFollower(log),
        suppression=SuppressionSettings(),
        wall_clock=lambda: LOG_TIME + 5,
    )
    await proc.start()
    await proc.drain()
    store = SuppressionStore(redis)
    found = await store.lookup(
        [("shop.example", a) for a in ("bad1@sink.test", "later1@sink.test", "ok1@sink.test")],
        LOG_TIME,
    )
    hit = found[0]
    assert hit is not None and hit[1].reason == "hard-bounce" and hit[1].uuid == "m1"
    # Soft bounces (expired) and deliveries do not suppress by default.
    assert found[1:] == [None, None]
    assert await store.scopes() == {"shop.example": 1}
    # The same lines again: the final event is not pushed twice, nor the entry counted twice.
    await redis.delete("postfixlog:t1:log-position")
    again = LogProcessor(state, LogFollower(log), wall_clock=lambda: LOG_TIME + 5)
    await again.start()
    await again.drain()
    assert await store.scopes() == {"shop.example": 1}


async def test_repeated_soft_bounces_suppress_at_the_threshold(redis: Redis) -> None:
    store = SuppressionStore(redis)
    entry = s.new_entry("soft-bounce-repeated", NOW, 30)
    soft = Op("ex.com", "s@x.org", entry, threshold=2, window=3600)
    assert await store.add([soft]) == 0
    assert await store.lookup([("ex.com", "s@x.org")], NOW) == [None]
    assert await store.add([soft]) == 1
    hit = (await store.lookup([("ex.com", "s@x.org")], NOW))[0]
    assert hit is not None and hit[1].reason == "soft-bounce-repeated"


@pytest.mark.parametrize("workers", [1, 2])
def test_transformer_drops_suppressed_recipients_before_signing(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis, workers: int
) -> None:
    """To and Cc recipients on the sending domain's list are dropped with a ``suppressed``
    event; a message with none left is acked and never handed over; an expired entry, or an
    entry of another sending domain, stops nothing. With one worker the batch is signed in
    the event loop's process, with two in the pool, the look-up overlapping either way."""
    now = time.time()

    def entry(reason: s.Reason, days: int, at: float = now) -> bytes:
        return s.pack(s.new_entry(reason, at, days, "cd" * 8, "old-msg"))

    for scope, address, value in [
        ("example.com", "bob@example.org", entry("hard-bounce", 365)),
        ("example.com", "carol@example.org", entry("unsubscribe", 0)),
        ("example.com", "dave@example.org", entry("hard-bounce", 1, now - 3 * 86400)),
        ("other.example", "alice@example.net", entry("spam-report", 0)),
    ]:
        queues.hset(s.bucket_key(scope, address), address, value)
    rcpts = ["alice@example.net", "Bob@Example.ORG", "carol@example.org", "dave@example.org"]
    enqueue(queues, P1, build_message("mixed1"), "mixed1", rcpts)
    enqueue(queues, P1, build_message("onlybob"), "onlybob", ["bob@example.org"])
    changes = {"transformer__workers": workers}
    with running(transformer_service(tmp_path, redis_server.port, **changes)) as service:
        wait_for(lambda: queues.llen(EVENTS) == 3, what="three suppressed events")
        wait_for(lambda: queues.llen(P1) == 0, what="both taken")
        wait_for(lambda: service.metric("transformer_pushed_total") == 1, what="one handed over")
        assert (
            service.metric("transformer_suppressed_recipients_total", 'reason="hard-bounce"') == 2
        )
        assert service.metric("transformer_suppressed_messages_total") == 1
    assert sorted(r for i in out_items(queues) for r in i.header["rcpts"]) == [
        "alice@example.net",
        "dave@example.org",
    ]
    got = [json.loads(stored_item(r).payload) for r in queues.lrange(EVENTS, 0, -1)]
    assert sorted((e["event"], e["uuid"], e["rcpt"], e["reason"]) for e in got) == [
        ("suppressed", "mixed1", "Bob@Example.ORG", "hard-bounce"),
        ("suppressed", "mixed1", "carol@example.org", "unsubscribe"),
        ("suppressed", "onlybob", "bob@example.org", "hard-bounce"),
    ]
    assert all(e["domain"] == "example.com" and e["source"] == "cd" * 8 for e in got)
    assert all(e["source-uuid"] == "old-msg" for e in got)
    assert_valid(got)
    assert all(queues.llen(k) == 0 for k in queues.keys(f"{{{P1}}}:processing:*"))


def api_call(
    service: Service, method: str, path: str, body: Any = None, auth: str | None = GOOD_AUTH
) -> tuple[int, dict[str, Any]]:
    raw = json.dumps(body).encode() if body is not None else b""
    status, _, answer = post(
        service, raw, auth=auth, content_type="application/json", path=path, method=method
    )
    return status, answer


def test_the_http_api(tmp_path: Path, redis_server: RedisServer, queues: SyncRedis) -> None:
    with running(http_service(tmp_path, redis_server.port)) as api:
        entries = ["A@Shop.test", {"address": "b@shop.test", "reason": "spam-report"}]
        entries.append({"address": "c@shop.test", "domain": "other.example"})
        body = {"domain": "Example.com", "entries": entries}
        assert api_call(api, "POST", "/v1/suppressions", body) == (
            200,
            {"received": 3, "added": 3, "updated": 0},
        )
        assert api_call(api, "POST", "/v1/suppressions", body)[1]["added"] == 0
        status, got = api_call(api, "GET", "/v1/suppressions/a@SHOP.test")
        assert status == 200 and got["address"] == "a@shop.test"
        [entry] = got["entries"]
        assert (entry["domain"], entry["reason"], entry["expires"]) == (
            "example.com",
            "manual",
            None,
        )
        assert api_call(api, "GET", "/v1/suppressions/a@shop.test?domain=other.example") == (
            404,
            {"error": "a@shop.test is not on the suppression list", "reason": "not-found"},
        )
        seen: list[str] = []
        cursor: str | None = ""
        while cursor is not None:
            status, page = api_call(
                api, "GET", f"/v1/suppressions?domain=example.com&limit=1&cursor={cursor}"
            )
            assert status == 200
            seen += [e["address"] for e in page["entries"]]
            cursor = page["cursor"]
        assert sorted(seen) == ["a@shop.test", "b@shop.test"]
        status, page = api_call(
            api, "GET", "/v1/suppressions?domain=example.com&reason=spam-report"
        )
        assert [e["address"] for e in page["entries"]] == ["b@shop.test"]
        for path, reason in [
            ("/v1/suppressions", "bad-request"),
            ("/v1/suppressions?domain=example.com&cursor=zz", "bad-request"),
            ("/v1/suppressions?domain=example.com&reason=nope", "bad-request"),
            ("/v1/suppressions/not-an-address", "bad-request"),
        ]:
            status, got = api_call(api, "GET", path)
            assert (status, got["reason"]) == (400, reason), path
        status, got = api_call(api, "POST", "/v1/suppressions", {"entries": ["x@y.org"]})
        assert (status, got["reason"]) == (400, "bad-request") and "domain" in got["error"]
        too_many = {"domain": "example.com", "entries": ["x@y.org"] * 10_001}
        assert api_call(api, "POST", "/v1/suppressions", too_many)[0] == 413
        assert api_call(api, "GET", "/v1/suppressions/a@shop.test", auth=None)[0] == 401
        # A body over 4 MiB is answered 413 from its Content-Length and the connection closed
        # before the body is read, so a client still sending gets EPIPE: that case is tested
        # at the socket level (tests/hostile/test_suppression_api.py).
        status, _, got = post(
            api, b"{not json", content_type="application/json", path="/v1/suppressions"
        )
        assert (status, got["reason"]) == (400, "bad-request")
        assert api_call(api, "DELETE", "/v1/suppressions/a@shop.test") == (
            200,
            {"address": "a@shop.test", "deleted": 1},
        )
        assert api_call(api, "DELETE", "/v1/suppressions/a@shop.test")[0] == 404
        assert api.metric("suppression_imported_total", 'operation="import"') == 6
        assert api.metric("httpreceiver_suppression_api_errors_total", 'reason="bad-request"') == 6
    assert queues.hgetall(s.size_key()) == {b"example.com": b"1", b"other.example": b"1"}


async def test_postfixlog_suppresses_a_recipient_its_own_postfix_refused(redis: Redis) -> None:
    state = State(redis, "t3", "EVENT_QUEUE", "INCOMING-TO-POSTFIX", ttl=3600)
    msg = Message("m3", None, "shop.example", "b@b.example", ("ok@x.org",), "item-r")
    refused = refusal_event(msg, "Gone@X.org", 550, "5.1.1 <Gone@X.org>: User unknown", NOW)
    ops = ops_for_event(refused, ["shop.example"], SuppressionSettings())
    raw = encode_event(refused, source="postfixlog")
    assert await state.record("item-r", "QID3", msg, [raw], suppress=ops)
    assert not await state.record("item-r", "QID3", msg, [raw], suppress=ops)  # a retry: once
    store = SuppressionStore(redis)
    [hit] = await store.lookup([("shop.example", "gone@x.org")], NOW)
    assert hit is not None and hit[1].reason == "hard-bounce" and hit[1].uuid == "m3"
    assert await store.scopes() == {"shop.example": 1}
    assert await redis.llen("EVENT_QUEUE") == 1


def test_the_cli_imports_a_csv_and_reads_and_deletes(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis
) -> None:
    global_file, customer_file = write_configs(tmp_path, redis_server.port)
    base = [
        str(Path(sys.executable).parent / "manycore-suppressions"),
        "--global-config-file",
        str(global_file),
        "--customer-config-file",
        str(customer_file),
    ]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)

    rows = ["address,domain,reason", "A@X.org", "b@x.org,other.example,unsubscribe", ""]
    rows += [f"user{i}@x.org" for i in range(5000)]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    done = cli("import", str(tmp_path / "list.csv"), "--domain", "Example.com")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == json.loads(done.stdout)["added"] == 5002
    assert json.loads(cli("size").stdout) == {"example.com": 5001, "other.example": 1}
    [entry] = [json.loads(line) for line in cli("get", "b@X.org").stdout.splitlines()]
    assert (entry["domain"], entry["reason"], entry["expires"]) == (
        "other.example",
        "unsubscribe",
        None,
    )
    listed = cli("list", "--domain", "example.com").stdout.splitlines()
    assert len(listed) == 5001
    assert json.loads(cli("delete", "a@x.org").stdout) == {"deleted": 1}
    assert cli("get", "a@x.org").returncode == 1
    bad = cli("import", "-", "--domain", "example.com")
    assert bad.returncode == 0  # empty standard input: nothing to do
    (tmp_path / "bad.csv").write_text("ok@x.org\nnot-an-address\n")
    failed = cli("import", str(tmp_path / "bad.csv"), "--domain", "example.com")
    assert failed.returncode == 2 and "line 2" in failed.stderr
    assert queues.hget(s.size_key(), "example.com") == b"5000"


async def test_purge_drops_only_expired_entries_and_keeps_the_size_right(redis: Redis) -> None:
    store = SuppressionStore(redis)
    await store.add([op(f"old{i}@x.org", "hard-bounce", 1, NOW - 5 * 86400) for i in range(300)])
    await store.add([op("kept@x.org", "unsubscribe", 0), op("soon@x.org", "hard-bounce", 2)])
    assert await store.purge("ex.com", NOW, max_buckets=5000) == 300
    assert await store.scopes() == {"ex.com": 2}
    assert await store.purge("ex.com", NOW + 3 * 86400) == 1
    assert await store.scopes() == {"ex.com": 1}
    assert await store.lookup([("ex.com", "kept@x.org")], NOW) != [None]
