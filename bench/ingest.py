"""Ingest: messages/s accepted by the real Receiver (SMTP, STARTTLS + AUTH PLAIN, 5 KB
messages) against a bare aiosmtpd server that discards (same TLS context, same AUTH rules,
its own process), and requests/s of the real HttpReceiver against a bare aiohttp handler
that reads the body and answers 200. Then memory: RSS of each server idle and after the
load, and Redis ``used_memory`` per queued 5 KB item.

Every server runs in its own process; the load comes from one separate client process per
round (a lean asyncio client: one coroutine per connection, connections opened, upgraded
and authenticated before the clock starts, then messages back to back until the time is up).
Subject and baseline alternate, round after round, so drift in the machine's load hits both
alike; the figures are medians. Everything is on 127.0.0.1, no DNS.

    python -m bench.ingest            # full run (make bench)
    python -m bench.ingest --quick    # smoke run (make test)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from redis import Redis

from bench.common import Row, table, write

LOOPBACK = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
USER, PASSWORD = "apa", "banan"
MESSAGE_SIZE = 5 * 1024
QUEUE = "IB-MAIL-QUEUE-P1"


# ----------------------------------------------------------------- small helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.05)
    raise SystemExit(f"bench.ingest: timed out waiting for {what}")


def port_open(port: int) -> bool:
    with socket.create_connection((LOOPBACK, port), timeout=0.5):
        return True


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as response:
        return int(response.status) == 200


def rss_kb(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit(f"bench.ingest: no VmRSS for {pid}")


def message(uuid: str, size: int = MESSAGE_SIZE) -> bytes:
    """A valid message of ``size`` bytes (no line starts with a dot)."""
    head = (
        "From: Shop <news@example.com>\r\n"
        "To: Alice <alice@example.net>\r\n"
        "Subject: Benchmark message\r\n"
        f"X-Uuid: {uuid}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    body = line * ((size - len(head)) // len(line))
    body += b"y" * (size - len(head) - len(body) - 2) + b"\r\n"
    return head + body


# ----------------------------------------------------------------- bare servers (own process)


def serve_bare_smtp(port: int, cert: Path, key: Path) -> None:
    """aiosmtpd with the Receiver's shape (STARTTLS required, AUTH PLAIN/LOGIN after TLS,
    same TLS context), whose DATA handler throws the message away."""
    from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

    from manycore_common import tls

    context, _ = tls.server_context(cert, key, "localhost")

    class Discard:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            return "250 2.0.0 OK"

    def authenticator(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            USER.encode(),
            PASSWORD.encode(),
        )
        return AuthResult(success=ok, handled=False)

    handler = Discard()

    def factory() -> SMTP:
        return SMTP(
            handler,
            hostname="localhost",
            ident="bare aiosmtpd",
            tls_context=context,
            require_starttls=True,
            auth_required=True,
            auth_require_tls=True,
            authenticator=authenticator,
            data_size_limit=26214400,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=300,
        )

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(factory, LOOPBACK, port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def serve_bare_http(port: int) -> None:
    """aiohttp: POST /v1/mail/send reads the body and answers a small JSON 200."""
    from aiohttp import web

    async def send(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"uuid": "bare", "queue": "none"})

    app = web.Application()
    app.router.add_post("/v1/mail/send", send)
    web.run_app(app, host=LOOPBACK, port=port, access_log=None, print=None)


# ----------------------------------------------------------------- the load (own process)


async def _reply(reader: asyncio.StreamReader, expected: int) -> None:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        if line[3:4] != b"-":
            break
    if int(line[:3]) != expected:
        raise RuntimeError(f"expected {expected}, got {line!r}")


async def _smtp_session(port: int, context: ssl.SSLContext) -> tuple[Any, Any]:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    await _reply(reader, 220)
    writer.write(b"EHLO localhost\r\n")
    await _reply(reader, 250)
    writer.write(b"STARTTLS\r\n")
    await _reply(reader, 220)
    await writer.start_tls(context, server_hostname="localhost")
    writer.write(b"EHLO localhost\r\n")
    await _reply(reader, 250)
    token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    writer.write(b"AUTH PLAIN " + token + b"\r\n")
    await _reply(reader, 235)
    return reader, writer


async def _smtp_send(reader: asyncio.StreamReader, writer: Any, data: bytes) -> None:
    writer.write(b"MAIL FROM:<news@example.com>\r\n")
    await _reply(reader, 250)
    writer.write(b"RCPT TO:<alice@example.net>\r\n")
    await _reply(reader, 250)
    writer.write(b"DATA\r\n")
    await _reply(reader, 354)
    writer.write(data + b".\r\n")
    await _reply(reader, 250)


async def _http_session(port: int) -> tuple[Any, Any]:
    return await asyncio.open_connection(LOOPBACK, port)


async def _http_send(reader: asyncio.StreamReader, writer: Any, data: bytes) -> None:
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode())
    writer.write(
        b"POST /v1/mail/send HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic " + auth + b"\r\n"
        b"Content-Type: message/rfc822\r\nContent-Length: %d\r\n\r\n" % len(data) + data
    )
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    if status != 200:
        raise RuntimeError(f"HTTP {status}")


async def load(
    kind: str, port: int, connections: int, seconds: float, cafile: str
) -> dict[str, Any]:
    """Open ``connections`` sessions, then send back to back for ``seconds``."""
    context = ssl.create_default_context(cafile=cafile) if kind == "smtp" else None
    sessions = await asyncio.gather(
        *(
            _smtp_session(port, context) if context else _http_session(port)
            for _ in range(connections)
        )
    )
    send = _smtp_send if kind == "smtp" else _http_send
    counts = {"ok": 0, "errors": 0}
    tag = os.urandom(3).hex()
    started = time.perf_counter()
    deadline = started + seconds

    async def worker(number: int, reader: asyncio.StreamReader, writer: Any) -> None:
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            try:
                await send(reader, writer, message(f"b{tag}c{number}n{n}"))
                counts["ok"] += 1
            except RuntimeError:
                counts["errors"] += 1
                if kind == "smtp":
                    writer.write(b"RSET\r\n")
                    await _reply(reader, 250)

    await asyncio.gather(*(worker(i, r, w) for i, (r, w) in enumerate(sessions)))
    elapsed = time.perf_counter() - started
    for _, writer in sessions:
        writer.close()
    return {"ok": counts["ok"], "errors": counts["errors"], "seconds": elapsed}


def run_load(kind: str, port: int, connections: int, seconds: float, cafile: Path) -> float:
    """Rate measured by a client in a separate process."""
    argv = [sys.executable, "-m", "bench.ingest", "--client", kind, "--port", str(port),
            "--connections", str(connections), "--seconds", str(seconds),
            "--cafile", str(cafile)]  # fmt: skip
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise SystemExit(f"bench.ingest: client failed:\n{result.stderr}")
    counts = json.loads(result.stdout)
    if counts["errors"] or not counts["ok"]:
        raise SystemExit(f"bench.ingest: {kind} load on {port} had errors: {counts}")
    return float(counts["ok"]) / float(counts["seconds"])


# ----------------------------------------------------------------- processes


@contextlib.contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_configs(directory: Path, redis_port: int) -> tuple[Path, Path, dict[str, Any]]:
    """The example config files with Redis and every listener on loopback ports."""
    global_file = directory / "global.yaml"
    customer_file = directory / "customer.yaml"
    shutil.copy(ROOT / "inboxbooster-mailer-global.yaml.example", global_file)
    customer = yaml.safe_load((ROOT / "inboxbooster-mailer-customer.yaml.example").read_text())
    for section in customer.values():
        if not isinstance(section, dict):
            continue
        if "reliable-queue" in section:
            section["reliable-queue"]["redis"] = {"hostname": LOOPBACK, "port": redis_port}
        for key in ("bind", "prometheus"):
            if key in section:
                section[key] = {"inet-interface": LOOPBACK, "inet-port": free_port()}
    customer["receiver"]["hostname"] = "localhost"
    for name in ("receiver", "httpreceiver"):
        customer[name]["auth-throttle"] = {"max-failures": 1000, "delay-seconds": 0}
    customer_file.write_text(yaml.safe_dump(customer, sort_keys=False))
    return global_file, customer_file, customer


def service_argv(name: str, global_file: Path, customer_file: Path) -> list[str]:
    script = Path(sys.executable).with_name(f"manycore-{name}")
    return [str(script), "--global-config-file", str(global_file),
            "--customer-config-file", str(customer_file)]  # fmt: skip


# ----------------------------------------------------------------- measurements


def compare(
    kind: str,
    label: str,
    subject: tuple[str, int],
    baseline: tuple[str, int],
    connections: list[int],
    rounds: int,
    seconds: float,
    cafile: Path,
    redis: Redis,
) -> list[Row]:
    rows = []
    unit = "msg/s" if kind == "smtp" else "req/s"
    for n in connections:
        subject_rates, baseline_rates, ratios = [], [], []
        for _ in range(rounds):
            redis.flushall()  # stay far below the high-water mark
            s = run_load(kind, subject[1], n, seconds, cafile)
            b = run_load(kind, baseline[1], n, seconds, cafile)
            subject_rates.append(s)
            baseline_rates.append(b)
            ratios.append(s / b)
        rows.append(
            Row(
                label,
                f"c{n}",
                subject[0],
                statistics.median(subject_rates),
                baseline[0],
                statistics.median(baseline_rates),
                statistics.median(ratios),
                unit=unit,
            )
        )
    return rows


async def push_items(port: int, count: int) -> int:
    """Queue ``count`` 5 KB items with ReliableQueue.push_many; returns one item's size."""
    from redis.asyncio import Redis as AsyncRedis

    from manycore_common.item import new_item
    from manycore_common.queue import ReliableQueue

    client = AsyncRedis(host=LOOPBACK, port=port)
    queue = ReliableQueue(client, QUEUE)
    size = 0
    batch = 5000
    for start in range(0, count, batch):
        raws = [
            new_item(message(f"q{n}"), source="smtp", uuid=f"q{n}", rcpts=["alice@example.net"])
            for n in range(start, min(start + batch, count))
        ]
        size = len(raws[0])
        await queue.push_many(raws)
    await client.aclose()
    return size


