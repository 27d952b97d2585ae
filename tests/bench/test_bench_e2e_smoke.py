"""The end-to-end benchmark runs (quickly: the whole stack, Postfix alone, 30 messages each)
in every `make test`, so it cannot rot. No timing asserts: figures are read by people, as
ratios, from `make bench`. The run itself fails when a message is lost or arrives twice.

The Redis-cost benchmark (README, "Scaling") runs first on the same stack
(``bench.rediscost --quick --with-e2e``): the stack takes ~14 s to start, and both need it
whole. Its counts must be sane: every stage talks to Redis, and a front door spends about one
round trip per message (its push), which is what the README's table says."""

from __future__ import annotations

import pytest

from tests.bench.support import run_bench
from tests.helpers import require_binary

#: The first line of bench.rediscost's table: its rows come after it.
REDISCOST_HEAD = "| Stage | per | round trips |"


def numbers(row: str) -> list[float]:
    fields = row.split()[1:]  # after the case name
    return [float(f.replace(",", "")) for f in fields if f[0].isdigit()]


def check_e2e(out: str) -> None:
    assert "no message lost or doubled" in out
    lines = out.splitlines()
    e2e = [line for line in lines if line.startswith("5 KB") and "manycore stack" in line]
    # vs smtp-source, the same client plain and with STARTTLS, and the floor
    assert len(e2e) == 4
    assert any("postfix (smtp-source)" in line for line in e2e)
    assert any("postfix (STARTTLS)" in line for line in e2e)
    floor = [line for line in lines if line.startswith("5 KB    floor ")]
    assert len(floor) == 3, floor  # vs smtp-source, the same client, STARTTLS
    e2e += floor
    latency = [line for line in lines if line.startswith(("p50/5K", "p99/5K"))]
    assert len(latency) == 4  # under load and paced (the floor's paced rows: full runs only)
    assert "Latency at a steady" in out
    check_hops(lines)
    cpu = [line for line in lines if line.startswith("5 KB") and "wall per message" in line]
    assert any("stack: transformer" in line for line in cpu)
    assert any("alone: postfix" in line for line in cpu)
    for process in ("serve", "sign", "relay", "redis-server"):
        assert any(f"floor: floor {process}" in line for line in cpu), process
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


def check_hops(lines: list[str]) -> None:
    """Every hop of the paced round (bench/hops.py) found both its stamps in every one of
    the round's 10 messages' trace records: none is missing, and they add up."""
    hops = {}
    for line in lines:
        if line.startswith("5 KB") and "→" in line:
            name = line[8:30].strip()
            p50, _, count = line[30:].split()
            hops[name] = (float(p50), int(count))
    assert len(hops) == 5, hops
    assert all(count == 10 for _, count in hops.values()), hops
    assert hops["queued → 250"][0] > 0 and hops["250 → sink"][0] > 0, hops


def check_rediscost(table: str) -> None:
    rows = {
        cells[1]: cells
        for cells in (line.split("|") for line in table.splitlines())
        if len(cells) > 4 and cells[3].strip().replace(".", "").isdigit()
    }
    stages = {k.strip(): (float(v[3]), float(v[4])) for k, v in rows.items()}
    stages_seen = sorted(stages)
    assert stages_seen == ["backdata", "httpreceiver", "mxserver", "postfixlog", "receiver",
                           "transformer"]  # fmt: skip
    for name, (round_trips, commands) in stages.items():
        assert 0 < round_trips <= commands, name
    assert 0.3 <= stages["receiver"][0] <= 2 and 0.5 <= stages["httpreceiver"][0] <= 2


# The whole stack, Postfix alone and the floor: 60-115 s, longer on a loaded machine with the
# other xdist worker busy, so more than the suite's 120 s default.
@pytest.mark.timeout(300)
def test_e2e_and_rediscost_bench_quick() -> None:
    for binary in ("redis-server", "postfix", "smtp-source"):
        require_binary(binary)
    result = run_bench("bench.rediscost", "--quick", "--with-e2e", timeout=280)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    e2e, head, rediscost = out.partition(REDISCOST_HEAD)
    assert head, out  # the Redis-cost table came, after the end-to-end figures
    check_e2e(e2e)
    check_rediscost(rediscost)
