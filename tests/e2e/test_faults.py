"""Faults while mail flows: messages stream into the local stack (over HTTP and SMTP, from
several clients) while faults are injected one at a time, at random moments:

- SIGKILL of each service (the supervisor restarts it, as Kubernetes would), and of
  redis-server itself (a crash: Redis replays its AOF);
- a graceful restart of Redis (SIGTERM to manycore-redis: SHUTDOWN SAVE, then AOF replay);
- a graceful stop of PostfixLog (SIGTERM: it stops its Postfix and hands queued mail back);
- the webhook inbox down for a while (events wait in Redis; the inbox keeps what it had);
- the sink MX hanging (SIGSTOP: Postfix times out, defers, and delivers later).

At the end every recipient of every accepted message has exactly one final event at the
webhook (delivered or bounce, the one its address asks for) or is visibly in a dead-letter
list. The same event may arrive twice with the same id (BackData is at-least-once and
receivers drop by id): counted as "redelivered", allowed. A second *different* final event
for one recipient is a duplicate: the product's promise is that there are none.

`make test` runs the short version; `make chaos` (MANYCORE_CHAOS=1) a longer one with a few
thousand messages (MANYCORE_CHAOS_MESSAGES overrides how many). MANYCORE_FAULT_SEED replays
an order of faults and moments.

Killing Redis here found a data-loss bug: with the default user switched off, Redis 7.0 could
not replay the MULTI/EXEC blocks of its AOF (how Lua scripts' writes are logged), so a restart
lost every script write and mail was sent and reported twice.
"""

from __future__ import annotations

import http.client
import itertools
import os
import random
import signal
import smtplib
import threading
import time
import urllib.error
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pytest

from tests.e2e.stack import Stack, stack_dir, wait_until
from tests.integration.conftest import build_message

CHAOS = bool(os.environ.get("MANYCORE_CHAOS"))
SEED = int(os.environ.get("MANYCORE_FAULT_SEED") or random.randrange(1 << 31))


@dataclass(frozen=True)
class Fault:
    action: str  # sigkill | sigterm | down | hang
    target: str  # a supervisor child, or "redis-server" (the Redis pod's server process)
    seconds: float = 0.0  # how long "down" and "hang" last

    def __str__(self) -> str:
        if self.action == "sigkill":
            return f"SIGKILL {self.target}"
        if self.action == "sigterm":
            return f"SIGTERM {self.target} (graceful)"
        if self.action == "down":
            return f"{self.target} down {self.seconds:.0f}s"
        return f"sink MX hangs {self.seconds:.0f}s"


KILLED = ("transformer", "postfixlog", "backdata", "httpreceiver", "redis", "redis-server")
GRACEFUL = (Fault("sigterm", "redis"), Fault("sigterm", "postfixlog"))
if CHAOS:
    MESSAGES = int(os.environ.get("MANYCORE_CHAOS_MESSAGES", "2000"))
    SENDERS = {"http": 4, "smtp": 2}
    GAP = (3.0, 15.0)  # seconds of normal flow before each fault
    # With the sink hung for 30 s, Postfix defers for up to a minute: a queue lifetime of
    # 90 s keeps every normal recipient deliverable (a deferred message only expires when a
    # retry fails after the lifetime) and still turns soft-bounce@ into a bounce in time.
    QUEUE_LIFETIME, HANG, DOWN, DRAIN = "90s", 30.0, 60.0, 1200.0
    FAULTS = [
        *(Fault("sigkill", t) for t in (*KILLED, "receiver", "mxserver") for _ in range(2)),
        *GRACEFUL,
        *GRACEFUL,
        Fault("down", "webhook", DOWN),
        Fault("hang", "sink", HANG),
        Fault("hang", "sink", HANG),
    ]
else:
    MESSAGES = 60
    SENDERS = {"http": 2, "smtp": 1}
    GAP = (0.5, 2.0)
    QUEUE_LIFETIME, HANG, DOWN, DRAIN = "30s", 8.0, 10.0, 150.0
    FAULTS = [
        *(Fault("sigkill", t) for t in KILLED),
        *GRACEFUL,
        Fault("down", "webhook", DOWN),
        Fault("hang", "sink", HANG),
    ]
