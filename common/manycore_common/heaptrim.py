"""Giving the heap's free pages back to the system once a burst of work is over.

glibc's malloc gives memory back to the kernel by itself only from the top of its heap. A
burst of TLS connections leaves the heap full of free chunks below a few live ones (asyncio
allocates a 256 KiB buffer per TLS connection and one per TLS read, CPython's ``ssl``
shrinks each read to what came): measured on the Receiver after two rounds of 32
connections (bench/ingest.py load), the main arena held 31 MB of which 10 MB were in use
(``malloc_stats``), and ``tracemalloc`` showed no growth of live Python objects. What
was not yet freed were the closed connections themselves (reference cycles, each holding its
buffer, waiting for a full pass of the cycle collector), and the free pages stay resident
until the next burst reuses them.

``malloc_trim(0)`` (glibc 2.8 and later) returns every free whole page of every arena
(``madvise(MADV_DONTNEED)``); after ``gc.collect()`` it took the Receiver's RSS from 72 to
53 MB. Both are done once per burst, after ``quiet`` seconds without work: a trim walks the
heap (2 ms measured), and each page it gave back costs a page fault when the next burst takes
it again, so it never runs while work goes on. It changes no data (free pages only), and it
takes each arena's lock like any ``malloc``. Where there is no ``malloc_trim`` (musl, macOS)
nothing is done. The peak during a burst is unchanged; what a pod holds between bursts is
what this lowers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Seconds without work before a trim. Short enough that memory between bursts is the
#: figure a pod sees, long enough that a trim never lands between two messages of a burst.
QUIET_SECONDS = 5.0


def malloc_trim() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none."""
    import ctypes  # only here: the other services never pay for importing it

    try:
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int

    def trim() -> int:
        return int(function(0))

    return trim


def _nothing() -> int:
    return 0


def release(trim: Callable[[], int]) -> None:
    """Collect the cycles of closed connections, then give the free pages back."""
    # A closed TLS connection is a cycle (aiosmtpd's protocol, asyncio's SSL protocol and
    # transport) holding its 256 KiB buffer: it is freed by the cycle collector only, whose
    # full pass may not have run since the burst (bench: 4,204 objects of 64 connections).
    gc.collect()
    trim()


def should_trim(previous: int, now: int, trimmed: int | None) -> bool:
    """Whether to trim: nothing happened for a whole quiet period (``previous`` is the
    activity count a period ago) and something did since the last trim (``trimmed``: the
    count then; None before the first, so start-up's own garbage goes too)."""
    return now == previous and now != trimmed


async def trim_when_idle(
    activity: Callable[[], int],
    stop: asyncio.Event,
    *,
    quiet: float = QUIET_SECONDS,
    trim: Callable[[], int] | None = None,
) -> None:
    """Until ``stop``: trim once after each burst. ``activity`` counts work done so far
    (connections, messages, requests: anything that only grows while the service works)."""
    trim = trim or malloc_trim()
    if trim is None:
        log.debug("no malloc_trim in this C library: free heap pages stay resident")
        trim = _nothing
    # Start-up's objects (modules, config, metrics: about 70,000) are never garbage: frozen,
    # a full collection no longer walks them (50 ms a burst measured, 2 ms frozen).
    gc.collect()
    gc.freeze()
    previous = activity()
    trimmed: int | None = None
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), quiet)
        now = activity()
        if not stop.is_set() and should_trim(previous, now, trimmed):
            release(trim)
            trimmed = now
        previous = now
