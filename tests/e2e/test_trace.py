"""``manycore-queues trace`` through the whole local stack (`make run`'s, one start): a
delivered, a hard-bounced and a deferred message, each traced by uuid from its injection
(Postfix queue id, instance) through each outcome in Postfix's log to its event and the
webhook's answer; and Postfix's own log lines on PostfixLog's stdout. On the stack the e2e
files share (conftest.py), with recipients of its own domain (the others' hard bounces
suppress theirs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.e2e.stack import Stack, wait_until
from tests.integration.conftest import build_message

UUIDS = {"delivered": "tr-ok", "bounced": "tr-hard", "deferred": "tr-soft"}


def trace(stack: Stack, uuid: str, *json_flag: str) -> str:
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "manycore-queues"),
            *stack.config_files(),
            *json_flag,
            "trace",
            uuid,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout


def records(stack: Stack, uuid: str) -> list[dict[str, Any]]:
    return list(json.loads(trace(stack, uuid, "--json"))["records"])


def has(found: list[dict[str, Any]], stage: str, **fields: Any) -> bool:
    return any(r["stage"] == stage and all(r.get(k) == v for k, v in fields.items()) for r in found)


def test_trace_follows_each_message_through_every_stage(stack: Stack) -> None:
    for to, uuid in (("ok", "tr-ok"), ("hard-bounce", "tr-hard"), ("soft-bounce", "tr-soft")):
        stack.post(build_message(uuid, to=f"{to}@trace.example.net", cc=None))

    def done(uuid: str, outcome: str, event: str) -> bool:
        found = records(stack, uuid)
        return has(found, "log", outcome=outcome) and has(
            found, "event", event=event, webhook="delivered"
        )

    # The webhook's inbox first (one HTTP request a look): each trace look starts a
    # manycore-queues process, too dear to poll with.
    finals = {("delivered", "tr-ok"), ("bounce", "tr-hard"), ("bounce", "tr-soft")}
    wait_until(
        lambda: finals <= {(e["event"], e.get("uuid")) for e in stack.events()},
        180,
        "the three final events (tr-soft's after the queue lifetime, 10 s in the stack)",
    )
    wait_until(lambda: done("tr-ok", "delivered", "delivered"), 30, "tr-ok traced")
    wait_until(lambda: done("tr-hard", "bounce", "bounce"), 30, "tr-hard traced")
    assert has(records(stack, "tr-soft"), "log", outcome="deferred")

    for uuid in UUIDS.values():
        found = records(stack, uuid)
        (injected,) = [r for r in found if r["stage"] == "injected"]
        assert injected["queue_id"] and injected["queue_id"] != "-" and injected["instance"]
        assert injected["accepted"] == 1 and injected["by"] == "postfixlog"
        logged = [r for r in found if r["stage"] == "log"]
        assert all(r["queue_id"] == injected["queue_id"] for r in logged)
        assert found.index(injected) < found.index(logged[0])  # in the order they happened
    ok = records(stack, "tr-ok")
    assert has(ok, "event", event="delivered", rcpt="ok@trace.example.net", source="postfixlog")
    hard = [r for r in records(stack, "tr-hard") if r["stage"] == "event"]
    assert hard[0]["type"] == "hard" and "550" in hard[0]["reason"]

    # The deferred message ran out of queue lifetime: its soft bounce.
    wait_until(lambda: done("tr-soft", "bounce", "bounce"), 30, "tr-soft soft bounce traced")
    text = trace(stack, "tr-soft")
    assert "injected" in text and "outcome=deferred" in text and "webhook=delivered" in text
    assert "in no queue" in text

    # Postfix's own lines are in PostfixLog's stdout (what `kubectl logs` shows).
    lines = [
        json.loads(x)
        for x in (stack.workdir / "logs" / "postfixlog.log").read_text().splitlines()
        if x.startswith("{")
    ]
    postfix = [x["postfix"] for x in lines if "postfix" in x]
    assert any("status=sent" in x for x in postfix)
    assert any("status=deferred" in x for x in postfix)
