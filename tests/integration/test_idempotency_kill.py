"""Issue 19's check for idempotent submission: 1,000 messages, each submitted twice at about
the same time (over SMTP and HTTP, SMTP twice, or HTTP twice), while the Receiver and then
the HttpReceiver are SIGKILLed mid-run and started again (as Kubernetes restarts a pod).
Clients behave as real ones do: after a broken connection or a temporary refusal they send
the same message again, so a message whose answer the kill swallowed is sent once more.
Every uuid must be queued exactly once (P0 and P1 are read at the end)."""

from __future__ import annotations

import http.client
import json
import queue
import signal
import smtplib
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis as SyncRedis

from tests.helpers import LOOPBACK, RedisServer, running, stored_item
from tests.integration.conftest import build_message
from tests.integration.test_httpreceiver import GOOD_AUTH, http_service
from tests.integration.test_receiver import receiver_service

P0, P1 = "IB-MAIL-QUEUE-P0", "IB-MAIL-QUEUE-P1"
MESSAGES = 1000
CLIENTS = 10  # per door
#: Doors of a message's two submissions, by its number modulo 3.
DOORS = (("smtp", "http"), ("smtp", "smtp"), ("http", "http"))
DEADLINE_SECONDS = 50.0


class Retry(Exception):
    """A temporary refusal: send the same message again."""


@dataclass
class Tally:
    """What the clients saw (shared by their threads; counts only, under a lock)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    done: Counter[str] = field(default_factory=Counter)  # door → successful answers
    retries: Counter[str] = field(default_factory=Counter)
    fresh: Counter[str] = field(default_factory=Counter)  # uuid → answers "queued"
    duplicate: Counter[str] = field(default_factory=Counter)  # uuid → answers "duplicate"
    failures: list[str] = field(default_factory=list)

    def answered(self, door: str, uuid: str, duplicate: bool) -> None:
        with self.lock:
            self.done[door] += 1
            (self.duplicate if duplicate else self.fresh)[uuid] += 1


def message(n: int) -> tuple[str, bytes]:
    """Message ``n``: its own X-Uuid and recipient (to count it at a sink), one in five P0."""
    uuid = f"kill{n}"
    data = build_message(uuid, "0" if n % 5 == 0 else None, to=f"m{n}@example.net", cc=None)
    return uuid, data


class SmtpClient:
    """One submission connection (STARTTLS, AUTH PLAIN as apa), opened again when lost."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.port, self.context = port, context
        self.smtp: smtplib.SMTP | None = None

    def connect(self) -> smtplib.SMTP:
        # local_hostname avoids smtplib's getfqdn() (a DNS lookup).
        smtp = smtplib.SMTP(LOOPBACK, self.port, local_hostname="localhost", timeout=15)
        try:
            smtp.starttls(context=self.context)
            smtp.login("apa", "banan")
        except BaseException:
            smtp.close()
            raise
        return smtp

    def send(self, data: bytes) -> bool:
        """True when answered as a duplicate; raises Retry, OSError or SMTPException."""
        if self.smtp is None:
            self.smtp = self.connect()
        self.smtp.rset()
        self.smtp.mail("anything@example.com")
        self.smtp.rcpt("ignored@example.net")
        code, reply = self.smtp.data(data)
        if 400 <= code < 500:
            raise Retry(reply.decode())
        assert code == 250, reply
        return b"duplicate" in reply

    def close(self) -> None:
        if self.smtp is not None:
            self.smtp.close()
        self.smtp = None


