"""One Redis ACL user per service: the ``user`` lines ``manycore-redis`` writes from the config.

Pure: ``service_rules`` turns the configuration into ACL rule lines; ``server`` writes them.
It lives next to ``server`` and ``roles`` (the admin, replication and sentinel users) because
only the Redis pod renders ACL rules, and the services never need to know them.

Each service's user may run only the commands its code sends, on only the keys it touches
(``rights``, read from the code). Kept true by tests: tests/unit/test_redis_acl.py (every
Lua script a service runs calls only commands its user has; every script is accounted for),
tests/integration/test_redis_acl.py (``ACL DRYRUN`` of each service's commands and of what
none may do), tests/integration/test_redis_acl_calls.py (the real queue, event,
suppression, trace and exporter code run as each user) and tests/e2e/test_stack.py (the
whole stack with these users).

* One ACL selector (Redis 7) per family of keys, with the commands used on that family
  only: a command passes when one selector allows it on every key it names. So DEL is
  allowed on a consumer's own queue keys but not on the event queue it pushes to.
* Lua scripts run with the caller's rights: Redis checks every ``redis.call`` inside
  against the selectors too. EVALSHA counts its KEYS as written, so one more selector, the
  script gate, allows the script commands on all the user's keys; what a script then does
  is still checked command by command. redis-py's scripts send ``EVALSHA``, then ``SCRIPT
  LOAD`` when Redis does not know the script (and a pipeline ``SCRIPT EXISTS`` first):
  never ``EVAL``, ``FUNCTION`` or ``SCRIPT FLUSH``.
* Keys only read are read-only (``%R~``). The exporter's user only reads, and runs no script.
* No channels (nothing here uses pub/sub), no ``KEYS``, ``CONFIG``, ``FLUSH*``, ``DEBUG``.

Key families come from ``keyspace.Keyspace.acl_patterns`` and queues from ``queue_patterns``
(``key_pattern`` for a single key), so a change of the key layout (hash tags ``{Q}:…``, a
global prefix) changes them in one place. Queue side keys are matched in both spellings,
``Q:dead`` and ``{Q}:dead``, so the rules hold across that rename.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from manycore_common import keyspace
from manycore_common.config import Config, RedisServer

#: Services with an ACL user of their own (``redis.server.users``), in the README's order:
#: the customer file's sections (``configscope.SECTIONS``, checked by a test) but ``redis``,
#: whose pod logs in as ``exporter``, and the optional ``operator``. devstack's local users
#: are this list.
SERVICES = (
    "receiver",
    "httpreceiver",
    "transformer",
    "postfixlog",
    "backdata",
    "mxserver",
    "exporter",
)
#: Optional users of no service: not reported missing (``missing_users``) when absent.
OPTIONAL_USERS = ("operator",)

# --------------------------------------------------------------------------- key families
# Every family's patterns come from ``keyspace.Keyspace.acl_patterns`` (the one place that
# names keys), by these names: PostfixLog's state (``postfixlog:<instance>:…``,
# ``postfixlog:item:`` / ``postfixlog:claim:``), the once-markers of events (``bounced:``,
# ``autoreplied:``, ``complained:``, ``unsubscribed:``; HttpReceiver's one-click unsubscribe
# sets only the last), HttpReceiver's first sight of an untimed one-click token.
UNSUBSCRIBED_ONCE = "unsubscribed:"


def _glob_escape(text: str) -> str:
    """A literal key in an ACL pattern (glob-style, like KEYS): escape its specials."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def queue_patterns(name: str, parts: Sequence[str] | None = None, prefix: str = "") -> list[str]:
    """Queue ``name`` and its side keys: all of them (``parts`` None: a consumer's), or the
    named ones (a producer rings only the ``doorbell``). Both spellings of a side key:
    ``Q:dead`` and ``{Q}:dead`` (queue.py's layout, before and after the hash tags)."""
    q = _glob_escape(prefix + name)
    tagged = _glob_escape(prefix + "{" + name + "}")
    sides = ["*"] if parts is None else [_glob_escape(p) for p in parts]
    return [q, *(f"{q}:{p}" for p in sides), *(f"{tagged}:{p}" for p in sides)]


