"""Ingest: messages/s accepted by the real Receiver (SMTP, STARTTLS + AUTH PLAIN, 5 KB
messages) against a bare aiosmtpd server that discards (same TLS context, same AUTH rules,
its own process) and against Postfix's own smtpd accepting into its queue (bench.postfix);
requests/s of the real HttpReceiver against a bare aiohttp handler that reads the body and
answers 200. Each of those also against a second, fairer baseline in the same rounds: the
bare server plus an ``LPUSH`` of the message to the same Redis before it answers (what
durability costs at the least). Growth: the 8-connection case with 50 and 500 KB messages,
and with 100,000 items already queued. Then memory: RSS of each server idle and after the
load, and Redis ``used_memory`` per queued 5 KB item.

Redis runs as the Redis pod runs it (AOF, fsync every second). Every server runs in its own
process; the load comes from one separate client process per round (a lean asyncio client:
one coroutine per connection, connections opened, upgraded and authenticated before the
clock starts, then messages back to back until the time is up). Subject and baseline
alternate, round after round, so drift in the machine's load hits both alike; the figures
are medians. Everything is on 127.0.0.1, no DNS.

    python -m bench.ingest            # full run (make bench)
    python -m bench.ingest --quick    # smoke run (make test)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import functools
import json
import os
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

from bench.common import LOOPBACK, ROOT, Row, binary, free_port, port_open, rss_kb, table, write
from bench.postfix import PostfixAlone
from bench.smtpclient import PASSWORD, USER, reply, session

MESSAGE_SIZE = 5 * 1024
#: Worker processes of the front doors in the workers rows: the machine's two cores.
WORKERS = 2
QUEUE = "IB-MAIL-QUEUE-P1"
#: Where the "+ LPUSH" bare baselines put each message (emptied with the rest each round).
BARE_KEY = "BENCH-BARE-LPUSH"


# ----------------------------------------------------------------- small helpers


def wait_until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.05)
    raise SystemExit(f"bench.ingest: timed out waiting for {what}")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as response:
        return int(response.status) == 200


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


def serve_bare_smtp(
    port: int, cert: Path, key: Path, lean: bool = False, push: int | None = None
) -> None:
    """aiosmtpd with the Receiver's shape (STARTTLS required, AUTH PLAIN/LOGIN after TLS,
    same TLS context), whose DATA handler throws the message away. ``lean``: reading MAIL and
    RCPT paths as the Receiver does (plain_path), so that the comparison shows what the
    Receiver's own work costs rather than what it saves on aiosmtpd's address parser.
    ``push``: a Redis port; the handler LPUSHes the message there before its 250 instead
    (the unavoidable cost of durability, the fairer baseline for large messages)."""
    from aiosmtpd.smtp import SMTP as AiosmtpdSMTP
    from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

    from manycore_common import tls

    SMTP = AiosmtpdSMTP
    if lean:
        # Imported only here: the plain bare server's memory is aiosmtpd's alone.
        from manycore_receiver.smtp import plain_path

        class LeanSMTP(AiosmtpdSMTP):
            def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
                plain = plain_path(arg)
                return super()._getaddr(arg) if plain is None else plain

        SMTP = LeanSMTP

    context, _ = tls.server_context(cert, key, "localhost")

    redis = bare_redis(push)

    class Discard:
        async def handle_DATA(
            self, server: AiosmtpdSMTP, session: Session, envelope: Envelope
        ) -> str:
            if redis is not None:
                await redis.lpush(BARE_KEY, envelope.original_content or b"")
            return "250 2.0.0 OK"

    def authenticator(
        server: AiosmtpdSMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            USER.encode(),
            PASSWORD.encode(),
        )
        return AuthResult(success=ok, handled=False)

    handler = Discard()

    def factory() -> AiosmtpdSMTP:
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


def bare_redis(port: int | None) -> Any:
    """The bare servers' Redis client (redis.asyncio), or None when they only discard."""
    if port is None:
        return None
    from redis.asyncio import Redis as AsyncRedis

    return AsyncRedis(host=LOOPBACK, port=port)


