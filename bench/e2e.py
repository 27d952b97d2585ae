"""End to end: messages/s from the Receiver to the sink MX through the whole local stack
(``make run``'s: Receiver → Redis → Transformer → Redis → PostfixLog → its Postfix → sink MX),
against Postfix alone relaying the same messages to the same sink; latency from the
Receiver's 250 to arrival at the sink (p50/p99); delivered events/s at the webhook inbox; the
RSS of every service idle, at its peak and at the end; and how all of it grows from 5 KB to
500 KB messages.

The stack is started as ``make run`` starts it (``python -m devstack`` in a 0755 directory
of its own, random loopback ports). The load comes from a separate client process (lean
asyncio, one coroutine per connection; connections opened, upgraded with STARTTLS and
authenticated before the clock starts). Every message has one recipient of its own, so each
arrival at the sink (``received.jsonl``, stamped with time.time() by the sink) is matched to
its submission, and a message missing or arriving twice fails the run.

The baseline is a second, private Postfix with the very main.cf PostfixLog renders for the
stack's own Postfix (same relayhost = the stack's sink, DNS off), driven three ways per round: by
Postfix's ``smtp-source`` (the throughput the issue asks for; it cannot report per-message
250 times), by the same client without TLS/AUTH (throughput and latency measured the
same way as the stack's), and by that client with STARTTLS as the stack's is driven (its
TLS costs the client 1.3 ms a message against 0.2 without). A third side is the floor
(bench/floor.py: bare door + LPUSH, bare signer, bare relay into Postfix alone), driven as the
stack is. The stack's paced rounds are split by hop from its trace records (bench/hops.py).
Postfix alone's messages carry a DKIM signature made with the stack's key before the clock
starts, so the sink, which verifies every signature, works as hard for
them as for the stack's. Stack and baseline alternate, round after round, so drift in the
machine's load hits both alike; figures are medians. Everything is on 127.0.0.1, no DNS.

    python -m bench.e2e            # full run (make bench)
    python -m bench.e2e --quick    # smoke run (make test)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dkim
from redis import Redis

from bench import hops
from bench.common import LOOPBACK, ROOT, Row, binary, table, write
from bench.floor import Floor
from bench.postfix import PostfixAlone
from bench.smtpclient import Refused, reply, session
from devstack.stack import free_port_base, redis_login, redis_password

DOMAIN = "example.net"  # the sink delivers every local part that names no scenario
KB = 1024
#: Services of the stack whose RSS is reported, in the README's deployment order.
SERVICES = ("redis", "backdata", "mxserver", "postfixlog", "transformer", "receiver",
            "httpreceiver")  # fmt: skip
#: The issue's memory target for every service, idle.
IDLE_TARGET_KB = 80 * 1024


def fail(text: str) -> SystemExit:
    return SystemExit(f"bench.e2e: {text}")


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation: with few samples p99 is the maximum)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# ----------------------------------------------------------------- messages


def body(size: int, head_length: int) -> bytes:
    """Lines of 78 bytes up to ``size`` bytes in all (no line starts with a dot)."""
    line = b"x" * 76 + b"\r\n"
    room = max(size - head_length, 2)
    text = line * ((room - 2) // len(line))
    return text + b"y" * (room - len(text) - 2) + b"\r\n"


def head(uuid: str, rcpt: str) -> bytes:
    return (
        "From: Shop <news@example.com>\r\n"
        f"To: {rcpt}\r\n"
        "Subject: Benchmark message\r\n"
        f"X-Uuid: {uuid}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode()


#: Headers the baseline's signature covers: the ones all messages of a round share, so one
#: signature made before the clock starts is valid for every message.
SIGNED_HEADERS = [b"from", b"subject", b"mime-version", b"content-type"]


def presign(message: bytes, key: Path | None) -> bytes:
    """A DKIM-Signature header for the baseline's messages, made with the stack's demo key
    for example.com: the sink verifies every signed message it receives (0.8 ms at 5 KB,
    18 ms at 500 KB here), so unsigned baseline mail would cost the sink less than the
    stack's and flatter Postfix alone. With it, the sink does the same work for both."""
    if key is None:
        return b""
    return bytes(
        dkim.sign(
            message,
            b"mailer",
            b"example.com",
            key.read_bytes(),
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=SIGNED_HEADERS,
        )
    )


def rcpt_of(tag: str, n: int) -> tuple[str, str]:
    """(X-Uuid, recipient) of message ``n`` of a round: unique, so arrivals can be matched."""
    uuid = f"{tag}n{n}"
    return uuid, f"{uuid}@{DOMAIN}"


# ----------------------------------------------------------------- the client (own process)


def unverified_tls(tls: bool) -> ssl.SSLContext | None:
    if not tls:
        return None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the local stack's self-signed certificate
    return context


