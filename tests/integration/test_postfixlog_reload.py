"""Config changes without a restart (PostfixLog/manycore_postfixlog/reload.py) with a real
Postfix: a live key edited in the customer file is in use after SIGHUP or the file watch,
Postfix's master and its queue are the same; a key that needs a restart is refused by name
and nothing changes."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import LOOPBACK, wait_for
from tests.integration.postfix_env import PostfixLogEnv, Sink, postfixlog_env, wait_quiet


def edit(env: PostfixLogEnv, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite the customer file in one step (as the kubelet swaps a ConfigMap's files)."""
    data = yaml.safe_load(env.customer_file.read_text())
    change(data["postfixlog"])
    temporary = env.customer_file.with_suffix(".tmp")
    temporary.write_text(yaml.safe_dump(data))
    os.replace(temporary, env.customer_file)


def set_main_cf(name: str, value: str) -> Callable[[dict[str, Any]], None]:
    return lambda section: section["string-replacer"]["main-cf"].update({name: value})


def advertised_size(env: PostfixLogEnv) -> str:
    """SIZE in the EHLO reply of the running smtpd: the value Postfix uses, not the file's."""
    with smtplib.SMTP(LOOPBACK, env.smtpd_port, timeout=10) as client:
        client.ehlo("reload.test")
        return str(client.esmtp_features.get("size", ""))


def postconf(env: PostfixLogEnv, name: str) -> str:
    argv = ["postconf", "-c", str(env.base / "etc"), "-h", name]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def master_pid(env: PostfixLogEnv) -> int:
    return int((env.base / "queue" / "pid" / "master.pid").read_text().split()[0])


def queued_files(env: PostfixLogEnv) -> int:
    """Messages in Postfix's queue (a deferred one moves to active for each retry)."""
    queues = [env.base / "queue" / q for q in ("incoming", "active", "deferred")]
    return sum(1 for q in queues for f in q.rglob("*") if f.is_file())


@pytest.mark.timeout(300)
def test_live_change_is_applied_and_a_restart_key_refused(
    tmp_path: Path, flushed: int, sink: Sink
) -> None:
    with postfixlog_env(tmp_path, flushed, sink) as env:
        service = env.start()
        env.push("rl1", ["flip1@sink.test"])
        wait_for(
            lambda: any("status=deferred" in line for line in env.log_lines()),
            timeout=30,
            what="flip1 deferred",
        )
        master = master_pid(env)
        assert advertised_size(env) != "7654321"

        # SIGHUP: applied at once (without a handler SIGHUP would end the process).
        edit(env, set_main_cf("message_size_limit", "7654321"))
        assert service.process is not None
        service.process.send_signal(signal.SIGHUP)
        wait_for(lambda: advertised_size(env) == "7654321", timeout=8, what="new SIZE in use")
        assert postconf(env, "message_size_limit") == "7654321"
        assert master_pid(env) == master and queued_files(env) == 1
        assert service.metric("postfix_config_reloads_total", 'result="applied"') == 1

        # The file watch alone, for a relay setting.
        edit(env, set_main_cf("smtp_helo_timeout", "77s"))
        wait_for(
            lambda: postconf(env, "smtp_helo_timeout") == "77s", timeout=25, what="watched edit"
        )

        # A key that needs a restart: refused by name, nothing of the edit applied.
        def restart_only(section: dict[str, Any]) -> None:
            section["instance-name"] = "elsewhere"
            section["string-replacer"]["main-cf"]["message_size_limit"] = "1111111"

        edit(env, restart_only)
        service.process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: service.metric("postfix_config_reloads_total", 'result="refused"') == 1,
            timeout=8,
            what="the change refused",
        )
        log = service.log.read_text()
        assert "config change needs a restart" in log and "postfixlog.instance-name" in log
        assert advertised_size(env) == "7654321"
        assert postconf(env, "message_size_limit") == "7654321"

        # The queue went through all of it: delivered once, with its one event.
        # A reload restarts qmgr, which holds back a message a delivery agent had open for
        # 60 s (qmgr_active.c, "file is locked"): the retries here are seconds apart, but
        # each of the two reloads above may catch flip1 mid-delivery (CI: over 100 s).
        sink.accept_flips()
        try:
            wait_for(lambda: sink.deliveries("flip1@sink.test") == 1, timeout=200, what="flip1")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n" + "\n".join(env.log_lines()[-40:])) from None
        wait_for(lambda: len(env.events()) == 1, timeout=10, what="its event")
        wait_quiet()
        assert [(e["uuid"], e["event"]) for e in env.events()] == [("rl1", "delivered")]
        assert master_pid(env) == master
