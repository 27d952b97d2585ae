"""``make run``: start the suite on this machine, print where everything listens, stop it all
cleanly on Ctrl-C.

Everything lives under ``--workdir`` (default ``.run/``): the generated config (kept between
runs, so a second run continues with the same queues), Redis' data (AOF on) and one log file
per process. Children run in their own sessions so that Ctrl-C reaches only this supervisor,
which then stops them one by one in the README's termination order.

A child that exits for any reason but the supervisor's own stop (crash, kill, or a clean exit
after someone else's SIGTERM) is started again, as Kubernetes restarts a container. To keep
one down for a while, as an outage would, create ``<workdir>/hold/<name>`` before stopping it;
it starts again once the file is gone (the fault tests take the webhook inbox down this way).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from manycore_redis import acl

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


@dataclass
class Proc:
    name: str
    argv: list[str]
    port: int | None = None  # the port whose opening means "started"
    ready_url: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)


class StartError(Exception):
    pass


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.2):
        return True
    return False


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


# Every port this process handed out, so no two callers get the same one.
_ISSUED: set[int] = set()


def port_range(low: int, width: int = 1) -> tuple[int, int]:
    """Where this process picks ``width`` ports in a row: [start, stop) of bases, below the
    kernel's ephemeral range (``low``). Under pytest-xdist (PYTEST_XDIST_WORKER ``gwN`` of
    PYTEST_XDIST_WORKER_COUNT) each worker gets its own slice: ``_ISSUED`` only keeps one
    process from handing a port out twice, and workers are processes."""
    first, end = 10_000, max(10_000 + width, low)  # the ports [first, end)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or "1")
    if count > 1 and worker.startswith("gw"):
        size = (end - first) // count
        first += int(worker[2:]) * size
        end = first + size
    return first, max(first + 1, end - width + 1)


def free_port_base(width: int = 20, tries: int = 100) -> int:
    """A base port with nothing listening on it or the ``width - 1`` ports above it, for a
    second stack beside others (the tests and benchmarks). Chosen below the kernel's
    ephemeral range: an outgoing connection may take any port in that range between this
    check and our services' bind, which would fail with "address already in use"."""
    low, _ = _ephemeral_ports()
    start, stop = port_range(low, width)
    for _ in range(tries):
        base = random.randrange(start, stop)
        taken = _ISSUED.intersection(range(base, base + width))
        if not taken and not any(port_open(base + i) for i in range(width)):
            _ISSUED.update(range(base, base + width))
            return base
    raise StartError(f"no {width} free ports in a row below {low}")


def free_port(tries: int = 200) -> int:
    """A loopback port nothing listens on, never one this process already handed out.

    Chosen below the kernel's ephemeral range, like ``free_port_base``: binding port 0 draws
    from that range, so two calls can return the same port (once in a few hundred for a
    dozen ports: a benchmark once started its bare SMTP server on its own metrics port), and
    an outgoing connection may take the port before the server binds it."""
    low, _ = _ephemeral_ports()
    start, stop = port_range(low)
    for _ in range(tries):
        port = random.randrange(start, stop)
        if port in _ISSUED:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
        _ISSUED.add(port)
        return port
    raise StartError(f"no free port below {low} after {tries} tries")


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return int(response.status) == 200
    except OSError:
        return False


def ports(base: int) -> dict[str, int]:
    return {
        "redis": base,
        "smtp": base + 1,
        "http": base + 2,
        "sink": base + 3,
        "webhook": base + 4,
        "mx": base + 5,
        "postfix": base + 6,
        "redis-metrics": base + 10,
        "receiver-metrics": base + 11,
        "httpreceiver-metrics": base + 12,
        "transformer-metrics": base + 13,
        "backdata-metrics": base + 14,
        "mxserver-metrics": base + 15,
        "postfixlog-metrics": base + 16,
    }


#: How long a temporarily failing message (soft-bounce@) stays in the local Postfix before it
#: becomes a soft bounce; short so the outcome can be seen while trying things out.
LOCAL_QUEUE_LIFETIME = os.environ.get("MANYCORE_LOCAL_QUEUE_LIFETIME", "60s")

#: How often the local Postfix retries deferred mail, in seconds (queue_run_delay and
#: minimal_backoff_time; twice that at most): the tests shorten it so that soft-bounce@ ends
#: in its soft bounce soon after the queue lifetime, not up to two retries later.
LOCAL_RETRY_SECONDS = int(os.environ.get("MANYCORE_LOCAL_RETRY_SECONDS", "10"))

