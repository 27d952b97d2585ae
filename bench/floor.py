"""The floor of the design, for ``bench/e2e.py``: the least any implementation of "a separate
SMTP front door, a durable Redis queue hop, DKIM signing, a second queue hop, injection into
Postfix over SMTP" costs on the machine, measured in the same run as the stack and Postfix
alone. Three bare processes and a Redis of their own:

* ``serve``: aiosmtpd in the Receiver's shape (STARTTLS required, AUTH PLAIN/LOGIN after TLS,
  so it is driven exactly as the Receiver is); its DATA handler sends one ``LPUSH`` of
  ``sender \\n recipients \\n message`` (no parsing) and answers 250 once Redis has it.
* ``sign``: takes what is waiting (``RPOP key count``, else ``BRPOP``), signs each message
  with the stack's DKIM key (relaxed/relaxed, RSA-SHA256 with ``cryptography``, body
  canonicalised by two regex passes in C, not a Python loop per line), ``LPUSH``es the
  batch in one command.
* ``relay``: takes as ``sign`` does and injects each message into Postfix over kept-open SMTP
  connections, as many as PostfixLog's ``smtp-connections`` (one thread each),
  MAIL/RCPT/DATA pipelined (RFC 2920), then the data: two round trips per message.

Redis: a private ``redis-server`` with the Redis pod's persistence (the shipped redis.conf:
AOF, ``appendfsync`` as the stack's config says), so the hop costs what a durable hop costs.

What the floor leaves out, on purpose (each is something the stack must do and the floor does
not, so stack / floor is an upper bound on what our code costs beyond the design): no
reliable queue (a crash of ``sign`` or ``relay`` loses what it holds: no processing list, no
ack, no claim, no reaper), no retries or hand-back, no group commit at the door, no events,
no trace records, no metrics, no logging, no headers added (Message-ID, Return-Path VERP,
List-Unsubscribe, feedback tags), no suppression look-up, no per-customer config, no limits
(size, rate, queue high-water mark), one process per stage. It keeps what the design cannot
do without: TLS and AUTH at the door, a durable Redis write before the 250, a real DKIM
signature the sink verifies, Postfix's 250 before a message leaves the relay.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import re
import socket
import subprocess
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from bench.common import LOOPBACK, ROOT, binary, free_port, port_open
from bench.smtpclient import PASSWORD, USER

SIGNED_KEY = "floor:signed"
RECEIVED_KEY = "floor:received"
#: Most items one take moves (one round trip for all of them when a backlog waits).
TAKE = 64
#: The headers signed when present (RFC 6376 §5.4.1's recommended core).
SIGN = (b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type")
CRLF = b"\r\n"


# ----------------------------------------------------------------- DKIM (RFC 6376), pure

_TRAILING_WSP = re.compile(rb"[ \t]+\r\n")
_WSP = re.compile(rb"[ \t]+")
_FIELD_START = re.compile(rb"\r\n(?![ \t])")


def relaxed_body(body: bytes) -> bytes:
    """§3.4.4: trailing whitespace of each line removed, runs of WSP to one space, empty
    lines at the end removed; a non-empty body ends in one CRLF."""
    text = _WSP.sub(b" ", _TRAILING_WSP.sub(CRLF, body))
    text = text.rstrip(CRLF)
    return text + CRLF if text else b""


def relaxed_field(raw: bytes) -> bytes:
    """§3.4.2: name lowercased, value unfolded, runs of WSP to one space, trimmed."""
    name, _, value = raw.partition(b":")
    value = _WSP.sub(b" ", value.replace(CRLF, b"")).strip()
    return name.strip().lower() + b":" + value


def dkim_header(message: bytes, key: Any, domain: str, selector: str, now: int) -> bytes:
    """The DKIM-Signature field (with its CRLF) for ``message`` (CRLF line ends)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    head, _, body = message.partition(CRLF + CRLF)
    fields = {}
    for raw in _FIELD_START.split(head):
        name = raw.partition(b":")[0].strip().lower()
        if name in SIGN and name not in fields:  # the first instance (§5.4.2: bottom-up
            fields[name] = raw  # matters only with repeats, which the bench has none of)
    names = [n for n in SIGN if n in fields]
    bh = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()
    value = (f"v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s={selector}; t={now}; "
             f"h={':'.join(n.decode() for n in names)}; bh={bh}; b=")  # fmt: skip
    signed = b"".join(relaxed_field(fields[n]) + CRLF for n in names)
    signed += relaxed_field(b"DKIM-Signature: " + value.encode())
    b = key.sign(signed, padding.PKCS1v15(), hashes.SHA256())
    return b"DKIM-Signature: " + value.encode() + base64.b64encode(b) + CRLF


