"""Cluster-ready keys (issue 17 item 5): with ``reliable-queue.key-prefix: "{mc}"`` every script
call of the suite, driven through the real code, touches keys of one Redis Cluster slot; and
every script the code base registers is driven here, so a new one without coverage fails.

Two checks, one by us and one by Redis. We record the KEYS of every script call (a wrapper
around redis-py's ``AsyncScript.__call__``) and compute their slots with CRC16/XMODEM mod
16384, as the Redis Cluster specification defines. And the server is a one-node Redis Cluster
that runs every script with a ``#!lua`` shebang, under which Redis refuses any key (declared
in KEYS or not) outside the slot of the declared ones: a script that built a key name of
another slot would fail here even if we had missed it. Plain commands on a cluster node
refuse keys of several slots (CROSSSLOT) too.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from manycore_common import events, keyspace, queueinspect, trace
from manycore_common import item as item_format
from manycore_common import suppression as s
from manycore_common.idempotency import claim_for
from manycore_common.queue import ReliableQueue, wait_for_doorbells
from manycore_common.suppressionstore import Op, SuppressionStore, emit_once_suppressing
from manycore_httpreceiver import unsubscribe
from manycore_postfixlog import scriptbatch
from manycore_postfixlog.state import Deferral, Held, Message, State
from manycore_transformer.streams import StreamRegistry
from tests.helpers import LOOPBACK, RedisServer, Service, running, wait_for
from tests.integration.conftest import build_message
from tests.integration.test_httpreceiver import http_service, post
from tests.integration.test_transformer import transformer_service

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["common/manycore_common"] + [
    f"{d}/manycore_{d.lower()}"
    for d in (
        "Receiver",
        "HttpReceiver",
        "Transformer",
        "Redis",
        "BackData",
        "PostfixLog",
        "MxServer",
    )
]
#: Scripts that may span slots, with the reason. They run only on the Redis of a deployment
#: upgraded from the previous release (tests/integration/test_queue_upgrade.py).
CROSS_SLOT_BY_DESIGN = {"manycore_common.queuescripts.MOVE_LEGACY"}
NOW = 1_800_000_000.0


def crc16(data: bytes) -> int:
    """CRC16/XMODEM (poly 0x1021, init 0), the Redis Cluster key hash."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def slot(key: str | bytes) -> int:
    text = key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key
    return crc16(keyspace.slot_text(text).encode("utf-8", "surrogateescape")) % 16384


def _text(key: bytes | str) -> str:
    return key.decode() if isinstance(key, bytes) else key


def registered_scripts() -> dict[str, str]:
    """Every ``register_script(NAME)`` of the code base: module.NAME → its Lua."""
    out: dict[str, str] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            module_name = f"{Path(package).name}.{path.stem}"
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "register_script"
                ):
                    (arg,) = node.args
                    module = importlib.import_module(module_name)
                    if isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name):
                        # ``lua.PUSH``: a constant of a scripts module (queuescripts ...)
                        module, name = getattr(module, arg.value.id), arg.attr
                    else:
                        assert isinstance(arg, ast.Name), f"{module_name}: register a constant"
                        name = arg.id
                    out[f"{module.__name__}.{name}"] = getattr(module, name)
    return out


