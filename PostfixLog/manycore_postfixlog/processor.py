"""The log side: lines from the follower → records → events, at most one final per recipient.

Ordering problem: Postfix may deliver (and log) a message before the injector has written
the message's state to Redis: the log line and the DATA reply race. A line whose queue id is
not known yet therefore waits (as do later lines of the same queue id, to keep their order)
until the state appears or ``wait_seconds`` pass; then it is dropped and counted (a message
that is not ours, e.g. a notice Postfix wrote to postmaster).

Fewer round trips (issue 20): the feeder hands over each message it has just recorded
(``remember``); the first record of that queue id uses it instead of reading the hash back,
which is exact because nothing but this processor's scripts for that queue id change the hash
after the record, and the entry is used once. Any other record reads Redis as before; the
scripts decide what is pushed either way (exactly once), so a stale entry could never emit twice.

Restart safety: the saved position is never past a waiting line, and is saved every
``save_interval`` seconds; after a restart the follower re-reads from there, and re-read lines
are harmless because the state scripts push a recipient's final event only once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from manycore_common import logs
from manycore_common.config import SuppressionSettings
from manycore_common.events import encode_event
from manycore_common.suppressionmetrics import count_suppressions
from manycore_common.suppressionpolicy import ops_for_event
from manycore_common.suppressionstore import Op

from . import metrics, outcomes, scriptbatch, tracing
from .follower import Line, LogFollower
from .logparse import Record, parse_line
from .state import Message, Position, State

log = logging.getLogger(__name__)
#: Postfix's own lines, echoed to stdout (``echo-postfix-log``) for ``kubectl logs``.
postfix_log = logging.getLogger("postfix")

SOURCE = "postfixlog"


def _deferred(rcpt: str, reason: str) -> dict[str, object]:
    """What a deferral without an event (``deferred-events`` off) looks like in the trace."""
    return {"event": "deferred", "rcpt": rcpt, "reason": reason}


#: Most lines handled in one batch (two Redis round trips).
BATCH_LINES = 200
#: Most messages kept by ``remember`` (the oldest go first): a few seconds of injections.
REMEMBERED = 4096


def next_batch(unread: deque[Line], limit: int) -> list[tuple[Line, Record | None]]:
    """The first lines of ``unread`` with their records, up to ``limit`` and ending before a
    queue id seen earlier in the batch: the messages are read once at the batch's start, so
    a record must not depend on what an earlier one of the batch changes."""
    batch: list[tuple[Line, Record | None]] = []
    seen: set[str] = set()
    for line in unread:
        record = parse_line(line.text)
        if len(batch) >= limit or (record is not None and record.queue_id in seen):
            break
        if record is not None:
            seen.add(record.queue_id)
        batch.append((line, record))
    return batch


@dataclass(frozen=True)
class Waiting:
    line: Line
    record: Record
    since: float


class LogProcessor:
    def __init__(
        self,
        state: State,
        follower: LogFollower,
        *,
        deferred_events: bool = False,
        suppression: SuppressionSettings | None = None,
        wait_seconds: float = 30.0,
        save_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        echo: bool = False,
    ) -> None:
        self.state = state
        self.follower = follower
        self.deferred_events = deferred_events
        self.suppression = suppression or SuppressionSettings()
        self.wait_seconds = wait_seconds
        self.save_interval = save_interval
        self.clock = clock
        self.wall_clock = wall_clock
        self.echo = echo
        self.waiting: deque[Waiting] = deque()
        self.unread: deque[Line] = deque()
        self._saved: Position | None = None
        self._last_save = 0.0
        #: Queue id → the message as just recorded (module docstring), oldest first.
        self._recorded: dict[str, Message] = {}

    def remember(self, queue_id: str, msg: Message) -> None:
        """``msg`` is what the record script has just written for ``queue_id``."""
        self._recorded[queue_id] = msg
        if len(self._recorded) > REMEMBERED:
            del self._recorded[next(iter(self._recorded))]

    async def _messages(self, queue_ids: list[str]) -> list[Message | None]:
        """The messages of ``queue_ids`` (no id twice): remembered ones without asking
        Redis, the others in one round trip."""
        msgs = [self._recorded.pop(qid, None) for qid in queue_ids]
        missing = [qid for qid, msg in zip(queue_ids, msgs, strict=True) if msg is None]
        if missing:
            read = iter(await self.state.messages(missing))
            msgs = [msg if msg is not None else next(read) for msg in msgs]
        return msgs

    async def start(self) -> None:
        saved = await self.state.load_position()
        self.follower.open(saved)
        self._saved = saved

    async def step(self) -> int:
        """Process what was written since the last step; returns the number of lines read.

        A line leaves ``unread`` only once it is processed, so a Redis error halfway through
        loses nothing: the next step starts again with that line (processing is idempotent)."""
        read = 0
        if not self.unread:
            self.unread.extend(self.follower.read())
            read = len(self.unread)
            if self.echo:
                # Lines read again after a restart are echoed again: a log, not a ledger.
                logs.info_lines(postfix_log, "postfix", "postfix", [x.text for x in self.unread])
        while self.unread:
            batch = next_batch(self.unread, BATCH_LINES)
            await self._handle_batch(batch)
            for _ in batch:
                self.unread.popleft()
        await self._retry_waiting()
        await self.save(force=False)
        return read

    async def drain(self) -> None:
        """Everything written so far (used when stopping, after Postfix stopped)."""
        while await self.step():
            pass
        await self.save(force=True)

    # ------------------------------------------------------------------ records

    async def _handle_batch(self, batch: list[tuple[Line, Record | None]]) -> None:
        """The records of ``batch`` (no queue id twice): their messages read in one round
        trip, the state scripts of all their outcomes run in one more."""
        waiting = {w.record.queue_id for w in self.waiting}
        found = [(line, r) for line, r in batch if r is not None and r.queue_id not in waiting]
        msgs = await self._messages([r.queue_id for _, r in found])
        by_line = {id(line): msg for (line, _), msg in zip(found, msgs, strict=True)}
        known: list[tuple[Line, Record, Message]] = []
        wait: list[Waiting] = []
        unmatched = 0
        for line, record in batch:
            if record is None:
                continue
            msg = by_line.get(id(line))
            if msg is not None:
                known.append((line, record, msg))
            elif (
                record.queue_id not in waiting
                and self.wall_clock() - record.timestamp > self.wait_seconds
            ):
                # An old line of a message we know nothing about (not ours, or its state
                # expired after it was done): nothing to wait for.
                unmatched += 1
            else:
                # It waits for its message's state, and so do later lines of a queue id
                # that waits, to keep their order (the module's docstring).
                wait.append(Waiting(line, record, self.clock()))
        # Only once the scripts ran: a Redis error leaves the whole batch unread, to be
        # handled again (idempotently) by the next step.
        await self._apply_many(known)
        self.waiting.extend(wait)
        metrics.UNMATCHED.inc(unmatched)

    async def _retry_waiting(self) -> None:
        if not self.waiting:
            return
        still: deque[Waiting] = deque()
        blocked: set[str] = set()
        for waiting in self.waiting:
            qid = waiting.record.queue_id
            if qid in blocked:
                still.append(waiting)
            elif await self._apply(waiting.line, waiting.record):
                continue
            elif self.clock() - waiting.since > self.wait_seconds:
                metrics.UNMATCHED.inc()
                log.info("log line of an unknown queue id dropped", extra={"queue_id": qid})
            else:
                blocked.add(qid)
                still.append(waiting)
        self.waiting = still

    async def _apply(self, line: Line, record: Record) -> bool:
        """Emit what the record means; False when the queue id is unknown (yet)."""
        (msg,) = await self._messages([record.queue_id])
        if msg is None:
            return False
        await self._apply_many([(line, record, msg)])
        return True

    async def _apply_many(self, known: list[tuple[Line, Record, Message]]) -> None:
        """Emit what each record means for its message: every state script (each writes the
        trace record of what it did) in one round trip; metrics for what the scripts did."""
        planned: list[tuple[Record, Message, outcomes.Action, list[Op]]] = []
        calls: list[scriptbatch.Call] = []
        for line, record, msg in known:
            once = f"{line.start.ino}:{line.start.offset}"
            for action in outcomes.actions(
                record, msg, deferred_events=self.deferred_events, once=once
            ):
                call, ops = self._call(record, msg, action)
                planned.append((record, msg, action, ops))
                calls.append(call)
        results = await scriptbatch.run(self.state.redis, calls)
        for (record, msg, action, ops), result in zip(planned, results, strict=True):
            self._count(record, msg, action, ops, int(result))

    def _call(
        self, record: Record, msg: Message, action: outcomes.Action
    ) -> tuple[scriptbatch.Call, list[Op]]:
        if isinstance(action, outcomes.Final):
            raw = encode_event(action.event, source=SOURCE)
            domains = [msg.from_domain] if msg.from_domain else []
            ops = ops_for_event(action.event, domains, self.suppression)
            traced = self._traced(msg, action.event, record)
            return self.state.final_call(record.queue_id, action.rcpt, raw, ops, traced), ops
        raw_event = encode_event(action.event, source=SOURCE) if action.event is not None else None
        seen = action.event or _deferred(action.rcpt, action.deferral.reason)
        call = self.state.deferral_call(
            record.queue_id,
            action.rcpt,
            action.deferral,
            action.once,
            raw_event,
            self._traced(msg, seen, record),
        )
        return call, []

    def _count(
        self, record: Record, msg: Message, action: outcomes.Action, ops: list[Op], result: int
    ) -> None:
        """Metrics of an outcome the script pushed (``result``: the FINAL or DEFERRAL
        script's answer, statescripts.py)."""
        if isinstance(action, outcomes.Final):
            if result == 1:
                metrics.count_event(action.event)
                count_suppressions(ops, "postfixlog")
            return
        if result == 2 and action.event is not None:
            metrics.count_event(action.event)

    def _traced(
        self, msg: Message, event: dict[str, object], record: Record
    ) -> tuple[str, bytes] | None:
        """The trace record the outcome's script writes if it does something."""
        if not msg.uuid or not self.state.trace_settings.enabled:
            return None
        at = self.wall_clock()
        return msg.uuid, tracing.outcome(event, record.queue_id, self.state.instance, at)

    # ------------------------------------------------------------------ position

    def safe_position(self) -> Position | None:
        """Never past a line that still waits for its message's state."""
        if self.waiting:
            return self.waiting[0].line.start
        if self.unread:
            return self.unread[0].start
        return self.follower.position

    async def save(self, force: bool) -> None:
        position = self.safe_position()
        if position is None or position == self._saved:
            return
        if not force and self.clock() - self._last_save < self.save_interval:
            return
        await self.state.save_position(position)
        self._saved = position
        self._last_save = self.clock()
