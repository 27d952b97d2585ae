"""PostfixLog's state in Redis: what ties Postfix's queue ids to our messages, which
recipients already have their final event, and where the log follower is.

Key layout (``I`` is the instance name, by default the pod's host name, since queue ids and
log files belong to one Postfix):

``postfixlog:I:msg:<queue id>`` (HASH), written when Postfix answered ``queued as <id>``
    ``uuid``, ``stream_id``, ``from_domain``, ``return_path``, ``rcpts`` (JSON list),
    ``item_id``, ``pending`` (recipients without a final event yet), and per recipient
    (lower-cased address ``r``): ``f:<r>`` once its final event was pushed, ``r:<r>`` its
    last deferral (JSON, for the soft bounce when the message expires), ``d:<r>:<time>``
    a deferred event already pushed. Lives ``state_ttl`` (longer than maximal_queue_lifetime);
    once every recipient has its final event, only ``DONE_TTL`` more (for replays).
``postfixlog:item:<item id>`` (STRING)
    ``I:<queue id>`` (or ``I:-`` when Postfix refused every recipient): this queue item is
    already in a Postfix. An item delivered again (our ack was lost, or the reaper returned
    it) is then acked instead of sent twice.
``postfixlog:I:requeued:<queue id>`` (STRING)
    A stop handed this message back to the to-postfix queue; if it is still in Postfix's
    queue at the next start (we died before deleting it), it is deleted, not sent.
``postfixlog:I:log-position`` (STRING)
    JSON ``{"dev", "ino", "offset"}``: where the log follower resumes.

Exactly once per recipient: an event is pushed by the same script that sets ``f:<r>`` with
HSETNX, so a line read twice (after a restart the follower re-reads from its last saved
position) can never push a second final event.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

#: After the last final event, the message's state is kept this long, so that log lines read
#: again after a restart still find it (and are recognised as done).
DONE_TTL = 3600

# KEYS: item key, msg key (or a dummy when no message), event queue.
# ARGV: state ttl, item marker, msg fields JSON ('' for none), events... → 1, or 0 when the
# item was already recorded (nothing is written then).
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = tonumber(ARGV[1])
redis.call('SET', KEYS[1], ARGV[2], 'EX', ttl)
if ARGV[3] ~= '' then
  local fields = cjson.decode(ARGV[3])
  for k, v in pairs(fields) do redis.call('HSET', KEYS[2], k, v) end
  redis.call('EXPIRE', KEYS[2], ttl)
end
for i = 4, #ARGV do redis.call('LPUSH', KEYS[3], ARGV[i]) end
return 1
"""

# KEYS: msg key, event queue. ARGV: recipient key, event item, done ttl
# → 1 pushed, 0 already final, -1 no such message.
_FINAL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HSETNX', KEYS[1], 'f:' .. ARGV[1], '1') == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
if redis.call('HINCRBY', KEYS[1], 'pending', -1) <= 0 then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return 1
"""

# KEYS: msg key, event queue. ARGV: recipient key, deferral JSON, dedupe suffix ('' = no
# event), event item → 2 recorded and event pushed, 1 recorded, 0 already final, -1 no such
# message.
_DEFERRAL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[1], 'f:' .. ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'r:' .. ARGV[1], ARGV[2])
if ARGV[3] ~= '' and redis.call('HSETNX', KEYS[1], 'd:' .. ARGV[1] .. ':' .. ARGV[3], '1') == 1
then
  redis.call('LPUSH', KEYS[2], ARGV[4])
  return 2
end
return 1
"""