def test_crc16_matches_the_specification_vectors() -> None:
    # Redis Cluster specification: CRC16 of "123456789" is 0x31C3.
    assert crc16(b"123456789") == 0x31C3
    assert slot("123456789") == 12739
    assert slot("foo") == 12182 and slot("{user1000}.following") == slot("user1000")


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A one-node Redis Cluster that serves every slot."""
    server = RedisServer(
        tmp_path_factory.mktemp("cluster"),
        None,
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
    ).start()
    client = SyncRedis(host=LOOPBACK, port=server.port)
    client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)  # type: ignore[no-untyped-call]
    wait_for(
        lambda: b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO"),  # type: ignore[no-untyped-call]
        what="cluster state ok",
    )
    client.close()
    yield server
    server.stop()


Calls = list[tuple[str, list[str]]]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    """Every script call's (Lua, KEYS); scripts run with a ``#!lua`` shebang (see above)."""
    recorded: Calls = []
    init, call = AsyncScript.__init__, AsyncScript.__call__

    def shebang_init(self: AsyncScript, client: Any, script: Any) -> None:
        self.original = script  # type: ignore[attr-defined]
        init(self, client, "#!lua\n" + script)

    async def recording_call(
        self: AsyncScript, keys: Any = None, args: Any = None, client: Any = None
    ) -> Any:
        original: str = self.original  # type: ignore[attr-defined]
        recorded.append((original, [k if isinstance(k, str) else k.decode() for k in keys or []]))
        return await call(self, keys, args, client)

    def recording_command(call: scriptbatch.Call) -> tuple[Any, ...]:
        # PostfixLog's batched calls go out as EVALSHA in a pipeline, not through __call__.
        original: str = call.script.original  # type: ignore[attr-defined]
        recorded.append((original, [k if isinstance(k, str) else k.decode() for k in call.keys]))
        return command(call)

    command = scriptbatch.command
    monkeypatch.setattr(AsyncScript, "__init__", shebang_init)
    monkeypatch.setattr(AsyncScript, "__call__", recording_call)
    monkeypatch.setattr(scriptbatch, "command", recording_command)
    yield recorded


@pytest.fixture
def prefixed() -> Iterator[keyspace.Keyspace]:
    keys = keyspace.use("{mc}")
    yield keys
    keyspace.use("")


@pytest.fixture
async def node(cluster_node: RedisServer) -> AsyncIterator[Redis]:
    client = Redis(host=LOOPBACK, port=cluster_node.port)
    await client.flushall()
    yield client
    await client.aclose()


def items(n: int, uuid: str = "u") -> list[bytes]:
    return [item_format.new_item(b"m%d" % i, source="test", uuid=f"{uuid}{i}") for i in range(n)]


# ---------------------------------------------------------------------------- drivers


async def drive_queues(redis: Redis) -> None:
    p0 = ReliableQueue(redis, "P0", heartbeat_timeout=0.2, doorbell=True)
    p1 = ReliableQueue(redis, "P1", heartbeat_timeout=0.2, doorbell=True, max_attempts=2)
    out = ReliableQueue(redis, "OUT", heartbeat_timeout=0.2)
    await p1.push(items(1)[0])
    await p1.push_many(items(6, "v"))
    claim = claim_for("w1", 1, 60)
    await p1.push_claimed([(items(1, "w")[0], claim), (items(1, "x")[0], None)])
    await p1.ring_doorbell()
    assert await wait_for_doorbells(redis, [p0, p1], 0.1)
    consumer = p1.consumer("c1")
    await consumer.register()
    batch = await consumer.take_batch(8, timeout=0.1)
    assert len(batch) == 8
    assert await consumer.ack(batch[0]) and await consumer.ack_many([batch[1]]) == 1
    assert await consumer.hand_over(batch[2], out, b"new")
    assert await consumer.hand_over_many([(batch[3], b"new2")], out) == 1
    assert await consumer.hand_over_split([(batch[4], [b"a", b"b"])], out) == (1, 2)
    assert await consumer.retry(batch[5], "try again") == "requeued"
    assert await consumer.dead_letter(batch[6], "never", (out, b"event"))
    await redis.lpush(consumer.processing_key, items(1, "stray")[0])
    assert await consumer.recover_strays() == 0 and await consumer.recover_strays() == 1
    assert await p1.requeue_dead() == 1
    assert await consumer.release() == 1
    # A consumer that dies holding items: the reaper returns them.
    dying = p1.consumer("c2")
    await dying.register()
    assert await dying.take(0.1) is not None
    await asyncio.sleep(0.3)
    assert (await p1.reap()).returned == 1
    assert await p1.processing_size() == 0 and await p1.adopt_unregistered() == 0
    dead = p1.consumer("c3")
    await dead.register()
    taken = await dead.take(0.1)
    assert taken is not None and await dead.dead_letter(taken, "for take_dead")
    (letter,) = await p1.dead_letters()
    assert await queueinspect.take_dead(redis, p1, letter, requeue=True)
    assert await queueinspect.locate(redis, [p0, p1, out], "u0")


