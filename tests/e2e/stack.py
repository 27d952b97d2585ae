"""The whole local stack (`make run`'s) as the end-to-end tests start it."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from devstack.stack import free_port_base
from tests.eventschema import assert_valid
from tests.helpers import LOOPBACK, ROOT, require_binary

PORTS = 20
#: Postfix's retry of deferred mail in the test stacks (devstack's MANYCORE_LOCAL_RETRY_SECONDS,
#: 10 for `make run`): soft-bounce@ becomes its soft bounce within this of the queue lifetime.
RETRY_SECONDS = "2"


class Stack:
    def __init__(
        self, workdir: Path, queue_lifetime: str = "10s", smtp_timeout: str | None = None
    ) -> None:
        self.workdir = workdir
        self.base = free_port_base(PORTS)
        self.queue_lifetime = queue_lifetime
        self.smtp_timeout = smtp_timeout
        self.process: subprocess.Popen[str] | None = None
        self.output = ""
        self._reader: threading.Thread | None = None

    def start(self) -> Stack:
        env = {
            **os.environ,
            "MANYCORE_LOCAL_QUEUE_LIFETIME": self.queue_lifetime,
            "MANYCORE_LOCAL_RETRY_SECONDS": RETRY_SECONDS,
        }
        if self.smtp_timeout:
            env["MANYCORE_LOCAL_SMTP_TIMEOUT"] = self.smtp_timeout
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
                # Keep reading: the supervisor reports restarts while tests run, and a full
                # pipe would block it.
                self._reader = threading.Thread(target=self._read, daemon=True)
                self._reader.start()
                return self
        raise AssertionError(f"stack did not start:\n{self.output}\n{self.logs()}")

    def logs(self) -> str:
        out = []
        for log in sorted((self.workdir / "logs").glob("*.log")):
            out.append(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-15:]))
        return "\n".join(out)

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output += line

    def stop(self) -> str:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=300)
        if self._reader is not None:
            self._reader.join(30)
        assert self.process.returncode == 0, self.output
        return self.output

    def config_files(self) -> list[str]:
        conf = self.workdir / "configs"
        return [
            "--global-config-file",
            str(conf / "inboxbooster-mailer-global.yaml"),
            "--customer-config-file",
            str(conf / "inboxbooster-mailer-customer.yaml"),
        ]

    def pids(self, name: str) -> list[int]:
        """The processes of one of the supervisor's children, by its name: a service, the
        webhook inbox ("webhook"), the sink MX ("sink"), or the Redis pod's redis-server."""
        if name == "redis-server":
            return [c for p in self.pids("redis") for c in children(p)]
        if name == "webhook":
            pattern = f"devstack.peers --workdir {self.workdir} --webhook-port"
        elif name == "sink":
            pattern = f"devstack.peers --workdir {self.workdir} --sink-port"
        else:
            pattern = f"manycore-{name} " + " ".join(self.config_files()[:2])
        out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
        return [int(p) for p in out.stdout.split()]

    def hold(self, name: str) -> Path:
        """Keep the supervisor from restarting ``name`` until the returned file is removed."""
        path = self.workdir / "hold" / name
        path.parent.mkdir(exist_ok=True)
        path.touch()
        return path

    def restarts(self, name: str) -> int:
        return self.output.count(f"  restarted {name}\n")

    def queues(self, *args: str) -> list[dict[str, Any]]:
        """``manycore-queues --json ARGS``: the operator's view of the queues."""
        out = subprocess.run(
            [
                str(Path(sys.executable).parent / "manycore-queues"),
                *self.config_files(),
                "--json",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        rows: list[dict[str, Any]] = []
        for line in out.stdout.splitlines():
            loaded = json.loads(line)
            rows += loaded if isinstance(loaded, list) else [loaded]
        return rows

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
            found = list(json.loads(response.read()))
        # Every event any end-to-end test sees keeps the webhook's contract.
        assert_valid(found)
        return found

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
    directories are mode 0700 (docs/ARCHITECTURE.md#checked-facts): the stack lives in a 0755
    directory of its own."""
    for binary in ("redis-server", "postfix"):
        require_binary(binary)
    root = Path(tempfile.mkdtemp(prefix="manycore-e2e-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        if not os.environ.get("MANYCORE_KEEP_E2E"):  # keep the logs to look into a failure
            shutil.rmtree(root, ignore_errors=True)


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")
