"""The log side: lines from the follower → records → events, at most one final per recipient.

Ordering problem: Postfix may deliver (and log) a message before the injector has written
the message's state to Redis: the log line and the DATA reply race. A line whose queue id is
not known yet therefore waits (as do later lines of the same queue id, to keep their order)
until the state appears or ``wait_seconds`` pass; then it is dropped and counted (a message
that is not ours, e.g. a notice Postfix wrote to postmaster).

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

from manycore_common import trace
from manycore_common.config import SuppressionSettings
from manycore_common.events import encode_event
from manycore_common.suppressionmetrics import count_suppressions
from manycore_common.suppressionpolicy import ops_for_event

from . import metrics, outcomes, tracing
from .follower import Line, LogFollower
from .logparse import Record, parse_line
from .state import Position, State

log = logging.getLogger(__name__)
#: Postfix's own lines, echoed to stdout (``echo-postfix-log``) for ``kubectl logs``.
postfix_log = logging.getLogger("postfix")

SOURCE = "postfixlog"


def _deferred(rcpt: str, reason: str) -> dict[str, object]:
    """What a deferral without an event (``deferred-events`` off) looks like in the trace."""
    return {"event": "deferred", "rcpt": rcpt, "reason": reason}


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
        trace_settings: trace.TraceSettings = trace.OFF,
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
        self.trace_settings = trace_settings
        #: Trace records of this step's outcomes, written together at its end.
        self.traced: list[tuple[str, bytes]] = []
        self.waiting: deque[Waiting] = deque()
        self.unread: deque[Line] = deque()
        self._saved: Position | None = None
        self._last_save = 0.0

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
                for line in self.unread:
                    postfix_log.info("postfix", extra={"postfix": line.text})
        while self.unread:
            line = self.unread[0]
            record = parse_line(line.text)
            if record is not None:
                await self._handle(line, record)
            self.unread.popleft()
        await self._retry_waiting()
        await self.flush_trace()
        await self.save(force=False)
        return read

    async def flush_trace(self) -> None:
        """One pipelined round trip for the step's trace records, after the state scripts
        (so a record never claims an outcome Redis does not hold)."""
        if self.traced:
            traced, self.traced = self.traced, []
            await trace.write(self.state.redis, self.trace_settings, traced)

    async def drain(self) -> None:
        """Everything written so far (used when stopping, after Postfix stopped)."""
        while await self.step():
            pass
        await self.save(force=True)

    # ------------------------------------------------------------------ records

    async def _handle(self, line: Line, record: Record) -> None:
        qid = record.queue_id
        if any(w.record.queue_id == qid for w in self.waiting):
            self.waiting.append(Waiting(line, record, self.clock()))
            return
        if await self._apply(line, record):
            return
        if self.wall_clock() - record.timestamp > self.wait_seconds:
            # An old line of a message we know nothing about (not ours, or its state expired
            # after it was done): nothing to wait for.
            metrics.UNMATCHED.inc()
            return
        self.waiting.append(Waiting(line, record, self.clock()))

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
        msg = await self.state.message(record.queue_id)
        if msg is None:
            return False
        once = f"{line.start.ino}:{line.start.offset}"
        for action in outcomes.actions(
            record, msg, deferred_events=self.deferred_events, once=once
        ):
            if isinstance(action, outcomes.Final):
                raw = encode_event(action.event, source=SOURCE)
                domains = [msg.from_domain] if msg.from_domain else []
                ops = ops_for_event(action.event, domains, self.suppression)
                if await self.state.final(record.queue_id, action.rcpt, raw, ops) == 1:
                    metrics.count_event(action.event)
                    self.traced.append((msg.uuid or "", self._traced(action.event, record)))
                    count_suppressions(ops, "postfixlog")
            else:
                raw_event = (
                    encode_event(action.event, source=SOURCE) if action.event is not None else None
                )
                pushed = await self.state.deferral(
                    record.queue_id, action.rcpt, action.deferral, action.once, raw_event
                )
                if pushed == 2 and action.event is not None:
                    metrics.count_event(action.event)
                if pushed > 0:
                    seen = action.event or _deferred(action.rcpt, action.deferral.reason)
                    self.traced.append((msg.uuid or "", self._traced(seen, record)))
        return True

    def _traced(self, event: dict[str, object], record: Record) -> bytes:
        return tracing.outcome(event, record.queue_id, self.state.instance, self.wall_clock())

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