async def drive_postfixlog(redis: Redis) -> None:
    state = State(redis, "pod-0", "EVENT_QUEUE", "INCOMING-TO-POSTFIX", ttl=3600)
    incoming = ReliableQueue(redis, "INCOMING-TO-POSTFIX")
    await incoming.push(items(1)[0])
    consumer = incoming.consumer("pl-1")
    await consumer.register()
    taken = await consumer.take(0.1)
    assert taken is not None
    assert (await state.claim("item-1", "pl-1", 0.0)).status == "mine"
    await state.unclaim("item-1", "pl-1")
    claims = await state.claim_many(["item-2", "item-3"], ["pl-1", "pl-2"], 0.0)
    assert [(c.status, c.holder) for c in claims] == [("mine", "pl-1"), ("mine", "pl-2")]
    assert (await state.claim("item-1", "pl-1", 0.0)).status == "mine"
    msg = Message("u1", None, "ex.com", "bounce@ex.com", ("a@x.org", "b@x.org"), "item-1")
    held = Held("pl-1", consumer.processing_key, taken.raw)
    bounce = Op("ex.com", "b@x.org", s.new_entry("hard-bounce", NOW, 30, "ab" * 8, "u1"))
    assert await state.record("item-1", "QID1", msg, [b"refused"], held, [bounce])
    deferral = Deferral("greylisted", "4.7.1", None)
    assert await state.deferral("QID1", "a@x.org", deferral, "t1", b"deferred") == 2
    soft = Op(
        "ex.com", "a@x.org", s.new_entry("soft-bounce-repeated", NOW, 1, "cd" * 8, "u1"), 3, 60
    )
    assert await state.final("QID1", "a@x.org", b"delivered", [soft]) == 1
    # The log side's batch: several scripts and trace records in one pipeline.
    batch = [
        state.deferral_call("QID1", "b@x.org", deferral, "t2", None),
        state.final_call("QID1", "b@x.org", b"bounced"),
    ]
    traced = [("u1", trace.entry("log", "test"))]
    assert await scriptbatch.run(redis, batch, traced, trace.TraceSettings(True, 600, 10)) == [1, 1]
    assert [m and m.uuid for m in await state.messages(["QID1", "QID2"])] == ["u1", None]
    await state.requeue("QID1", b"again")
    assert await state.was_requeued("QID1")
    assert await state.message("QID1") is None


async def drive_suppression_and_events(redis: Redis) -> None:
    store = SuppressionStore(redis)
    entry = s.new_entry("unsubscribe", NOW, 0, "ef" * 8, "u2")
    scope = "st.example"
    assert await store.add([Op(scope, "c@x.org", entry)]) == 1
    assert await store.add_entries([Op(scope, f"i{i}@x.org", entry) for i in range(50)]) == 50
    assert await store.lookup([(scope, "c@x.org")], NOW)
    entries, _ = await store.page(scope, 0, 100, NOW)
    assert len(entries) == 51
    assert await store.delete([(scope, "c@x.org")]) == 1
    assert await store.purge(scope, NOW) == 0
    assert (await store.scopes())[scope] == 50
    event_queue = ReliableQueue(redis, "EVENT_QUEUE")
    unsub = events.new_event("unsubscribe", uuid="u3")
    once = keyspace.current().once("unsubscribe", "u3")
    assert await events.emit_once(event_queue, unsub, source="test", once_key=once, ttl=60)
    bounce = events.new_event("bounce", uuid="u4", type="hard", rcpt="d@x.org", reason="no")
    ops = [[Op("ex.com", "d@x.org", s.new_entry("hard-bounce", NOW, 30, "12" * 8, "u4"))]]
    key = keyspace.current().once("bounce", "u4", "00aa")
    assert await emit_once_suppressing(event_queue, [(key, bounce)], ops, source="t", ttl=60) == 1
    settings = trace.TraceSettings(True, 600, 10)
    await trace.write(redis, settings, [("u4", trace.entry("queued", "test"))])
    assert await trace.read(redis, "u4")
    assert await StreamRegistry(redis).ensure(["spring-sale"]) == []
    assert await unsubscribe._untimed_since(unsubscribe.Unsubscribe(b"k", event_queue), NOW)


