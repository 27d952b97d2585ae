"""The benchmarks run (quickly) in every `make test`, so they cannot rot. No timing asserts:
figures are read by people, as ratios, from `make bench`."""

from __future__ import annotations

import pytest

from tests.bench.support import run_bench

#: Above every benchmark's own timeout below, so that one fires first and says which run.
pytestmark = pytest.mark.timeout(360)


def test_transformer_bench_quick() -> None:
    result = run_bench("bench.transformer", "--quick", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "bare OpenSSL RSA-2048 sign" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith(("5 KB", "50 KB"))]
    assert len(rows) == 2
    for row in rows:
        assert float(row.split()[-1]) > 0


def test_backdata_bench_quick() -> None:
    result = run_bench("bench.backdata", "--quick", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "bare aiohttp POST loop" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith(("c1", "c4"))]
    assert len(rows) == 4
    for row in rows:
        assert float(row.split()[-1]) > 0


def test_ingest_bench_quick() -> None:
    result = run_bench("bench.ingest", "--quick", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "bare aiosmtpd (discard)" in result.stdout
    assert "bare aiohttp (no-op)" in result.stdout
    lines = result.stdout.splitlines()
    rates = [line for line in lines if line.startswith(("c1", "c8"))]
    # SMTP and HTTP against bare servers and against bare servers + LPUSH, the Receiver
    # against a lean-path aiosmtpd and against Postfix, at 1 and 8 connections; both with 2
    # worker processes at 8; then the growth cases at 8 (50 KB, a deep queue) for SMTP and
    # HTTP, against both baselines.
    assert len(rates) == 12 + 2 + 8, rates
    assert sum("bare aiosmtpd + LPUSH" in line for line in rates) == 4
    assert sum("bare aiohttp + LPUSH" in line for line in rates) == 4
    assert sum("postfix smtpd (queue)" in line for line in rates) == 2
    assert sum("bare aiosmtpd, lean paths" in line for line in rates) == 2
    assert sum("×2 workers" in line for line in rates) == 2
    memory = [line for line in lines if line.startswith(("idle", "loaded", "2k"))]
    assert len(memory) == 5  # RSS of both services idle and loaded, Redis per item
    for row in rates + memory:
        # Three numeric columns: the subject's rate, the baseline's rate, the ratio.
        fields = [f for f in row.split() if f.replace(",", "").replace(".", "").isdigit()]
        numbers = [float(f.replace(",", "")) for f in fields]
        assert len(numbers) == 3 and all(n > 0 for n in numbers), row


def test_growth_bench_quick() -> None:
    result = run_bench("bench.growth", "--quick", timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "20,000 unrelated keys" in line]
    # calls/s, Redis time and commands per call for the lookup floor, reap, exporter, push
    # and the old SCAN.
    assert len(rows) == 15, rows
    for row in rows:
        assert float(row.split()[-1]) > 0


def test_retention_bench_quick() -> None:
    result = run_bench("bench.retention", "--quick", timeout=120)
    assert result.returncode == 0, result.stderr
    rows = {line.split("  ")[0]: line for line in result.stdout.splitlines()}
    kept = rows["bytes kept per message, in window"]
    assert float(kept.split()[-4].replace(",", "")) > 0
    # After the window nothing of a delivered message is left in Redis.
    assert rows["keys left per message after it"].split()[-4] == "0"


def test_idempotency_bench_quick() -> None:
    result = run_bench("bench.idempotency", "--quick", timeout=180)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rates = [line for line in lines if line.startswith("c8")]
    assert [("check on" in r and "check off" in r) for r in rates] == [True, True], rates
    memory = [line for line in lines if line.startswith(("x-uuid", "idempotency-key"))]
    assert len(memory) == 2, memory
    for row in rates + memory:
        assert float(row.split()[-1]) > 0, row


def test_suppression_bench_quick() -> None:
    result = run_bench("bench.suppression", "--quick", timeout=180)
    assert result.returncode == 0, result.stderr
    assert "bytes per entry" in result.stdout and "import of a 20,000-line CSV" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("20,000 entries  ")]
    assert [row.split()[3] for row in rows] == ["overlapped", "serial"], rows
    assert all(float(row.split()[-1]) > 0 for row in rows)
