"""Per-message order across posters: a batch waits only for earlier unsettled batches that
share a message with it."""

from __future__ import annotations

import asyncio

from manycore_backdata.ordering import OrderGate, Ticket


def blocked(ticket: Ticket) -> bool:
    """Read afresh: mypy would keep an earlier ``assert ticket.blocked`` across the awaits."""
    return ticket.blocked


async def test_independent_batches_never_wait() -> None:
    gate = OrderGate()
    first, second = gate.issue(["a", "b"]), gate.issue(["c"])
    assert not first.blocked and not second.blocked
    await asyncio.wait_for(gate.wait_turn(second), 0.1)


async def test_a_shared_message_waits_for_the_earlier_batch_only() -> None:
    gate = OrderGate()
    first = gate.issue(["a"])
    other = gate.issue(["b"])
    later = gate.issue(["x", "a"])
    assert later.blocked and not other.blocked
    waiting = asyncio.create_task(gate.wait_turn(later))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    gate.settle(other)
    await asyncio.sleep(0.01)
    assert not waiting.done()
    gate.settle(first)
    await asyncio.wait_for(waiting, 0.1)
    assert not blocked(later)
    gate.settle(later)
    assert gate.open == 0


async def test_batches_without_message_ids_are_free() -> None:
    gate = OrderGate()
    gate.issue([])
    assert not gate.issue([]).blocked


async def test_a_settled_batch_does_not_hold_later_ones() -> None:
    gate = OrderGate()
    first = gate.issue(["a"])
    gate.settle(first)
    assert not gate.issue(["a"]).blocked
