"""A service's long-running loops, watched: one that dies of a bug stops the service.

A loop task that raises is otherwise noticed by nobody until the stop: the process keeps
running (its health answers, its consumer heartbeat keeps the reaper away) while the work
it did has stopped, and whatever the dead loop held stays in the processing list of a live
consumer, which the reaper never returns. Stopping instead makes the service exit non-zero:
its held items are released on the way out (``consuming``) and the orchestrator restarts it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)


async def until_stop_or_crash(
    stop: asyncio.Event, loops: Sequence[asyncio.Task[Any]], what: str
) -> None:
    """Wait for ``stop``. A loop that raises first sets ``stop`` (the others wind down) and
    its exception is raised here. A loop that returns without an error is left finished."""
    stopper = asyncio.create_task(stop.wait())
    pending: set[asyncio.Task[Any]] = {stopper, *loops}
    try:
        while not stop.is_set():
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is stopper or task.cancelled():
                    continue
                error = task.exception()
                if error is not None:
                    log.error("%s failed; stopping", what, exc_info=error)
                    stop.set()
                    raise error
            if not pending - {stopper}:
                break  # every loop returned: nothing left to watch
    finally:
        stopper.cancel()
