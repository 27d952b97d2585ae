"""End to end through the whole local stack (`make run`'s): a message goes in through the
Receiver or HttpReceiver, is signed, delivered by the real Postfix to the sink MX, and every
outcome comes back to the webhook inbox as the right event, as it would from the Internet:
synchronous bounces from Postfix's log, asynchronous ones, auto-replies, spam reports and
unsubscribes through MxServer and HttpReceiver's one-click route."""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import LOOPBACK, ROOT, port_open, require_binary
from tests.integration.conftest import build_message

PORTS = 20


def free_base() -> int:
    for _ in range(100):
        base = random.randrange(20000, 60000)
        if not any(port_open(base + i) for i in range(PORTS)):
            return base
    raise AssertionError("no free port range")


class Stack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.base = free_base()
        self.process: subprocess.Popen[str] | None = None
        self.output = ""

    def start(self) -> Stack:
        env = {**os.environ, "MANYCORE_LOCAL_QUEUE_LIFETIME": "15s"}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devstack",
                "--workdir",
                str(self.workdir),
                "--port-base",
                str(self.base),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output += line
            if "Press Ctrl-C" in line:
                return self
        raise AssertionError(f"stack did not start:\n{self.output}\n{self.logs()}")

    def logs(self) -> str:
        out = []
        for log in sorted((self.workdir / "logs").glob("*.log")):
            out.append(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-15:]))
        return "\n".join(out)

    def stop(self) -> str:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        out, _ = self.process.communicate(timeout=300)
        self.output += out
        assert self.process.returncode == 0, self.output
        return self.output

    def post(self, data: bytes) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{self.base + 2}/v1/mail/send",
            data=data,
            headers={
                "Content-Type": "message/rfc822",
                "Authorization": "Basic " + base64.b64encode(b"apa:banan").decode(),
            },
        )
        with urllib.request.urlopen(request, timeout=15) as response:
            return dict(json.loads(response.read()))

    def submit(self, data: bytes) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the local stack's self-signed certificate
        with smtplib.SMTP(LOOPBACK, self.base + 1, local_hostname="localhost", timeout=15) as s:
            s.starttls(context=context)
            s.login("apa", "banan")
            s.sendmail("ignored@example.com", ["ignored@example.net"], data)

    def events(self) -> list[dict[str, Any]]:
        url = f"http://{LOOPBACK}:{self.base + 4}/events"
        with urllib.request.urlopen(url, timeout=10) as response:
            return list(json.loads(response.read()))

    def received(self) -> list[dict[str, Any]]:
        path = self.workdir / "sink" / "received.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for binary in ("redis-server", "postfix"):
        require_binary(binary)
    # Postfix's unprivileged processes must reach its queue, and pytest's temporary
    # directories are mode 0700 (DESIGN §7): the stack lives in a 0755 directory of its own.
    root = Path(tempfile.mkdtemp(prefix="manycore-e2e-"))
    root.chmod(0o755)
    stack = Stack(root / "run").start()
    try:
        yield stack
    finally:
        if stack.process and stack.process.poll() is None:
            stack.stop()
        shutil.rmtree(root, ignore_errors=True)


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
