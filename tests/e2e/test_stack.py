"""End to end through the whole local stack (`make run`'s): a message goes in through the
Receiver or HttpReceiver, is signed, delivered by the real Postfix to the sink MX, and every
outcome comes back to the webhook inbox as the right event, as it would from the Internet:
synchronous bounces from Postfix's log, asynchronous ones, auto-replies, spam reports and
unsubscribes through MxServer and HttpReceiver's one-click route."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.stack import Stack, stack_dir
from tests.integration.conftest import build_message


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with stack_dir() as root:
        running = Stack(root / "run").start()
        try:
            yield running
        finally:
            if running.process and running.process.poll() is None:
                running.stop()


def wait_events(stack: Stack, want: int, timeout: float = 120) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = stack.events()
        if len(events) >= want:
            return events
        time.sleep(1)
    raise AssertionError(
        f"{len(stack.events())} of {want} events:\n{stack.events()}\n{stack.logs()}"
    )


def test_every_outcome_comes_back_as_its_event(stack: Stack) -> None:
    outcomes = [
        "hard-bounce",
        "unroutable",
        "async-bounce",
        "autoreply",
        "complain",
        "unsubscribe",
        "soft-bounce",
    ]
    for name in outcomes:
        uuid = "e2e" + name.replace("-", "")
        stack.post(build_message(uuid, to=f"{name}@example.net", cc=None, stream_id="e2e"))
    # One message with several recipients, through SMTP submission.
    stack.submit(
        build_message(
            "e2emulti", "0", to="a@example.net, b@example.org", cc="c@example.net", stream_id="e2e"
        )
    )
    # Final events: 1 per recipient (10), plus the asynchronous ones: a DSN bounce,
    # an auto-reply, a spam report, an unsubscribe (mailto and one-click: one event).
    events = wait_events(stack, 14)
    time.sleep(3)  # anything that should not come (duplicates) would come now
    events = stack.events()
    by = {}
    for e in events:
        by.setdefault((e["event"], e["uuid"], e.get("type")), []).append(e)

    def one(event: str, uuid: str, kind: str | None = None) -> dict[str, Any]:
        found = by.get((event, uuid, kind), [])
        assert len(found) == 1, (event, uuid, kind, events)
        return found[0]

    assert one("bounce", "e2ehardbounce", "hard")["category"] == "invalid-recipient"
    assert one("bounce", "e2eunroutable", "unroutable")["rcpt"] == "unroutable@example.net"
    assert one("bounce", "e2esoftbounce", "soft")["rcpt"] == "soft-bounce@example.net"
    for uuid in ("e2easyncbounce", "e2eautoreply", "e2ecomplain", "e2eunsubscribe"):
        assert one("delivered", uuid)["streamid"] == "e2e"
    assert one("bounce", "e2easyncbounce", "hard")["rcpt"] == "async-bounce@example.net"
    assert one("bounce", "e2eautoreply", "autoreply")["rcpt"] == "autoreply@example.net"
    assert one("spam-report", "e2ecomplain")["email"] == "complain@example.net"
    one("unsubscribe", "e2eunsubscribe")
    multi = by.get(("delivered", "e2emulti", None), [])
    assert sorted(e["rcpt"] for e in multi) == ["a@example.net", "b@example.org", "c@example.net"]
    assert len({e["id"] for e in events}) == len(events)  # ids are unique
    assert len(events) == 14
    # Everything the sink received was DKIM-signed, and verified.
    received = stack.received()
    assert received and all(r["dkim_ok"] for r in received), received
