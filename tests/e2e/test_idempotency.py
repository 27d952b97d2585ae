"""Issue 19's idempotency check end to end: 1,000 messages, each submitted twice at about the
same time over SMTP and HTTP, while the Receiver and the HttpReceiver of the local stack are
SIGKILLed mid-run (its supervisor starts them again, as Kubernetes would). Clients send a
message again after a broken connection or a temporary refusal. The sink MX must get each
message exactly once: signed, sent by the real Postfix, one recipient per message."""

from __future__ import annotations

import os
import signal
import ssl
import time
from collections import Counter
from collections.abc import Callable

from tests.e2e.stack import Stack, stack_dir, wait_until
from tests.integration.test_idempotency_kill import (
    MESSAGES,
    HttpClient,
    SmtpClient,
    Tally,
    check_clients,
    run_clients,
    swallowed,
)

#: The stack's ports, as offsets from its base (devstack.stack).
SMTP_OFFSET, HTTP_OFFSET = 1, 2


def test_the_sink_gets_each_message_once_though_sent_twice_through_kills() -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the local stack's self-signed certificate
    with stack_dir() as root:
        stack = Stack(root / "run").start()
        try:
            makers: dict[str, Callable[[], SmtpClient | HttpClient]] = {
                "smtp": lambda: SmtpClient(stack.base + SMTP_OFFSET, context),
                "http": lambda: HttpClient(stack.base + HTTP_OFFSET),
            }
            names = {"smtp": "receiver", "http": "httpreceiver"}

            def kill(door: str) -> None:  # the supervisor starts it again
                for pid in stack.pids(names[door]):
                    os.kill(pid, signal.SIGKILL)

            tally = Tally()
            started = time.monotonic()
            run_clients(makers, kill, tally)
            check_clients(tally)
            wait_until(lambda: len(stack.received()) >= MESSAGES, 90, "the sink to get all")
            time.sleep(3)  # a second copy, were there one, would come now
            got = Counter(r["rcpt"] for r in stack.received())
            elapsed = time.monotonic() - started
            restarts = {name: stack.restarts(name) for name in names.values()}
        finally:
            stack.stop()
    assert restarts == {"receiver": 1, "httpreceiver": 1}, restarts
    assert got == Counter({f"m{n}@example.net": 1 for n in range(MESSAGES)}), [
        (rcpt, count) for rcpt, count in got.items() if count != 1
    ][:10]
    print(
        f"{MESSAGES} messages x2 to the sink in {elapsed:.1f} s; retries "
        f"{dict(tally.retries)}; {swallowed(tally)} queued whose answer a kill swallowed"
    )