class HttpClient:
    """One keep-alive connection to the HTTP API, opened again when lost."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def send(self, data: bytes) -> bool:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=15)
        headers = {"Authorization": GOOD_AUTH, "Content-Type": "message/rfc822"}
        self.conn.request("POST", "/v1/mail/send", body=data, headers=headers)
        response = self.conn.getresponse()
        body = json.loads(response.read())
        if response.status == 503:
            raise Retry(str(body))
        assert response.status == 200, body
        return bool(body.get("duplicate"))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None


def client_loop(
    door: str, work: queue.Queue[int], make: Callable[[], SmtpClient | HttpClient], tally: Tally
) -> None:
    """Send each message of ``work`` until it is answered with success."""
    client = make()
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        try:
            n = work.get_nowait()
        except queue.Empty:
            break
        uuid, data = message(n)
        while True:
            if time.monotonic() > deadline:
                tally.failures.append(f"{door} {uuid}: no success before the deadline")
                client.close()
                return
            try:
                tally.answered(door, uuid, client.send(data))
                break
            except (Retry, OSError, smtplib.SMTPException, http.client.HTTPException):
                client.close()
                with tally.lock:
                    tally.retries[door] += 1
                time.sleep(0.05)
    client.close()


def run_clients(
    makers: dict[str, Callable[[], SmtpClient | HttpClient]],
    kill: Callable[[str], None],
    tally: Tally,
) -> None:
    """Send every message twice (``DOORS``) with CLIENTS clients per door, and ``kill`` each
    door a third of the way through its share."""
    work: dict[str, queue.Queue[int]] = {"smtp": queue.Queue(), "http": queue.Queue()}
    for n in range(MESSAGES):
        for door in DOORS[n % 3]:
            work[door].put(n)  # both copies of a message near each other in the lines
    threads = [
        threading.Thread(target=client_loop, args=(door, work[door], makers[door], tally))
        for door in ("smtp", "http")
        for _ in range(CLIENTS)
    ]
    threads += [
        threading.Thread(target=kill_when, args=(kill, door, tally, MESSAGES // 3))
        for door in ("smtp", "http")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_SECONDS + 10)


def kill_when(kill: Callable[[str], None], door: str, tally: Tally, after: int) -> None:
    """``kill(door)`` once ``after`` messages went through ``door``."""
    while tally.done[door] < after and not tally.failures:
        time.sleep(0.005)
    try:
        kill(door)
    except Exception as exc:  # reported by the test, not lost in a thread
        tally.failures.append(f"killing {door}: {exc}")


def check_clients(tally: Tally) -> None:
    """Every submission got its success answer, after retries at both doors, and no uuid
    was answered "queued" twice."""
    assert not tally.failures, tally.failures[:5]
    assert sum(tally.done.values()) == MESSAGES * 2
    # Both kills broke connections in use, so both doors saw clients send again.
    assert tally.retries["smtp"] > 0 and tally.retries["http"] > 0, tally.retries
    assert max(tally.fresh.values()) == 1
    assert sum(tally.fresh.values()) + sum(tally.duplicate.values()) == MESSAGES * 2


def swallowed(tally: Tally) -> int:
    """Messages queued whose "queued" answer a kill swallowed (all their answers said
    duplicate)."""
    return sum(1 for n in range(MESSAGES) if not tally.fresh[f"kill{n}"])


def queued(client: SyncRedis) -> Counter[str]:
    raws = [*client.lrange(P0, 0, -1), *client.lrange(P1, 0, -1)]
    return Counter(stored_item(raw).uuid or "" for raw in raws)


def test_each_message_is_queued_once_though_sent_twice_through_kills(
    tmp_path: Path,
    redis_server: RedisServer,
    tls_files: tuple[Path, Path],
    client_tls: ssl.SSLContext,
    queues: SyncRedis,
) -> None:
    services = {
        "smtp": receiver_service(tmp_path / "smtp", redis_server.port, tls_files),
        "http": http_service(tmp_path / "http", redis_server.port),
    }
    makers: dict[str, Callable[[], SmtpClient | HttpClient]] = {
        "smtp": lambda: SmtpClient(int(services["smtp"].port or 0), client_tls),
        "http": lambda: HttpClient(int(services["http"].port or 0)),
    }

    def kill(door: str) -> None:  # and start again, as Kubernetes would
        services[door].stop(signal.SIGKILL)
        services[door].start()

    tally = Tally()
    started = time.monotonic()
    with running(services["smtp"]), running(services["http"]):
        run_clients(makers, kill, tally)
    elapsed = time.monotonic() - started
    check_clients(tally)
    counts = queued(queues)
    assert counts == Counter({f"kill{n}": 1 for n in range(MESSAGES)}), [
        (uuid, count) for uuid, count in counts.items() if count != 1
    ][:10]
    assert queues.llen(P0) == MESSAGES // 5
    print(
        f"{MESSAGES} messages x2 in {elapsed:.1f} s; retries {dict(tally.retries)}; "
        f"{swallowed(tally)} queued whose answer a kill swallowed"
    )
