"""``queue-on-stop: keep``: Postfix's queue stays in its directory (a persistent volume in
production) across a stop, and the next start with the same postfix-directory and instance
name delivers it, each recipient once, each with exactly one final event."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

from tests.helpers import wait_for
from tests.integration.postfix_env import (
    INCOMING,
    Sink,
    postfix_processes,
    postfixlog_env,
    wait_quiet,
)

RCPTS = {
    "keep1": ["ok1@sink.test", "flip1@sink.test", "Flip2@sink.test"],
    "keep2": ["flip3@sink.test"],
}


def queue_files(base: Path) -> list[Path]:
    queue = base / "queue"
    return [
        f
        for q in ("incoming", "active", "deferred", "hold")
        for f in (queue / q).rglob("*")
        if f.is_file()
    ]


def test_kept_queue_is_delivered_once_by_the_next_start(
    tmp_path: Path, flushed: int, sink: Sink
) -> None:
    changes = {"deferred-events": True, "queue-on-stop": "keep"}
    with postfixlog_env(tmp_path, flushed, sink, **changes) as env:
        service = env.start()
        for uuid, rcpts in RCPTS.items():
            env.push(uuid, rcpts)
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
        # Nothing handed back: the two messages are still in Postfix's queue (on hold, as
        # the stop left them), their state in Redis.
        assert env.redis.llen(INCOMING) == 0 and env.held() == 0
        assert len(queue_files(env.base)) == 2
        assert "postfix queue kept for the next start" in service.log.read_text()
        assert not [e for e in env.events() if e["event"] == "bounce"]
        assert sink.deliveries("flip1@sink.test") == 0

        sink.accept_flips()
        env.start()
        wait_for(
            lambda: sum(e["event"] == "delivered" for e in env.events()) == 4,
            timeout=40,
            what="the kept recipients delivered",
        )
        wait_for(lambda: not queue_files(env.base), timeout=10, what="the queue empty")
        wait_quiet()
        finals = [e for e in env.events() if e["event"] != "deferred"]
        # Delivered from the same queue files: no new injection from Redis.
        assert env.redis.llen(INCOMING) == 0
    assert Counter((e["uuid"], e["rcpt"]) for e in finals) == Counter(
        (uuid, rcpt) for uuid, rcpts in RCPTS.items() for rcpt in rcpts
    )
    assert all(e["event"] == "delivered" for e in finals)
    for rcpt in ("ok1@sink.test", "flip1@sink.test", "Flip2@sink.test", "flip3@sink.test"):
        assert sink.deliveries(rcpt) == 1, rcpt


def test_the_marker_file_hands_a_kept_queue_back(tmp_path: Path, flushed: int, sink: Sink) -> None:
    """Before scaling an instance away for good: the marker makes its next stop hand back."""
    with postfixlog_env(tmp_path, flushed, sink, **{"queue-on-stop": "keep"}) as env:
        service = env.start()
        env.push("mark1", ["flip1@sink.test"])
        wait_for(
            lambda: any(
                "flip1@sink.test" in line and "status=deferred" in line for line in env.log_lines()
            ),
            timeout=30,
            what="flip1 deferred",
        )
        (env.base / "hand-back-on-stop").touch()
        assert service.stop(signal.SIGTERM) == 0
        assert queue_files(env.base) == []
        assert [item.uuid for item in env.incoming()] == ["mark1"]
        assert not (env.base / "hand-back-on-stop").exists()