def pack(sender: bytes, rcpts: list[bytes], message: bytes) -> bytes:
    return sender + b"\n" + b" ".join(rcpts) + b"\n" + message


def unpack(value: bytes) -> tuple[bytes, list[bytes], bytes]:
    sender, rcpts, message = value.split(b"\n", 2)
    return sender, rcpts.split(), message


def stuffed(message: bytes) -> bytes:
    """RFC 5321 §4.5.2: a line starting with "." gets another; ends in CRLF "." CRLF."""
    data = message.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    if not data.endswith(CRLF):
        data += CRLF
    return data + b".\r\n"


# ----------------------------------------------------------------- the three processes


def serve(port: int, redis_port: int, cert: Path, key: Path) -> None:
    from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
    from redis.asyncio import Redis as AsyncRedis

    from manycore_common import tls

    # aiosmtpd warns (Session.login_data) at every AUTH: a line per session in the log.
    warnings.simplefilter("ignore")
    context, _ = tls.server_context(cert, key, "localhost")
    redis = AsyncRedis(host=LOOPBACK, port=redis_port)

    class Push:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            rcpts = [r.encode() for r in envelope.rcpt_tos]
            sender = (envelope.mail_from or "").encode()
            await redis.lpush(RECEIVED_KEY, pack(sender, rcpts, envelope.original_content or b""))
            return "250 2.0.0 OK"

    def authenticator(*args: Any) -> AuthResult:
        data = args[-1]
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            USER.encode(),
            PASSWORD.encode(),
        )
        return AuthResult(success=ok, handled=False)

    handler = Push()

    def factory() -> SMTP:
        return SMTP(handler, hostname="localhost", ident="floor", tls_context=context,
                    require_starttls=True, auth_required=True, auth_require_tls=True,
                    authenticator=authenticator, data_size_limit=26214400,
                    decode_data=False, timeout=300)  # fmt: skip

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(factory, LOOPBACK, port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def take(redis: Any, key: str) -> list[bytes]:
    """What waits (one round trip), else the next item to come (BRPOP; for at most a second
    at a time: redis-py's socket timeout, 5 s, would end a longer wait with an error)."""
    items = redis.rpop(key, TAKE)
    if items:
        return list(items)
    while (popped := redis.brpop([key], 1)) is None:
        pass
    return [popped[1]]


def sign(redis_port: int, key_file: Path, domain: str, selector: str) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from redis import Redis

    key = load_pem_private_key(key_file.read_bytes(), None)
    redis = Redis(host=LOOPBACK, port=redis_port)
    while True:
        out = []
        for value in take(redis, RECEIVED_KEY):
            sender, rcpts, message = unpack(value)
            header = dkim_header(message, key, domain, selector, int(time.time()))
            out.append(pack(sender, rcpts, header + message))
        redis.lpush(SIGNED_KEY, *out)


def read_reply(reader: Any) -> bytes:
    while True:
        line: bytes = reader.readline()
        if not line:
            raise ConnectionError("Postfix closed the connection")
        if line[3:4] != b"-":
            return line


def expect(reader: Any, code: bytes) -> None:
    line = read_reply(reader)
    if not line.startswith(code):
        raise RuntimeError(f"Postfix answered {line!r}, expected {code!r}")


def relay(redis_port: int, smtp_port: int, connections: int) -> None:
    """``connections`` threads, each with its own SMTP connection and Redis client: as many
    messages in Postfix's hands at once as PostfixLog's feeders have (``smtp-connections``),
    so that the floor is not held to one message per round trip to Postfix's fsync."""
    threads = [
        threading.Thread(target=relay_one, args=(redis_port, smtp_port), daemon=True)
        for _ in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def relay_one(redis_port: int, smtp_port: int) -> None:
    from redis import Redis

    redis = Redis(host=LOOPBACK, port=redis_port)
    conn = socket.create_connection((LOOPBACK, smtp_port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = conn.makefile("rb")
    expect(reader, b"220")
    conn.sendall(b"EHLO floor\r\n")
    expect(reader, b"250")
    while True:
        for value in take(redis, SIGNED_KEY):
            sender, rcpts, message = unpack(value)
            commands = b"MAIL FROM:<" + sender + b">\r\n"
            commands += b"".join(b"RCPT TO:<" + r + b">\r\n" for r in rcpts) + b"DATA\r\n"
            conn.sendall(commands)  # one group (RFC 2920 §3.1: DATA ends it)
            expect(reader, b"250")
            for _ in rcpts:
                expect(reader, b"250")
            expect(reader, b"354")
            conn.sendall(stuffed(message))
            expect(reader, b"250")


# ----------------------------------------------------------------- running it


class Floor:
    """The floor's Redis and three processes, started as children in ``workdir``."""

    def __init__(
        self, workdir: Path, postfix_port: int, dkim_key: Path, appendfsync: str,
        connections: int = 4,
    ) -> None:  # fmt: skip
        self.workdir, self.connections = workdir, connections
        self.port, self.redis_port = free_port(), free_port()
        self.postfix_port, self.dkim_key, self.appendfsync = postfix_port, dkim_key, appendfsync
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, timeout: float = 30) -> Floor:
        """Redis, then the three processes, without waiting for them (see ``ready``)."""
        from manycore_common.tls import self_signed_pem

        self.workdir.mkdir(parents=True, exist_ok=True)
        cert_pem, key_pem = self_signed_pem("localhost", ip_addresses=(LOOPBACK,))
        cert, key = self.workdir / "cert.pem", self.workdir / "key.pem"
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        conf = ROOT / "Redis" / "manycore_redis" / "redis.conf"
        self.spawn("redis-server", [binary("redis-server"), str(conf), "--port",
                   str(self.redis_port), "--bind", LOOPBACK, "--dir", str(self.workdir),
                   "--appendfsync", self.appendfsync, "--daemonize", "no"])  # fmt: skip
        self.wait(self.redis_port, timeout)
        me = ["python", "-m", "bench.floor", "--redis-port", str(self.redis_port)]
        self.spawn("serve", [*me, "serve", "--port", str(self.port), "--cert", str(cert),
                   "--key", str(key)])  # fmt: skip
        self.spawn("sign", [*me, "sign", "--dkim-key", str(self.dkim_key)])
        self.spawn("relay", [*me, "relay", "--port", str(self.postfix_port), "--connections",
                   str(self.connections)])  # fmt: skip
        return self

    def ready(self, timeout: float = 60) -> Floor:
        """Wait for the door (``start`` does not: the stack's rounds run meanwhile)."""
        self.wait(self.port, timeout)
        return self

    def spawn(self, name: str, argv: list[str]) -> None:
        import sys

        if argv[0] == "python":
            argv = [sys.executable, *argv[1:]]
        log = (self.workdir / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=log)

    def wait(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not port_open(port):
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise SystemExit(f"bench.floor: {dead or 'start'} failed; see {self.workdir}")
            time.sleep(0.05)

    def pids(self) -> dict[str, int]:
        return {f"floor {name}": p.pid for name, p in self.processes.items()}

    def check(self) -> None:
        dead = [n for n, p in self.processes.items() if p.poll() is not None]
        if dead:
            raise SystemExit(f"bench.floor: {dead} stopped; see {self.workdir}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.floor")
    parser.add_argument("--redis-port", type=int, required=True)
    roles = parser.add_subparsers(dest="role", required=True)
    door = roles.add_parser("serve")
    door.add_argument("--port", type=int, required=True)
    door.add_argument("--cert", type=Path, required=True)
    door.add_argument("--key", type=Path, required=True)
    signer = roles.add_parser("sign")
    signer.add_argument("--dkim-key", type=Path, required=True)
    signer.add_argument("--domain", default="example.com")
    signer.add_argument("--selector", default="mailer")
    relayer = roles.add_parser("relay")
    relayer.add_argument("--port", type=int, required=True)
    relayer.add_argument("--connections", type=int, default=4)
    args = parser.parse_args(argv)
    if args.role == "serve":
        serve(args.port, args.redis_port, args.cert, args.key)
    elif args.role == "sign":
        sign(args.redis_port, args.dkim_key, args.domain, args.selector)
    else:
        relay(args.redis_port, args.port, args.connections)


if __name__ == "__main__":
    main()
