"""Running a benchmark the way `make bench` does, from a test, without leaving servers behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

from tests.helpers import ROOT


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def run_bench(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m <args>`` from the repository root, in a process group of its own.

    A benchmark starts redis-server, the services, Postfix and bare servers as its children.
    When it is stopped from outside (this ``timeout``, or pytest-timeout's), killing only
    the benchmark left them running, orphaned, for the rest of the run (seen under
    pytest-xdist on a loaded machine): the whole group goes, whatever way the test ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except BaseException:
        kill_group(process.pid)
        process.communicate()
        raise
    kill_group(process.pid)  # anything it left behind
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)
