"""The benchmarks run (quickly) in every `make test`, so they cannot rot. No timing asserts:
figures are read by people, as ratios, from `make bench`."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT


def test_transformer_bench_quick() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.transformer", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "bare OpenSSL RSA-2048 sign" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith(("5 KB", "50 KB"))]
    assert len(rows) == 2
    for row in rows:
        assert float(row.split()[-1]) > 0


def test_backdata_bench_quick() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.backdata", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "bare aiohttp POST loop" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith(("c1", "c4"))]
    assert len(rows) == 4
    for row in rows:
        assert float(row.split()[-1]) > 0