def serve_bare_http(port: int, push: int | None = None) -> None:
    """aiohttp: POST /v1/mail/send reads the body (``push``: and LPUSHes it to the Redis on
    that port) and answers a small JSON 200."""
    from aiohttp import web

    redis = bare_redis(push)

    async def send(request: web.Request) -> web.Response:
        body = await request.read()
        if redis is not None:
            await redis.lpush(BARE_KEY, body)
        return web.json_response({"uuid": "bare", "queue": "none"})

    app = web.Application()
    app.router.add_post("/v1/mail/send", send)
    web.run_app(app, host=LOOPBACK, port=port, access_log=None, print=None)


# ----------------------------------------------------------------- the load (own process)


async def _smtp_send(reader: asyncio.StreamReader, writer: Any, data: bytes) -> None:
    writer.write(b"MAIL FROM:<news@example.com>\r\n")
    await reply(reader, 250)
    writer.write(b"RCPT TO:<alice@example.net>\r\n")
    await reply(reader, 250)
    writer.write(b"DATA\r\n")
    await reply(reader, 354)
    writer.write(data + b".\r\n")
    await reply(reader, 250)


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
    kind: str, port: int, connections: int, seconds: float, cafile: str, size: int = MESSAGE_SIZE
) -> dict[str, Any]:
    """Open ``connections`` sessions, then send back to back for ``seconds``."""
    smtp = kind.startswith("smtp")
    context = ssl.create_default_context(cafile=cafile) if smtp else None
    sessions = await asyncio.gather(
        *(
            session(port, context, auth=kind == "smtp") if context else _http_session(port)
            for _ in range(connections)
        )
    )
    send = _smtp_send if smtp else _http_send
    counts = {"ok": 0, "errors": 0}
    tag = os.urandom(3).hex()
    started = time.perf_counter()
    deadline = started + seconds

    async def worker(number: int, reader: asyncio.StreamReader, writer: Any) -> None:
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            try:
                await send(reader, writer, message(f"b{tag}c{number}n{n}", size))
                counts["ok"] += 1
            except RuntimeError:
                counts["errors"] += 1
                if smtp:
                    writer.write(b"RSET\r\n")
                    await reply(reader, 250)

    await asyncio.gather(*(worker(i, r, w) for i, (r, w) in enumerate(sessions)))
    elapsed = time.perf_counter() - started
    for _, writer in sessions:
        writer.close()
    return {"ok": counts["ok"], "errors": counts["errors"], "seconds": elapsed}


def run_load(
    kind: str, port: int, connections: int, seconds: float, cafile: Path, size: int = MESSAGE_SIZE
) -> float:
    """Rate measured by a client in a separate process."""
    argv = [sys.executable, "-m", "bench.ingest", "--client", kind, "--port", str(port),
            "--connections", str(connections), "--seconds", str(seconds),
            "--cafile", str(cafile), "--size", str(size)]  # fmt: skip
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
    settings = yaml.safe_load((ROOT / "inboxbooster-mailer-global.yaml.example").read_text())
    # The queue-depth case puts 100,000 items in the queue before the load starts.
    settings["reliable-queue"]["high-water-mark"] = 10_000_000
    global_file.write_text(yaml.safe_dump(settings, sort_keys=False))
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


