"""Helpers shared by the benchmarks: interleaved timing and result files."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from devstack.stack import free_port as free_port  # re-exported for the benchmarks

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"  # benchmarks talk to nothing else
SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"


def bench_fail(text: str) -> SystemExit:
    return SystemExit(f"bench: {text}")


def binary(name: str) -> str:
    """A system binary the run needs; missing is a failure, never a skip."""
    path = shutil.which(name) or shutil.which(name, path=SBIN)
    if path is None:
        raise bench_fail(f"{name} is not installed (make test installs it with apt)")
    return path


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
        return True
    return False


def rss_kb(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise bench_fail(f"no VmRSS for {pid}")


def pin_to_one_core() -> int | None:
    """Run on one core, so "per core" means what it says."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    fn()  # warm up
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def interleaved(
    subject: Callable[[], object], baseline: Callable[[], object], seconds: float, rounds: int
) -> tuple[float, float, float]:
    """Median rates of subject and baseline, measured in alternating rounds so that drift in
    the machine's load hits both alike, and the median of the per-round ratios."""
    subject_rates, baseline_rates, ratios = [], [], []
    for _ in range(rounds):
        s = rate(subject, seconds)
        b = rate(baseline, seconds)
        subject_rates.append(s)
        baseline_rates.append(b)
        ratios.append(s / b)
    return (
        statistics.median(subject_rates),
        statistics.median(baseline_rates),
        statistics.median(ratios),
    )


@dataclass
class Row:
    benchmark: str
    case: str
    subject: str
    subject_rate: float
    baseline: str
    baseline_rate: float
    ratio: float
    unit: str = "msg/s"


def write(name: str, rows: list[Row], notes: str = "") -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    json_path = RESULTS / f"{name}.json"
    json_path.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2))
    md_path = RESULTS / f"{name}.md"
    lines = [
        f"# {name}",
        "",
        notes,
        "",
        "| case | subject | rate | baseline | rate | ratio |",
        "|---|---|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.subject} | {r.subject_rate:,.0f} {r.unit} | {r.baseline} | "
            f"{r.baseline_rate:,.0f} {r.unit} | {r.ratio:.2f} |"
        )
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def table(rows: list[Row]) -> str:
    width = max([8, *(len(r.case) + 2 for r in rows)])
    subject = max([24, *(len(r.subject) + 2 for r in rows)])
    baseline = max([26, *(len(r.baseline) + 2 for r in rows)])
    head = f"{'case':<{width}}{'subject':<{subject}}{'rate':>12}  {'baseline':<{baseline}}"
    out = [f"{head}{'rate':>12}{'ratio':>8}"]
    for r in rows:
        out.append(
            f"{r.case:<{width}}{r.subject:<{subject}}{r.subject_rate:>12,.0f}  "
            f"{r.baseline:<{baseline}}{r.baseline_rate:>12,.0f}{r.ratio:>8.2f}"
        )
    return "\n".join(out)
