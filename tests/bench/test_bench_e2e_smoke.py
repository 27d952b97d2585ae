"""The end-to-end benchmark runs (quickly: the whole stack, Postfix alone, 30 messages each)
in every `make test`, so it cannot rot. No timing asserts: figures are read by people, as
ratios, from `make bench`. The run itself fails when a message is lost or arrives twice."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT, require_binary


def numbers(row: str) -> list[float]:
    fields = row.split()[1:]  # after the case name
    return [float(f.replace(",", "")) for f in fields if f[0].isdigit()]


def test_e2e_bench_quick() -> None:
    for binary in ("redis-server", "postfix", "smtp-source"):
        require_binary(binary)
    result = subprocess.run(
        [sys.executable, "-m", "bench.e2e", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "no message lost or doubled" in out
    lines = out.splitlines()
    e2e = [line for line in lines if line.startswith("5 KB") and "manycore stack" in line]
    assert len(e2e) == 2  # vs smtp-source and vs the same client
    assert any("postfix (smtp-source)" in line for line in e2e)
    latency = [line for line in lines if line.startswith(("p50/5K", "p99/5K"))]
    assert len(latency) == 4  # under load and paced
    assert "Latency at a steady" in out
    cpu = [line for line in lines if line.startswith("5 KB") and "wall per message" in line]
    assert any("stack: transformer" in line for line in cpu)
    assert any("alone: postfix" in line for line in cpu)
    events = [line for line in lines if "delivered events" in line]
    assert len(events) == 1
    for row in e2e + latency + events:
        values = numbers(row)
        assert len(values) == 3 and all(v > 0 for v in values), row
    memory = [line for line in lines if line.startswith(("idle", "peak", "end"))]
    services = ("receiver", "httpreceiver", "transformer", "postfixlog", "backdata",
                "mxserver", "redis", "redis-server")  # fmt: skip
    assert len(memory) == 3 * len(services)
    for service in services:
        assert any(line.split()[1] == service for line in memory), service
    for row in memory:
        assert numbers(row)[0] > 0, row
