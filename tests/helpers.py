"""Real servers for tests: a private redis-server, the services as real processes, and the
example config files rewritten to point at them. Everything listens on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.stack import free_port as free_port  # re-exported: the tests' one port picker
from manycore_common import item as item_format

ROOT = Path(__file__).resolve().parent.parent
GLOBAL_EXAMPLE = ROOT / "inboxbooster-mailer-global.yaml.example"
CUSTOMER_EXAMPLE = ROOT / "inboxbooster-mailer-customer.yaml.example"
#: TEST KEY for common-config.feedback-secret in every test config (never used in production).
FEEDBACK_SECRET = "test-feedback-secret-0123456789abcdef"
LOOPBACK = "127.0.0.1"
#: How long a service may take to listen, and then to be ready. A guard against a hang, not
#: a timing check: MxServer took 12-15 s to listen (its classifier processes) on the shared
#: 2-core machine under pytest-xdist, and 20 s failed starts there.
START_SECONDS = 60.0


def require_binary(name: str) -> str:
    """The path of a system binary the tests need. Missing is a failure, never a skip:
    `make test` installs it, so its absence means the setup is broken."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        pytest.fail(f"{name} is not installed (make test installs it with apt)", pytrace=False)
    return path


def wait_for(
    condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.2):
        return True
    return False


class RedisServer:
    """A private redis-server on a free loopback port with its own data directory."""

    def __init__(self, directory: Path, port: int | None = None, *extra: str) -> None:
        self.binary = require_binary("redis-server")
        self.directory = directory
        self.port = port or free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                LOOPBACK,
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--logfile",
                str(self.directory / "redis.log"),
                # Tests use DEBUG SLEEP to make Redis stall.
                "--enable-debug-command",
                "local",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: port_open(self.port), what=f"redis-server on {self.port}")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


def write_configs(
    directory: Path,
    redis_port: int,
    customer_changes: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Path, Path]:
    """The example files, with every Redis address pointed at the test server, every
    listener on a free loopback port, and whatever ``customer_changes`` does."""
    directory.mkdir(parents=True, exist_ok=True)
    global_file = directory / "inboxbooster-mailer-global.yaml"
    customer_file = directory / "inboxbooster-mailer-customer.yaml"
    shutil.copy(GLOBAL_EXAMPLE, global_file)
    customer = yaml.safe_load(CUSTOMER_EXAMPLE.read_text())
    for section in customer.values():
        if not isinstance(section, dict):
            continue
        if "reliable-queue" in section:
            section["reliable-queue"]["redis"] = {"hostname": LOOPBACK, "port": redis_port}
        for key in ("bind", "prometheus"):
            if key in section:
                section[key] = {"inet-interface": LOOPBACK, "inet-port": free_port()}
    # An explicit SMTP greeting name: the default would be this machine's host name.
    customer["receiver"]["hostname"] = "localhost"
    # TEST KEY, not a secret: signs the feedback addresses the Transformer mints.
    # (The example's common-config has only comments: YAML reads it as null.)
    customer["common-config"] = customer.get("common-config") or {}
    customer["common-config"]["feedback-secret"] = FEEDBACK_SECRET
    if customer_changes:
        customer_changes(customer)
    customer_file.write_text(yaml.safe_dump(customer, sort_keys=False))
    return global_file, customer_file


class Service:
    """A service started through its console script, exactly as in production."""

    def __init__(self, name: str, global_file: Path, customer_file: Path, log: Path) -> None:
        self.name = name
        self.global_file = global_file
        self.customer_file = customer_file
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        customer = yaml.safe_load(customer_file.read_text())[name]
        self.port = int(customer["bind"]["inet-port"]) if "bind" in customer else None
        self.metrics_port = int(customer["prometheus"]["inet-port"])

    def argv(self) -> list[str]:
        """The console script with this service's config files."""
        script = Path(sys.executable).with_name(f"manycore-{self.name}")
        return [str(script), "--global-config-file", str(self.global_file),
                "--customer-config-file", str(self.customer_file)]  # fmt: skip

    def run_to_exit(self, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run it in the foreground, for a service expected to exit at once (a config error)."""
        return subprocess.run(self.argv(), capture_output=True, text=True, timeout=timeout)

    def start(self, wait_ready: bool = True) -> Service:
        self.process = subprocess.Popen(
            self.argv(),
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "MANYCORE_LOG_LEVEL": "DEBUG"},
        )
        try:
            wait_for(
                lambda: (
                    self._exited() or ((self.port is None or port_open(self.port)) and self.live())
                ),
                timeout=START_SECONDS,
                what=f"{self.name} to listen",
            )
            if self._exited():
                raise AssertionError(f"{self.name} exited at start:\n{self.log.read_text()}")
            if wait_ready:
                wait_for(self.ready, timeout=START_SECONDS, what=f"{self.name} to be ready")
        except BaseException:
            self.kill()  # a start that failed must not leave the service running
            raise
        return self

    def kill(self) -> None:
        """Stop it whatever state it is in: SIGTERM, then SIGKILL after a grace period."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def _exited(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def _get(self, path: str) -> tuple[int, bytes]:
        url = f"http://{LOOPBACK}:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()
        except OSError:
            return 0, b""

    def live(self) -> bool:
        return self._get("/livez")[0] == 200

    def ready(self) -> bool:
        return self._get("/readyz")[0] == 200

    def readyz(self) -> tuple[int, dict[str, Any]]:
        status, body = self._get("/readyz")
        return status, json.loads(body or b"{}")

    def metrics(self) -> str:
        return self._get("/metrics")[1].decode()

    def metric(self, name: str, labels: str = "") -> float:
        """One sample's value: ``metric('nbr_dropped_emails_total', 'reason="bad-uuid"')``."""
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == wanted:
                return float(value)
        raise AssertionError(f"metric {wanted} not found")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        return code


@contextlib.contextmanager
def running(service: Service) -> Iterator[Service]:
    service.start()
    try:
        yield service
    finally:
        try:
            if service.process and service.process.poll() is None:
                service.stop()
        finally:
            service.kill()  # a stop that timed out fails the test, but leaves nothing behind


def pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


_KEY_CACHE: dict[tuple[str, int], bytes] = {}


def rsa_pem(bits: int = 2048, label: str = "default") -> bytes:
    """A test-only RSA key, generated once per run (never a real key)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    if (label, bits) not in _KEY_CACHE:
        _KEY_CACHE[(label, bits)] = pem(rsa.generate_private_key(65537, bits))
    return _KEY_CACHE[(label, bits)]


def ed25519_pem(label: str = "default") -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if (label, 0) not in _KEY_CACHE:
        _KEY_CACHE[(label, 0)] = pem(ed25519.Ed25519PrivateKey.generate())
    return _KEY_CACHE[(label, 0)]


def write_dkim_keys(config_dir: Path) -> None:
    """The DKIM key files the example customer config names, as test keys."""
    (config_dir / "dkim").mkdir(parents=True, exist_ok=True)
    (config_dir / "dkim" / "dkim-private-key-example.com.pem").write_bytes(rsa_pem(label="ex"))
    (config_dir / "dkim" / "dkim-private-key-bexample.com.pem").write_bytes(rsa_pem(label="bex"))


def stored_item(raw: bytes | str | None) -> item_format.Item:
    """A queue item read back with a plain client (redis-py types its replies bytes | str)."""
    assert isinstance(raw, bytes), raw
    return item_format.decode(raw)
