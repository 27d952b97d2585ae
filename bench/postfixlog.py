"""PostfixLog alone: CPU time of its process per message (issue 20), old code against new.

A private redis-server, Postfix's own ``smtp-sink`` as the MX (a C program: it costs little
of the machine it shares), and the real PostfixLog started through its entry point with its
real Postfix. Items as the Transformer makes them (one recipient, 5 KB by default) are pushed
in one pipeline; the clock stops when every ``delivered`` event is on the event queue. The
figure is the service process's own CPU (utime + stime from ``/proc``; Postfix's processes
are not its children in that count), per message; wall time is printed but means little on a
shared machine.

A/B: ``--code DIR`` runs the service from another checkout's ``PostfixLog`` (e.g. ``git
archive`` of the old commit unpacked in DIR); ``--ab DIR`` alternates the worktree's code and
DIR's, round after round, on one Redis and sink. ``--profile FILE`` runs the service under
cProfile (stopped with SIGTERM, so the profile is written).

    python -m bench.postfixlog --quick                  # 100 messages, one round
    python -m bench.postfixlog --ab /tmp/old --rounds 3 --messages 1000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from redis import Redis

from bench.common import LOOPBACK, binary, free_port, port_open
from bench.retention import redis_server
from manycore_common import item as item_format
from tests.helpers import write_configs

INCOMING, EVENTS = "INCOMING-TO-POSTFIX", "EVENT_QUEUE"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (proc(5) /proc/pid/stat fields 14 and 15)."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of one process in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


@contextlib.contextmanager
def smtp_sink() -> Iterator[int]:
    port = free_port()
    argv = [binary("smtp-sink"), "-u", "nobody", f"{LOOPBACK}:{port}", "256"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not port_open(port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("bench.postfixlog: smtp-sink did not start")
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def configs(root: Path, directory: Path, redis_port: int, sink_port: int) -> tuple[Path, Path, int]:
    """Config files of a PostfixLog whose Postfix lives under ``root`` (0755: Postfix's
    unprivileged processes must reach it) and relays to the sink."""
    smtpd_port = free_port()

    def change(customer: dict[str, Any]) -> None:
        section = customer["postfixlog"]
        section.update(
            {
                "logfile": str(root / "log" / "mail.log"),
                "postfix-directory": str(root / "postfix"),
                "instance-name": f"bench-{smtpd_port}",
                "stop-grace-seconds": 2,
                "postfix": {"hostname": LOOPBACK, "port": smtpd_port},
            }
        )
        section["string-replacer"] = {
            "main-cf": {
                "myhostname": "mx.bench.test",
                "mailname": "bench.test",
                "relayhost": f"[{LOOPBACK}]:{sink_port}",
                "smtp_dns_support_level": "disabled",
            },
            "master-cf": {"smtpd-port": smtpd_port},
        }

    global_file, customer_file = write_configs(directory, redis_port, change)
    data = yaml.safe_load(customer_file.read_text())
    return global_file, customer_file, int(data["postfixlog"]["prometheus"]["inet-port"])


def item(uuid: str, size: int) -> bytes:
    rcpt = f"ok-{uuid}@example.net"
    return_path = f"bounce-{uuid}@bounces.bench.test"
    head = (
        "DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=mailer;\r\n"
        "\tbh=unchecked; b=unchecked\r\n"
        f"X-ReturnPathIb: {return_path}\r\nMessage-ID: <{uuid}@example.com>\r\n"
        "From: Shop <news@example.com>\r\n"
        f"To: {rcpt}\r\nSubject: bench\r\nMIME-Version: 1.0\r\n\r\n"
    ).encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    payload = head + line * max(1, (size - len(head)) // len(line))
    return item_format.new_item(
        payload,
        source="transformer",
        uuid=uuid,
        stream_id="stream-1",
        rcpts=[rcpt],
        extra={"from_domain": "example.com", "return_path": return_path},
    )


def push(redis: Redis, raws: list[bytes], rate: float) -> None:
    """All at once (``rate`` 0: a backlog), or one item every 1/rate seconds (a steady load,
    as the Transformer's hand-over makes it: the feeders take one item at a time)."""
    if not rate:
        pipe = redis.pipeline(transaction=False)
        for raw in raws:
            pipe.lpush(INCOMING, raw)
        pipe.execute()
        return
    start = time.monotonic()
    for n, raw in enumerate(raws):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        redis.lpush(INCOMING, raw)


def push_and_wait(
    redis: Redis, tag: str, count: int, size: int, pid: int, rate: float = 0.0
) -> tuple[float, float]:
    """CPU seconds of ``pid`` and wall seconds for ``count`` messages to their events."""
    base = int(redis.llen(EVENTS))
    raws = [item(f"{tag}-{i:06d}", size) for i in range(count)]
    user0, sys0 = cpu_split(pid)
    cpu0, wall0 = user0 + sys0, time.monotonic()
    push(redis, raws, rate)
    deadline = wall0 + 60 + count * 0.1
    while int(redis.llen(EVENTS)) < base + count:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench.postfixlog: {redis.llen(EVENTS) - base} of {count} events")
        time.sleep(0.02)
    user, system = cpu_split(pid)
    if not tag.startswith("warm"):
        print(f"  {tag}: user {(user - user0) / count * 1000:.2f} ms/msg, "
              f"system {(system - sys0) / count * 1000:.2f} ms/msg")  # fmt: skip
    return user + system - cpu0, time.monotonic() - wall0


def start(
    files: tuple[Path, Path], code: Path | None, profile: Path | None
) -> subprocess.Popen[bytes]:
    """The service through its entry point; its log goes to ``$BENCH_POSTFIXLOG_LOG``."""
    env = {**os.environ, "MANYCORE_LOG_LEVEL": "INFO"}
    if code is not None:
        env["PYTHONPATH"] = f"{code / 'PostfixLog'}:{env.get('PYTHONPATH', '')}"
    prof = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    config = ["--global-config-file", str(files[0]), "--customer-config-file", str(files[1])]
    argv = [sys.executable, *prof, "-m", "manycore_postfixlog", *config]
    with open(os.environ.get("BENCH_POSTFIXLOG_LOG", os.devnull), "ab") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def one_run(args: argparse.Namespace, code: Path | None, tag: str) -> tuple[float, float]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-postfixlog-") as tmp,
        tempfile.TemporaryDirectory(prefix="bench-postfixlog-", dir="/tmp") as root,
        redis_server(Path(tmp)) as redis_port,
        smtp_sink() as sink_port,
    ):
        Path(root).chmod(0o755)
        files = configs(Path(root), Path(tmp), redis_port, sink_port)
        global_file, customer_file, metrics_port = files
        redis = Redis(host=LOOPBACK, port=redis_port)
        proc = start((global_file, customer_file), code, args.profile)
        try:
            deadline = time.monotonic() + 60
            while not port_open(metrics_port):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("bench.postfixlog: the service did not start")
                time.sleep(0.1)
            size = args.size * 1024
            push_and_wait(redis, f"warm{tag}", 50, size, proc.pid)
            return push_and_wait(redis, tag, args.messages, size, proc.pid, args.rate)
        finally:
            proc.terminate()
            proc.wait(60)
            redis.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 messages, one round")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, default=5, help="KB")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--rate", type=float, default=100.0, help="msg/s pushed; 0: at once")
    parser.add_argument("--code", type=Path, help="run the service from DIR/PostfixLog")
    parser.add_argument("--ab", type=Path, help="alternate the worktree's code and DIR's")
    parser.add_argument("--profile", type=Path, help="cProfile output of the service")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.rounds = 100, 1
    sides: list[tuple[str, Path | None]] = [("new", args.code)]
    if args.ab is not None:
        sides.append(("old", args.ab))
    for n in range(args.rounds):
        for name, code in sides:
            cpu, wall = one_run(args, code, f"{name}{n}")
            per = cpu / args.messages * 1000
            rate = args.messages / wall
            print(f"round {n} {name}: {per:.2f} ms CPU/msg, {rate:.0f} msg/s", flush=True)


if __name__ == "__main__":
    main()
