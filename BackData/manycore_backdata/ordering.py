"""Per-message order across concurrent posters.

Posters take batches one at a time (under a lock), so batches are numbered in queue order.
A batch that shares a message (its ``uuid``) with an earlier batch still in hand waits until
that one is settled (delivered, dead-lettered or handed back) before it is posted. So events of
one message reach the webhook in the order they were queued, even when an earlier batch is
being retried; batches of other messages are not held up. Waits only ever point at earlier
batches, so they cannot form a cycle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(eq=False)
class Ticket:
    keys: frozenset[str]
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    #: Earlier unsettled batches sharing a key, fixed when the ticket is issued.
    after: tuple[Ticket, ...] = ()

    @property
    def blocked(self) -> bool:
        return any(not t.settled.is_set() for t in self.after)


class OrderGate:
    def __init__(self) -> None:
        self._open: list[Ticket] = []

    def issue(self, keys: Iterable[str]) -> Ticket:
        """Register a batch just taken. Call in take order (the posters' take lock)."""
        wanted = frozenset(keys)
        after = tuple(t for t in self._open if t.keys & wanted)
        ticket = Ticket(wanted, after=after)
        self._open.append(ticket)
        return ticket

    async def wait_turn(self, ticket: Ticket) -> None:
        for earlier in ticket.after:
            await earlier.settled.wait()

    def settle(self, ticket: Ticket) -> None:
        ticket.settled.set()
        self._open.remove(ticket)
        ticket.after = ()  # let settled tickets be collected

    @property
    def open(self) -> int:
        return len(self._open)
