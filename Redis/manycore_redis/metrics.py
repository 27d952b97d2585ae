"""Every Prometheus metric the Redis module defines (names are a public contract: README
"Monitoring").

The queue gauges: the README's four keep their exact names (``primary_queue_messages``,
``default_queue_messages``, ``event_queue_messages``, ``queue_to_postfix_messages``); the rest
carry a ``queue`` label. ``exporter.poll`` reads Redis every few seconds and
``QueueCollector`` reports the last reading. When Redis cannot be read, ``redis_up`` is 0 and
no queue gauge is reported at all: a missing series is honest, a zero would claim the queues
are empty.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from manycore_common.config import Config

BACKUPS = Counter("redis_backups", "Backups uploaded to object storage, by outcome", ["outcome"])

for _outcome in ("ok", "failed"):
    BACKUPS.labels(_outcome)


def readme_gauges(config: Config) -> dict[str, str]:
    """README gauge name → queue name."""
    g = config.global_
    return {
        "primary_queue_messages": g.reliable_queue.queue_names.primary_queue,
        "default_queue_messages": g.reliable_queue.queue_names.default_queue,
        "event_queue_messages": g.backdata.queue_name,
        "queue_to_postfix_messages": g.postfix.incoming_queue_name,
    }


@dataclass
class QueueReading:
    waiting: int
    processing: int
    dead: int
    oldest_age_seconds: float | None


@dataclass
class Snapshot:
    up: bool
    queues: dict[str, QueueReading] = field(default_factory=dict)
    used_memory_bytes: int | None = None
    #: Redis' maxmemory (0: no limit), beside used memory for the alert on their ratio.
    maxmemory_bytes: int | None = None
    taken_at: float = 0.0


class QueueCollector(Collector):
    def __init__(self, gauges: Mapping[str, str]) -> None:
        self.gauges = dict(gauges)
        self.snapshot = Snapshot(up=False)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.snapshot
        yield GaugeMetricFamily("redis_up", "1 if the last reading of Redis succeeded", snap.up)
        if not snap.up:
            return
        for gauge, queue in self.gauges.items():
            reading = snap.queues.get(queue)
            if reading is not None:
                yield GaugeMetricFamily(gauge, f"Items waiting in {queue}", reading.waiting)
        families = {
            "processing": GaugeMetricFamily(
                "redis_queue_processing_messages",
                "Items held by consumers (taken, not yet acknowledged)",
                labels=["queue"],
            ),
            "dead": GaugeMetricFamily(
                "redis_queue_dead_messages", "Items in the dead-letter list", labels=["queue"]
            ),
            "age": GaugeMetricFamily(
                "redis_queue_oldest_age_seconds",
                "Age of the oldest waiting item (absent when the queue is empty)",
                labels=["queue"],
            ),
            "waiting": GaugeMetricFamily(
                "redis_queue_messages", "Items waiting, by queue", labels=["queue"]
            ),
        }
        for queue, reading in snap.queues.items():
            families["waiting"].add_metric([queue], reading.waiting)
            families["processing"].add_metric([queue], reading.processing)
            families["dead"].add_metric([queue], reading.dead)
            if reading.oldest_age_seconds is not None:
                families["age"].add_metric([queue], reading.oldest_age_seconds)
        yield from families.values()
        if snap.used_memory_bytes is not None:
            yield GaugeMetricFamily(
                "redis_used_memory_bytes", "Memory Redis uses", snap.used_memory_bytes
            )
        if snap.maxmemory_bytes is not None:
            # Above maxmemory Redis refuses writes (noeviction): the receivers answer 451/503.
            yield GaugeMetricFamily(
                "redis_maxmemory_bytes", "Redis' maxmemory (0: no limit)", snap.maxmemory_bytes
            )