# ---------------------------------------------------------------------------- the tests


async def test_every_script_call_stays_in_the_prefix_slot(
    node: Redis, calls: Calls, prefixed: keyspace.Keyspace
) -> None:
    await drive_queues(node)
    await drive_postfixlog(node)
    await drive_suppression_and_events(node)
    home = slot("{mc}")
    assert calls
    for lua, keys in calls:
        assert keys, f"a script call without keys:\n{lua[:200]}"
        assert {slot(k) for k in keys} == {home}, f"keys of several slots: {keys}"
    # Every key written anywhere (scripts or plain commands) is in the prefix's slot.
    stored = [_text(k) for k in await node.keys("*")]
    assert len(stored) > 20 and all(k.startswith("{mc}") for k in stored), stored
    assert {slot(k) for k in stored} == {home}
    # Our slots agree with the server's.
    for key in [*stored[:5], "123456789", "P0", "{P0}:dead"]:
        assert await node.execute_command("CLUSTER", "KEYSLOT", key) == slot(key)  # type: ignore[no-untyped-call]
    # Every script the code base registers was driven above.
    called = {lua for lua, _ in calls}
    registered = registered_scripts()
    assert len(registered) > 25
    missing = {
        name
        for name, lua in registered.items()
        if lua not in called and name not in CROSS_SLOT_BY_DESIGN
    }
    assert not missing, f"scripts not driven by this test: {sorted(missing)}"


async def test_without_a_prefix_a_queues_keys_share_its_slot(redis: Redis, calls: Calls) -> None:
    """No prefix (today's names): every key of one queue hashes like the queue itself, and so
    does every call of a script that works on one queue."""
    names = ["IB-MAIL-QUEUE-P0", "EVENT_QUEUE", "{mc}tagged", "a{b"]
    for name in names:
        q = ReliableQueue(redis, name)
        keys = [q.name, q.consumers_key, q.holders_key, q.dead_key, q.doorbell_key]
        assert {slot(k) for k in [*keys, q.processing_key("c:1")]} == {slot(name)}, keys
    await drive_queues(redis)
    # Not hand-overs to OUT, nor a push with its idempotency claim: those span queues or
    # families, which only a key prefix puts in one slot.
    queue_scripts = [
        (lua, keys)
        for lua, keys in calls
        if keys and "OUT" not in keys and not any(k.startswith("idem:") for k in keys)
    ]
    assert len(queue_scripts) > 10
    for _, keys in queue_scripts:
        assert len({slot(k) for k in keys}) == 1, keys


def with_prefix(service: Service, prefix: str) -> Service:
    data = yaml.safe_load(service.global_file.read_text())
    data["reliable-queue"]["key-prefix"] = prefix
    service.global_file.write_text(yaml.safe_dump(data))
    return service


def test_services_with_a_prefix_write_only_its_slot(
    tmp_path: Path, cluster_node: RedisServer
) -> None:
    """The real HttpReceiver and Transformer, configured with ``key-prefix: "{mc}"``, on the
    Cluster node: a message goes through, and every key they wrote carries the prefix."""
    client = SyncRedis(host=LOOPBACK, port=cluster_node.port)
    client.flushall()
    api = with_prefix(http_service(tmp_path / "http", cluster_node.port), "{mc}")
    transformer = with_prefix(transformer_service(tmp_path / "tr", cluster_node.port), "{mc}")
    with running(api), running(transformer):
        status, _, answer = post(api, build_message("pfx1", stream_id="spring"))
        assert status == 200, answer
        wait_for(lambda: client.llen("{mc}INCOMING-TO-POSTFIX") == 3, what="three copies")
    stored = [_text(k) for k in client.keys("*")]
    assert {"{mc}MANYCORE-FEEDBACK-STREAMS", "{mc}trace:pfx1"} <= set(stored)
    assert any(k.startswith("{mc}idem:") for k in stored)
    assert all(k.startswith("{mc}") for k in stored), stored
    client.close()