def key_pattern(key: str, prefix: str = "") -> str:
    """One key, e.g. ``MANYCORE-FEEDBACK-STREAMS``."""
    return _glob_escape(prefix + key)


# --------------------------------------------------------------------------- commands

#: Every user, on no key: health checks (PING), ``db`` other than 0 (SELECT), replica acks
#: (WAIT, in the Sentinel form: ``replicas``). AUTH and HELLO need no permission.
CONNECTION = ("ping", "select", "wait")
#: redis-py's ``register_script``: EVALSHA, SCRIPT LOAD on NOSCRIPT, SCRIPT EXISTS in
#: pipelines. Inside, the scripts' TIME (queue.py's ``now_ms``).
SCRIPTS = ("evalsha", "script|load", "script|exists", "time")
#: Transactional pipelines (``pipeline(transaction=True)``): no keys of their own.
TRANSACTIONS = ("multi", "exec", "discard")
#: queue.py's push scripts (``_PUSH``, ``_PUSH_CLAIMED``), ``ring_doorbell`` and ``size``.
QUEUE_PUSH = ("type", "llen", "lpush", "ltrim")
#: ``_PUSH_CLAIMED``'s idempotency claims (``idem:``).
CLAIMS = ("set", "get")
#: queue.py's consumer side: take (BLMOVE, ``_TAKE_MANY``), ack, hand-over, retry, dead
#: letters, heartbeat, reaper, release, requeue, doorbells (BLPOP), stray recovery; EXISTS:
#: the reaper's look at the previous release's key names (``reap_legacy``).
QUEUE_CONSUME = (
    *("blmove", "lmove", "blpop", "lrem", "lpush", "rpush", "rpop", "lrange", "lindex"),
    *("llen", "ltrim", "type", "del", "exists"),
    *("zadd", "zrem", "zrange", "zrangebyscore", "zscore"),
)
#: An event onto BackData's queue (``events``, and the scripts that push events).
EVENT_PUSH = ("lpush",)
#: Once-markers (``events.emit_once``): SET NX EX.
ONCE = ("set",)
#: ``trace.write``: one pipeline of RPUSH, LTRIM, EXPIRE.
TRACE_WRITE = ("rpush", "ltrim", "expire")
#: ``suppressionstore`` lookups (a script's HGET) and the size counter (HGETALL).
SUPPRESSION_READ = ("hget", "hgetall")
#: ``suppressionstore``'s writing scripts (add, import, delete, purge, soft-bounce counts,
#: ``emit_once_suppressing``, PostfixLog's ``supp_op``).
SUPPRESSION_WRITE = (*SUPPRESSION_READ, "hset", "hdel", "hincrby", "del", "expire", "incr")
#: PostfixLog's state scripts and reads (``manycore_postfixlog.state``).
POSTFIXLOG_STATE = (
    *("get", "set", "del", "exists", "expire", "lpush"),
    *("hgetall", "hset", "hsetnx", "hexists", "hincrby"),
)
#: The exporter (queue gauges, INFO memory) and ``manycore-queues``' reading commands
#: (stats, dead, peek, trace, unclassified): reads only.
READ_ONLY = ("llen", "lindex", "lrange", "zrange", "info")
#: The operator tools' reads: ``manycore-queues`` stats, dead, peek, trace, unclassified.
OPERATOR_READ = ("llen", "lindex", "lrange", "zrange")
#: Taking from a dead list: ``queueinspect._TAKE_DEAD`` (drop / requeue ID: LREM) and
#: ``queue._REQUEUE_DEAD`` (requeue QUEUE: LLEN, RPOP). Both LPUSH onto the queue itself.
DEAD_TAKE = ("lrem", "rpop", "llen")


# --------------------------------------------------------------------------- the rules