#: Postfix's SMTP client timeouts: shorter than the hang, so the hang defers mail.
SMTP_TIMEOUT = "5s"

#: Which final event each test address asks the sink MX for (devstack/sink.py).
OUTCOMES = {
    "hard-bounce": ("bounce", "hard"),
    "unroutable": ("bounce", "unroutable"),
    # 450 until Postfix's queue lifetime (QUEUE_LIFETIME) is over, then a soft bounce.
    "soft-bounce": ("bounce", "soft"),
}
#: After its first hard or unroutable bounce, an address is on the suppression list: later
#: messages to it end with a `suppressed` event instead (README "Suppression list").
FINAL = ("delivered", "bounce", "suppressed")
SUPPRESSING = {("bounce", "hard"), ("bounce", "unroutable")}


def recipients(i: int) -> list[str]:
    """Two to five recipients per message; some ask the sink for each kind of failure."""
    rcpts = [f"user{i}@example.net", f"other{i}@example.org"]
    if i % 3 == 0:
        rcpts.append(f"third{i}@example.net")
    if i % 5 == 0:
        rcpts.append("hard-bounce@example.net")
    if i % 7 == 0:
        rcpts.append("unroutable@example.org")
    if i % 4 == 0:
        rcpts.append("soft-bounce@example.net")
    return rcpts


def expected_outcome(rcpt: str) -> tuple[str, str | None]:
    return OUTCOMES.get(rcpt.partition("@")[0], ("delivered", None))


def is_right(event: dict[str, str], want: tuple[str, str | None]) -> bool:
    if event["event"] == "suppressed":
        return want in SUPPRESSING
    return (event["event"], event.get("type") if want[1] else None) == want


@dataclass
class Sent:
    uuid: str
    rcpts: list[str]
    window: int  # how many faults had started when the message was accepted
    resent: bool  # an earlier attempt got no answer, so it may have been accepted too


@dataclass
class Flow:
    """The client side: senders that keep every message until the stack accepts it."""

    stack: Stack
    interval: float
    window: int = 0
    sent: list[Sent] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    numbers: itertools.count[int] = field(default_factory=itertools.count)

    def send(self, via: str) -> None:
        start = time.monotonic()
        while not self.stop.is_set():
            with self.lock:
                i = next(self.numbers)
            if i >= MESSAGES:
                return
            # Paced over the planned length of the faults, so that mail flows through all.
            self.stop.wait(max(0.0, start + i * self.interval - time.monotonic()))
            rcpts = recipients(i)
            cc = ", ".join(rcpts[2:]) or None
            data = build_message(f"flt{i}", to=", ".join(rcpts[:2]), cc=cc, stream_id="faults")
            resent = self.deliver(via, data, f"flt{i}")
            if resent is None:
                return
            with self.lock:
                self.sent.append(Sent(f"flt{i}", rcpts, self.window, resent))

    def deliver(self, via: str, data: bytes, uuid: str) -> bool | None:
        """Submit until accepted (a refusal or a restarting service only delays it). Returns
        whether an attempt went unanswered (the stack may hold the message twice then: the
        client's own at-least-once), None if it never got in."""
        unanswered = False
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not self.stop.is_set():
            try:
                if via == "http":
                    self.stack.post(data)
                else:
                    self.stack.submit(data)
                return unanswered
            except urllib.error.HTTPError:
                pass  # the server answered: not accepted
            except smtplib.SMTPResponseException:
                pass  # a 4xx/5xx reply (451 while Redis restarts): not accepted
            except urllib.error.URLError as exc:
                unanswered |= not isinstance(exc.reason, ConnectionRefusedError)
            except ConnectionRefusedError:
                pass
            except (smtplib.SMTPException, http.client.HTTPException, OSError):
                unanswered = True  # reset, timeout, disconnect: it may have got in
            time.sleep(0.2)
        with self.lock:
            self.failures.append(uuid)
        return None


