"""`make run`'s supervisor: starts the stack, takes a message, stops on Ctrl-C (SIGINT) in
order, and a second run still has what was queued (Redis AOF)."""

from __future__ import annotations

import base64
import random
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from redis import Redis as SyncRedis

from manycore_common import item as item_format
from tests.helpers import LOOPBACK, ROOT, port_open, require_binary, wait_for
from tests.integration.conftest import build_message


def free_base() -> int:
    for _ in range(50):
        base = random.randrange(20000, 60000)
        if not any(port_open(base + i) for i in range(13)):
            return base
    raise AssertionError("no free port range")


def redis_client(workdir: Path, base: int) -> SyncRedis:
    password = (workdir / "configs" / "redis-password").read_text().strip()
    return SyncRedis(host=LOOPBACK, port=base, username="manycore", password=password)


def start(workdir: Path, base: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack", "--workdir", str(workdir), "--port-base", str(base)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Press Ctrl-C" in line:
            return proc
    raise AssertionError(f"stack did not start (exit {proc.wait()})")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def test_run_send_stop_and_continue(tmp_path: Path) -> None:
    require_binary("redis-server")
    base = free_base()
    proc = start(tmp_path, base)
    try:
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{base + 2}/v1/mail/send",
            data=build_message("stackmsg"),
            headers={
                "Content-Type": "message/rfc822",
                "Authorization": "Basic " + base64.b64encode(b"apa:banan").decode(),
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        client = redis_client(tmp_path, base)
        wait_for(lambda: client.llen("INCOMING-TO-POSTFIX") == 1, what="transformer hand-over")
        client.close()
    finally:
        out = stop(proc)
    order = [
        out.index(f"stopped {name}")
        for name in ("httpreceiver", "receiver", "transformer", "redis")
    ]
    assert order == sorted(order), out

    # A second run continues with what was queued (Redis AOF).
    proc = start(tmp_path, base)
    try:
        client = redis_client(tmp_path, base)
        raws = client.lrange("INCOMING-TO-POSTFIX", 0, -1)
        client.close()
        assert [item_format.decode(raw).uuid for raw in raws] == ["stackmsg"]
        assert item_format.decode(raws[0]).payload.startswith(b"DKIM-Signature:")
    finally:
        stop(proc)
