"""The services' Redis ACL users in a real redis-server (issue 18, item 2): ``ACL DRYRUN``
of every command each service's code sends, on the keys it sends it to (inside its Lua
scripts too: Redis checks those with the caller's rights), all allowed; what no service
may do (FLUSHALL, FUNCTION, SCRIPT FLUSH, CONFIG, KEYS, DEBUG, another service's keys)
all refused. tests/unit/test_redis_acl.py holds the lists to the scripts in the code;
tests/e2e/test_stack.py runs the whole stack with these users and finds no denial in
``ACL LOG``; the Redis pod's tests below start it with and without per-service users."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
from redis.exceptions import AuthenticationError, NoPermissionError

from manycore_common.config import RedisServer as RedisServerSettings
from manycore_redis import acl
from tests.helpers import LOOPBACK, RedisServer, wait_for
from tests.integration.test_redis_module import NO_RETRY, RedisPod

P0, P1, IN, EV = "IB-MAIL-QUEUE-P0", "IB-MAIL-QUEUE-P1", "INCOMING-TO-POSTFIX", "EVENT_QUEUE"
KS = acl.Keyspace(P0, P1, IN, EV)
#: The services' users and the optional ones (the operator tools').
USERS = (*acl.SERVICES, *acl.OPTIONAL_USERS)
SHA = "a" * 40
PASSWORD = "s3cret-s3cret-s3cret"


def consumer(q: str, side: str) -> list[str]:
    """What queue.py's consumer side sends for queue ``q`` (side keys spelled ``side``:
    ``q`` for today's ``Q:dead``, ``{q}`` for the hash-tagged ``{Q}:dead``)."""
    p, dead, cons, hold = (f"{side}:{s}" for s in ("processing:c1", "dead", "consumers", "holders"))
    return [
        f"evalsha {SHA} 4 {q} {cons} {dead} {hold} 1",
        f"evalsha {SHA} 4 {p} {q} {cons} {hold} 1",
        f"blmove {q} {p} RIGHT LEFT 1",
        f"lmove {q} {p} RIGHT LEFT",
        f"zadd {hold} 0 c1",
        f"zadd {cons} 0 c1",
        f"zrange {hold} 0 -1",
        f"zrangebyscore {cons} -inf 1",
        f"zscore {cons} c1",
        f"zrem {cons} c1",
        f"lrem {p} 1 x",
        f"lrange {p} 0 -1",
        f"lindex {q} -1",
        f"llen {q}",
        f"llen {dead}",
        f"rpush {q} x",
        f"lpush {dead} x",
        f"rpop {dead}",
        f"del {p}",
        "time",
    ]


def producer(q: str, side: str) -> list[str]:
    bell = f"{side}:doorbell"
    return [
        f"evalsha {SHA} 3 {q} {bell} idem:abc 0 60 1",
        f"type {q}",
        f"llen {q}",
        f"lpush {q} x",
        f"lpush {bell} 1",
        f"ltrim {bell} 0 0",
        "set idem:abc v NX EX 60",
        "get idem:abc",
    ]


BASE = ["ping", "select 0", "wait 1 10", "script load x", f"script exists {SHA}"]
EVENTS = [f"lpush {EV} x"]
EMIT_ONCE = [f"evalsha {SHA} 2 {EV} unsubscribed:u1 60 x", "set unsubscribed:u1 1 NX EX 60"]
TRACE = ["rpush trace:u1 x", "ltrim trace:u1 -100 -1", "expire trace:u1 60"]
SUPPRESS = [
    f"evalsha {SHA} 4 {EV} supp:size supp:domain:ab12 supp:soft:domain:ab12:a@b 60 1",
    "hget supp:domain:ab12 a@b",
    "hgetall supp:size",
    "hset supp:domain:ab12 a@b v",
    "hdel supp:domain:ab12 a@b",
    "hincrby supp:size domain 1",
    "incr supp:soft:domain:ab12:a@b",
    "expire supp:soft:domain:ab12:a@b 60",
    "del supp:soft:domain:ab12:a@b",
]


