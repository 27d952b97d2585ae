"""The suppression list through the whole local stack: a recipient that hard-bounced (the
sink's 550 5.1.1, read from Postfix's log), complained (an ARF to MxServer) or unsubscribed
(the List-Unsubscribe mailto and one-click POST) gets a ``suppressed`` event for the next
message and the sink never sees it; a soft bounce suppresses nothing; after a DELETE through
the API the recipient is mailed again. On the stack the e2e files share (conftest.py), with
recipients of its own domain."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from typing import Any

from tests.e2e.conftest import own
from tests.e2e.stack import Stack
from tests.helpers import LOOPBACK
from tests.integration.conftest import build_message

NAMES = ("hard-bounce", "complain", "unsubscribe", "soft-bounce")
#: This file's recipients' domain: the other files on the shared stack suppress theirs.
DOMAIN = "supp.example.net"
#: This file's messages: only their events count here.
UUIDS = {stage + n.replace("-", "") for stage in ("first", "again") for n in NAMES} | {
    "thirdcomplain"
}


def api(stack: Stack, method: str, path: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://{LOOPBACK}:{stack.base + 2}{path}",
        method=method,
        headers={"Authorization": "Basic " + base64.b64encode(b"apa:banan").decode()},
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.loads(exc.read()))


def send(stack: Stack, uuid: str, name: str) -> None:
    stack.post(build_message(uuid, to=f"{name}@{DOMAIN}", cc=None, stream_id="supp"))


def wait_for_events(
    stack: Stack, want: set[tuple[str, str]], timeout: float = 120
) -> dict[tuple[str, str], dict[str, Any]]:
    """(event, uuid) → event of this file's messages, once every wanted pair has come."""
    deadline = time.monotonic() + timeout
    while True:
        got = {(e["event"], e["uuid"]): e for e in stack.events() if e.get("uuid") in UUIDS}
        if want <= set(got) or time.monotonic() > deadline:
            assert want <= set(got), (want - set(got), stack.events(), stack.logs())
            return got
        time.sleep(0.5)


def received_by(stack: Stack, rcpt: str) -> int:
    return sum(1 for r in stack.received() if r["rcpt"] == rcpt)


def test_bounces_complaints_and_unsubscribes_suppress_the_next_message(stack: Stack) -> None:
    for name in NAMES:
        send(stack, "first" + name.replace("-", ""), name)
    wait_for_events(
        stack,
        {
            ("bounce", "firsthardbounce"),
            ("spam-report", "firstcomplain"),
            ("unsubscribe", "firstunsubscribe"),
            ("bounce", "firstsoftbounce"),
        },
    )
    status, got = api(stack, "GET", "/v1/suppressions/Complain@Supp.Example.NET")
    assert status == 200, got
    assert [(e["domain"], e["reason"]) for e in got["entries"]] == [("example.com", "spam-report")]
    assert api(stack, "GET", f"/v1/suppressions/soft-bounce@{DOMAIN}")[0] == 404

    for name in NAMES:
        send(stack, "again" + name.replace("-", ""), name)
    want = {("suppressed", "again" + n.replace("-", "")) for n in NAMES[:3]}
    events = wait_for_events(stack, want | {("bounce", "againsoftbounce")})
    reasons = {uuid: e["reason"] for (kind, uuid), e in events.items() if kind == "suppressed"}
    assert reasons == {
        "againhardbounce": "hard-bounce",
        "againcomplain": "spam-report",
        "againunsubscribe": "unsubscribe",
    }
    source = events[("suppressed", "againhardbounce")]
    assert source["source"] == events[("bounce", "firsthardbounce")]["id"][:16]
    assert source["source-uuid"] == "firsthardbounce"
    assert ("delivered", "againcomplain") not in events
    assert received_by(stack, f"complain@{DOMAIN}") == 1

    assert api(stack, "DELETE", f"/v1/suppressions/complain@{DOMAIN}?domain=example.com") == (
        200,
        {"address": f"complain@{DOMAIN}", "deleted": 1},
    )
    send(stack, "thirdcomplain", "complain")
    wait_for_events(stack, {("delivered", "thirdcomplain")})
    assert received_by(stack, f"complain@{DOMAIN}") == 2
    kinds = [e["event"] for e in own(stack.events(), UUIDS)]
    assert kinds.count("suppressed") == 3