@dataclass(frozen=True)
class Grant:
    """Commands on keys: read-write (``write``) or read-only (``read``). One Redis 7 ACL
    selector: a command passes when one selector (or the root) allows it with every key."""

    commands: tuple[str, ...]
    write: tuple[str, ...] = ()
    read: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rights:
    """One user: ``root`` commands on no key, and ``grants``, one selector each.

    A script is let in by one gate (the script commands on every key the user's grants
    name; EVALSHA's KEYS count as written, as it may write), then Redis checks each command
    inside against the grants, so a script's LPUSH to the event queue passes only where an
    LPUSH on that key is granted. DEL, for one, is granted only on the service's own keys."""

    root: tuple[str, ...]
    grants: tuple[Grant, ...]
    scripts: bool = True

    def selectors(self) -> list[Grant]:
        if not self.scripts:
            return list(self.grants)
        keys = _unique(k for g in self.grants for k in (*g.write, *g.read))
        return [Grant(SCRIPTS, keys), *self.grants]

    def all_commands(self) -> set[str]:
        return set(self.root).union(*(g.commands for g in self.selectors()))


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True)
class Keyspace:
    """The names the rules need from the global config, plus an optional key prefix."""

    primary: str
    default: str
    incoming: str
    events: str
    prefix: str = ""

    @property
    def all_queues(self) -> tuple[str, ...]:
        return (self.primary, self.default, self.incoming, self.events)

    @classmethod
    def from_config(cls, config: Config, prefix: str = "") -> Keyspace:
        g = config.global_
        names = g.reliable_queue.queue_names
        return cls(
            names.primary_queue,
            names.default_queue,
            g.postfix.incoming_queue_name,
            g.backdata.queue_name,
            prefix,
        )

    def queues(self, *names: str, parts: Sequence[str] | None = None) -> tuple[str, ...]:
        return tuple(p for n in names for p in queue_patterns(n, parts, self.prefix))

    def keys(self, *keys: str) -> tuple[str, ...]:
        return tuple(key_pattern(k, self.prefix) for k in keys)

    def family(self, name: str, only: str = "") -> tuple[str, ...]:
        """The patterns of one key family of ``keyspace`` (``acl_patterns``' names), those
        containing ``only`` when given."""
        patterns = keyspace.Keyspace(self.prefix).acl_patterns(())[name]
        return tuple(p for p in patterns if only in p)


def _front_door(ks: Keyspace) -> list[Grant]:
    """Receiver and HttpReceiver: push to P0 / P1 with idempotency claims, ring doorbells."""
    return [
        Grant(QUEUE_PUSH, ks.queues(ks.primary, ks.default, parts=("doorbell",))),
        Grant(CLAIMS, ks.family("idempotency")),
    ]


def _consumer(ks: Keyspace, *names: str) -> Grant:
    """Every key of the queues it consumes: it owns them (DEL of its processing lists)."""
    return Grant(QUEUE_CONSUME, ks.queues(*names))


def _grants(ks: Keyspace) -> dict[str, list[Grant]]:
    events = Grant(EVENT_PUSH, ks.keys(ks.events))
    suppress = Grant(SUPPRESSION_WRITE, ks.family("suppression"))
    traces = Grant(TRACE_WRITE, ks.family("trace"))
    streams = ks.family("feedback-streams")
    return {
        "receiver": _front_door(ks),
        # + one-click unsubscribes (events with once-markers), the suppression list's API.
        "httpreceiver": [
            *_front_door(ks),
            events,
            Grant(ONCE, ks.family("once", only=UNSUBSCRIBED_ONCE)),
            Grant(("set",), ks.family("untimed-since")),
            suppress,
        ],
        # P0 / P1 to Postfix's queue (its length: the high-water mark), suppressed
        # recipients' and dead letters' events, stream ids, suppression look-ups, traces.
        "transformer": [
            _consumer(ks, ks.primary, ks.default),
            Grant(QUEUE_PUSH, ks.keys(ks.incoming)),
            events,
            traces,
            Grant(("hmget", "hset"), streams),
            Grant(SUPPRESSION_READ, read=ks.family("suppression")),
        ],
        "postfixlog": [
            _consumer(ks, ks.incoming),
            events,
            suppress,
            traces,
            Grant(POSTFIXLOG_STATE, ks.family("postfixlog")),
        ],
        "backdata": [_consumer(ks, ks.events), traces],
        # Events with once-markers (and their suppressions), stream ids read, the
        # unclassified lists, tagged and untagged (LPUSH + LTRIM in MULTI).
        "mxserver": [
            events,
            Grant(ONCE, ks.family("once")),
            suppress,
            Grant(("hmget",), read=streams),
            Grant(("lpush", "ltrim"), ks.family("unclassified")),
            Grant(("lpush", "ltrim"), ks.family("unclassified-untagged")),
        ],
    }