async def drive(
    port: int, tls: bool, connections: int, count: int, size: int, tag: str,
    key: Path | None, rate: float, auth: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Send ``count`` messages over ``connections`` sessions; the time of each 250.
    ``key``: sign them (the same signature fits all, see presign) before the clock starts.
    ``rate``: offer message n at start + n / rate (0: as fast as the server takes them)."""
    context = unverified_tls(tls)
    sessions = await asyncio.gather(*(session(port, context, auth) for _ in range(connections)))
    text = body(size, len(head(*rcpt_of(tag, count))))
    signature = presign(head(*rcpt_of(tag, 0)) + text, key)
    numbers = iter(range(count))  # shared: whichever session is free sends the next one
    accepted: dict[str, float] = {}
    retried = 0

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal retried
        for n in numbers:
            if rate:
                await asyncio.sleep(max(0.0, start + n / rate - time.time()))
            uuid, rcpt = rcpt_of(tag, n)
            data = signature + head(uuid, rcpt) + text
            while True:
                try:
                    writer.write(b"MAIL FROM:<news@example.com>\r\n")
                    await reply(reader, 250)
                    writer.write(f"RCPT TO:<{rcpt}>\r\n".encode())
                    await reply(reader, 250)
                    writer.write(b"DATA\r\n")
                    await reply(reader, 354)
                    writer.write(data + b".\r\n")
                    await reply(reader, 250)
                    accepted[rcpt] = time.time()
                    break
                except Refused:
                    retried += 1
                    writer.write(b"RSET\r\n")
                    await reply(reader, 250)
                    await asyncio.sleep(0.05)

    start = time.time()
    await asyncio.gather(*(worker(r, w) for r, w in sessions))
    end = time.time()
    for _, writer in sessions:
        writer.write(b"QUIT\r\n")
        writer.close()
    return {"start": start, "end": end, "accepted": accepted, "retried": retried}


@dataclass(frozen=True)
class Door:
    """Where and how the client submits: STARTTLS, AUTH PLAIN (both before the clock
    starts); ``presign``: the client signs (Postfix alone has no signer of its own);
    ``events``: wait for every delivered event at the webhook (the stack alone sends them)."""

    port: int
    tls: bool
    auth: bool = False
    presign: bool = False
    events: bool = False


def run_client(
    door: Door, connections: int, count: int, size: int, tag: str, key: Path | None,
    rate: float,
) -> Any:  # fmt: skip
    argv = [sys.executable, "-m", "bench.e2e", "--client", "--port", str(door.port),
            "--connections", str(connections), "--messages", str(count),
            "--size", str(size), "--tag", tag, "--rate", str(rate),
            *(["--tls"] if door.tls else []), *([] if door.auth else ["--no-auth"]),
            *(["--dkim-key", str(key)] if key else [])]  # fmt: skip
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise fail(f"client failed:\n{result.stderr}")
    return json.loads(result.stdout)


# ----------------------------------------------------------------- the stack


class JsonlTail:
    """New complete lines of a JSON-lines file another process appends to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


class Stack:
    """``python -m devstack`` (what ``make run`` starts) in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.base = free_port_base()
        self.smtp_port = self.base + 1
        self.sink_port = self.base + 3
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        conf = workdir / "configs"
        self.global_file = conf / "inboxbooster-mailer-global.yaml"
        self.customer_file = conf / "inboxbooster-mailer-customer.yaml"
        self.received = workdir / "sink" / "received.jsonl"
        self.events = workdir / "webhook" / "events.jsonl"
        self.postfix_queue = workdir / "postfix" / "queue"
        self.postfix_log = workdir / "postfix-log" / "mail.log"
        self.dkim_key = conf / "dkim" / "dkim-private-key-example.com.pem"

    def start(self, timeout: float = 120) -> Stack:
        argv = [sys.executable, "-m", "devstack", "--workdir", str(self.workdir),
                "--port-base", str(self.base)]  # fmt: skip
        self.process = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self.process.stdout is not None
        # The supervisor prints its banner, ending in this line, once every service is ready.
        timer = threading.Timer(timeout, self.process.kill)
        timer.start()
        try:
            for line in self.process.stdout:
                self.output.append(line)
                if "Press Ctrl-C" in line:
                    return self
        finally:
            timer.cancel()
        raise fail(f"the stack did not start:\n{''.join(self.output)}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)  # the supervisor's termination order
        try:
            self.process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()

    def redis(self) -> Redis:
        # Queue depths only: the read-only user of the Redis pod.
        password = redis_password(self.workdir, "exporter")
        username = redis_login("exporter")[0]
        return Redis(host=LOOPBACK, port=self.base, username=username, password=password)

    def pids(self) -> dict[str, int]:
        """pid of each service, and of the redis-server that manycore-redis runs."""
        found: dict[str, int] = {}
        for name in SERVICES:
            pattern = f"manycore-{name} --global-config-file {self.global_file}"
            out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
            pids = [int(p) for p in out.stdout.split()]
            if len(pids) != 1:
                raise fail(f"expected one manycore-{name} process, found {pids}")
            found[name] = pids[0]
        out = subprocess.run(["pgrep", "-P", str(found["redis"])], capture_output=True, text=True)
        children = [int(p) for p in out.stdout.split()]
        if len(children) != 1:
            raise fail(f"expected one redis-server under manycore-redis, found {children}")
        found["redis-server"] = children[0]
        return found

    def peers_pids(self) -> dict[str, int]:
        """The stand-ins for the outside world, by role: the sink MX and the webhook inbox
        (devstack runs each as a devstack.peers process of its own)."""
        pattern = f"devstack.peers --workdir {self.workdir} "
        out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        found = {}
        for pid in (int(p) for p in out.stdout.split()):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            flags = ((b"--sink-port", "sink"), (b"--webhook-port", "webhook"))
            roles = [role for flag, role in flags if flag in argv]
            found["+".join(roles) or "peers"] = pid
        if not found:
            raise fail("no devstack.peers process found")
        return found

    def queue_names(self) -> list[str]:
        from manycore_common.config import load_config

        config = load_config(self.global_file, self.customer_file)
        g = config.global_
        names = g.reliable_queue.queue_names
        return [names.primary_queue, names.default_queue, g.postfix.incoming_queue_name,
                g.backdata.queue_name]  # fmt: skip


TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int | str) -> list[str]:
    """/proc/<pid>/stat after "pid (comm)" (comm may hold spaces): [0] is the state."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process."""
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / TICKS


def group_cpu_seconds(group: int) -> float:
    """utime + stime of every process of a process group, and of the children they reaped
    (cutime + cstime): Postfix's short-lived smtpd/cleanup/smtp processes come and go."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = stat_fields(entry.name)
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group:
            total += sum(int(f) for f in fields[11:15])
    return total / TICKS


def own_cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU seconds each named process (or group) used between two snapshots."""

    def __init__(self, probes: dict[str, Callable[[], float]]) -> None:
        self.probes = probes
        self.before: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self.before = {name: probe() for name, probe in self.probes.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def used(self) -> dict[str, float]:
        return {name: probe() - self.before[name] for name, probe in self.probes.items()}


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak since the process started), from /proc/<pid>/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


# ----------------------------------------------------------------- Postfix alone


# ----------------------------------------------------------------- one round


@dataclass
class Outcome:
    rate: float  # messages/s, first submission to last arrival at the sink
    latencies: list[float] = field(default_factory=list)  # seconds, 250 → sink
    events_rate: float = 0.0  # delivered events/s at the webhook
    depths: dict[str, int] = field(default_factory=dict)  # most items seen waiting
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds used, by process
    stamps: dict[str, tuple[float, float]] = field(default_factory=dict)  # rcpt: 250, arrival
    hops: dict[str, list[float]] = field(default_factory=dict)  # seconds, by hop (bench.hops)


class Watcher:
    """While a round runs: the sink's arrivals and the webhook's events of the round (each
    event stamped when first seen, polled every 50 ms), and the deepest each queue got."""

    def __init__(self, stack: Stack, redis: Redis | None, queues: list[str], queue_dir: Path):
        self.sink = JsonlTail(stack.received)
        self.events = JsonlTail(stack.events)
        self.redis, self.queues, self.queue_dir = redis, queues, queue_dir
        self.arrivals: list[dict[str, Any]] = []
        self.delivered: dict[str, float] = {}
        self.depths: Counter[str] = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def poll(self) -> None:
        self.arrivals += self.sink.read()
        now = time.time()
        for event in self.events.read():
            if event.get("event") == "delivered":
                self.delivered.setdefault(f"{event.get('uuid')}/{event.get('rcpt')}", now)
        if self.redis is not None:
            with self.redis.pipeline(transaction=False) as pipe:
                for name in self.queues:
                    pipe.llen(name)
                for name, depth in zip(self.queues, pipe.execute(), strict=True):
                    self.depths[name] = max(self.depths[name], int(depth))
        # Postfix's own queue (files): what waits for qmgr and for the smtp client.
        for queue in ("incoming", "active", "deferred"):
            files = sum(len(names) for _, _, names in os.walk(self.queue_dir / queue))
            key = f"postfix {queue}"
            self.depths[key] = max(self.depths[key], files)

    def run(self) -> None:
        while not self.stop.is_set():
            self.poll()
            self.stop.wait(0.05)
        self.poll()


def settle(watcher: Watcher, done: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def check_arrivals(
    arrivals: list[dict[str, Any]], expected: set[str], what: str
) -> dict[str, dict[str, Any]]:
    """Every expected recipient arrived exactly once, with a signature the sink verified."""
    mine = [a for a in arrivals if a["rcpt"] in expected]
    counts = Counter(a["rcpt"] for a in mine)
    doubled = sorted(r for r, c in counts.items() if c > 1)
    lost = sorted(expected - set(counts))
    if lost or doubled:
        raise fail(f"{what}: lost {len(lost)} {lost[:5]}, arrived twice {doubled[:5]}")
    if not all(a["dkim_ok"] for a in mine):
        raise fail(f"{what}: DKIM failed at the sink for {sum(not a['dkim_ok'] for a in mine)}")
    for a in mine:  # the sink keeps every message; only its record matters here
        with contextlib.suppress(OSError):
            Path(a["path"]).unlink()
    return {a["rcpt"]: a for a in mine}


def wait_time(count: int, size: int) -> float:
    """Generous: a stuck run fails instead of hanging (allows ~10 msg/s, ~1 MB/s)."""
    return 60 + count / 10 + count * size / 1e6


def through_client(
    stack: Stack, door: Door, args: argparse.Namespace, size: int, count: int,
    tag: str, redis: Redis | None, queues: list[str], queue_dir: Path, what: str,
    cpu: CpuMeter, rate: float = 0.0,
) -> Outcome:  # fmt: skip
    """Our client → ``door``."""
    with cpu, Watcher(stack, redis, queues, queue_dir) as watcher:
        # Postfix alone gets messages signed as the Transformer would sign them (presign).
        key = stack.dkim_key if door.presign else None
        sent = run_client(door, args.connections, count, size, tag, key, rate)
        accepted: dict[str, float] = sent["accepted"]
        expected = set(accepted)
        if len(expected) != count:
            raise fail(f"{what}: {count - len(expected)} messages were not accepted")
        arrived = lambda: len({a["rcpt"] for a in watcher.arrivals} & expected) >= count  # noqa: E731
        settle(watcher, arrived, wait_time(count, size), f"{what}: arrivals at the sink")
        if door.events:  # the stack: every message gets a delivered event
            uuids = {f"{r.split('@')[0]}/{r}" for r in expected}
            settle(watcher, lambda: uuids <= set(watcher.delivered), wait_time(count, 0),
                   f"{what}: delivered events at the webhook")  # fmt: skip
    time.sleep(0.2)  # anything arriving twice arrives now
    mine = check_arrivals(watcher.arrivals + watcher.sink.read(), expected, what)
    last = max(a["at"] for a in mine.values())
    outcome = Outcome(
        rate=count / (last - sent["start"]),
        latencies=[mine[r]["at"] - t for r, t in accepted.items()],
        stamps={r: (t, mine[r]["at"]) for r, t in accepted.items()},
        depths=dict(watcher.depths),
        cpu=cpu.used(),
    )
    if door.events:
        outcome.events_rate = count / (max(watcher.delivered.values()) - sent["start"])
    if sent["retried"]:
        print(f"  ({what}: {sent['retried']} temporary refusals, offered again)", flush=True)
    return outcome


def through_smtp_source(
    stack: Stack, postfix: PostfixAlone, args: argparse.Namespace, size: int, count: int,
    tag: str, workdir: Path, cpu: CpuMeter,
) -> Outcome:  # fmt: skip
    """``smtp-source`` → Postfix alone → the sink; smtp-source numbers the recipients
    (``-N``: 1<tag>@, 2<tag>@, ...), which is how arrivals are matched."""
    text = head(tag, f"{tag}@{DOMAIN}") + body(size, len(head(tag, f"{tag}@{DOMAIN}")))
    text = presign(text, stack.dkim_key) + text
    message_file = workdir / f"smtp-source-{size}.eml"
    # smtp-source appends CRLF to each line itself.
    message_file.write_bytes(text.replace(b"\r\n", b"\n"))
    argv = [binary("smtp-source"), "-d", "-N", "-s", str(args.connections), "-m", str(count),
            "-f", "news@example.com", "-t", f"{tag}@{DOMAIN}", "-F", str(message_file),
            "-M", "localhost", f"{LOOPBACK}:{postfix.port}"]  # fmt: skip
    expected = {f"{n}{tag}@{DOMAIN}" for n in range(1, count + 1)}
    with cpu, Watcher(stack, None, [], postfix.queue) as watcher:
        start = time.time()
        result = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            raise fail(f"smtp-source failed ({result.returncode}): {result.stderr}")
        arrived = lambda: len({a["rcpt"] for a in watcher.arrivals} & expected) >= count  # noqa: E731
        settle(watcher, arrived, wait_time(count, size), "postfix alone: arrivals at the sink")
    time.sleep(0.2)
    mine = check_arrivals(watcher.arrivals + watcher.sink.read(), expected, "postfix (smtp-source)")
    last = max(a["at"] for a in mine.values())
    return Outcome(rate=count / (last - start), depths=dict(watcher.depths), cpu=cpu.used())


# ----------------------------------------------------------------- the whole run


@dataclass
class Point:
    """All rounds at one message size."""

    size: int
    count: int
    stack: list[Outcome] = field(default_factory=list)
    source: list[Outcome] = field(default_factory=list)
    client: list[Outcome] = field(default_factory=list)
    stack_paced: list[Outcome] = field(default_factory=list)
    client_paced: list[Outcome] = field(default_factory=list)
    client_tls: list[Outcome] = field(default_factory=list)  # our client with STARTTLS
    floor: list[Outcome] = field(default_factory=list)  # bench.floor
    floor_paced: list[Outcome] = field(default_factory=list)


def postfix_delays(log: Path, pattern: re.Pattern[str]) -> list[float]:
    """Postfix's own time per delivered message (``delay=`` of ``status=sent`` lines, for
    recipients matching ``pattern``): from its smtpd's accepting to the sink's 250."""
    delays = []
    with contextlib.suppress(FileNotFoundError):
        for line in log.read_text(errors="replace").splitlines():
            if "status=sent" not in line:
                continue
            to = re.search(r" to=<([^>]*)>", line)
            delay = re.search(r" delay=([0-9.]+)", line)
            if to and delay and pattern.search(to.group(1)):
                delays.append(float(delay.group(1)))
    return delays


def size_name(size: int) -> str:
    return f"{size // KB} KB"


def master_pid(queue_dir: Path) -> int:
    """The pid (= process group) of the master of the Postfix with this queue directory."""
    return int((queue_dir / "pid" / "master.pid").read_text().split()[0])


@dataclass
class Sides:
    """The four things measured each round, each with its door and its CPU meter."""

    stack: Door
    alone: Door
    alone_tls: Door
    floor: Door
    stack_cpu: CpuMeter
    alone_cpu: CpuMeter
    floor_cpu: CpuMeter
    postfix: PostfixAlone
    redis: Redis
    queues: list[str]


def one_round(
    stack: Stack, sides: Sides, floor: Floor, args: argparse.Namespace, point: Point,
    tag: str, root: Path, rate: float, paced: int,
) -> None:  # fmt: skip
    """Stack, Postfix alone (smtp-source, our client plain and with STARTTLS), the floor;
    then the paced rounds of the stack (with its hops), Postfix alone and the floor."""
    s, size, count, pfq = sides, point.size, point.count, sides.postfix.queue
    point.stack.append(through_client(
        stack, s.stack, args, size, count, tag + "m", s.redis, s.queues,
        stack.postfix_queue, "manycore stack", s.stack_cpu))  # fmt: skip
    point.source.append(through_smtp_source(
        stack, s.postfix, args, size, count, tag + "p", root, s.alone_cpu))  # fmt: skip
    point.client.append(through_client(
        stack, s.alone, args, size, count, tag + "c", None, [], pfq,
        "postfix (same client)", s.alone_cpu))  # fmt: skip
    point.client_tls.append(through_client(
        stack, s.alone_tls, args, size, count, tag + "t", None, [], pfq,
        "postfix (same client, STARTTLS)", s.alone_cpu))  # fmt: skip
    floor.ready()  # started with Postfix alone: long since ready after the rounds above
    point.floor.append(
        through_client(
            stack, s.floor, args, size, count, tag + "f", None, [], pfq, "floor", s.floor_cpu
        )
    )
    # Latency without a queue in front of the slowest stage: a steady, light load (the
    # rounds above offer mail as fast as it is taken).
    paced_stack = through_client(
        stack, s.stack, args, size, paced, tag + "mq", None, [], stack.postfix_queue,
        "manycore stack (paced)", s.stack_cpu, rate)  # fmt: skip
    paced_stack.hops = hops.measure(s.redis, paced_stack.stamps)
    point.stack_paced.append(paced_stack)
    point.client_paced.append(through_client(
        stack, s.alone, args, size, paced, tag + "cq", None, [], pfq, "postfix (paced)",
        s.alone_cpu, rate))  # fmt: skip
    if not args.quick:  # the same code path as the other paced rounds: not worth 2-5 s
        point.floor_paced.append(through_client(
            stack, s.floor, args, size, paced, tag + "fq", None, [], pfq, "floor (paced)",
            s.floor_cpu, rate))  # fmt: skip


def tls_main_cf(directory: Path) -> dict[str, str]:
    """STARTTLS for Postfix alone (offered, not required: the plain rounds stay plain), with
    a self-signed pair as the Receiver's, so our client can drive it as it drives the stack."""
    from manycore_common.tls import self_signed_pem

    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    cert_pem, key_pem = self_signed_pem("localhost", ip_addresses=(LOOPBACK,))
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(key_pem)
    return {
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": str(directory / "cert.pem"),
        "smtpd_tls_key_file": str(directory / "key.pem"),
    }


def floor_of(stack: Stack, root: Path, postfix: PostfixAlone) -> Floor:
    """The floor with the stack's Redis persistence and PostfixLog's number of connections."""
    from manycore_common import keyspace
    from manycore_common.config import load_config

    config = load_config(stack.global_file, stack.customer_file)
    keyspace.use(config.global_.reliable_queue.key_prefix)  # trace:<uuid>, for bench.hops
    redis = config.customer.redis
    server = redis.server if redis is not None else None
    fsync = server.appendfsync if server is not None else "everysec"
    postfixlog = config.customer.postfixlog
    connections = postfixlog.smtp_connections if postfixlog is not None else 4
    return Floor(root / "floor", postfix.port, stack.dkim_key, fsync, connections)


def sides_of(stack: Stack, postfix: PostfixAlone, floor: Floor) -> Sides:
    """Doors and CPU meters: every process of each side, the sink and webhook (one process,
    shared by all sides), the load (our children) and this watcher."""
    shared: dict[str, Callable[[], float]] = {
        **{role: functools.partial(cpu_seconds, pid) for role, pid in stack.peers_pids().items()},
        "client": functools.partial(own_cpu_seconds, resource.RUSAGE_CHILDREN),
        "bench watcher": functools.partial(own_cpu_seconds, resource.RUSAGE_SELF),
    }
    alone_postfix = functools.partial(group_cpu_seconds, master_pid(postfix.queue))
    return Sides(
        stack=Door(stack.smtp_port, tls=True, auth=True, events=True),
        alone=Door(postfix.port, tls=False, presign=True),
        alone_tls=Door(postfix.port, tls=True, presign=True),
        floor=Door(floor.port, tls=True, auth=True),
        stack_cpu=CpuMeter(
            {
                **{name: functools.partial(cpu_seconds, pid) for name, pid in stack.pids().items()},
                "postfix": functools.partial(group_cpu_seconds, master_pid(stack.postfix_queue)),
                **shared,
            }
        ),
        alone_cpu=CpuMeter({"postfix": alone_postfix, **shared}),
        floor_cpu=CpuMeter(
            {
                **{name: functools.partial(cpu_seconds, pid) for name, pid in floor.pids().items()},
                "postfix": alone_postfix,
                **shared,
            }
        ),
        postfix=postfix,
        redis=stack.redis(),
        queues=stack.queue_names(),
    )


def run(
    args: argparse.Namespace, root: Path, on_start: Callable[[Stack], None] | None = None
) -> tuple[list[Row], list[str], list[str]]:
    """Rows, notes and the stack's paced hops (lines). ``on_start`` runs on the started
    stack before the rounds (``bench.rediscost --quick
    --with-e2e``: the test smoke measures both on one stack, which takes ~14 s to start)."""
    for name in ("redis-server", "postfix", "smtp-source"):
        binary(name)
    stack = Stack(root / "run")
    notes: list[str] = []
    points = [Point(size, min(args.messages, max(args.min_messages, args.budget // size)))
              for size in args.sizes]  # fmt: skip
    run_tag = os.urandom(2).hex()
    try:
        stack.start()
        if on_start is not None:
            on_start(stack)
        postfix = PostfixAlone(
            root / "postfix-alone", stack.global_file, stack.customer_file,
            main_cf=tls_main_cf(root / "postfix-tls"),
        ).start()  # fmt: skip
        floor = floor_of(stack, root, postfix)
        try:
            floor.start()
            pids = stack.pids()
            sides = sides_of(stack, postfix, floor)
            time.sleep(args.settle)  # let the services finish starting up before "idle"
            idle = {name: memory_kb(pid)["VmRSS"] for name, pid in pids.items()}
            for point in points:
                # Light for every size: the stack takes ~18 msg/s of 500 KB here, so 20/s
                # would queue; above 50 KB the rate shrinks with the size, and a paced round
                # lasts at most ~10 s.
                rate = args.paced_rate / max(1.0, point.size / (50 * KB))
                paced = min(point.count, args.paced_messages, max(10, int(rate * 10)))
                for r in range(args.rounds):
                    print(f"  {size_name(point.size)} round {r + 1}/{args.rounds}: "
                          f"{point.count} messages each, then {paced} at "
                          f"{rate:g}/s", flush=True)  # fmt: skip
                    tag = f"e{run_tag}s{point.size // KB}r{r}"
                    one_round(stack, sides, floor, args, point, tag, root, rate, paced)
                    floor.check()
            end = {name: memory_kb(pid) for name, pid in pids.items()}
            sides.redis.close()
        finally:
            floor.stop()
            postfix.stop()
        notes += delay_notes(stack, postfix, run_tag)
    finally:
        stack.stop()
    hop_lines = [
        line
        for p in points
        for line in hops.table([o.hops for o in p.stack_paced], size_name(p.size))
    ]
    return rows_of(points, idle, end), notes, hop_lines


def delay_notes(stack: Stack, postfix: PostfixAlone, run_tag: str) -> list[str]:
    """Postfix's share of the latency, from the logs (before they go with the workdir)."""
    notes = []
    for log, suffix, label in ((stack.postfix_log, "m", "stack's Postfix"),
                               (postfix.log, "c", "Postfix alone")):  # fmt: skip
        delays = postfix_delays(log, re.compile(rf"^e{run_tag}s\d+r\d+{suffix}n\d+@"))
        if delays:
            notes.append(
                f"{label}: delay= (its smtpd's accept → sink's 250) p50 "
                f"{percentile(delays, 50):.2f} s, p99 {percentile(delays, 99):.2f} s "
                f"over {len(delays)} messages of the unpaced rounds (Postfix logs it in "
                "steps of 0.01 s)."
            )
    return notes


def latency_rows(
    benchmark: str, p: Point, stack: list[Outcome], alone: list[Outcome],
    subject: str = "manycore stack",
) -> list[Row]:  # fmt: skip
    rows = []
    for q in (50, 99):
        s = statistics.median(percentile(o.latencies, q) for o in stack) * 1000
        b = statistics.median(percentile(o.latencies, q) for o in alone) * 1000
        rows.append(Row(benchmark, f"p{q}/{p.size // KB}K", subject, s,
                        "postfix (same client)", b, s / b, unit="ms"))  # fmt: skip
    return rows


#: Rate rows: (subject, baseline) names, as printed. The stack's client uses STARTTLS and
#: AUTH, the plain "same client" baseline neither (the rows the README has always shown);
#: "STARTTLS" drives Postfix alone the same way (AUTH is before the clock, so only TLS
#: costs per message); the floor (bench/floor.py) is driven exactly as the stack.
RATE_ROWS = (
    ("manycore stack", "postfix (smtp-source)"),
    ("manycore stack", "postfix (same client)"),
    ("manycore stack", "postfix (STARTTLS)"),
    ("floor", "postfix (smtp-source)"),
    ("floor", "postfix (same client)"),
    ("floor", "postfix (STARTTLS)"),
    ("manycore stack", "floor"),
)


def rate_rows(p: Point) -> list[Row]:
    """Rates and the median of the per-round ratios (the sides of one round ran back to
    back, so each ratio compares like with like)."""
    med = statistics.median
    sides = {"manycore stack": p.stack, "postfix (smtp-source)": p.source,
             "postfix (same client)": p.client, "postfix (STARTTLS)": p.client_tls,
             "floor": p.floor}  # fmt: skip
    rows = []
    for subject, baseline in RATE_ROWS:
        s, b = sides[subject], sides[baseline]
        ratios = [x.rate / y.rate for x, y in zip(s, b, strict=True)]
        rows.append(Row("e2e", size_name(p.size), subject, med(o.rate for o in s), baseline,
                        med(o.rate for o in b), med(ratios)))  # fmt: skip
    return rows


def cpu_rows(p: Point, side: str, outcomes: list[Outcome], count: int) -> list[Row]:
    """CPU µs per message of each process, against the wall time per message: the ratio is
    how busy it kept one core (one asyncio process cannot go above 1.0)."""
    rows = []
    for name in outcomes[0].cpu:
        per_message = statistics.median(o.cpu[name] / count * 1e6 for o in outcomes)
        wall = statistics.median(1e6 / o.rate for o in outcomes)
        share = statistics.median(o.cpu[name] * o.rate / count for o in outcomes)
        rows.append(Row("cpu", size_name(p.size), f"{side}: {name}", per_message,
                        "wall per message", wall, share, unit="us/msg"))  # fmt: skip
    return rows


def rows_of(points: list[Point], idle: dict[str, int], end: dict[str, dict[str, int]]) -> list[Row]:
    rows: list[Row] = []
    med = statistics.median
    for p in points:
        rows += rate_rows(p)
    for p in points:
        rows += latency_rows("latency", p, p.stack, p.client)
    for p in points:
        rows += latency_rows("paced", p, p.stack_paced, p.client_paced)
        if p.floor_paced:  # not in --quick
            rows += latency_rows("paced", p, p.floor_paced, p.client_paced, "floor")
    for p in points:
        events = med(o.events_rate for o in p.stack)
        mail = med(o.rate for o in p.stack)
        rows.append(Row("events", size_name(p.size), "delivered events", events,
                        "mail at the sink", mail, events / mail, unit="ev/s"))  # fmt: skip
    for p in points:
        rows += cpu_rows(p, "stack", p.stack, p.count)
        rows += cpu_rows(p, "alone", p.source, p.count)
        rows += cpu_rows(p, "floor", p.floor, p.count)
    for p in points:
        depths: dict[str, list[int]] = defaultdict(list)
        for o in p.stack:
            for name, depth in o.depths.items():
                depths[name].append(depth)
        for name, seen in depths.items():
            rows.append(Row("queue", size_name(p.size), f"max {name}", med(seen),
                            "messages in round", p.count, med(seen) / p.count,
                            unit="items"))  # fmt: skip
    for name, kb in idle.items():
        rows.append(Row("memory", "idle", name, kb, "target 80 MB", IDLE_TARGET_KB,
                        kb / IDLE_TARGET_KB, unit="KB"))  # fmt: skip
    for key, case in (("VmHWM", "peak"), ("VmRSS", "end")):
        for name, status in end.items():
            rows.append(Row("memory", case, name, status[key], "idle", idle[name],
                            status[key] / idle[name], unit="KB"))  # fmt: skip
    return rows


def main(argv: list[str] | None = None, on_start: Callable[[Stack], None] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.e2e")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--messages", type=int, default=2000, help="messages per round")
    parser.add_argument("--min-messages", type=int, default=200,
                        help="at least this many per round, whatever --budget says")  # fmt: skip
    parser.add_argument("--budget", type=int, default=200 * 1024 * 1024,
                        help="bytes per round: fewer messages for the large sizes")  # fmt: skip
    parser.add_argument("--sizes", default="5,50,500", help="message sizes in KB")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before idle RSS")
    parser.add_argument("--paced-messages", type=int, default=100,
                        help="messages per paced (latency) round")  # fmt: skip
    parser.add_argument("--paced-rate", type=float, default=20.0,
                        help="messages/s of the paced rounds")  # fmt: skip
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tls", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-auth", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    parser.add_argument("--dkim-key", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        sent = asyncio.run(
            drive(
                args.port,
                args.tls,
                args.connections,
                args.messages,
                args.size,
                args.tag,
                Path(args.dkim_key) if args.dkim_key else None,
                args.rate,
                not args.no_auth,
            )
        )
        print(json.dumps(sent))
        return
    args.sizes = [int(s) * KB for s in str(args.sizes).split(",")]
    if args.quick:
        args.messages, args.min_messages, args.rounds, args.settle = 30, 30, 1, 1.0
        args.paced_messages = 10
        args.sizes, args.connections = [5 * KB], 4
    # Postfix's unprivileged processes must reach its queue: a 0755 directory of our own
    # (mkdtemp makes 0700 ones), as the end-to-end tests do (docs/ARCHITECTURE.md#checked-facts).
    root = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    root.chmod(0o755)
    try:
        rows, notes, hop_lines = run(args, root, on_start)
    finally:
        if not os.environ.get("MANYCORE_KEEP_BENCH"):  # keep the logs to look into a failure
            shutil.rmtree(root, ignore_errors=True)
    counts = ", ".join(
        f"{size_name(s)}: {min(args.messages, max(args.min_messages, args.budget // s))}"
        for s in args.sizes
    )
    print(
        f"End to end, messages per round ({counts}), {args.connections} connections, "
        f"medians of {args.rounds} interleaved rounds; no message lost or doubled:"
    )
    print(table([r for r in rows if r.benchmark == "e2e"]))
    print("Latency, Receiver's 250 (or Postfix's) → arrival at the sink, ms:")
    print(table([r for r in rows if r.benchmark == "latency"]))
    print(f"Latency at a steady {args.paced_rate:g} messages/s (less above 50 KB), ms:")
    print(table([r for r in rows if r.benchmark == "paced"]))
    print("The stack's paced rounds by hop (bench/hops.py: stamps of trace:<uuid>), ms:")
    print("\n".join([hops.HEADER, *hop_lines]))
    print("CPU per message by process (us), vs wall time per message; ratio = cores busy:")
    print(table([r for r in rows if r.benchmark == "cpu"]))
    print("Events at the webhook inbox, per second:")
    print(table([r for r in rows if r.benchmark == "events"]))
    print("Deepest queues during the stack's rounds (items):")
    print(table([r for r in rows if r.benchmark == "queue"]))
    print("Memory (RSS in KB; peak = VmHWM over the whole run):")
    print(table([r for r in rows if r.benchmark == "memory"]))
    for note in notes:
        print(note)
    if not args.quick:
        paths = write(
            "e2e",
            rows,
            "End to end through the whole local stack (`make run`'s devstack: Receiver → "
            "Transformer → PostfixLog → its Postfix → sink MX, plus MxServer, BackData and the "
            "webhook inbox), one recipient per message, vs Postfix alone: a private Postfix "
            "with the main.cf PostfixLog renders (relayhost = the same sink, DNS off), driven "
            "by smtp-source (-d, same sessions), by the same client without TLS and with "
            "STARTTLS; floor: bench/floor.py (bare door + LPUSH, bare DKIM signer, bare "
            "relay into Postfix alone), driven as the stack. Rate: "
            "messages / (first submission → last arrival at the sink). Stack client: STARTTLS "
            "+ AUTH PLAIN, sessions set up before the clock starts, separate process. "
            f"Messages per round: {counts}; {args.connections} connections; medians of "
            f"{args.rounds} interleaved rounds; every message arrived exactly once (stack's "
            "DKIM-verified by the sink). latency: the client's 250 → the sink's arrival "
            "stamp, median over rounds of each round's p50/p99, in the rounds above (mail "
            "offered as fast as it is taken: queueing included) and in paced rounds "
            f"(up to {args.paced_messages} messages at {args.paced_rate:g}/s, scaled down "
            "above 50 KB by size / 50 KB). cpu: CPU time per "
            "message of each process (/proc utime+stime; Postfix: its whole process group "
            "and reaped children) vs wall time per message; ratio = cores kept busy; 'alone' "
            "= the smtp-source rounds. events: delivered events/s "
            "at the webhook (first submission → last event seen, 50 ms polling). queue: "
            "deepest Redis list / Postfix queue seen (50 ms polling) vs messages per round. "
            "memory: VmRSS idle, VmHWM over the whole run (peak), VmRSS at the end. "
            + " ".join(notes)
            + f" Machine: {os.cpu_count()} CPUs shared by the stack, Postfix and the client.",
        )
        print("written:", *paths)


if __name__ == "__main__":
    main()
