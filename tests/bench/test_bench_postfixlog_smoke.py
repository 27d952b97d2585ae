"""``bench.postfixlog`` runs (quickly), so it cannot rot. No timing asserts: its figures are
read by people, old code against new, from the bench itself."""

from __future__ import annotations

import re

import pytest

from tests.bench.support import run_bench

pytestmark = pytest.mark.timeout(300)


def test_postfixlog_bench_quick() -> None:
    result = run_bench("bench.postfixlog", "--quick", timeout=240)
    assert result.returncode == 0, result.stderr
    # Every message reached its delivered event (else the bench exits with a count).
    rows = re.findall(r"round 0 new: ([0-9.]+) ms CPU/msg, ([0-9]+) msg/s", result.stdout)
    assert len(rows) == 1, result.stdout
    cpu, rate = rows[0]
    assert float(cpu) > 0 and int(rate) > 0