#: Postfix waits up to 5 (greeting, commands) or 10 minutes (end of data) for a mail server
#: that stopped answering (postconf(5) smtp_*_timeout). The fault tests make the sink MX hang
#: and shorten these so the hang is a deferral, retried within the test, not a stuck delivery.
LOCAL_SMTP_TIMEOUT = os.environ.get("MANYCORE_LOCAL_SMTP_TIMEOUT")
SMTP_TIMEOUTS = (
    "smtp_connect_timeout",
    "smtp_helo_timeout",
    "smtp_mail_timeout",
    "smtp_rcpt_timeout",
    "smtp_data_init_timeout",
    "smtp_data_xfer_timeout",
    "smtp_data_done_timeout",
    "smtp_quit_timeout",
    "smtp_rset_timeout",
)


def local_config(data: dict[str, Any], workdir: Path, p: dict[str, int]) -> dict[str, Any]:
    """The example customer config turned into the local stack's: loopback, unprivileged
    ports, a password for Redis, Postfix relaying to the sink MX, events to the inbox."""

    def listen(port: int) -> dict[str, Any]:
        return {"inet-interface": LOOPBACK, "inet-port": port}

    for name, section in data.items():
        if isinstance(section, dict) and "reliable-queue" in section:
            # Each service as its own Redis user (the Redis pod's own: the exporter).
            username, password_file = redis_login("exporter" if name == "redis" else name)
            section["reliable-queue"]["redis"] = {
                "hostname": LOOPBACK,
                "port": p["redis"],
                "username": username,
                "password-file": password_file,
            }
        if isinstance(section, dict) and "prometheus" in section:
            section["prometheus"] = listen(p[f"{name}-metrics"])
    data["redis"]["server"] = {
        "bind": LOOPBACK,
        "port": p["redis"],
        "data-dir": str(workdir / "redis"),
        "password-file": "redis-password",
        "users": {
            user: dict(zip(("username", "password-file"), redis_login(user), strict=True))
            for user in REDIS_USERS
        },
        "backup-interval-seconds": 0,
    }
    data["receiver"]["hostname"] = "localhost"
    data["receiver"]["bind"] = listen(p["smtp"])
    data["httpreceiver"]["bind"] = listen(p["http"])
    data["transformer"]["email-headers"]["inject"]["List-Unsubscribe"] = (
        "<mailto:{{unsubscribe-address}}>, "
        "<https://mail.example.com/v1/unsubscribe/{{unsubscribe-token}}>"
    )
    data["common-config"] = {
        "unsubscribe-secret-file": "unsubscribe-secret",
        "feedback-secret-file": "feedback-secret",
    }
    data["mxserver"]["bind"] = listen(p["mx"])
    data["mxserver"]["hostname"] = "mx.local.test"
    # Every report comes back from 127.0.0.1 (the sink MX stands in for every provider of the
    # Internet, which would come from thousands of addresses): MxServer's per-client bounds
    # would refuse a burst of feedback with 450 4.7.1 (bench.feedback sends ~1,300 reports a
    # minute). Everything else about the MX is as in production.
    data["mxserver"]["rate-limit"] = {"messages": 1_000_000, "window-seconds": 60}
    data["mxserver"].setdefault("limits", {})["max-connections-per-ip"] = 1000
    data["backdata"].update(
        {
            "post-url": f"http://{LOOPBACK}:{p['webhook']}/",
            "retry-max-seconds": 10,
            "signing-secret-file": "webhook-secret",
        }
    )
    postfixlog = data["postfixlog"]
    postfixlog.update(
        {
            "logfile": str(workdir / "postfix-log" / "mail.log"),
            "postfix-directory": str(workdir / "postfix"),
            "postfix": {"hostname": LOOPBACK, "port": p["postfix"]},
            "maximal-queue-lifetime": LOCAL_QUEUE_LIFETIME,
            "bounce-queue-lifetime": LOCAL_QUEUE_LIFETIME,
            "stop-grace-seconds": 5,
        }
    )
    postfixlog["string-replacer"] = {
        "main-cf": {
            "myhostname": "postfix.local.test",
            "mailname": "local.test",
            # Outbound port 25 is blocked on most machines: everything goes to the sink MX,
            # and with DNS off no lookup ever leaves the machine.
            "relayhost": f"[{LOOPBACK}]:{p['sink']}",
            "smtp_dns_support_level": "disabled",
            "queue_run_delay": f"{LOCAL_RETRY_SECONDS}s",
            "minimal_backoff_time": f"{LOCAL_RETRY_SECONDS}s",
            "maximal_backoff_time": f"{2 * LOCAL_RETRY_SECONDS}s",
        },
        "master-cf": {"smtpd-port": p["postfix"]},
    }
    if LOCAL_SMTP_TIMEOUT:
        postfixlog["string-replacer"]["main-cf"].update(
            dict.fromkeys(SMTP_TIMEOUTS, LOCAL_SMTP_TIMEOUT)
        )
    return data


