"""The Redis-cost benchmark (README, "Scaling") runs quickly on the whole local stack, so it
cannot rot; its counts are sane: every stage talks to Redis, and a front door spends about
one round trip per message (its push), which is what the README's table says."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT, require_binary


def test_rediscost_bench_quick() -> None:
    for binary in ("redis-server", "postfix"):
        require_binary(binary)
    result = subprocess.run(
        [sys.executable, "-m", "bench.rediscost", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {
        cells[1]: cells
        for cells in (line.split("|") for line in result.stdout.splitlines())
        if len(cells) > 4 and cells[3].strip().replace(".", "").isdigit()
    }
    stages = {k.strip(): (float(v[3]), float(v[4])) for k, v in rows.items()}
    assert set(stages) == {
        "receiver",
        "httpreceiver",
        "transformer",
        "postfixlog",
        "backdata",
        "mxserver",
    }
    for name, (round_trips, commands) in stages.items():
        assert 0 < round_trips <= commands, name
    assert 0.3 <= stages["receiver"][0] <= 2 and 0.5 <= stages["httpreceiver"][0] <= 2
