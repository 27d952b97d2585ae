"""End to end through the whole local stack (`make run`'s): a message goes in through the
Receiver or HttpReceiver, is signed, delivered by the real Postfix to the sink MX, and every
outcome comes back to the webhook inbox as the right event, as it would from the Internet:
synchronous bounces from Postfix's log, asynchronous ones, auto-replies, spam reports and
unsubscribes through MxServer and HttpReceiver's one-click route."""

from __future__ import annotations

import email
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis import Redis
from redis.exceptions import NoPermissionError

from devstack.stack import redis_password
from manycore_common import feedbacktag
from tests.e2e.conftest import own
from tests.e2e.stack import Stack, wait_until
from tests.helpers import LOOPBACK, ROOT, require_binary
from tests.integration.conftest import build_message


def wait_events(
    stack: Stack, uuids: set[str], want: int, timeout: float = 120
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = own(stack.events(), uuids)
        if len(events) >= want:
            return events
        time.sleep(0.5)
    raise AssertionError(
        f"{len(own(stack.events(), uuids))} of {want} events:\n{stack.events()}\n{stack.logs()}"
    )


def test_every_outcome_comes_back_as_its_event(stack: Stack) -> None:
    outcomes = [
        "hard-bounce",
        "unroutable",
        "async-bounce",
        "autoreply",
        "complain",
        "unsubscribe",
        "soft-bounce",
    ]
    uuids = {"e2e" + name.replace("-", "") for name in outcomes} | {"e2emulti"}
    for name in outcomes:
        uuid = "e2e" + name.replace("-", "")
        stack.post(build_message(uuid, to=f"{name}@example.net", cc=None, stream_id="e2e"))
    # One message with several recipients, through SMTP submission.
    stack.submit(
        build_message(
            "e2emulti", "0", to="a@example.net, b@example.org", cc="c@example.net", stream_id="e2e"
        )
    )
    # Final events: 1 per recipient (10), plus the asynchronous ones: a DSN bounce,
    # an auto-reply, a spam report, an unsubscribe (mailto and one-click: one event).
    events = wait_events(stack, uuids, 14)
    time.sleep(3)  # anything that should not come (duplicates) would come now
    events = own(stack.events(), uuids)
    by: dict[tuple[str, str, str | None], list[dict[str, Any]]] = {}
    for e in events:
        by.setdefault((e["event"], e["uuid"], e.get("type")), []).append(e)

    def one(event: str, uuid: str, kind: str | None = None) -> dict[str, Any]:
        found = by.get((event, uuid, kind), [])
        assert len(found) == 1, (event, uuid, kind, events)
        return found[0]

    assert one("bounce", "e2ehardbounce", "hard")["category"] == "invalid-recipient"
    assert one("bounce", "e2eunroutable", "unroutable")["rcpt"] == "unroutable@example.net"
    assert one("bounce", "e2esoftbounce", "soft")["rcpt"] == "soft-bounce@example.net"
    for uuid in ("e2easyncbounce", "e2eautoreply", "e2ecomplain", "e2eunsubscribe"):
        assert one("delivered", uuid)["streamid"] == "e2e"
    assert one("bounce", "e2easyncbounce", "hard")["rcpt"] == "async-bounce@example.net"
    assert one("bounce", "e2eautoreply", "autoreply")["rcpt"] == "autoreply@example.net"
    assert one("spam-report", "e2ecomplain")["email"] == "complain@example.net"
    one("unsubscribe", "e2eunsubscribe")
    multi = by.get(("delivered", "e2emulti", None), [])
    assert sorted(e["rcpt"] for e in multi) == ["a@example.net", "b@example.org", "c@example.net"]
    assert len({e["id"] for e in events}) == len(events)  # ids are unique
    assert len(events) == 14
    # Everything the sink received was DKIM-signed, and verified.
    received = stack.received()
    assert received and all(r["dkim_ok"] for r in received), received
    assert {r["rcpt"] for r in received} >= {"a@example.net", "b@example.org", "c@example.net"}


def test_delivered_message_has_the_design_headers(stack: Stack) -> None:
    stack.post(
        build_message(
            "e2eheaders",
            to="reader@example.net",
            cc=None,
            stream_id="s5",
            extra_headers=["Bcc: hidden@example.org"],
        )
    )
    wait_until(
        lambda: any(r["rcpt"] == "reader@example.net" for r in stack.received()),
        60,
        "the message at the sink",
    )
    (record,) = [r for r in stack.received() if r["rcpt"] == "reader@example.net"]
    # MAIL FROM, Message-ID and the unsubscribe mailto are tagged for this recipient.
    secret = (stack.workdir / "configs" / "feedback-secret").read_text().rstrip("\r\n")
    key = secret.encode()
    rp = "bounce.example.com"
    return_path = feedbacktag.make_address(
        key, "bounce", "e2eheaders", "reader@example.net", rp, "s5"
    )
    unsub = feedbacktag.make_address(key, "unsub", "e2eheaders", "reader@example.net", rp, "s5")
    assert record["dkim_ok"] and record["mail_from"] == return_path
    msg = email.message_from_bytes(Path(record["path"]).read_bytes())
    message_id = feedbacktag.make_address(
        key, "message", "e2eheaders", "reader@example.net", rp, "s5"
    )
    assert msg["Message-ID"] == f"<{message_id}>"
    assert msg["Feedback-ID"] == "s5:transactional:example-sender"
    assert msg["List-Unsubscribe"].startswith(f"<mailto:{unsub}>")
    assert "https://mail.example.com/v1/unsubscribe/" in msg["List-Unsubscribe"]
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["Date"] and msg["X-Mailer"] == "Manycore-Mail"
    for gone in ("X-Uuid", "X-Priority", "X-Stream-Id", "Bcc", "X-ReturnPathIb"):
        assert msg[gone] is None, gone


def test_send_helper_and_the_inbox_page_in_a_real_browser(stack: Stack) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "devstack.send",
            "--workdir",
            str(stack.workdir),
            "--to",
            "browser@example.test",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    uuid = json.loads(out.stdout)["uuid"]
    wait_until(lambda: any(e.get("uuid") == uuid for e in stack.events()), 60, "its event")
    chromium = require_binary("chromium")
    with tempfile.TemporaryDirectory() as profile:
        page = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--dump-dom",
                f"http://127.0.0.1:{stack.base + 4}/",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert "Webhook inbox" in page.stdout, page.stderr[-2000:]
    assert uuid in page.stdout and "browser@example.test" in page.stdout
    assert 'http-equiv="refresh"' in page.stdout


def test_every_service_ran_as_its_own_redis_user_and_none_was_refused(stack: Stack) -> None:
    """Issue 18: the stack runs with one ACL user per service (devstack's config), so the
    flows above passed with only the rights ``manycore_redis.acl`` grants; a command Redis
    refused would show in a service's log as "no permissions" (redis-py's NOPERM)."""
    customer = yaml.safe_load(Path(stack.config_files()[3]).read_text())
    users = customer["redis"]["server"]["users"]
    for service in ("receiver", "httpreceiver", "transformer", "postfixlog", "backdata"):
        login = customer[service]["reliable-queue"]["redis"]
        assert login["username"] == users[service]["username"] == f"manycore-{service}"
    assert customer["mxserver"]["reliable-queue"]["redis"]["username"] == "manycore-mxserver"
    refused = [
        f"{log.name}: {line[:300]}"
        for log in sorted((stack.workdir / "logs").glob("*.log"))
        for line in log.read_text(errors="replace").splitlines()
        if "no permissions" in line or "NOPERM" in line or "WRONGPASS" in line
    ]
    assert refused == []
    receiver = Redis(
        host=LOOPBACK,
        port=stack.base,
        username="manycore-receiver",
        password=redis_password(stack.workdir, "receiver"),
    )
    try:
        assert receiver.ping()  # logged in as manycore-receiver, with its own password
        for command in (("FLUSHALL",), ("KEYS", "*"), ("DEL", "EVENT_QUEUE")):
            with pytest.raises(NoPermissionError):
                receiver.execute_command(*command)  # type: ignore[no-untyped-call]
    finally:
        receiver.close()
