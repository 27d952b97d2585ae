"""A Redis Sentinel group on loopback for tests: one primary, replicas and three sentinels,
all Debian's redis-server / redis-sentinel, each on a free port with its own directory. The
first primary is reached through ``tests.tcpproxy`` so a test can make its replicas lag.

Sentinel timing is cut for tests (down-after-milliseconds 1000, failover-timeout 3000), so a
killed primary is replaced within a few seconds. Every data node has ``min-replicas-to-write
1``, as in production: a primary with no replica refuses writes instead of acknowledging
what a failover could lose."""

from __future__ import annotations

import subprocess
from pathlib import Path

from redis import Redis as SyncRedis

from tests.helpers import LOOPBACK, RedisServer, free_port, port_open, require_binary, wait_for
from tests.tcpproxy import HoldingProxy

MASTER_NAME = "manycore"


class SentinelSet:
    def __init__(self, directory: Path, replicas: int = 2) -> None:
        self.directory = directory
        guard = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "10")
        self.primary = RedisServer(directory / "node0", None, *guard)
        #: Everyone reaches the first primary through this (see tests.tcpproxy).
        self.proxy: HoldingProxy | None = None
        self.primary_port = free_port()
        self.replicas = [
            RedisServer(
                directory / f"node{i + 1}",
                None,
                *guard,
                "--replicaof",
                LOOPBACK,
                str(self.primary_port),
            )
            for i in range(replicas)
        ]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def nodes(self) -> list[RedisServer]:
        return [self.primary, *self.replicas]

    def start(self) -> SentinelSet:
        self.primary.start()
        self.proxy = HoldingProxy(self.primary.port, self.primary_port)
        for node in self.replicas:
            node.start()
        wait_for(self._replicas_online, timeout=20, what="replicas in sync")
        binary = require_binary("redis-sentinel")
        for port in self.sentinel_ports:
            self.sentinels.append(
                subprocess.Popen(
                    [binary, str(self._sentinel_config(port))],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.sentinel_ports:
            wait_for(lambda p=port: port_open(p), what=f"sentinel on {port}")  # type: ignore[misc]
        wait_for(self._sentinels_agree, timeout=20, what="sentinels to see each other")
        return self

    def _sentinel_config(self, port: int) -> Path:
        # Sentinel rewrites its file (it records the group's state there): one per sentinel.
        directory = self.directory / f"sentinel{port}"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "sentinel.conf"
        path.write_text(
            "\n".join(
                [
                    f"port {port}",
                    f"bind {LOOPBACK}",
                    f"dir {directory}",
                    f"logfile {directory / 'sentinel.log'}",
                    f"sentinel monitor {MASTER_NAME} {LOOPBACK} {self.primary_port} 2",
                    f"sentinel down-after-milliseconds {MASTER_NAME} 1000",
                    f"sentinel failover-timeout {MASTER_NAME} 3000",
                    f"sentinel parallel-syncs {MASTER_NAME} 2",
                    "",
                ]
            )
        )
        return path

    def _replicas_online(self) -> bool:
        """Connected, and acknowledging: min-replicas-to-write counts only those."""
        info = SyncRedis(host=LOOPBACK, port=self.primary.port).info("replication")
        return int(info.get("min_slaves_good_slaves", 0)) == len(self.replicas)

    def _sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            state = SyncRedis(host=LOOPBACK, port=port).sentinel_master(MASTER_NAME)
            assert isinstance(state, dict), state
            if int(state.get("num-other-sentinels", 0)) < 2 or int(state["num-slaves"]) < 1:
                return False
        return True

    def hold_replication(self) -> None:
        """From now on the first primary's replicas get nothing more from it."""
        assert self.proxy is not None
        self.proxy.hold()

    def master_port(self) -> int:
        """The primary's port as the sentinels see it now."""
        client = SyncRedis(host=LOOPBACK, port=self.sentinel_ports[0])
        address = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        assert isinstance(address, tuple), address
        _, port = address
        return int(port)

    def connection_config(self) -> dict[str, object]:
        """The ``reliable-queue.redis`` section of the Sentinel form for this group."""
        return {
            "sentinels": [{"hostname": LOOPBACK, "port": p} for p in self.sentinel_ports],
            "master-name": MASTER_NAME,
            "min-replicas-ack": 1,
            "replica-ack-timeout-ms": 1000,
            "connect-timeout-seconds": 0.5,
            "command-timeout-seconds": 2,
        }

    def stop(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.terminate()
                process.wait(10)
        for node in self.nodes:
            node.stop()
        if self.proxy is not None:
            self.proxy.close()
