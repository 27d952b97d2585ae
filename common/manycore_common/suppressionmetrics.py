"""Metrics of the suppression list shared by the services that write it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import Counter

from .suppression import REASONS

if TYPE_CHECKING:
    from .suppressionstore import Op

WRITES = Counter(
    "suppression_writes",
    "Suppression entries written or refreshed with the event that caused them (soft bounces: "
    "counted towards the threshold), by reason and by the service that wrote them",
    ["reason", "source"],
)
IMPORTED = Counter(
    "suppression_imported",
    "Suppression entries imported or deleted through the API or the CLI, by operation",
    ["operation"],
)
for _op in ("import", "delete"):
    IMPORTED.labels(_op)


def count_suppressions(ops: Iterable[Op], source: str) -> None:
    for op in ops:
        WRITES.labels(op.entry.reason, source).inc()


def init(source: str) -> None:
    """Every series of ``source`` at zero, so a dashboard's rate() works from the start."""
    for reason in REASONS:
        WRITES.labels(reason, source)