#: The Redis users of the local stack: one per service, and the Redis pod's read-only one;
#: the same list the Redis pod checks its ACL users against.
REDIS_USERS = acl.SERVICES


def redis_login(user: str) -> tuple[str, str]:
    """The Redis username of a service (or ``exporter``) and its password file in configs/."""
    return f"manycore-{user}", f"redis-{user}-password"


def redis_password(workdir: Path, user: str) -> str:
    """A user's password, for tools reading the local stack's Redis (benchmarks, tests)."""
    return (workdir / "configs" / redis_login(user)[1]).read_text().strip()


def secret_file(path: Path, length: int) -> None:
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(length) + "\n")


def write_config(workdir: Path, p: dict[str, int]) -> tuple[Path, Path]:
    """The example files made local (see local_config). Kept if already there."""
    conf = workdir / "configs"
    conf.mkdir(parents=True, exist_ok=True)
    global_file = conf / "inboxbooster-mailer-global.yaml"
    customer_file = conf / "inboxbooster-mailer-customer.yaml"
    secret_file(conf / "redis-password", 24)
    for user in REDIS_USERS:
        secret_file(conf / redis_login(user)[1], 24)
    secret_file(conf / "unsubscribe-secret", 32)
    secret_file(conf / "feedback-secret", 32)
    secret_file(conf / "webhook-secret", 32)
    if not global_file.exists():
        shutil.copy(ROOT / "inboxbooster-mailer-global.yaml.example", global_file)
    if not customer_file.exists():
        example = yaml.safe_load((ROOT / "inboxbooster-mailer-customer.yaml.example").read_text())
        customer_file.write_text(
            GENERATED + yaml.safe_dump(local_config(example, workdir, p), sort_keys=False)
        )
    else:
        move_ports(customer_file, p)
    write_demo_keys(conf)
    return global_file, customer_file


GENERATED = "# Generated by `make run` from the example file; edit freely, it is kept.\n"


def move_ports(customer_file: Path, p: dict[str, int]) -> None:
    """A kept config written for another port base (MANYCORE_PORT_BASE changed, or another
    copy's .run/) gets this base's ports, everything else kept: with the old ports the stack
    would wait for a Redis that listens elsewhere and fail without saying why."""
    data = yaml.safe_load(customer_file.read_text())
    old_base = (data.get("redis") or {}).get("server", {}).get("port")
    if not isinstance(old_base, int) or old_base == p["redis"]:
        return
    moved = {ports(old_base)[name]: port for name, port in p.items()}
    customer_file.write_text(GENERATED + yaml.safe_dump(rebase_ports(data, moved), sort_keys=False))
    print(
        f"make run: {customer_file} was written for port base {old_base}; moved its ports to "
        f"base {p['redis']} (comments in it are not kept)",
        file=sys.stderr,
    )