def with_workers(
    customer: dict[str, Any], directory: Path, workers: int
) -> tuple[Path, dict[str, Any]]:
    """The same customer config with both front doors on other ports running ``workers``
    worker processes each (workers.py)."""
    changed = copy.deepcopy(customer)
    for name in ("receiver", "httpreceiver"):
        changed[name]["workers"] = workers
        for key in ("bind", "prometheus"):
            changed[name][key] = {"inet-interface": LOOPBACK, "inet-port": free_port()}
    path = directory / f"customer-{workers}-workers.yaml"
    path.write_text(yaml.safe_dump(changed, sort_keys=False))
    return path, changed


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
    size: int = MESSAGE_SIZE,
    queued: int = 0,
    case: str = "",
    baseline_kind: str | None = None,
    reset_baseline: Callable[[], object] | None = None,
    second: tuple[str, int] | None = None,
) -> list[Row]:
    """Subject against baseline (and ``second``, a second baseline in the same rounds: one
    row more per case), alternating; before each round Redis holds ``queued`` waiting 5 KB
    items (the queue-depth growth case) and nothing else, and the baseline is reset
    (Postfix's queue emptied) the same way."""
    rows = []
    unit = "msg/s" if kind.startswith("smtp") else "req/s"
    baselines = [baseline] if second is None else [baseline, second]
    for n in connections:
        subject_rates: list[float] = []
        rates: list[list[float]] = [[] for _ in baselines]
        for _ in range(rounds):
            redis.flushall()
            if queued:
                asyncio.run(push_items(redis_port(redis), queued))
            if reset_baseline is not None:
                reset_baseline()
            subject_rates.append(run_load(kind, subject[1], n, seconds, cafile, size))
            for (_, port), got in zip(baselines, rates, strict=True):
                got.append(run_load(baseline_kind or kind, port, n, seconds, cafile, size))
        for (name, _), got in zip(baselines, rates, strict=True):
            ratios = [s / b for s, b in zip(subject_rates, got, strict=True)]
            rows.append(Row(label, f"c{n}{case}", subject[0], statistics.median(subject_rates),
                            name, statistics.median(got), statistics.median(ratios),
                            unit=unit))  # fmt: skip
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


def redis_port(redis: Redis) -> int:
    return int(redis.connection_pool.connection_kwargs["port"])


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


def against_postfix(
    args: argparse.Namespace,
    workdir: Path,
    configs: tuple[Path, Path],
    smtp_port: int,
    cert: Path,
    redis: Redis,
) -> list[Row]:
    """The Receiver against Postfix's own smtpd accepting into its queue: Postfix from
    Debian, configured as PostfixLog configures it, plus STARTTLS with the Receiver's
    certificate and a HOLD on every message, so that its 250 means "written to the queue
    and fsynced" (cleanup(8)) and nothing is delivered meanwhile. Its queue is emptied
    before each round, as Redis is. AUTH happens before the clock starts for the Receiver,
    so the baseline doing without it (no SASL in Debian's postfix package alone) costs the
    comparison nothing per message."""
    main_cf = {
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": str(cert),
        "smtpd_tls_key_file": str(cert.with_name("receiver_key.pem")),
        "smtpd_client_restrictions": "check_client_access static:HOLD",
    }
    root = workdir / "postfix-ingest"
    root.mkdir(mode=0o755)
    with PostfixAlone(root, *configs, main_cf=main_cf, name="bench-ingest") as postfix:

        def empty_queue() -> None:
            asyncio.run(postfix.instance.postsuper("-d", "ALL"))

        rows = compare("smtp", "smtp-vs-postfix", ("manycore-receiver", smtp_port),
                       ("postfix smtpd (queue)", postfix.port), args.connections, args.rounds,
                       args.seconds, cert, redis, baseline_kind="smtp-noauth",
                       reset_baseline=empty_queue)  # fmt: skip
        held = postfix.instance.queue_counts().get("hold", 0)
    if not held:
        raise SystemExit("bench.ingest: Postfix held nothing: the baseline did not queue")
    return rows