def inject(stack: Stack, fault: Fault) -> None:
    """One fault, and back to normal: the supervisor has restarted what it had to."""
    child = "redis" if fault.target == "redis-server" else fault.target
    before = stack.restarts(child)
    found = stack.pids(fault.target)
    assert found, f"no process for {fault.target}"
    if fault.action == "hang":
        for pid in found:
            os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(fault.seconds)
        finally:
            for pid in found:
                os.kill(pid, signal.SIGCONT)
        return
    if fault.action == "down":
        kept = {e["id"] for e in stack.events()}
        held = stack.output.count(f"  {child} exited (0): held")
        hold = stack.hold(child)
        try:
            for pid in found:
                os.kill(pid, signal.SIGTERM)
            wait_until(
                lambda: stack.output.count(f"  {child} exited (0): held") > held, 30, "inbox down"
            )
            time.sleep(fault.seconds)
        finally:
            hold.unlink()
        wait_until(lambda: stack.restarts(child) > before, 60, f"{child} back")
        missing = kept - {e["id"] for e in stack.events()}
        assert not missing, f"the inbox forgot {len(missing)} events across its restart"
        return
    exits = stack.output.count(f"  {child} exited (0): restarting")
    sig = signal.SIGKILL if fault.action == "sigkill" else signal.SIGTERM
    for pid in found:
        os.kill(pid, sig)
    wait_until(lambda: stack.restarts(child) > before, 180, f"{child} restarted")
    if fault.action == "sigterm":  # a graceful stop ends with exit code 0
        assert stack.output.count(f"  {child} exited (0): restarting") > exits, stack.output


def final_events(stack: Stack) -> dict[tuple[str, str], list[dict[str, str]]]:
    got: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for e in stack.events():
        if e["event"] in FINAL and e.get("type") != "autoreply":
            got[(e["uuid"], e["rcpt"])].append(e)
    return got


def dead_letters(stack: Stack) -> dict[str, list[str]]:
    """uuid → the queues where it is parked (`manycore-queues dead`, as an operator sees it)."""
    parked: dict[str, list[str]] = defaultdict(list)
    for row in stack.queues("stats"):
        if row["dead"]:
            for letter in stack.queues("dead", row["queue"]):
                parked[str(letter["uuid"])].append(row["queue"])
    return parked


def postfix_log(stack: Stack) -> str:
    return "".join(
        p.read_text(errors="replace")
        for p in sorted((stack.workdir / "postfix-log").glob("mail.log*"))
    )


ROW = "{:<32}{:>6}{:>8}{:>8}{:>6}{:>6}{:>8}{:>8}{:>7}{:>8}"


def table(
    labels: list[str],
    sent: list[Sent],
    got: dict[tuple[str, str], list[dict[str, str]]],
    parked: dict[str, list[str]],
) -> tuple[str, Counter[str]]:
    """One row per fault window (messages accepted while that fault was the latest)."""
    rows = [
        ROW.format(
            "fault",
            "msgs",
            "rcpts",
            "finals",
            "lost",
            "dup",
            "redeliv",
            "parked",
            "wrong",
            "resent",
        )
    ]
    totals: Counter[str] = Counter()
    for window, label in enumerate(labels):
        c: Counter[str] = Counter()
        for s in (s for s in sent if s.window == window):
            c["msgs"] += 1
            c["resent"] += s.resent
            for rcpt in s.rcpts:
                c["rcpts"] += 1
                events = got.get((s.uuid, rcpt), [])
                ids = {e["id"] for e in events}
                c["finals"] += len(ids)
                c["redeliv"] += len(events) - len(ids)
                if not ids:
                    c["parked" if s.uuid in parked else "lost"] += 1
                # Only a message the client never sent twice can prove a duplicate.
                c["dup after resend" if s.resent else "dup"] += max(0, len(ids) - 1)
                want = expected_outcome(rcpt)
                if not all(is_right(e, want) for e in events):
                    c["wrong"] += 1
        totals.update(c)
        rows.append(ROW.format(label, *(c[k] for k in ROW_KEYS)))
    rows.append(ROW.format("total", *(totals[k] for k in ROW_KEYS)))
    return "\n".join(rows), totals


ROW_KEYS = ("msgs", "rcpts", "finals", "lost", "dup", "redeliv", "parked", "wrong", "resent")