def rights(ks: Keyspace) -> dict[str, Rights]:
    """Each service's rights, from its code (the module docstring says how they are kept
    true)."""
    table = {name: Rights(CONNECTION, tuple(g)) for name, g in _grants(ks).items()}
    for name in ("transformer", "mxserver"):
        table[name] = Rights(CONNECTION + TRANSACTIONS, table[name].grants)
    read = ks.queues(*ks.all_queues) + ks.family("trace")
    unclassified = ks.family("unclassified") + ks.family("unclassified-untagged")
    exporter = Grant(READ_ONLY, read=read + unclassified)
    table["exporter"] = Rights(CONNECTION, (exporter,), scripts=False)
    table["operator"] = _operator(ks)
    return table


def _operator(ks: Keyspace) -> Rights:
    """The operator tools' user (``redis.server.users.operator``): every queue's dead letters
    (peek, drop, requeue by id or all), the suppression list's scripts and reads, traces and
    the queue readings. No DEL of a queue, no write to a waiting list but the requeue's LPUSH."""
    dead = tuple(p for p in ks.queues(*ks.all_queues, parts=("dead",)) if p.endswith(":dead"))
    reads = ks.queues(*ks.all_queues) + ks.family("trace") + ks.family("unclassified")
    reads += ks.family("unclassified-untagged")
    return Rights(
        CONNECTION,
        (
            Grant(OPERATOR_READ, read=reads),
            Grant(DEAD_TAKE, dead),
            Grant(("lpush",), ks.keys(*ks.all_queues)),
            Grant(SUPPRESSION_WRITE, ks.family("suppression")),
        ),
    )


def acl_password(password: str) -> str:
    """ACL rules take a SHA-256 of the password (``#<hex>``): no clear text in the file, and no
    quoting problems with spaces or '#' in passwords."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def _tokens(granted: Grant) -> str:
    keys = [f"~{p}" for p in granted.write]
    keys += [f"%R~{p}" for p in granted.read if p not in granted.write]
    # No channels in any selector, whatever acl-pubsub-default says (nothing here uses
    # pub/sub).
    return " ".join(["resetchannels", *(f"+{c}" for c in granted.commands), *keys])


def user_line(username: str, password: str, granted: Rights) -> str:
    """One ``user`` line: everything reset first, then only what ``granted`` holds."""
    root = " ".join(f"+{c}" for c in granted.root)
    selectors = " ".join(f"({_tokens(g)})" for g in granted.selectors())
    return f"user {username} reset on {acl_password(password)} {root} {selectors}"


def service_rules(settings: RedisServer, ks: Keyspace) -> list[str]:
    """The ``user`` lines of the services' users (``redis.server.users``); without them the
    older shared user (``username``/``password``), with what it always had."""
    if settings.users is None:
        assert settings.password is not None
        return [
            f"user {settings.username} on {acl_password(settings.password.get_secret_value())} "
            "~* &* +@all -@dangerous +info"
        ]
    table = rights(ks)
    return [
        user_line(user.username, user.password.get_secret_value(), table[service])
        for service, user in settings.users.given().items()
    ]


def missing_users(settings: RedisServer) -> list[str]:
    """The ``redis.server.users`` keys an operator still has to set (empty when complete)."""
    given: Mapping[str, object] = settings.users.given() if settings.users else {}
    return [f"redis.server.users.{s}" for s in SERVICES if s not in given]