def allowed(side: str) -> dict[str, list[str]]:
    """Every service's commands, written from its code (see the module docstring)."""
    tagged = side != ""

    def s(q: str) -> str:
        return "{" + q + "}" if tagged else q

    front = [*BASE, *producer(P0, s(P0)), *producer(P1, s(P1))]
    consume_in = consumer(IN, s(IN))
    return {
        "receiver": front,
        "httpreceiver": [
            *front,
            *EVENTS,
            *EMIT_ONCE,
            *SUPPRESS,
            "set unsubscribe:untimed-since 1 NX GET",
        ],
        "transformer": [
            *BASE,
            *consumer(P0, s(P0)),
            *consumer(P1, s(P1)),
            f"blpop {s(P0)}:doorbell {s(P1)}:doorbell 1",
            f"evalsha {SHA} 3 {s(P0)}:processing:c1 {IN} {EV} 1",
            f"type {IN}",
            f"llen {IN}",
            f"lpush {IN} x",
            *EVENTS,
            *TRACE,
            "multi",
            "exec",
            "hmget MANYCORE-FEEDBACK-STREAMS f",
            "hset MANYCORE-FEEDBACK-STREAMS f v",
            f"evalsha {SHA} 1 supp:domain:ab12 a@b",
            "hget supp:domain:ab12 a@b",
            "hgetall supp:size",
        ],
        "postfixlog": [
            *BASE,
            *consume_in,
            *EVENTS,
            *TRACE,
            *SUPPRESS,
            f"evalsha {SHA} 6 postfixlog:i:done:1 postfixlog:i:msg:Q1 {EV} postfixlog:claim:1 "
            f"{s(IN)}:processing:c1 supp:size 1",
            "get postfixlog:i:log-position",
            "set postfixlog:i:log-position 1",
            "exists postfixlog:i:requeued:Q1",
            "hgetall postfixlog:i:msg:Q1",
            "hset postfixlog:i:msg:Q1 f v",
            "hsetnx postfixlog:i:msg:Q1 f v",
            "hexists postfixlog:i:msg:Q1 f",
            "hincrby postfixlog:i:msg:Q1 pending -1",
            "expire postfixlog:i:msg:Q1 60",
            "del postfixlog:claim:1",
            "set postfixlog:claim:1 c PX 1000",
        ],
        "backdata": [*BASE, *consumer(EV, s(EV)), *TRACE],
        "mxserver": [
            *BASE,
            *EVENTS,
            *EMIT_ONCE,
            *SUPPRESS,
            f"evalsha {SHA} 3 {EV} bounced:u1:ab autoreplied:u1:ab 60 2 x y",
            "set complained:u1:ab 1 NX EX 60",
            "set unsubscribed:u1 1 EX 60",
            "hmget MANYCORE-FEEDBACK-STREAMS f",
            "multi",
            "lpush MXSERVER-UNCLASSIFIED x",
            "ltrim MXSERVER-UNCLASSIFIED 0 99",
            "lpush MXSERVER-UNCLASSIFIED-UNTAGGED x",
            "ltrim MXSERVER-UNCLASSIFIED-UNTAGGED 0 99",
            "exec",
        ],
        "exporter": [
            "ping",
            "info memory",
            *(f"llen {q}" for q in (P0, P1, IN, EV)),
            *(f"llen {s(q)}:dead" for q in (P0, P1, IN, EV)),
            *(f"llen {s(q)}:processing:c1" for q in (P0, P1, IN, EV)),
            *(f"zrange {s(q)}:holders 0 -1" for q in (P0, P1, IN, EV)),
            *(f"lindex {q} -1" for q in (P0, P1, IN, EV)),
            *(f"lrange {s(q)}:dead 0 499" for q in (P0, P1, IN, EV)),
            "lrange trace:u1 -1000 -1",
            "lrange MXSERVER-UNCLASSIFIED 0 19",
            "lindex MXSERVER-UNCLASSIFIED 0",
            "llen MXSERVER-UNCLASSIFIED",
            "lrange MXSERVER-UNCLASSIFIED-UNTAGGED 0 19",
            "lindex MXSERVER-UNCLASSIFIED-UNTAGGED 0",
            "llen MXSERVER-UNCLASSIFIED-UNTAGGED",
        ],
        # manycore-queues (stats, dead, peek, trace, unclassified; drop and requeue ID:
        # queueinspect._TAKE_DEAD; requeue QUEUE: queue._REQUEUE_DEAD) and
        # manycore-suppressions (its scripts and the size counter).
        "operator": [
            *BASE,
            *(
                f"zrange {s(q)}:{r} 0 -1"
                for q in (P0, P1, IN, EV)
                for r in ("holders", "consumers")
            ),
            *(f"llen {s(q)}:processing:c1" for q in (P0, P1, IN, EV)),
            *(f"lrange {s(q)}:processing:c1 0 499" for q in (P0, P1, IN, EV)),
            *(f"lrange {q} 0 499" for q in (P0, P1, IN, EV)),
            *(f"evalsha {SHA} 2 {s(q)}:dead {q} x y" for q in (P0, P1, IN, EV)),
            *(f"lrem {s(q)}:dead 1 x" for q in (P0, P1, IN, EV)),
            *(f"rpop {s(q)}:dead" for q in (P0, P1, IN, EV)),
            *(f"llen {s(q)}:dead" for q in (P0, P1, IN, EV)),
            *(f"lpush {q} x" for q in (P0, P1, IN, EV)),
            "lrange trace:u1 -1000 -1",
            "lrange MXSERVER-UNCLASSIFIED 0 19",
            "lindex MXSERVER-UNCLASSIFIED 0",
            "lrange MXSERVER-UNCLASSIFIED-UNTAGGED 0 19",
            *SUPPRESS[1:],
            f"evalsha {SHA} 2 supp:size supp:domain:ab12 a@b v",
        ],
    }


