"""The services' Redis ACL users (``manycore_redis.acl``), checked against the code: every Lua
script a service runs may only call commands its user has, every script in the code base is
run by some user (or listed as an operator's), the key families are the code's, and the
config's ``redis.server.users`` validates (tests/integration/test_redis_acl.py runs them in
Redis)."""

from __future__ import annotations

import importlib
import re
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from pydantic import ValidationError

from manycore_common import configscope, keyspace
from manycore_common.config import RedisServer
from manycore_redis import acl

ROOT = Path(__file__).resolve().parents[2]
KS = acl.Keyspace("IB-MAIL-QUEUE-P0", "IB-MAIL-QUEUE-P1", "INCOMING-TO-POSTFIX", "EVENT_QUEUE")

_QUEUE = "manycore_common.queuescripts"
_STORE = "manycore_common.suppressionstore"
_STATE = "manycore_postfixlog.statescripts"
PRODUCER_SCRIPTS = [(_QUEUE, "PUSH"), (_QUEUE, "PUSH_CLAIMED")]
CONSUMER_SCRIPTS = [
    (_QUEUE, name)
    for name in (
        "TAKE_MANY",
        "ACK_MANY",
        "HAND_OVER",
        "HAND_OVER_SPLIT",
        "RETRY",
        "DEAD_LETTER",
        "HEARTBEAT",
        "REAP_CANDIDATES",
        "REAP",
        "RETURN_STRAYS",
        "RELEASE",
        "REQUEUE_DEAD",  # manycore-queues requeue QUEUE, run with the consumer's section
        "MOVE_LEGACY",  # the reaper's move from the previous release's key names
    )
]
SUPPRESSION_SCRIPTS = [
    (_STORE, n) for n in ("_ADD", "_IMPORT", "_LOOKUP", "_DELETE", "_SCAN", "_PURGE")
]
#: Which scripts each service's code runs (read from the code: who calls what).
SCRIPTS = {
    "receiver": PRODUCER_SCRIPTS,
    "httpreceiver": [
        *PRODUCER_SCRIPTS,
        ("manycore_common.events", "_EMIT_ONCE"),
        *SUPPRESSION_SCRIPTS,
    ],
    "transformer": [*CONSUMER_SCRIPTS, (_STORE, "_LOOKUP")],
    "postfixlog": [
        *CONSUMER_SCRIPTS,
        *((_STATE, n) for n in ("RECORD", "FINAL", "DEFERRAL", "REQUEUE", "CLAIM")),
        (_STATE, "UNCLAIM"),
    ],
    "backdata": CONSUMER_SCRIPTS,
    "mxserver": [
        ("manycore_common.events", "_EMIT_ONCE"),
        (_STORE, "_EMIT_ONCE_SUPPRESSING"),
    ],
    "exporter": [],
}
#: Scripts only an operator's tool runs (``manycore-queues peek/drop/requeue ID``).
OPERATOR_SCRIPTS = {("manycore_common.queueinspect", "_TAKE_DEAD")}
#: What the operator's user runs: drop / requeue by id, requeue QUEUE, the suppression CLI.
OPERATOR_RUNS = [
    *OPERATOR_SCRIPTS,
    (_QUEUE, "REQUEUE_DEAD"),
    *((_STORE, n) for n in ("_ADD", "_IMPORT", "_LOOKUP", "_DELETE", "_SCAN", "_PURGE")),
]

CALL = re.compile(r"redis\.p?call\('([A-Z]+)'")


def script_commands(module: str, name: str) -> set[str]:
    text = getattr(importlib.import_module(module), name)
    found = {c.lower() for c in CALL.findall(text)}
    assert found, f"{module}.{name} calls no command?"
    return found


@pytest.mark.parametrize("service", acl.SERVICES)
def test_each_script_a_service_runs_calls_only_commands_its_user_has(service: str) -> None:
    granted = acl.rights(KS)[service].all_commands()
    for module, name in SCRIPTS[service]:
        missing = script_commands(module, name) - granted
        assert not missing, f"{service} runs {module}.{name}, which calls {missing}"
    if SCRIPTS[service]:
        assert {"evalsha", "script|load", "script|exists"} <= granted
    else:
        assert not {"evalsha", "eval", "script|load"} & granted


def test_every_script_in_the_code_is_accounted_for() -> None:
    """A new script must be given to the users that run it (here and in ``acl``)."""
    declared = {pair for pairs in SCRIPTS.values() for pair in pairs} | OPERATOR_SCRIPTS
    assignment = re.compile(r"^(_?[A-Z][A-Z_]+) = ", re.MULTILINE)
    found = set()
    for path in [*ROOT.glob("common/manycore_common/*.py"), *ROOT.glob("*/manycore_*/*.py")]:
        text = path.read_text()
        if "redis.call(" not in text or path.parent.name == "manycore_redis":
            continue
        module = f"{path.parent.name}.{path.stem}"
        for name in assignment.findall(text):
            value = getattr(importlib.import_module(module), name)
            if isinstance(value, str) and "redis.call(" in value and "LUA" not in name:
                found.add((module, name))
    assert len(found) == 30  # the search itself works (update when adding a script)
    assert found - declared == set()


