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


def test_ingest_bench_quick() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.ingest", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert "bare aiosmtpd (discard)" in result.stdout
    assert "bare aiohttp (no-op)" in result.stdout
    lines = result.stdout.splitlines()
    rates = [line for line in lines if line.startswith(("c1", "c8"))]
    assert len(rates) == 4  # SMTP and HTTP, 1 and 8 connections
    memory = [line for line in lines if line.startswith(("idle", "loaded", "2k"))]
    assert len(memory) == 5  # RSS of both services idle and loaded, Redis per item
    for row in rates + memory:
        fields = row.split()[1:]  # after the case name
        numbers = [float(f.replace(",", "")) for f in fields if f[0].isdigit()]
        assert numbers and all(n > 0 for n in numbers), row
