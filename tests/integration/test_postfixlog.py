"""PostfixLog as a real process with its real private Postfix, relaying to a local sink MX
(see postfix_env): each outcome yields exactly one correct event, restarts lose nothing, a
stop hands undelivered recipients back, and the instance listens on loopback only."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.helpers import wait_for
from tests.integration.postfix_env import (
    INCOMING,
    Sink,
    postfix_processes,
    postfixlog_env,
    wait_quiet,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "postfix"


def by_rcpt(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    counts = Counter(e["rcpt"] for e in events)
    assert all(n == 1 for n in counts.values()), f"more than one event for {counts}"
    return {e["rcpt"]: e for e in events}


def test_each_outcome_yields_exactly_one_event(tmp_path: Path, flushed: int, sink: Sink) -> None:
    started = time.time()
    with postfixlog_env(
        tmp_path, flushed, sink, **{"maximal-queue-lifetime": "5s", "bounce-queue-lifetime": "5s"}
    ) as env:
        service = env.start()
        env.push("single1", ["ok-single@sink.test"], stream_id="camp-7")
        rcpts = [
            "ok1@sink.test",
            "Ok2@Sink.Test",
            "bad1@sink.test",
            "later1@sink.test",
            "someone@refused.test",
            "nobody@unroutable.test",
        ]
        env.push("multi1", rcpts, stream_id=None)
        wait_for(lambda: len(env.events()) >= 7, timeout=40, what="seven events")
        wait_quiet()
        events = env.events()
        assert service.metric("postfix_emails_polled_total") == 2
        assert service.metric("postfix_emails_to_postfix_total") == 2
        assert service.metric("postfix_events_total", 'event="delivered",type=""') == 3
        assert service.metric("postfix_events_total", 'event="bounce",type="soft"') == 2
        sent_at = {
            rcpt: env.log_time(rf"to=<{re.escape(rcpt)}>.*status=sent")
            for rcpt in ("ok1@sink.test", "Ok2@Sink.Test")
        }
        bounced_at = env.log_time(r"to=<bad1@sink.test>.*status=bounced")
        expired_at = env.log_time(r"status=expired, returned to sender")

    assert len(events) == 7
    single = [e for e in events if e["uuid"] == "single1"]
    assert len(single) == 1
    assert single[0]["event"] == "delivered"
    assert single[0]["streamid"] == "camp-7" and single[0]["rcpt"] == "ok-single@sink.test"
    assert single[0]["ip"] == "127.0.0.1"

    multi = by_rcpt([e for e in events if e["uuid"] == "multi1"])
    assert set(multi) == set(rcpts)
    assert all("streamid" not in e for e in multi.values())
    for event in events:
        assert started - 1 <= event["timestamp"] <= time.time() + 1
        assert re.fullmatch(r"[0-9a-f]{32}", event["id"])
    assert len({e["id"] for e in events}) == 7

    for rcpt in ("ok1@sink.test", "Ok2@Sink.Test"):
        assert multi[rcpt]["event"] == "delivered" and multi[rcpt]["ip"] == "127.0.0.1"
        assert multi[rcpt]["timestamp"] == sent_at[rcpt]

    bad = multi["bad1@sink.test"]
    assert (bad["event"], bad["type"], bad["category"]) == ("bounce", "hard", "invalid-recipient")
    assert bad["reason"] == "550 5.1.1 <bad1@sink.test>: Recipient address rejected: User unknown"
    assert bad["ip"] == "127.0.0.1"
    assert bad["timestamp"] == bounced_at

    later = multi["later1@sink.test"]
    assert (later["type"], later["category"]) == ("soft", "mailbox-unavailable")
    assert later["reason"] == "450 4.2.1 <later1@sink.test>: Mailbox temporarily unavailable"
    assert later["timestamp"] == expired_at

    refused = multi["someone@refused.test"]
    assert (refused["type"], refused["category"]) == ("soft", "connection")
    assert refused["reason"].startswith("connect to 127.0.0.1[127.0.0.1]:")
    assert refused["reason"].endswith(": Connection refused")
    assert refused["timestamp"] == expired_at

    unroutable = multi["nobody@unroutable.test"]
    assert (unroutable["type"], unroutable["category"]) == ("unroutable", "dns")
    assert unroutable["reason"] == (
        "550 5.1.2 <nobody@unroutable.test>: Recipient address rejected: "
        "Host or domain name not found"
    )
    # Every accepted recipient reached the sink exactly once, the refused ones never.
    assert sink.deliveries("ok1@sink.test") == sink.deliveries("Ok2@Sink.Test") == 1
    assert sink.deliveries("ok-single@sink.test") == 1
    # MAIL FROM is the tagged return path the item carried (a 64-octet local part).
    senders = {r.sender for r in sink.handler.received}
    assert senders == {
        env.return_path("single1", "ok-single@sink.test", "camp-7"),
        env.return_path("multi1", "ok1@sink.test", None),
    }
    assert not any(b"X-ReturnPathIb" in r.data for r in sink.handler.received)


def listening_sockets(pids: list[int]) -> list[str]:
    """Local addresses of the TCP sockets in LISTEN state that ``pids`` hold."""
    inodes: set[str] = set()
    for pid in pids:
        with_fd = Path(f"/proc/{pid}/fd")
        for fd in with_fd.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: TCP_LISTEN
                address, port = cols[1].split(":")
                assert len(address) == width
                found.append(f"{_address(address)}:{int(port, 16)}")
    return found


def _address(hex_address: str) -> str:
    if len(hex_address) == 8:  # little-endian IPv4
        return ".".join(str(int(hex_address[i : i + 2], 16)) for i in (6, 4, 2, 0))
    words = [hex_address[i : i + 8] for i in range(0, 32, 8)]
    raw = b"".join(bytes.fromhex(w)[::-1] for w in words)
    import ipaddress

    return f"[{ipaddress.IPv6Address(raw)}]"


def test_postfix_listens_on_loopback_only_and_renders_the_config(
    tmp_path: Path, flushed: int, sink: Sink
) -> None:
    with postfixlog_env(
        tmp_path,
        flushed,
        sink,
        **{
            "throttled-transport": {
                "domains": ["gmail.com", "Yahoo.com"],
                "concurrency-limit": 3,
                "rate-delay": "2s",
            }
        },
    ) as env:
        env.start()
        pids = postfix_processes(env.base)
        assert pids, "no postfix process found"
        sockets = listening_sockets(pids)
        assert sockets == [f"127.0.0.1:{env.smtpd_port}"]
        etc = str(env.base / "etc")

        def postconf(*args: str) -> str:
            return subprocess.run(
                ["postconf", "-c", etc, *args], capture_output=True, text=True, check=True
            ).stdout.strip()

        assert postconf("-h", "inet_interfaces") == "loopback-only"
        assert postconf("-h", "mynetworks") == "127.0.0.0/8"
        assert postconf("-h", "enable_long_queue_ids") == "yes"
        assert postconf("-h", "myhostname") == "mx.postfixlog.test"
        assert postconf("-h", "myorigin") == "postfixlog.test"
        assert postconf("-h", "maillog_file") == str(env.logfile)
        assert postconf("-h", "smtp_tls_security_level") == "may"
        assert postconf("-h", "throttled_destination_concurrency_limit") == "3"
        assert postconf("-h", "throttled_destination_rate_delay") == "2s"
        assert postconf("-M", "throttled/unix").split()[:8] == [
            "throttled",
            "unix",
            "-",
            "-",
            "n",
            "-",
            "-",
            "smtp",
        ]
        maps = postconf("-h", "transport_maps")
        assert maps.startswith(f"texthash:{etc}/throttled_domains, inline:")
        lookup = subprocess.run(
            ["postmap", "-c", etc, "-q", "yahoo.com", f"texthash:{etc}/throttled_domains"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert lookup.stdout.strip() == "throttled:"
        # The base directory must not be 0700 (docs/ARCHITECTURE.md#checked-facts), the queue is
        # Postfix's.
        assert env.base.stat().st_mode & 0o777 == 0o755
        assert postconf("-h", "queue_directory") == str(env.base / "queue")


def test_sigkill_and_restart_lose_no_event(tmp_path: Path, flushed: int, sink: Sink) -> None:
    """Kill PostfixLog (not Postfix) while outcomes are still to come; after a restart every
    recipient has exactly one event."""
    expected: dict[tuple[str, str], str] = {}
    with postfixlog_env(
        tmp_path, flushed, sink, **{"maximal-queue-lifetime": "6s", "bounce-queue-lifetime": "6s"}
    ) as env:
        service = env.start()
        for n in range(12):
            rcpts = [f"ok{n}@sink.test", f"bad{n}@sink.test", f"later{n}@sink.test"]
            env.push(f"kill{n}", rcpts)
            expected.update(
                {
                    (f"kill{n}", f"ok{n}@sink.test"): "delivered",
                    (f"kill{n}", f"bad{n}@sink.test"): "hard",
                    (f"kill{n}", f"later{n}@sink.test"): "soft",
                }
            )
        wait_for(
            lambda: env.redis.llen(INCOMING) == 0 and env.held() == 0 and len(env.events()) >= 6,
            timeout=30,
            what="everything injected and the first events out",
        )
        service.stop(signal.SIGKILL)
        got_before = len(env.events())
        assert got_before < len(expected), "the kill came too late to prove anything"
        # Postfix outlives its PostfixLog (as in a pod until the container restarts): what it
        # logs meanwhile must be read after the restart.
        time.sleep(2)
        service = env.start()
        wait_for(lambda: len(env.events()) >= len(expected), timeout=40, what="all events")
        wait_quiet()
        events = env.events()
    got = Counter((e["uuid"], e["rcpt"]) for e in events)
    assert got == Counter(expected.keys()), "missing or duplicated events"
    for event in events:
        kind = event["event"] if event["event"] == "delivered" else event["type"]
        assert kind == expected[(event["uuid"], event["rcpt"])]
    for n in range(12):
        assert sink.deliveries(f"ok{n}@sink.test") == 1


def test_log_rotation_and_a_restart_in_between_lose_no_event(
    tmp_path: Path, flushed: int, sink: Sink
) -> None:
    """PostfixLog rotates the log at a quiet moment; then, while it is down, the file it was
    reading is rotated again: after the restart it finds its place by inode in the renamed
    file, reads the rest, and goes on with the new file."""
    with postfixlog_env(tmp_path, flushed, sink, **{"log-rotate-bytes": 3000}) as env:
        service = env.start()
        for n in range(5):
            env.push(f"rot{n}", [f"ok{n}@sink.test", f"bad{n}@sink.test"])
        wait_for(lambda: len(env.events()) == 10, timeout=20, what="first batch")
        wait_for(
            lambda: service.metric("postfix_log_rotations_total") >= 1,
            timeout=10,
            what="a rotation",
        )
        assert (env.logfile.parent / "mail.log.1").exists()
        # postlogd creates the new file with the next line it logs.
        env.push("rot-next", ["ok-next@sink.test"])
        wait_for(lambda: len(env.events()) == 11, timeout=20, what="one more event")

        # The follower moves to the new file once the old one has been quiet for 2 s, and
        # PostfixLog rotates only the file it has read to its end: wait for both.
        def position_in_current_file() -> bool:
            raw = env.redis.get(f"postfixlog:test-{env.smtpd_port}:log-position")
            return (
                raw is not None
                and env.logfile.exists()
                and json.loads(raw)["ino"] == env.logfile.stat().st_ino
            )

        wait_for(position_in_current_file, timeout=10, what="the follower in the new file")
        for n in range(5, 10):
            env.push(f"rot{n}", [f"ok{n}@sink.test", f"bad{n}@sink.test"])
        wait_for(
            lambda: env.redis.llen(INCOMING) == 0 and env.held() == 0,
            timeout=20,
            what="second batch injected",
        )
        service.stop(signal.SIGKILL)
        wait_for(
            lambda: (
                sum(f"ok{n}@sink.test" in line for n in range(5, 10) for line in env.log_lines())
                >= 5
            ),
            timeout=20,
            what="second batch delivered while PostfixLog is down",
        )
        # Rotate the file PostfixLog was in, as it would have (rename, reload master).
        os.replace(env.logfile, env.logfile.with_name("mail.log.1"))
        master = int((env.base / "queue" / "pid" / "master.pid").read_text().split()[0])
        os.kill(master, signal.SIGHUP)
        # (postlogd creates the new file with the next line it logs, perhaps only after the
        # restart: PostfixLog copes with a log file that is not there yet.)
        env.start()
        wait_for(lambda: len(env.events()) >= 21, timeout=30, what="second batch events")
        wait_quiet()
        events = env.events()
    got = Counter((e["uuid"], e["rcpt"]) for e in events)
    assert got == Counter(
        [(f"rot{n}", f"{kind}{n}@sink.test") for n in range(10) for kind in ("ok", "bad")]
        + [("rot-next", "ok-next@sink.test")]
    )


def test_graceful_stop_hands_back_undelivered_recipients(
    tmp_path: Path, flushed: int, sink: Sink
) -> None:
    with postfixlog_env(tmp_path, flushed, sink, **{"deferred-events": True}) as env:
        service = env.start()
        env.push("stop1", ["ok1@sink.test", "flip1@sink.test", "Flip2@sink.test"], "s-9")
        env.push("stop2", ["flip3@sink.test"], None)
        wait_for(
            lambda: (
                sum(e["event"] == "deferred" for e in env.events()) >= 3
                and any(e["event"] == "delivered" for e in env.events())
            ),
            timeout=30,
            what="ok1 delivered and the flips deferred",
        )
        assert service.stop(signal.SIGTERM) == 0
        assert postfix_processes(env.base) == []
        queue = env.base / "queue"
        assert [
            f
            for q in ("incoming", "active", "deferred", "hold")
            for f in (queue / q).rglob("*")
            if f.is_file()
        ] == []

        back = {item.uuid: item for item in env.incoming()}
        assert set(back) == {"stop1", "stop2"}
        assert back["stop1"].header["rcpts"] == ["flip1@sink.test", "Flip2@sink.test"]
        assert back["stop1"].stream_id == "s-9"
        return_path = env.return_path("stop1", "ok1@sink.test", "s-9")
        assert back["stop1"].header["return_path"] == return_path
        assert back["stop1"].header["from_domain"] == "example.com"
        assert back["stop2"].header["rcpts"] == ["flip3@sink.test"]
        payload = back["stop1"].payload
        assert payload.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=mailer;")
        assert f"\r\nX-ReturnPathIb: {return_path}\r\n".encode() in payload
        assert b"Received:" not in payload
        assert payload.endswith(b"\r\n\r\nHi\r\n")

        before = env.events()
        assert not [e for e in before if e["event"] == "bounce"]
        deferred = [e for e in before if e["event"] == "deferred"]
        assert {e["rcpt"] for e in deferred} == {
            "flip1@sink.test",
            "Flip2@sink.test",
            "flip3@sink.test",
        }
        assert all(e["category"] == "mailbox-unavailable" for e in deferred)

        sink.accept_flips()
        env.start()
        wait_for(
            lambda: sum(e["event"] == "delivered" for e in env.events()) == 4,
            timeout=30,
            what="the handed-back recipients delivered",
        )
        wait_quiet()
        finals = [e for e in env.events() if e["event"] != "deferred"]
    assert Counter((e["uuid"], e["rcpt"]) for e in finals) == Counter(
        [
            ("stop1", "ok1@sink.test"),
            ("stop1", "flip1@sink.test"),
            ("stop1", "Flip2@sink.test"),
            ("stop2", "flip3@sink.test"),
        ]
    )
    assert all(e["event"] == "delivered" for e in finals)
    for rcpt in ("ok1@sink.test", "flip1@sink.test", "Flip2@sink.test", "flip3@sink.test"):
        assert sink.deliveries(rcpt) == 1, rcpt


def test_a_log_directory_postfix_cannot_reach_stops_the_start(
    tmp_path: Path, flushed: int, sink: Sink
) -> None:
    """docs/ARCHITECTURE.md#checked-facts: Postfix's processes must reach its files; pytest's
    tmp_path is root's 0700. PostfixLog says so and exits, rather than leaving master to die
    silently."""
    blocked = tmp_path / "private"
    blocked.mkdir(mode=0o700)
    with postfixlog_env(tmp_path, flushed, sink, logfile=str(blocked / "log" / "mail.log")) as env:
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("manycore-postfixlog")),
                "--global-config-file",
                str(env.global_file),
                "--customer-config-file",
                str(env.customer_file),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert postfix_processes(env.base) == []
    assert result.returncode == 1
    assert "must be searchable by postfix (not mode 0700)" in result.stdout
    assert f"postfix needs to reach {blocked / 'log' / 'mail.log'}" in result.stdout