#: What no service's user may do.
FORBIDDEN = [
    "flushall",
    "flushdb",
    "function flush",
    "function load x",
    "script flush",
    "eval x 0",
    "config set maxmemory 0",
    "config get *",
    "keys *",
    "scan 0",
    "debug sleep 0",
    "shutdown",
    "acl setuser x",
    "subscribe c",
    "publish c x",
    "rename trace:u1 trace:u2",
    "unlink trace:u1",
    "set other-key 1",
    "get other-key",
]

UNCLASSIFIED = ("MXSERVER-UNCLASSIFIED", "MXSERVER-UNCLASSIFIED-UNTAGGED")

#: Keys each service may not delete: the queues it does not consume, and everyone else's state.
OTHERS = {
    "receiver": [P0, f"{P0}:dead", "idem:abc", "trace:u1", EV, "supp:size"],
    "httpreceiver": [P0, f"{P0}:dead", f"{EV}:dead", "trace:u1", "postfixlog:claim:1"],
    "transformer": [IN, f"{IN}:dead", EV, f"{EV}:dead", "trace:u1", "supp:size", "idem:abc"],
    "postfixlog": [P0, f"{P0}:dead", EV, f"{EV}:processing:c1", "trace:u1", "idem:abc"],
    "backdata": [P0, IN, f"{IN}:dead", "postfixlog:claim:1", "supp:size", "trace:u1"],
    "mxserver": [P0, EV, f"{EV}:dead", "postfixlog:claim:1", *UNCLASSIFIED],
    "exporter": [
        P0,
        f"{P0}:dead",
        f"{{{P0}}}:dead",
        "trace:u1",
        "MXSERVER-UNCLASSIFIED",
        "MXSERVER-UNCLASSIFIED-UNTAGGED",
    ],
    "operator": [P0, f"{{{P0}}}:dead", EV, "trace:u1", *UNCLASSIFIED, "idem:abc"],
}


def settings() -> RedisServerSettings:
    users = {s: {"username": f"mc-{s}", "password": PASSWORD} for s in USERS}
    return RedisServerSettings.model_validate({"password": PASSWORD, "users": users})


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncRedis]:
    """redis-server started with the rules as configuration lines (as manycore-redis does)."""
    args = [arg for line in acl.service_rules(settings(), KS) for arg in ("--" + line).split()]
    server = RedisServer(tmp_path_factory.mktemp("acl"), None, *args).start()
    client = SyncRedis(host=LOOPBACK, port=server.port, retry=NO_RETRY, decode_responses=True)
    try:
        yield client
    finally:
        client.close()
        server.stop()


def dryrun(admin: SyncRedis, service: str, command: str) -> str:
    answer = admin.execute_command("ACL", "DRYRUN", f"mc-{service}", *shlex.split(command))  # type: ignore[no-untyped-call]
    return str(answer)


@pytest.mark.parametrize("side", ["", "tagged"])
@pytest.mark.parametrize("service", USERS)
def test_every_command_of_a_service_is_allowed(admin: SyncRedis, service: str, side: str) -> None:
    refused = {c: r for c in allowed(side)[service] if (r := dryrun(admin, service, c)) != "OK"}
    assert refused == {}


@pytest.mark.parametrize("service", USERS)
def test_what_no_service_may_do_is_refused(admin: SyncRedis, service: str) -> None:
    passed = [c for c in FORBIDDEN if dryrun(admin, service, c) == "OK"]
    passed += [k for k in OTHERS[service] if dryrun(admin, service, f"del {k}") == "OK"]
    assert passed == []


def test_the_exporter_writes_nothing(admin: SyncRedis) -> None:
    for command in allowed("")["transformer"] + allowed("")["postfixlog"]:
        if command.split()[0] in ("ping", "select", "wait", "time") or "llen" in command:
            continue
        if command.split()[0] in ("zrange", "lrange", "lindex", "hgetall", "hget", "hmget"):
            continue
        assert dryrun(admin, "exporter", command) != "OK", command


