"""A real PostfixLog with its real private Postfix, relaying to a local sink MX.

Everything is on 127.0.0.1 and nothing performs a DNS lookup: Postfix relays every message
to ``relayhost = [127.0.0.1]:<sink>`` with ``smtp_dns_support_level = disabled``; a
``transport_maps`` entry sends ``refused.test`` to a loopback port nobody listens on, and
routes ``unroutable.test`` to Postfix's error transport. Postfix's timers are short so that
retries and expiry happen within seconds.

The sink answers by the recipient's local part: ``ok*`` 250, ``bad*`` 550 5.1.1, ``later*``
450 4.2.1, ``flip*`` 450 4.2.1 until ``accept_flips()`` (then 250).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import yaml
from aiosmtpd.controller import Controller
from redis import Redis as SyncRedis

from manycore_common import feedbacktag
from manycore_common import item as item_format
from tests.helpers import (
    FEEDBACK_SECRET,
    LOOPBACK,
    Service,
    free_port,
    require_binary,
    stored_item,
    write_configs,
)

INCOMING, EVENTS = "INCOMING-TO-POSTFIX", "EVENT_QUEUE"
MYHOSTNAME = "mx.postfixlog.test"


@dataclass
class Received:
    sender: str
    rcpts: list[str]
    data: bytes


@dataclass
class SinkHandler:
    received: list[Received] = field(default_factory=list)
    flips_accepted: bool = False

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        local = address.split("@")[0].lower()
        if local.startswith("bad"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if local.startswith("later") or (local.startswith("flip") and not self.flips_accepted):
            return f"450 4.2.1 <{address}>: Mailbox temporarily unavailable"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content))
        )
        return "250 2.0.0 Ok: stored"


class Sink:
    """The "Internet MX" every message goes to (aiosmtpd on loopback)."""

    def __init__(self) -> None:
        self.handler = SinkHandler()
        self.port = free_port()
        self.controller = Controller(
            self.handler, hostname=LOOPBACK, port=self.port, server_hostname="sink.test"
        )

    def start(self) -> Self:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def accept_flips(self) -> None:
        self.handler.flips_accepted = True

    def deliveries(self, rcpt: str) -> int:
        return sum(r.rcpts.count(rcpt) for r in self.handler.received)


def postfix_processes(base: Path) -> list[int]:
    """Processes of the Postfix instance under ``base`` (master's process group)."""
    try:
        group = int((base / "queue" / "pid" / "master.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            exe = os.readlink(entry / "exe")
        except OSError:
            continue
        if int(fields[2]) == group and "/postfix/" in exe:
            pids.append(int(entry.name))
    return pids


def kill_postfix(base: Path) -> None:
    """Make sure no Postfix process of this instance is left (even after a failed test)."""
    for pid in postfix_processes(base):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class PostfixLogEnv:
    """Config files, a PostfixLog service and helpers for one test."""

    def __init__(self, directory: Path, redis_port: int, sink: Sink, **changes: Any) -> None:
        require_binary("postfix")
        self.directory = directory
        # Postfix's unprivileged processes must reach its files, and pytest's temporary
        # directories are 0700 (docs/ARCHITECTURE.md#checked-facts): the instance lives in a 0755
        # directory of its own.
        self.root = Path(tempfile.mkdtemp(prefix="manycore-postfixlog-"))
        self.root.chmod(0o755)
        self.base = self.root / "postfix"
        self.logfile = self.root / "log" / "mail.log"
        self.smtpd_port = free_port()
        self.redis = SyncRedis(host=LOOPBACK, port=redis_port)
        refused_port = free_port()  # nothing listens there: "Connection refused"
        main_cf: dict[str, Any] = {
            "myhostname": MYHOSTNAME,
            "mailname": "postfixlog.test",
            "relayhost": f"[{LOOPBACK}]:{sink.port}",
            "smtp_dns_support_level": "disabled",
            "transport_maps": (
                f"inline:{{ refused.test=smtp:[{LOOPBACK}]:{refused_port}, "
                "{ unroutable.test = error:5.1.2 Host or domain name not found } }"
            ),
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
        }
        main_cf.update(changes.pop("main_cf", {}))

        def change(customer: dict[str, Any]) -> None:
            section = customer["postfixlog"]
            section.update(
                {
                    "logfile": str(self.logfile),
                    "postfix-directory": str(self.base),
                    "postfix": {"hostname": LOOPBACK, "port": self.smtpd_port},
                    "maximal-queue-lifetime": "1h",
                    "bounce-queue-lifetime": "1h",
                    "stop-grace-seconds": 5,
                    "instance-name": f"test-{self.smtpd_port}",
                }
            )
            section["string-replacer"] = {
                "main-cf": main_cf,
                "master-cf": {"smtpd-port": self.smtpd_port},
            }
            section.update(changes)

        self.global_file, self.customer_file = write_configs(
            directory / "configs", redis_port, change
        )
        data = yaml.safe_load(self.global_file.read_text())
        # A killed PostfixLog's items come back within seconds, not the default 30.
        data["reliable-queue"]["heartbeat-timeout-seconds"] = 2
        self.global_file.write_text(yaml.safe_dump(data))
        self.service = Service(
            "postfixlog", self.global_file, self.customer_file, directory / "postfixlog.log"
        )

    def start(self) -> Service:
        return self.service.start()

    def close(self) -> None:
        process = self.service.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)
        kill_postfix(self.base)
        self.redis.close()
        # Keep Postfix's log with the test's files (for a failure's post-mortem).
        for path in self.logfile.parent.glob("*"):
            shutil.copy(path, self.directory / f"postfix-{path.name}")
        capture = os.environ.get("MANYCORE_CAPTURE_POSTFIX_LOG")
        if capture:
            # How tests/fixtures/postfix/*.log were captured (see the README there).
            text = "\n".join(self.log_lines()) + "\n"
            text = text.replace(str(self.root), "/var/spool/manycore")
            Path(capture, f"{self.directory.name}.log").write_text(text)
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ queue items

    def push(
        self, uuid: str, rcpts: list[str], stream_id: str | None = "stream-1", body: str = "Hi"
    ) -> None:
        """A to-postfix item as the Transformer makes it (signature first, X-ReturnPathIb with a
        tagged return path: a 64-octet local part). The Transformer makes one item per
        recipient; several recipients in one item is what a hand-back on stop makes."""
        return_path = self.return_path(uuid, rcpts[0], stream_id)
        payload = (
            "DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=mailer;\r\n"
            "\tbh=unchecked; b=unchecked\r\n"
            f"X-ReturnPathIb: {return_path}\r\n"
            f"Message-ID: <{return_path}>\r\n"
            "Date: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
            "From: Shop <news@example.com>\r\n"
            f"To: {', '.join(rcpts)}\r\n"
            "Subject: test\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "\r\n"
            f"{body}\r\n"
        ).encode()
        raw = item_format.new_item(
            payload,
            source="transformer",
            uuid=uuid,
            stream_id=stream_id,
            rcpts=rcpts,
            extra={"from_domain": "example.com", "return_path": return_path},
        )
        self.redis.lpush(INCOMING, raw)

    @staticmethod
    def return_path(uuid: str, rcpt: str, stream_id: str | None = "stream-1") -> str:
        key = FEEDBACK_SECRET.encode()
        domain = "bounces.postfixlog.test"
        return feedbacktag.make_address(key, "bounce", uuid, rcpt, domain, stream_id)

    def events(self) -> list[dict[str, Any]]:
        raws = reversed(self.redis.lrange(EVENTS, 0, -1))
        return [json.loads(stored_item(raw).payload) for raw in raws]

    def incoming(self) -> list[item_format.Item]:
        return [stored_item(raw) for raw in reversed(self.redis.lrange(INCOMING, 0, -1))]

    def held(self) -> int:
        keys = self.redis.keys(f"{{{INCOMING}}}:processing:*")
        return sum(int(self.redis.llen(k)) for k in keys)

    # ------------------------------------------------------------------ Postfix's log

    def log_lines(self) -> list[str]:
        lines: list[str] = []
        for path in sorted(self.logfile.parent.glob(self.logfile.name + "*"), reverse=True):
            lines += path.read_text(errors="replace").splitlines()
        return lines

    def log_time(self, pattern: str) -> int:
        """Unix time of the first log line matching ``pattern`` (Postfix runs with TZ=UTC)."""
        for line in self.log_lines():
            if re.search(pattern, line):
                stamp = datetime.strptime(
                    f"{datetime.now(UTC).year} {line[:15]}", "%Y %b %d %H:%M:%S"
                )
                return int(stamp.replace(tzinfo=UTC).timestamp())
        raise AssertionError(f"no log line matches {pattern!r}")


@contextlib.contextmanager
def postfixlog_env(
    directory: Path, redis_port: int, sink: Sink, **changes: Any
) -> Iterator[PostfixLogEnv]:
    env = PostfixLogEnv(directory, redis_port, sink, **changes)
    try:
        yield env
    finally:
        env.close()


def wait_quiet(seconds: float = 1.5) -> None:
    """Let anything that would wrongly arrive (a second event) arrive before asserting."""
    time.sleep(seconds)
