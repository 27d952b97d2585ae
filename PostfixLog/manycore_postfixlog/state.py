"""PostfixLog's state in Redis: what ties Postfix's queue ids to our messages, which
recipients already have their final event, and where the log follower is.

Key layout (``I`` is the instance name, by default the pod's host name, since queue ids and
log files belong to one Postfix; names built by ``manycore_common.keyspace``, with
``reliable-queue.key-prefix`` in front when one is set):

``postfixlog:I:msg:<queue id>`` (HASH), written when Postfix answered ``queued as <id>``
    ``uuid``, ``stream_id``, ``from_domain``, ``return_path``, ``rcpts`` (JSON list),
    ``item_id``, ``pending`` (recipients without a final event yet), and per recipient
    (lower-cased address ``r``): ``f:<r>`` once its final event was pushed, ``r:<r>`` its
    last deferral (JSON, for the soft bounce when the message expires),
    ``d:<r>:<inode>:<offset>`` a deferred event already pushed for the log line that starts
    there. Lives ``state_ttl`` (longer than maximal_queue_lifetime); once every recipient
    has its final event, only the replay window more (``replay-window-seconds``, for log
    lines read again after a restart).
``postfixlog:item:<item id>`` (STRING)
    ``I:<queue id>`` (or ``I:-`` when Postfix refused every recipient): this queue item is
    already in a Postfix. Written by the script that also acks the item, so in the usual case
    no other copy of the item exists and the marker lives only the replay window. When our
    copy was gone (reaped during a stall: another consumer has it, or will), the marker lives
    ``state_ttl``, so that copy is acked instead of sent twice.
``postfixlog:claim:<item id>`` (STRING, expires after ``claim-seconds``, 120 by default)
    The id of the consumer (one PostfixLog process) that is handing this item to its Postfix.
    Taken atomically before the injection, with the "already injected" check; another
    consumer that finds it held does not inject the item (it puts it back at the end of the
    queue) — the case of a process whose items were reclaimed during a stall, which would
    otherwise inject the same item as the one that took them over. Deleted when the
    injection is recorded or given up.
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from manycore_common import keyspace, replicas, trace
from manycore_common.suppressionstore import Op, encode_ops

from . import scriptbatch, statescripts

# Re-exported: callers and tests import them from here.
from .claims import CLAIM_SECONDS as CLAIM_SECONDS
from .claims import Claim as Claim
from .claims import Held as Held
from .claims import Position as Position

#: After the last final event, the message's state is kept this long by default
#: (``replay-window-seconds``), so that log lines read again after a restart still find it
#: (and are recognised as done).
REPLAY_WINDOW = 600


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


class State:
    def __init__(
        self,
        redis: Redis,
        instance: str,
        event_queue: str,
        incoming_queue: str,
        ttl: int,
        *,
        replay_window: int = REPLAY_WINDOW,
        claim_seconds: int = CLAIM_SECONDS,
        trace_settings: trace.TraceSettings = trace.OFF,
    ) -> None:
        self.redis = redis
        self.keys = keys = keyspace.current()
        self.instance = instance
        self.event_queue = keys.queue(event_queue)
        self.incoming_queue = keys.queue(incoming_queue)
        self.ttl = ttl
        self.replay_window = replay_window
        self.claim_seconds = claim_seconds
        #: Trace records go in the state scripts (``trace.LUA``): written with their step.
        self.trace_settings = trace_settings
        self._record = redis.register_script(statescripts.RECORD)
        self._final = redis.register_script(statescripts.FINAL)
        self._deferral = redis.register_script(statescripts.DEFERRAL)
        self._requeue = redis.register_script(statescripts.REQUEUE)
        self._claim = redis.register_script(statescripts.CLAIM)
        self._unclaim = redis.register_script(statescripts.UNCLAIM)

    def msg_key(self, queue_id: str) -> str:
        return self.keys.postfixlog(self.instance, f"msg:{queue_id}")

    @staticmethod
    def item_key(item_id: str) -> str:
        return keyspace.current().postfixlog_item(item_id)

    @staticmethod
    def claim_key(item_id: str) -> str:
        return keyspace.current().postfixlog_claim(item_id)

    def requeued_key(self, queue_id: str) -> str:
        return self.keys.postfixlog(self.instance, f"requeued:{queue_id}")

    def position_key(self) -> str:
        return self.keys.postfixlog(self.instance, "log-position")

    # ------------------------------------------------------------------ injection

    async def claim(self, item_id: str, claimer: str, now: float) -> Claim:
        """Claim the item for ``claimer`` unless it is already injected or someone else
        holds it (``now``: the caller's monotonic clock, read before asking)."""
        answer = _text(
            await replicas.call(
                self.redis,
                self._claim,
                [self.item_key(item_id), self.claim_key(item_id)],
                [claimer, self.claim_seconds * 1000],
            )
        )
        return self._claim_of(answer, claimer, now)

    async def claim_many(
        self, item_ids: Sequence[str], claimers: Sequence[str], now: float
    ) -> list[Claim]:
        """``claim`` for several items, in one round trip."""
        calls = [
            scriptbatch.Call(
                self._claim,
                [self.item_key(item_id), self.claim_key(item_id)],
                [claimer, self.claim_seconds * 1000],
            )
            for item_id, claimer in zip(item_ids, claimers, strict=True)
        ]
        answers = [_text(a) for a in await scriptbatch.run(self.redis, calls)]
        return [self._claim_of(a, c, now) for a, c in zip(answers, claimers, strict=True)]

    def _claim_of(self, answer: str, claimer: str, now: float) -> Claim:
        """The CLAIM script's answer (statescripts.py) as a ``Claim``."""
        if answer in ("done", "mine"):
            return Claim(answer, claimer if answer == "mine" else None, now, self.claim_seconds)
        return Claim("held", answer, now, self.claim_seconds)

    async def unclaim(self, item_id: str, claimer: str) -> None:
        """Give up our claim (the item goes back to the queue without being injected)."""
        await self._unclaim(keys=[self.claim_key(item_id)], args=[claimer])

    async def record(
        self,
        item_id: str,
        queue_id: str | None,
        message: Message | None,
        events: list[bytes],
        held: Held | None = None,
        suppress: Sequence[Op] = (),
        traced: tuple[str, bytes] | None = None,
    ) -> bool:
        """The injection's outcome in one step: queue id → message, the item marked as sent,
        any events (recipients Postfix refused at once) with the suppression entries they
        call for, the ``traced`` record (uuid, record), and, with ``held``, the item acked
        from its processing list and its claim dropped. False: already recorded."""
        call = self.record_call(item_id, queue_id, message, events, held, suppress, traced)
        (done,) = await scriptbatch.run(self.redis, [call])
        return int(done) == 1

    def record_call(
        self,
        item_id: str,
        queue_id: str | None,
        message: Message | None,
        events: list[bytes],
        held: Held | None = None,
        suppress: Sequence[Op] = (),
        traced: tuple[str, bytes] | None = None,
    ) -> scriptbatch.Call:
        """``record``'s script call, to be run with others in one round trip (its answer:
        1 recorded, 0 already recorded)."""
        marker = f"{self.instance}:{queue_id or '-'}"
        msg_key = self.msg_key(queue_id or "-")
        fields = json.dumps(message.fields()) if message is not None and queue_id else ""
        # Without a held item, the script's LREM reads a key of this instance that is never
        # written (in every key's slot, with a key prefix).
        held = held or Held("", self.keys.postfixlog(self.instance, "none"), b"")
        op_keys, op_args = encode_ops(suppress, 8)
        trace_key, trace_args = self._trace_args(traced)
        return scriptbatch.Call(
            self._record,
            [
                self.item_key(item_id),
                msg_key,
                self.event_queue,
                self.claim_key(item_id),
                held.processing_key,
                self.keys.suppression_size(),
                trace_key,
                *op_keys,
            ],
            [
                self.ttl,
                marker,
                fields,
                held.claimer,
                self.replay_window,
                held.raw,
                *trace_args,
                len(events),
                *events,
                *op_args,
            ],
        )

    def _trace_args(self, traced: tuple[str, bytes] | None) -> tuple[str, list[bytes | int]]:
        uuid, record = traced if traced is not None else (None, None)
        return trace.script_args(self.trace_settings, uuid, record)

    # ------------------------------------------------------------------ log outcomes

    async def message(self, queue_id: str) -> Message | None:
        return (await self.messages([queue_id]))[0]

    async def messages(self, queue_ids: Sequence[str]) -> list[Message | None]:
        """The messages of ``queue_ids`` (None: unknown), in one pipelined round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for queue_id in queue_ids:
            pipe.hgetall(self.msg_key(queue_id))
        raws = await pipe.execute() if queue_ids else []
        return [Message.from_hash(raw) if raw else None for raw in raws]

    def final_call(
        self,
        queue_id: str,
        rcpt: str,
        event: bytes,
        suppress: Sequence[Op] = (),
        traced: tuple[str, bytes] | None = None,
    ) -> scriptbatch.Call:
        """Push ``event`` unless ``rcpt`` already has its final event, with the suppression
        entries it calls for and the ``traced`` record: 1 pushed, 0 already final, -1
        unknown message."""
        op_keys, op_args = encode_ops(suppress, 5)
        trace_key, trace_args = self._trace_args(traced)
        return scriptbatch.Call(
            self._final,
            [
                self.msg_key(queue_id),
                self.event_queue,
                self.keys.suppression_size(),
                trace_key,
                *op_keys,
            ],
            [rcpt_key(rcpt), event, self.replay_window, *trace_args, *op_args],
        )

    async def final(
        self, queue_id: str, rcpt: str, event: bytes, suppress: Sequence[Op] = ()
    ) -> int:
        """``final_call`` on its own."""
        (pushed,) = await scriptbatch.run(
            self.redis, [self.final_call(queue_id, rcpt, event, suppress)]
        )
        return int(pushed)

    def deferral_call(
        self,
        queue_id: str,
        rcpt: str,
        deferral: Deferral,
        once: str,
        event: bytes | None,
        traced: tuple[str, bytes] | None = None,
    ) -> scriptbatch.Call:
        """Remember the last deferral (and write the ``traced`` record); push the optional
        ``deferred`` event once per ``once`` (2: pushed, 1: remembered only, 0: recipient
        already final, -1: unknown message)."""
        trace_key, trace_args = self._trace_args(traced)
        return scriptbatch.Call(
            self._deferral,
            [self.msg_key(queue_id), self.event_queue, trace_key],
            [rcpt_key(rcpt), deferral.encode(), once if event else "", event or b"", *trace_args],
        )

    async def deferral(
        self, queue_id: str, rcpt: str, deferral: Deferral, once: str, event: bytes | None
    ) -> int:
        """``deferral_call`` on its own."""
        call = self.deferral_call(queue_id, rcpt, deferral, once, event)
        (pushed,) = await scriptbatch.run(self.redis, [call])
        return int(pushed)

    # ------------------------------------------------------------------ stop and start

    async def requeue(self, queue_id: str, item: bytes) -> None:
        await replicas.call(
            self.redis,
            self._requeue,
            [
                self.incoming_queue,
                self.msg_key(queue_id),
                self.requeued_key(queue_id),
            ],
            [item, self.ttl],
        )

    async def was_requeued(self, queue_id: str) -> bool:
        return bool(await self.redis.exists(self.requeued_key(queue_id)))

    async def load_position(self) -> Position | None:
        raw = await self.redis.get(self.position_key())
        return Position.decode(raw) if raw else None

    async def save_position(self, position: Position) -> None:
        await self.redis.set(self.position_key(), position.encode())
