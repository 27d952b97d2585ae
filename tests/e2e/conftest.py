"""One whole local stack (`make run`'s, default settings) shared by the end-to-end files that
need no private one: starting it takes 13-14 s. The files that stop, restart or kill parts of
the stack, or need other settings (test_run, test_faults, test_idempotency, the feedback loop)
start their own.

Sharing rules, so that each file's checks stay its own:
- each file mails recipients of its own domain: a hard bounce, complaint or unsubscribe
  suppresses its address for the next message (the suppression list), and the sink MX answers
  by the local part alone (``hard-bounce@`` ...), whatever the domain;
- each file counts only the events of its own uuids (``own``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from tests.e2e.stack import Stack, stack_dir


@pytest.fixture(scope="package")
def stack() -> Iterator[Stack]:
    with stack_dir() as root:
        running = Stack(root / "run").start()
        try:
            yield running
        finally:
            if running.process and running.process.poll() is None:
                running.stop()


def own(events: Iterable[dict[str, Any]], uuids: Iterable[str]) -> list[dict[str, Any]]:
    """The events of ``uuids`` only: other files' mail flows through the same stack."""
    mine = set(uuids)
    return [e for e in events if e.get("uuid") in mine]