# KEYS: to-postfix queue, msg key, requeued key. ARGV: item, ttl → 1.
_REQUEUE = """
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[3], '1', 'EX', tonumber(ARGV[2]))
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def rcpt_key(address: str) -> str:
    """Recipients compare case-insensitively: Postfix logs the address as it was given, and
    domains are case-insensitive (RFC 5321 §2.4); local parts practically are."""
    return address.strip().lower()


@dataclass(frozen=True)
class Deferral:
    reason: str
    dsn: str
    ip: str | None

    def encode(self) -> str:
        return json.dumps({"reason": self.reason, "dsn": self.dsn, "ip": self.ip})

    @classmethod
    def decode(cls, raw: str) -> Deferral:
        data = json.loads(raw)
        return cls(str(data.get("reason", "")), str(data.get("dsn", "")), data.get("ip"))


@dataclass(frozen=True)
class Message:
    """What PostfixLog knows about one message in its Postfix."""

    uuid: str | None
    stream_id: str | None
    from_domain: str | None
    return_path: str
    rcpts: tuple[str, ...]
    item_id: str | None = None
    finals: frozenset[str] = frozenset()
    deferrals: dict[str, Deferral] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        data = {
            "uuid": self.uuid,
            "stream_id": self.stream_id,
            "from_domain": self.from_domain,
            "return_path": self.return_path,
            "rcpts": json.dumps(list(self.rcpts)),
            "item_id": self.item_id,
            "pending": len({rcpt_key(r) for r in self.rcpts}),
        }
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_hash(cls, raw: Mapping[bytes | str, bytes | str]) -> Message:
        data = {_text(k): _text(v) for k, v in raw.items()}
        finals = frozenset(k[2:] for k in data if k.startswith("f:"))
        deferrals = {k[2:]: Deferral.decode(v) for k, v in data.items() if k.startswith("r:")}
        return cls(
            uuid=data.get("uuid"),
            stream_id=data.get("stream_id"),
            from_domain=data.get("from_domain"),
            return_path=data.get("return_path", ""),
            rcpts=tuple(json.loads(data.get("rcpts", "[]"))),
            item_id=data.get("item_id"),
            finals=finals,
            deferrals=deferrals,
        )

    def rcpt(self, logged: str) -> str:
        """The recipient as we gave it to Postfix (its case), for an address in the log."""
        key = rcpt_key(logged)
        return next((r for r in self.rcpts if rcpt_key(r) == key), logged)


@dataclass(frozen=True)
class Position:
    """A byte offset in one file (device and inode name the file across renames)."""

    dev: int
    ino: int
    offset: int

    def encode(self) -> str:
        return json.dumps({"dev": self.dev, "ino": self.ino, "offset": self.offset})

    @classmethod
    def decode(cls, raw: bytes | str) -> Position:
        data = json.loads(raw)
        return cls(int(data["dev"]), int(data["ino"]), int(data["offset"]))


class State:
    def __init__(
        self, redis: Redis, instance: str, event_queue: str, incoming_queue: str, ttl: int
    ) -> None:
        self.redis = redis
        self.instance = instance
        self.event_queue = event_queue
        self.incoming_queue = incoming_queue
        self.ttl = ttl
        self.prefix = f"postfixlog:{instance}:"
        self._record = redis.register_script(_RECORD)
        self._final = redis.register_script(_FINAL)
        self._deferral = redis.register_script(_DEFERRAL)
        self._requeue = redis.register_script(_REQUEUE)

    def msg_key(self, queue_id: str) -> str:
        return f"{self.prefix}msg:{queue_id}"

    @staticmethod
    def item_key(item_id: str) -> str:
        return f"postfixlog:item:{item_id}"

    # ------------------------------------------------------------------ injection

    async def injected(self, item_id: str) -> str | None:
        """Where this queue item already went (``instance:queue id``), if anywhere."""
        raw = await self.redis.get(self.item_key(item_id))
        return raw.decode() if isinstance(raw, bytes) else raw

    async def record(
        self, item_id: str, queue_id: str | None, message: Message | None, events: list[bytes]
    ) -> bool:
        """The injection's outcome in one step: queue id → message, the item marked as sent,
        and any events (recipients Postfix refused at once). False: already recorded."""
        marker = f"{self.instance}:{queue_id or '-'}"
        msg_key = self.msg_key(queue_id) if queue_id else f"{self.prefix}msg:-"
        fields = json.dumps(message.fields()) if message is not None and queue_id else ""
        done = await self._record(
            keys=[self.item_key(item_id), msg_key, self.event_queue],
            args=[self.ttl, marker, fields, *events],
        )
        return int(done) == 1

    # ------------------------------------------------------------------ log outcomes

    async def message(self, queue_id: str) -> Message | None:
        raw = await self.redis.hgetall(self.msg_key(queue_id))
        return Message.from_hash(raw) if raw else None

    async def final(self, queue_id: str, rcpt: str, event: bytes) -> int:
        """Push ``event`` unless ``rcpt`` already has its final event: 1 pushed, 0 already
        final, -1 unknown message."""
        return int(
            await self._final(
                keys=[self.msg_key(queue_id), self.event_queue],
                args=[rcpt_key(rcpt), event, DONE_TTL],
            )
        )

    async def deferral(
        self, queue_id: str, rcpt: str, deferral: Deferral, once: str, event: bytes | None
    ) -> int:
        """Remember the last deferral; push the optional ``deferred`` event once per ``once``
        (2: pushed, 1: remembered only, 0: recipient already final, -1: unknown message)."""
        return int(
            await self._deferral(
                keys=[self.msg_key(queue_id), self.event_queue],
                args=[rcpt_key(rcpt), deferral.encode(), once if event else "", event or b""],
            )
        )

    # ------------------------------------------------------------------ stop and start

    async def requeue(self, queue_id: str, item: bytes) -> None:
        await self._requeue(
            keys=[
                self.incoming_queue,
                self.msg_key(queue_id),
                f"{self.prefix}requeued:{queue_id}",
            ],
            args=[item, self.ttl],
        )

    async def was_requeued(self, queue_id: str) -> bool:
        return bool(await self.redis.exists(f"{self.prefix}requeued:{queue_id}"))

    async def load_position(self) -> Position | None:
        raw = await self.redis.get(f"{self.prefix}log-position")
        return Position.decode(raw) if raw else None

    async def save_position(self, position: Position) -> None:
        await self.redis.set(f"{self.prefix}log-position", position.encode())
