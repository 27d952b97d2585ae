"""The whole local stack (`make run`'s) as the end-to-end tests start it."""

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
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers import LOOPBACK, ROOT, port_open, require_binary

PORTS = 20


def free_base() -> int:
    for _ in range(100):
        base = random.randrange(20000, 60000)
        if not any(port_open(base + i) for i in range(PORTS)):
            return base
    raise AssertionError("no free port range")


class Stack:
    def __init__(self, workdir: Path, queue_lifetime: str = "15s") -> None:
        self.workdir = workdir
        self.base = free_base()
        self.queue_lifetime = queue_lifetime
        self.process: subprocess.Popen[str] | None = None
        self.output = ""

    def start(self) -> Stack:
        env = {**os.environ, "MANYCORE_LOCAL_QUEUE_LIFETIME": self.queue_lifetime}
        self.output = ""
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

    def metric(self, port_offset: int, name: str) -> float:
        url = f"http://{LOOPBACK}:{self.base + port_offset}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            for line in response.read().decode().splitlines():
                key, _, value = line.rpartition(" ")
                if key == name:
                    return float(value)
        raise AssertionError(f"no metric {name}")


@contextmanager
def stack_dir() -> Iterator[Path]:
    """Postfix's unprivileged processes must reach its queue, and pytest's temporary
    directories are mode 0700 (DESIGN §7): the stack lives in a 0755 directory of its own."""
    for binary in ("redis-server", "postfix"):
        require_binary(binary)
    root = Path(tempfile.mkdtemp(prefix="manycore-e2e-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        if not os.environ.get("MANYCORE_KEEP_E2E"):  # keep the logs to look into a failure
            shutil.rmtree(root, ignore_errors=True)


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")