@pytest.mark.parametrize("side", ["", "tagged"])
def test_the_operator_writes_only_dead_letters_requeues_and_the_list(
    admin: SyncRedis, side: str
) -> None:
    """Its LREM / RPOP are on dead lists only, its LPUSH on the queues themselves."""
    q = "{" + P0 + "}" if side else P0
    refused = [
        f"lrem {P0} 1 x",
        f"rpop {P0}",
        f"lrem {q}:processing:c1 1 x",
        f"lpush {q}:dead x",
        f"lpush {q}:processing:c1 x",
        f"lpush {q}:doorbell 1",
        f"ltrim {q}:dead 0 0",
        f"zadd {q}:holders 0 c1",
        f"blmove {P0} {q}:processing:c1 RIGHT LEFT 1",
        "rpush trace:u1 x",
        "lpush MXSERVER-UNCLASSIFIED x",
        "hset MANYCORE-FEEDBACK-STREAMS f v",
        "set idem:abc v",
        "set unsubscribed:u1 1",
        "info",
        "multi",
    ]
    assert [c for c in refused if dryrun(admin, "operator", c) == "OK"] == []


def test_a_user_with_the_wrong_password_is_refused(admin: SyncRedis) -> None:
    port = admin.connection_pool.connection_kwargs["port"]
    ok = SyncRedis(host=LOOPBACK, port=port, username="mc-receiver", password=PASSWORD)
    wrong = SyncRedis(host=LOOPBACK, port=port, username="mc-receiver", password="x" * 20)
    try:
        assert ok.lpush(P0, b"x") >= 1
        with pytest.raises(AuthenticationError):
            wrong.ping()
    finally:
        ok.close()
        wrong.close()


def pod_users(directory: Path) -> dict[str, object]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "exporter-redis").write_text(PASSWORD + "\n")
    return {
        "redis__server__users": {
            "exporter": {"username": "mc-exporter", "password-file": "exporter-redis"},
            "receiver": {"username": "mc-receiver", "password": PASSWORD},
            "operator": {"username": "mc-operator", "password": PASSWORD},
        },
        "redis__reliable-queue__redis__username": "mc-exporter",
        "redis__reliable-queue__redis__password-file": "exporter-redis",
    }


def test_pod_with_per_service_users(tmp_path: Path) -> None:
    """The pod creates the users from the config, its exporter reads as the read-only user,
    and it names the services still without one."""
    pod = RedisPod(tmp_path, None, **pod_users(tmp_path)).start()
    try:
        port = pod.port
        receiver = SyncRedis(host=LOOPBACK, port=port, username="mc-receiver", password=PASSWORD)
        assert receiver.lpush(P0, b"x") == 1
        receiver.close()
        # The exporter's readings, as the read-only user (INFO included: redis_up is 1).
        wait_for(lambda: pod.metrics().get("primary_queue_messages") == 1, what="a reading")
        assert pod.metrics()["redis_up"] == 1
        exporter = SyncRedis(host=LOOPBACK, port=port, username="mc-exporter", password=PASSWORD)
        with pytest.raises(NoPermissionError):
            exporter.lpush(P0, b"x")
        exporter.close()
        operator = SyncRedis(host=LOOPBACK, port=port, username="mc-operator", password=PASSWORD)
        assert operator.lrange(P0, 0, 0) and operator.rpop(f"{{{P0}}}:dead") is None
        with pytest.raises(NoPermissionError):
            operator.rpop(P0)
        operator.close()
        with pytest.raises(AuthenticationError):
            SyncRedis(host=LOOPBACK, port=port, username="manycore", password="p" * 20).ping()
    finally:
        pod.stop()
    log = pod.log.read_text()
    assert "services without a Redis user cannot connect" in log
    assert "redis.server.users.transformer" in log
    assert "redis.server.users.operator" not in log  # optional: never reported missing
    assert "every service shares one Redis user" not in log


def test_pod_with_the_older_shared_user_works_and_warns(tmp_path: Path) -> None:
    pod = RedisPod(tmp_path, None).start()
    try:
        shared = pod.client()
        assert shared.lpush(P0, b"x") == 1
        assert shared.execute_command("ACL", "WHOAMI") in (b"manycore", "manycore")  # type: ignore[no-untyped-call]
        shared.close()
    finally:
        pod.stop()
    log = pod.log.read_text()
    assert "every service shares one Redis user" in log
    assert all(f"redis.server.users.{s}" in log for s in acl.SERVICES)