def test_the_operators_scripts_and_calls_are_granted() -> None:
    """Every script the operator tools run, and their own modules' redis-py calls."""
    granted = acl.rights(KS)["operator"].all_commands()
    for module, name in OPERATOR_RUNS:
        missing = script_commands(module, name) - granted
        assert not missing, f"the operator runs {module}.{name}, which calls {missing}"
    tools = ("queuectl.py", "queueinspect.py", "suppressioncli.py")
    called = set().union(*(client_calls(ROOT / "common/manycore_common" / t) for t in tools))
    assert {"lrange", "llen", "lindex"} <= called  # the search finds the calls
    assert called - granted == set()
    assert not {"info", "multi", "exec", "discard", "blmove", "ltrim"} & granted


def test_the_operator_user_is_optional() -> None:
    settings = server(operator={"username": "mc-operator", "password": "o" * 16})
    (line,) = acl.service_rules(settings, KS)
    assert line.startswith("user mc-operator reset on #")
    assert (
        "(resetchannels +lrem +rpop +llen ~IB-MAIL-QUEUE-P0:dead ~{IB-MAIL-QUEUE-P0}:dead" in line
    )
    assert "redis.server.users.operator" not in acl.missing_users(settings)


def test_no_user_gets_a_dangerous_command() -> None:
    never = {"eval", "keys", "flushall", "flushdb", "config", "debug", "function", "scan"}
    never |= {"script|flush", "rename", "shutdown", "acl", "subscribe", "publish", "unlink"}
    for service, granted in acl.rights(KS).items():
        assert not never & granted.all_commands(), service
        assert not any(c.startswith("@") for c in granted.all_commands()), service


def test_exporter_only_reads() -> None:
    exporter = acl.rights(KS)["exporter"]
    assert [g.write for g in exporter.selectors()] == [()]
    assert exporter.all_commands() == {"ping", "select", "wait", "llen", "lindex", "lrange"} | {
        "zrange",
        "info",
    }


def test_del_only_on_the_services_own_keys() -> None:
    """DEL is granted with a consumer's own queues, PostfixLog's state, the soft-bounce
    counters of the suppression list; never with a queue it only pushes to."""
    for service, granted in acl.rights(KS).items():
        for g in granted.selectors():
            if "del" in g.commands:
                own = {*acl.queue_patterns(KS.incoming), *acl.queue_patterns(KS.events)}
                own |= {*acl.queue_patterns(KS.primary), *acl.queue_patterns(KS.default)}
                own |= {"supp:*", "postfixlog:*"}
                assert set(g.write) <= own, (service, g)
                assert "EVENT_QUEUE" not in g.write or service == "backdata", (service, g)


def test_queue_patterns_cover_both_spellings_and_a_prefix() -> None:
    assert acl.queue_patterns("Q") == ["Q", "Q:*", "{Q}:*"]
    assert acl.queue_patterns("Q", ("doorbell",), "{mc}") == [
        "{mc}Q",
        "{mc}Q:doorbell",
        "{mc}{Q}:doorbell",
    ]
    assert acl.queue_patterns("A*B") == ["A\\*B", "A\\*B:*", "{A\\*B}:*"]


@pytest.mark.parametrize("prefix", ["", "{mc}"])
def test_key_families_are_the_codes(prefix: str) -> None:
    """Each family's patterns (from keyspace, the one place that names keys) match the keys
    the code builds, with and without a key prefix."""
    ks = keyspace.Keyspace(prefix)
    rules = acl.Keyspace("P0", "P1", "IN", "EV", prefix)
    named = [
        (ks.idempotency("abc"), "idempotency"),
        (ks.trace("u1"), "trace"),
        (ks.suppression_bucket("example.com", 5), "suppression"),
        (ks.suppression_size(), "suppression"),
        (ks.once("unsubscribe", "u1", "fp"), "once"),
        (ks.once("bounce", "u1"), "once"),
        (ks.untimed_since(), "untimed-since"),
        (ks.feedback_streams(), "feedback-streams"),
        (ks.unclassified(), "unclassified"),
        (ks.unclassified_untagged(), "unclassified-untagged"),
        (ks.postfixlog("host-1", "msg:ABC"), "postfixlog"),
        (ks.postfixlog_claim("item"), "postfixlog"),
    ]
    for key, family in named:
        assert any(fnmatchcase(key, p) for p in rules.family(family)), (key, family)
    only = rules.family("once", only=acl.UNSUBSCRIBED_ONCE)
    assert any(fnmatchcase(ks.once("unsubscribe", "u1", "fp"), p) for p in only)
    assert not any(fnmatchcase(ks.once("bounce", "u1"), p) for p in only)
    queue = ks.queue("P0")
    for key in (queue, ks.dead(queue), ks.processing(queue, "c1"), ks.doorbell(queue)):
        assert any(fnmatchcase(key, p) for p in rules.queues("P0")), key