def workers_rows(
    args: argparse.Namespace,
    pool: dict[str, Any],
    bare: tuple[int, int],
    cert: Path,
    redis: Redis,
) -> list[Row]:
    """Both front doors with WORKERS worker processes (workers.py) against the same
    one-process baselines, at 8 connections and more: one Python process uses one core, and
    a pod given more cores uses them this way."""
    connections = [n for n in args.connections if n >= 8]
    rows: list[Row] = []
    for kind, name, label, baseline in (
        ("smtp", "receiver", "smtp-workers", ("bare aiosmtpd (discard)", bare[0])),
        ("http", "httpreceiver", "http-workers", ("bare aiohttp (no-op)", bare[1])),
    ):
        subject = (f"manycore-{name} ×{WORKERS} workers", int(pool[name]["bind"]["inet-port"]))
        rows += compare(kind, label, subject, baseline, connections, args.rounds, args.seconds,
                        cert, redis)  # fmt: skip
    return rows


def growth(
    args: argparse.Namespace,
    smtp: tuple[int, int, int],
    http: tuple[int, int, int],
    cert: Path,
    redis: Redis,
) -> list[Row]:
    """The 8-connection case again with larger messages, and with ``args.depth`` items
    already waiting in the queue the front doors push to; against the bare server and the
    bare server + LPUSH. Each tuple: (subject, bare, bare + LPUSH) ports."""
    rows: list[Row] = []
    cases = [(size, 0, f" {size // 1024}KB") for size in args.sizes if size != MESSAGE_SIZE]
    if args.depth:
        cases.append((MESSAGE_SIZE, args.depth, f" {args.depth // 1000}k-queued"))
    for size, queued, case in cases:
        for kind, label, ports, (name, bare) in (
            ("smtp", "growth-smtp", smtp, ("manycore-receiver", "bare aiosmtpd")),
            ("http", "growth-http", http, ("manycore-httpreceiver", "bare aiohttp")),
        ):
            rows += compare(kind, label, (name, ports[0]), (BARE_NAMES[bare], ports[1]), [8],
                            args.rounds, args.seconds, cert, redis, size=size, queued=queued,
                            case=case, second=(PUSH_NAMES[bare], ports[2]))  # fmt: skip
    return rows


#: Baseline names in the tables: the bare server, and the bare server + LPUSH to Redis.
BARE_NAMES = {"bare aiosmtpd": "bare aiosmtpd (discard)", "bare aiohttp": "bare aiohttp (no-op)"}
PUSH_NAMES = {"bare aiosmtpd": "bare aiosmtpd + LPUSH", "bare aiohttp": "bare aiohttp + LPUSH"}