@pytest.mark.slow
@pytest.mark.timeout(3600 if CHAOS else 300)
def test_faults_while_mail_flows() -> None:
    rng = random.Random(SEED)
    faults = list(FAULTS)
    rng.shuffle(faults)
    labels = ["(before the first fault)", *(f"{n}. {f}" for n, f in enumerate(faults, 1))]
    # How long the faults should take (a restart takes a second or two), to pace the senders.
    planned = sum(sum(GAP) / 2 + f.seconds + 1.5 for f in faults)
    began = time.monotonic()
    with stack_dir() as root:
        stack = Stack(root / "run", queue_lifetime=QUEUE_LIFETIME, smtp_timeout=SMTP_TIMEOUT)
        stack.start()
        flow = Flow(stack, interval=planned / MESSAGES)
        senders = [
            threading.Thread(target=flow.send, args=(via,), name=f"{via}-{n}")
            for via, count in SENDERS.items()
            for n in range(count)
        ]
        took: list[float] = []
        try:
            for thread in senders:
                thread.start()
            for n, fault in enumerate(faults, 1):
                time.sleep(rng.uniform(*GAP))
                with flow.lock:
                    flow.window = n
                at = time.monotonic()
                inject(stack, fault)
                took.append(time.monotonic() - at)
            for thread in senders:
                thread.join(DRAIN)
            assert not any(t.is_alive() for t in senders), "senders stuck"
            assert not flow.failures, f"never accepted: {flow.failures}\n{stack.logs()}"
            sent = flow.sent
            expected = {(s.uuid, r) for s in sent for r in s.rcpts}

            def settled() -> bool:
                have = set(final_events(stack))
                missing = {k for k in expected if k not in have}
                return not missing or {u for u, _ in missing} <= set(dead_letters(stack))

            try:
                wait_until(settled, DRAIN, "a final event for every recipient")
            except AssertionError as exc:
                have = set(final_events(stack))
                missing = sorted(k for k in expected if k not in have)
                raise AssertionError(
                    f"{exc} (seed {SEED}, faults {[str(f) for f in faults]})\n"
                    f"{len(missing)} missing, e.g. {missing[:10]}\n"
                    f"queues: {stack.queues('stats')}\n{stack.logs()}"
                ) from None
            time.sleep(3)  # a duplicate on its way would arrive now
            got = final_events(stack)
            parked = dead_letters(stack)
            queues = stack.queues("stats")
            log = postfix_log(stack)
            copies = Counter(r["rcpt"] for r in stack.received())
        finally:
            flow.stop.set()
            output = stack.stop()
    report, totals = table(labels, sent, got, parked)
    timeouts = log.count("timed out")
    print(
        f"\nfault suite ({'chaos' if CHAOS else 'short'}, seed {SEED}): "
        f"{time.monotonic() - began:.0f}s, queue lifetime {QUEUE_LIFETIME}, "
        f"senders {SENDERS}\n{report}\n"
        f"fault durations (s): {', '.join(f'{t:.1f}' for t in took)}\n"
        f"postfix: {log.count('status=deferred')} deferrals, {timeouts} SMTP timeouts; "
        f"sink: {sum(1 for n in copies.values() if n > 1)} recipients received more than once"
        f" (a timeout after the final dot, RFC 1047; one event each all the same)\n"
        f"duplicates after a resend by the client: {totals['dup after resend']}\n"
        f"queues at the end: {queues}"
    )
    unexpected = set(got) - expected
    assert len(sent) == MESSAGES
    assert totals["lost"] == 0
    assert totals["dup"] == 0
    assert totals["wrong"] == 0
    # Nothing in this mix has a reason to be dead-lettered: a parked message is a finding.
    assert not parked, dict(parked)
    assert all(q["dead"] == 0 and q["waiting"] == 0 for q in queues), queues
    assert not unexpected, sorted(unexpected)[:20]
    assert timeouts > 0, "the sink MX hang did not make Postfix time out"
    for fault in (f for f in faults if f.action != "hang"):
        child = "redis" if fault.target == "redis-server" else fault.target
        assert f"restarted {child}" in output, output