def server(**users: dict[str, str]) -> RedisServer:
    return RedisServer.model_validate({"password": "p" * 16, "users": users})


def test_rules_one_line_per_given_user() -> None:
    settings = server(
        receiver={"username": "mc-receiver", "password": "r" * 16},
        exporter={"username": "mc-exporter", "password": "e" * 16},
    )
    lines = acl.service_rules(settings, KS)
    assert [line.split()[1] for line in lines] == ["mc-receiver", "mc-exporter"]
    assert lines[0].startswith("user mc-receiver reset on #")
    assert "(resetchannels +set +get ~idem:*)" in lines[0]
    assert "~IB-MAIL-QUEUE-P0:doorbell ~{IB-MAIL-QUEUE-P0}:doorbell" in lines[0]
    assert "%R~trace:*" in lines[1] and "evalsha" not in lines[1]
    assert "r" * 16 not in " ".join(lines)
    assert acl.missing_users(settings) == [
        f"redis.server.users.{s}"
        for s in ("httpreceiver", "transformer", "postfixlog", "backdata", "mxserver")
    ]


def test_without_users_the_shared_user_keeps_its_rights() -> None:
    settings = RedisServer.model_validate({"password": "p" * 16})
    assert acl.service_rules(settings, KS) == [
        f"user manycore on {acl.acl_password('p' * 16)} ~* &* +@all -@dangerous +info"
    ]
    assert len(acl.missing_users(settings)) == len(acl.SERVICES)


@pytest.mark.parametrize(
    ("users", "message"),
    [
        ({"receiver": {"username": "sentinel", "password": "x" * 16}}, "manycore-redis' own"),
        (
            {
                "receiver": {"username": "same", "password": "x" * 16},
                "backdata": {"username": "same", "password": "y" * 16},
            },
            "a username of its own",
        ),
        ({"receiver": {"username": "r", "password": "short"}}, "at least 16"),
        ({"receiver": {"username": "a b", "password": "x" * 16}}, "pattern"),
        ({"nosuch": {"username": "n", "password": "x" * 16}}, "extra"),
    ],
)
def test_users_config_errors(users: dict[str, dict[str, str]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        server(**users)


def test_user_password_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "receiver-redis").write_text("f" * 20 + "\n")
    settings = RedisServer.model_validate(
        {
            "password": "p" * 16,
            "users": {"receiver": {"username": "r", "password-file": "receiver-redis"}},
        },
        context={"base_dir": tmp_path},
    )
    assert settings.users is not None and settings.users.receiver is not None
    assert settings.users.receiver.password.get_secret_value() == "f" * 20


PACKAGES = {
    "receiver": "Receiver/manycore_receiver",
    "httpreceiver": "HttpReceiver/manycore_httpreceiver",
    "transformer": "Transformer/manycore_transformer",
    "postfixlog": "PostfixLog/manycore_postfixlog",
    "backdata": "BackData/manycore_backdata",
    "mxserver": "MxServer/manycore_mxserver",
    "exporter": "Redis/manycore_redis/exporter.py",
}
#: redis-py methods that send no command of that name.
NOT_COMMANDS = {"register_script", "pipeline"}


def client_calls(path: Path) -> set[str]:
    """The Redis commands a service's own modules send through redis-py (``redis.get(``,
    ``pipe.lpush(``, ...): method names that are redis-py command methods. The shared
    modules' calls are run as each user by tests/integration/test_redis_acl_calls.py."""
    from redis.commands.core import CoreCommands

    commands = {n for n in dir(CoreCommands) if not n.startswith("_")} - NOT_COMMANDS
    call = re.compile(r"\b(?:\w*redis|pipe|client)\.(\w+)\(")
    files = [path] if path.is_file() else sorted(path.glob("*.py"))
    return {m for f in files for m in call.findall(f.read_text()) if m in commands}


@pytest.mark.parametrize("service", acl.SERVICES)
def test_the_redis_py_calls_of_a_service_are_granted(service: str) -> None:
    called = client_calls(ROOT / PACKAGES[service])
    assert called - acl.rights(KS)[service].all_commands() == set()
    if service in ("postfixlog", "mxserver", "exporter"):
        assert called, "the search finds the calls"


def test_acl_users_are_the_services_of_the_customer_file() -> None:
    """One list of services: a section added to the customer file gets its Redis user (and
    devstack, which uses ``acl.SERVICES``, its password file)."""
    sections = set(configscope.SECTIONS) - {"redis", *acl.OPTIONAL_USERS}
    assert set(acl.SERVICES) == sections | {"exporter"}
    assert len(set(acl.SERVICES)) == len(acl.SERVICES)
    assert set(acl.OPTIONAL_USERS) <= set(configscope.SECTIONS)