def redis_memory(redis: Redis, port: int, count: int) -> Row:
    redis.flushall()
    before = int(redis.info("memory")["used_memory"])
    size = asyncio.run(push_items(port, count))
    after = int(redis.info("memory")["used_memory"])
    assert int(redis.llen(QUEUE)) == count
    redis.flushall()
    per_item = (after - before) / count
    return Row("memory", f"{count // 1000}k", "redis bytes/queued item", per_item,
               "item bytes", float(size), per_item / size, unit="B")  # fmt: skip


def run(args: argparse.Namespace, workdir: Path) -> list[Row]:
    from manycore_common.tls import self_signed_pem

    binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin")
    if binary is None:
        raise SystemExit("bench.ingest: redis-server is not installed (make test installs it)")
    cert_pem, key_pem = self_signed_pem("localhost", ip_addresses=(LOOPBACK,))
    cert, key = workdir / "receiver_cert.pem", workdir / "receiver_key.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    redis_port, bare_smtp, bare_http = free_port(), free_port(), free_port()
    global_file, customer_file, customer = write_configs(workdir, redis_port)
    smtp_port = int(customer["receiver"]["bind"]["inet-port"])
    http_port = int(customer["httpreceiver"]["bind"]["inet-port"])
    me = [sys.executable, "-m", "bench.ingest"]
    redis_argv = [binary, "--port", str(redis_port), "--bind", LOOPBACK, "--dir", str(workdir),
                  "--save", "", "--appendonly", "no", "--daemonize", "no"]  # fmt: skip
    rows: list[Row] = []
    with (
        process(redis_argv, workdir / "redis.log"),
        process(service_argv("receiver", global_file, customer_file), workdir / "rcv.log") as rcv,
        process(
            service_argv("httpreceiver", global_file, customer_file), workdir / "http.log"
        ) as api,
        process(
            [*me, "--bare-smtp", str(bare_smtp), "--cert", str(cert), "--key", str(key)],
            workdir / "bare-smtp.log",
        ) as bsmtp,
        process([*me, "--bare-http", str(bare_http)], workdir / "bare-http.log") as bhttp,
    ):
        redis = Redis(host=LOOPBACK, port=redis_port)
        wait_until(redis.ping, 10, "redis-server")
        for name in ("receiver", "httpreceiver"):
            metrics = customer[name]["prometheus"]["inet-port"]
            wait_until(functools.partial(http_ok, f"http://{LOOPBACK}:{metrics}/readyz"), 30, name)
        for port in (bare_smtp, bare_http):
            wait_until(functools.partial(port_open, port), 30, f"bare server on {port}")
        time.sleep(0.5)
        idle = {p.pid: rss_kb(p.pid) for p in (rcv, api, bsmtp, bhttp)}
        rows += compare("smtp", "smtp-ingest", ("manycore-receiver", smtp_port),
                        ("bare aiosmtpd (discard)", bare_smtp), args.connections, args.rounds,
                        args.seconds, cert, redis)  # fmt: skip
        rows += compare("http", "http-ingest", ("manycore-httpreceiver", http_port),
                        ("bare aiohttp (no-op)", bare_http), args.connections, args.rounds,
                        args.seconds, cert, redis)  # fmt: skip
        loaded = {p.pid: rss_kb(p.pid) for p in (rcv, api, bsmtp, bhttp)}
        for case, values in (("idle", idle), ("loaded", loaded)):
            for subject, baseline, sname, bname in (
                (rcv, bsmtp, "manycore-receiver", "bare aiosmtpd"),
                (api, bhttp, "manycore-httpreceiver", "bare aiohttp"),
            ):
                s, b = values[subject.pid], values[baseline.pid]
                rows.append(Row("memory", case, sname, s, bname, b, s / b, unit="KB"))
        rows.append(redis_memory(redis, redis_port, args.queued))
        redis.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.ingest")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--seconds", type=float, default=2.5, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--connections", default="1,8,32", help="concurrent connections")
    parser.add_argument("--queued", type=int, default=100_000, help="items for Redis memory")
    parser.add_argument("--bare-smtp", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bare-http", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=("smtp", "http"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cafile", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_smtp:
        serve_bare_smtp(args.bare_smtp, Path(args.cert), Path(args.key))
        return
    if args.bare_http:
        serve_bare_http(args.bare_http)
        return
    if args.client:
        counts = asyncio.run(
            load(args.client, args.port, int(args.connections), args.seconds, args.cafile)
        )
        print(json.dumps(counts))
        return
    args.connections = [int(c) for c in str(args.connections).split(",")]
    if args.quick:
        args.seconds, args.rounds, args.queued = 0.5, 1, 2000
        args.connections = [1, 8]
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        rows = run(args, Path(tmp))
    print(
        f"Ingest, {MESSAGE_SIZE // 1024} KB messages, cN = N connections, "
        f"medians of {args.rounds} interleaved rounds of {args.seconds:g} s:"
    )
    print(table([r for r in rows if r.benchmark != "memory"]))
    print("Memory (RSS in KB; Redis in bytes per queued item):")
    print(table([r for r in rows if r.benchmark == "memory"]))
    if not args.quick:
        paths = write(
            "ingest",
            rows,
            f"Ingest of {MESSAGE_SIZE // 1024} KB messages. smtp-ingest: msg/s accepted by "
            "manycore-receiver (STARTTLS + AUTH PLAIN, 250 only after the Redis push) vs a bare "
            "aiosmtpd with the same TLS/AUTH shape that discards. http-ingest: req/s of "
            "manycore-httpreceiver (POST /v1/mail/send, Basic auth) vs a bare aiohttp handler "
            "that reads the body and answers 200. cN: N keep-alive connections, opened and "
            "authenticated before the clock starts, one client process (lean asyncio). "
            f"Medians of {args.rounds} interleaved rounds of {args.seconds:g} s. memory: VmRSS "
            "(KB) idle and after the load, and Redis used_memory growth per queued item with "
            f"{args.queued:,} 5 KB items pushed by ReliableQueue.push_many (rate column = "
            f"bytes). Machine: {os.cpu_count()} CPUs shared by Redis, server and client.",
        )
        print("written:", *paths)


if __name__ == "__main__":
    main()