def rebase_ports(value: Any, moved: dict[int, int]) -> Any:
    """``value`` with every port of ``moved`` replaced (pure): integers, and ``:port`` in
    strings such as ``[127.0.0.1]:6393`` or ``http://127.0.0.1:6394/``."""
    if isinstance(value, dict):
        return {key: rebase_ports(item, moved) for key, item in value.items()}
    if isinstance(value, list):
        return [rebase_ports(item, moved) for item in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return moved.get(value, value)
    if isinstance(value, str):
        return _PORT_IN_TEXT.sub(lambda m: f":{moved.get(int(m[1]), int(m[1]))}", value)
    return value


_PORT_IN_TEXT = re.compile(r":(\d{2,5})(?!\d)")


def dkim_records(conf: Path) -> Path:
    """What the sink MX would find in DNS for the demo keys (selector "mailer")."""
    from manycore_transformer.dkim import load_key

    records = {}
    for domain in ("example.com", "bexample.com"):
        key = load_key((conf / "dkim" / f"dkim-private-key-{domain}.pem").read_bytes())
        records[f"mailer._domainkey.{domain}"] = key.public_record()
    path = conf / "dkim-records.json"
    path.write_text(json.dumps(records, indent=2))
    return path


def write_demo_keys(conf: Path) -> None:
    """DKIM keys for the example domains, generated on this machine for the local stack
    only (the sink MX verifies with them); kept between runs."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    for domain in ("example.com", "bexample.com"):
        path = conf / "dkim" / f"dkim-private-key-{domain}.pem"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(65537, 2048)
        path.touch(mode=0o600)
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def service(name: str, bindir: Path, g: Path, c: Path, port: int | None, metrics: int) -> Proc:
    return Proc(
        name,
        [
            str(bindir / f"manycore-{name}"),
            "--global-config-file",
            str(g),
            "--customer-config-file",
            str(c),
        ],
        port=port,
        ready_url=f"http://{LOOPBACK}:{metrics}/readyz",
    )


def plan(workdir: Path, p: dict[str, int]) -> list[Proc]:
    """Processes in the README's deployment order, after the stand-ins for the outside world
    (the sink MX and the webhook inbox)."""
    g, c = write_config(workdir, p)
    for binary in ("redis-server", "postfix"):
        if shutil.which(binary, path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
            raise StartError(f"{binary} is not installed (make run installs it)")
    bindir = Path(sys.executable).parent
    peer = [sys.executable, "-m", "devstack.peers", "--workdir", str(workdir)]
    # Two processes, so that each can fail on its own: "sink" is the sink MX (the Internet's
    # mailbox providers), "webhook" the customer's inbox, which checks BackData's signatures.
    secret = str(c.parent / "webhook-secret")
    webhook = Proc(
        "webhook",
        [*peer, "--webhook-port", str(p["webhook"]), "--webhook-secret-file", secret],
        port=p["webhook"],
    )
    sink = Proc(
        "sink",
        [
            *peer,
            "--sink-port",
            str(p["sink"]),
            "--mx-port",
            str(p["mx"]),
            "--http-port",
            str(p["http"]),
            "--dkim-records",
            str(dkim_records(c.parent)),
        ],
        port=p["sink"],
    )
    return [
        webhook,
        sink,
        service("redis", bindir, g, c, p["redis"], p["redis-metrics"]),
        service("backdata", bindir, g, c, None, p["backdata-metrics"]),
        service("mxserver", bindir, g, c, p["mx"], p["mxserver-metrics"]),
        service("postfixlog", bindir, g, c, p["postfix"], p["postfixlog-metrics"]),
        service("transformer", bindir, g, c, None, p["transformer-metrics"]),
        service("receiver", bindir, g, c, p["smtp"], p["receiver-metrics"]),
        service("httpreceiver", bindir, g, c, p["http"], p["httpreceiver-metrics"]),
    ]


#: The README's termination order (the outside world's stand-ins go last).
TERMINATION_ORDER = (
    "receiver",
    "httpreceiver",
    "transformer",
    "postfixlog",
    "backdata",
    "mxserver",
    "redis",
    "webhook",
    "sink",
)


class Supervisor:
    def __init__(self, workdir: Path, procs: list[Proc]) -> None:
        self.workdir = workdir
        self.procs = procs
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.hold = workdir / "hold"
        self.stopping = False

    def start(self, timeout: float = 30) -> None:
        for proc in self.procs:
            if proc.port is not None and port_open(proc.port):
                raise StartError(f"port {proc.port} for {proc.name} is already in use")
            self._launch(proc, timeout)
            print(f"  started {proc.name}", flush=True)

    def _launch(self, proc: Proc, timeout: float) -> None:
        log = (self.logs / f"{proc.name}.log").open("ab")
        proc.process = subprocess.Popen(
            proc.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not self._started(proc):
            if proc.process.poll() is not None:
                raise StartError(
                    f"{proc.name} exited with code {proc.process.returncode}; "
                    f"see {self.logs / (proc.name + '.log')}"
                )
            if time.monotonic() > deadline:
                raise StartError(f"{proc.name} did not become ready within {timeout}s")
            time.sleep(0.1)

    @staticmethod
    def _started(proc: Proc) -> bool:
        if proc.port is not None and not port_open(proc.port):
            return False
        return proc.ready_url is None or ready(proc.ready_url)

    def watch(self, max_restarts: int = 5, window: float = 60.0) -> str | None:
        """Restart a child that exits, whatever its exit code, as Kubernetes would restart its
        container: only the supervisor's own stop is final. A child with a file of its name in
        ``hold/`` stays down until the file is removed. Give up (return its name) when one
        dies more than ``max_restarts`` times within ``window`` seconds. Returns None when we
        are asked to stop."""
        restarts: dict[str, list[float]] = {}
        held: set[str] = set()
        while not self.stopping:
            for proc in self.procs:
                if proc.process is None or proc.process.poll() is None:
                    continue
                code = proc.process.returncode
                if (self.hold / proc.name).exists():
                    if proc.name not in held:
                        held.add(proc.name)
                        print(f"  {proc.name} exited ({code}): held", flush=True)
                    continue
                held.discard(proc.name)
                now = time.monotonic()
                recent = [t for t in restarts.get(proc.name, []) if t > now - window]
                if len(recent) >= max_restarts:
                    return proc.name
                restarts[proc.name] = [*recent, now]
                print(f"  {proc.name} exited ({code}): restarting", flush=True)
                try:
                    self._launch(proc, timeout=60)
                except StartError as exc:
                    print(f"  {exc}", flush=True)
                    continue
                print(f"  restarted {proc.name}", flush=True)
            time.sleep(0.2)
        return None

    def stop(self, grace: float = 120) -> None:
        """In the README's termination order: receivers first, Redis last."""
        order = {name: i for i, name in enumerate(TERMINATION_ORDER)}
        for proc in sorted(self.procs, key=lambda p: order.get(p.name, len(order))):
            if proc.process is None or proc.process.poll() is not None:
                continue
            proc.process.send_signal(signal.SIGTERM)
            try:
                proc.process.wait(grace)
            except subprocess.TimeoutExpired:
                proc.process.kill()
                proc.process.wait()
            print(f"  stopped {proc.name} (exit {proc.process.returncode})", flush=True)


def banner(p: dict[str, int], workdir: Path) -> str:
    conf = workdir / "configs"
    return f"""
Manycore-Mail is running (logs in {workdir / "logs"}, config in {conf}).

  SMTP submission  {LOOPBACK}:{p["smtp"]}   STARTTLS (self-signed) + AUTH apa / banan
  HTTP submission  http://{LOOPBACK}:{p["http"]}/v1/mail/send   Basic auth apa / banan
  MX (MxServer)    {LOOPBACK}:{p["mx"]}   bounces, replies, reports, unsubscribes
  Postfix          {LOOPBACK}:{p["postfix"]} (loopback only), relaying to the sink MX
  Sink MX          {LOOPBACK}:{p["sink"]}   stores mail in {workdir / "sink"}, checks DKIM
  Webhook inbox    http://{LOOPBACK}:{p["webhook"]}/   (page; JSON at /events, /received)
  Redis            {LOOPBACK}:{p["redis"]}   one user per service: manycore-<service>, password in
                   {conf}/redis-<service>-password (read-only: manycore-exporter)
  Metrics          http://{LOOPBACK}:PORT/metrics, PORT = {p["redis-metrics"]} redis,
                   {p["receiver-metrics"]} receiver, {p["httpreceiver-metrics"]} httpreceiver,
                   {p["transformer-metrics"]} transformer, {p["backdata-metrics"]} backdata,
                   {p["mxserver-metrics"]} mxserver, {p["postfixlog-metrics"]} postfixlog
  Queues           .venv/bin/manycore-queues --global-config-file \\
                       {conf / "inboxbooster-mailer-global.yaml"} \\
                       --customer-config-file {conf / "inboxbooster-mailer-customer.yaml"} stats

Send a test message (then see its events in the webhook inbox):

  printf '%s\\r\\n' 'From: shop@example.com' 'To: alice@example.net' 'X-Uuid: test1' \\
      'Subject: hi' '' 'Hello' |
    curl -sS -u apa:banan -H 'Content-Type: message/rfc822' --data-binary @- \\
    http://{LOOPBACK}:{p["http"]}/v1/mail/send
  curl -sS http://{LOOPBACK}:{p["webhook"]}/events

or: .venv/bin/python -m devstack.send --to soft-bounce@example.test  (any scenario below)

The sink answers by recipient: hard-bounce@, soft-bounce@ (a soft bounce after
{LOCAL_QUEUE_LIFETIME}), unroutable@, async-bounce@, autoreply@, complain@, unsubscribe@ (any
domain); anything else is delivered.

Press Ctrl-C to stop everything.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="make run")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".run")
    parser.add_argument(
        "--port-base", type=int, default=int(os.environ.get("MANYCORE_PORT_BASE", "6390"))
    )
    args = parser.parse_args(argv)
    p = ports(args.port_base)
    try:
        supervisor = Supervisor(args.workdir, plan(args.workdir, p))
    except StartError as exc:
        sys.exit(f"make run: {exc}")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print("Starting Manycore-Mail in deployment order:", flush=True)
    code = 0
    try:
        supervisor.start()
        print(banner(p, args.workdir), flush=True)
        died = supervisor.watch()
        if died:
            print(f"make run: {died} keeps failing; stopping the rest", flush=True)
            code = 1
    except StartError as exc:
        print(f"make run: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        print("Stopping in termination order:", flush=True)
        supervisor.stop()
    sys.exit(code)
