"""`make run`'s supervisor: Ctrl-C stops everything in the README's termination order, and
a second run continues with what was queued: a message Postfix still held (deferred) is
handed back to Redis at the stop and taken up again after the restart."""

from __future__ import annotations

from tests.e2e.stack import Stack, stack_dir, wait_until
from tests.integration.conftest import build_message

POSTFIXLOG_METRICS = 16


def test_stop_in_order_and_continue_after_restart() -> None:
    with stack_dir() as root:
        stack = Stack(root / "run", queue_lifetime="1h").start()
        try:
            stack.post(build_message("waiting1", to="soft-bounce@example.net", cc=None))
            wait_until(
                lambda: stack.metric(POSTFIXLOG_METRICS, "postfix_deferred_queue_messages") == 1,
                60,
                "the message to be deferred in Postfix",
            )
        finally:
            out = stack.stop()
        order = [
            out.index(f"stopped {name}")
            for name in (
                "receiver",
                "httpreceiver",
                "transformer",
                "postfixlog",
                "backdata",
                "mxserver",
                "redis",
                "webhook",
                "sink",
            )
        ]
        assert order == sorted(order), out

        again = Stack(root / "run", queue_lifetime="1h")
        again.base = stack.base
        again.start()
        try:
            wait_until(
                lambda: again.metric(POSTFIXLOG_METRICS, "postfix_deferred_queue_messages") == 1,
                60,
                "the handed-back message to be in Postfix again",
            )
            assert [e for e in again.events() if e.get("uuid") == "waiting1"] == []
        finally:
            again.stop()