def run(args: argparse.Namespace, workdir: Path) -> list[Row]:
    from manycore_common.tls import self_signed_pem

    redis_server = binary("redis-server")
    cert_pem, key_pem = self_signed_pem("localhost", ip_addresses=(LOOPBACK,))
    cert, key = workdir / "receiver_cert.pem", workdir / "receiver_key.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    redis_port, bare_smtp, bare_http = free_port(), free_port(), free_port()
    lean_smtp, push_smtp, push_http = free_port(), free_port(), free_port()
    global_file, customer_file, customer = write_configs(workdir, redis_port)
    smtp_port = int(customer["receiver"]["bind"]["inet-port"])
    http_port = int(customer["httpreceiver"]["bind"]["inet-port"])
    pool_file, pool = with_workers(customer, workdir, WORKERS)
    me = [sys.executable, "-m", "bench.ingest"]
    # Redis as production runs it (the Redis pod's default): AOF with fsync every second,
    # so "250" costs what it costs there. Rewrites are off: each round starts with FLUSHALL,
    # and a rewrite forking in the middle of a round would only add noise.
    redis_argv = [redis_server, "--port", str(redis_port), "--bind", LOOPBACK,
                  "--dir", str(workdir), "--save", "", "--appendonly", "yes",
                  "--appendfsync", "everysec", "--auto-aof-rewrite-percentage", "0",
                  "--daemonize", "no"]  # fmt: skip
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
        process(
            [*me, "--bare-smtp", str(lean_smtp), "--lean", "--cert", str(cert), "--key", str(key)],
            workdir / "lean-smtp.log",
        ),
        process([*me, "--bare-http", str(bare_http)], workdir / "bare-http.log") as bhttp,
        process(
            [
                *me,
                "--bare-smtp",
                str(push_smtp),
                "--push",
                str(redis_port),
                "--cert",
                str(cert),
                "--key",
                str(key),
            ],
            workdir / "push-smtp.log",
        ),  # fmt: skip
        process(
            [*me, "--bare-http", str(push_http), "--push", str(redis_port)],
            workdir / "push-http.log",
        ),
        process(service_argv("receiver", global_file, pool_file), workdir / "rcv-pool.log"),
        process(service_argv("httpreceiver", global_file, pool_file), workdir / "http-pool.log"),
    ):
        redis = Redis(host=LOOPBACK, port=redis_port)
        wait_until(redis.ping, 10, "redis-server")
        for name in ("receiver", "httpreceiver"):
            for settings in (customer, pool):
                metrics = settings[name]["prometheus"]["inet-port"]
                ready = functools.partial(http_ok, f"http://{LOOPBACK}:{metrics}/readyz")
                wait_until(ready, 30, name)
        for port in (bare_smtp, lean_smtp, bare_http, push_smtp, push_http):
            wait_until(functools.partial(port_open, port), 30, f"bare server on {port}")
        time.sleep(0.5)
        idle = {p.pid: rss_kb(p.pid) for p in (rcv, api, bsmtp, bhttp)}
        rows += compare("smtp", "smtp-ingest", ("manycore-receiver", smtp_port),
                        ("bare aiosmtpd (discard)", bare_smtp), args.connections, args.rounds,
                        args.seconds, cert, redis,
                        second=("bare aiosmtpd + LPUSH", push_smtp))  # fmt: skip
        rows += compare("smtp", "smtp-lean", ("manycore-receiver", smtp_port),
                        ("bare aiosmtpd, lean paths", lean_smtp), args.connections, args.rounds,
                        args.seconds, cert, redis)  # fmt: skip
        rows += compare("http", "http-ingest", ("manycore-httpreceiver", http_port),
                        ("bare aiohttp (no-op)", bare_http), args.connections, args.rounds,
                        args.seconds, cert, redis,
                        second=("bare aiohttp + LPUSH", push_http))  # fmt: skip
        loaded = {p.pid: rss_kb(p.pid) for p in (rcv, api, bsmtp, bhttp)}
        rows += workers_rows(args, pool, (bare_smtp, bare_http), cert, redis)
        for case, values in (("idle", idle), ("loaded", loaded)):
            for subject, baseline, sname, bname in (
                (rcv, bsmtp, "manycore-receiver", "bare aiosmtpd"),
                (api, bhttp, "manycore-httpreceiver", "bare aiohttp"),
            ):
                s, b = values[subject.pid], values[baseline.pid]
                rows.append(Row("memory", case, sname, s, bname, b, s / b, unit="KB"))
        rows += against_postfix(args, workdir, (global_file, customer_file), smtp_port, cert, redis)
        rows += growth(args, (smtp_port, bare_smtp, push_smtp), (http_port, bare_http, push_http),
                       cert, redis)  # fmt: skip
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
    parser.add_argument("--sizes", default="5,50,500", help="message sizes in KB (growth)")
    parser.add_argument("--depth", type=int, default=100_000, help="queued items (growth)")
    parser.add_argument("--size", type=int, default=MESSAGE_SIZE, help=argparse.SUPPRESS)
    parser.add_argument("--bare-smtp", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lean", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare-http", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--push", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=("smtp", "smtp-noauth", "http"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cafile", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_smtp:
        serve_bare_smtp(args.bare_smtp, Path(args.cert), Path(args.key), args.lean, args.push)
        return
    if args.bare_http:
        serve_bare_http(args.bare_http, args.push)
        return
    if args.client:
        counts = asyncio.run(
            load(
                args.client, args.port, int(args.connections), args.seconds, args.cafile, args.size
            )
        )
        print(json.dumps(counts))
        return
    args.connections = [int(c) for c in str(args.connections).split(",")]
    args.sizes = [int(kb) * 1024 for kb in str(args.sizes).split(",")]
    if args.quick:
        args.seconds, args.rounds, args.queued = 0.5, 1, 2000
        args.connections, args.sizes, args.depth = [1, 8], [MESSAGE_SIZE, 50 * 1024], 2000
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        Path(tmp).chmod(0o755)  # Postfix's unprivileged processes must reach its queue
        rows = run(args, Path(tmp))
    print(
        f"Ingest, {MESSAGE_SIZE // 1024} KB messages, cN = N connections, "
        f"medians of {args.rounds} interleaved rounds of {args.seconds:g} s:"
    )
    print(table([r for r in rows if r.benchmark.endswith("-ingest")]))
    print("The Receiver against aiosmtpd reading MAIL/RCPT paths as the Receiver does:")
    print(table([r for r in rows if r.benchmark == "smtp-lean"]))
    print(f"The front doors with {WORKERS} worker processes (one-process baselines):")
    print(table([r for r in rows if r.benchmark.endswith("-workers")]))
    print("Receiver against Postfix's smtpd accepting into its queue (STARTTLS):")
    print(table([r for r in rows if r.benchmark == "smtp-vs-postfix"]))
    print("Growth: 8 connections, larger messages and a deep queue:")
    print(table([r for r in rows if "growth" in r.benchmark]))
    print("Memory (RSS in KB; Redis in bytes per queued item):")
    print(table([r for r in rows if r.benchmark == "memory"]))
    if not args.quick:
        paths = write(
            "ingest",
            rows,
            f"Ingest of {MESSAGE_SIZE // 1024} KB messages. smtp-ingest: msg/s accepted by "
            "manycore-receiver (STARTTLS + AUTH PLAIN, 250 only after the Redis push) vs a bare "
            "aiosmtpd with the same TLS/AUTH shape that discards. smtp-lean: the same "
            "Receiver vs that bare aiosmtpd reading MAIL/RCPT paths with the Receiver's "
            "plain-path reader instead of aiosmtpd's RFC 5322 parser (the Receiver's own cost "
            "per message, without what it saves there). smtp-vs-postfix: the same "
            "Receiver vs Postfix's smtpd (Debian's Postfix, STARTTLS, every message put on "
            "hold so its 250 means queued and fsynced, nothing delivered). http-ingest: req/s "
            "of manycore-httpreceiver (POST /v1/mail/send, Basic auth) vs a bare aiohttp "
            "handler that reads the body and answers 200. '+ LPUSH' rows (smtp-ingest, "
            "http-ingest, growth-*): the same subject measured in the same rounds against the "
            "bare server that LPUSHes each message to the same Redis before answering (the "
            "unavoidable cost of durability). *-workers: the same front doors "
            f"with {WORKERS} worker processes each (workers: {WORKERS}) against the same "
            "one-process baselines. growth-*: 8 connections with larger "
            f"messages, and with {args.depth:,} items already queued. cN: N keep-alive "
            "connections, opened and authenticated before the clock starts, one client "
            f"process (lean asyncio). Medians of {args.rounds} interleaved rounds of "
            f"{args.seconds:g} s. Redis: AOF, appendfsync everysec. memory: VmRSS (KB) idle "
            "and after the load, and Redis used_memory growth per queued item with "
            f"{args.queued:,} 5 KB items pushed by ReliableQueue.push_many (rate column = "
            f"bytes). Machine: {os.cpu_count()} CPUs shared by Redis, server and client.",
        )
        print("written:", *paths)


if __name__ == "__main__":
    main()
