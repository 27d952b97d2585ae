"""Which role a manycore-redis data node starts in, and the lines each role adds."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from manycore_common.config import ConfigError, NodeAddress, RedisServer, load_config
from manycore_redis import roles, service
from tests.helpers import write_configs

FIRST = {"hostname": "redis-0.redis-headless", "port": 6379}


def server(**changes: Any) -> RedisServer:
    kebab = {key.replace("_", "-"): value for key, value in changes.items()}
    return RedisServer.model_validate({"password": "p" * 16, **kebab})


def test_no_sentinel_answer_keeps_the_configured_role() -> None:
    assert roles.decide(server(), None) == roles.Start(None, False)
    replica = server(role="replica", primary=FIRST)
    assert roles.decide(replica, None) == roles.Start(NodeAddress(**FIRST), False)
    assert roles.decide(server(), None).may_restore
    assert not roles.decide(replica, None).may_restore


def test_the_first_primary_recognises_itself_by_its_announced_name() -> None:
    pod0 = server(role="replica", primary={"hostname": socket.gethostname() + ".h", "port": 6379},
                  announce_hostname="{hostname}.h")  # fmt: skip
    assert roles.decide(pod0, None) == roles.Start(None, False)


def test_the_sentinels_answer_wins_over_the_configured_role() -> None:
    other = NodeAddress(hostname="redis-1.redis-headless", port=6379)
    returning = roles.decide(server(announce_hostname="redis-0.redis-headless"), other)
    assert returning == roles.Start(other, True) and not returning.may_restore
    me = NodeAddress(hostname="redis-0.redis-headless", port=6379)
    still = roles.decide(server(announce_hostname="redis-0.redis-headless"), me)
    assert still == roles.Start(None, True) and not still.may_restore


def test_data_node_lines() -> None:
    settings = server(min_replicas_to_write=1, announce_hostname="{hostname}.h")
    lines = roles.data_node_lines(settings, roles.Start(NodeAddress(hostname="a", port=7), True))
    assert "replicaof a 7" in lines
    assert "min-replicas-to-write 1" in lines
    assert f"replica-announce-ip {socket.gethostname()}.h" in lines
    assert "masteruser replication" in lines
    # The password goes in quoted; the ACL users get its SHA-256 only.
    assert sum("p" * 16 in line for line in lines) == 1


def test_sentinel_config() -> None:
    settings = server(role="sentinel", primary=FIRST, quorum=2, sentinel_password='pa"ss')
    text = roles.sentinel_config(settings, NodeAddress(**FIRST))
    assert "sentinel monitor manycore redis-0.redis-headless 6379 2" in text
    assert "sentinel auth-user manycore sentinel" in text
    assert 'requirepass "pa\\"ss"' in text


def test_a_data_node_with_sentinels_must_announce_itself(tmp_path: Path) -> None:
    """Else it could not tell whether the primary the sentinels name is itself."""
    global_file, customer_file = write_configs(
        tmp_path,
        6379,
        lambda c: c.update(
            redis={
                "server": {"password": "p" * 16, "data-dir": str(tmp_path / "d")},
                "reliable-queue": {
                    "redis": {"sentinels": [{"hostname": "127.0.0.1"}], "master-name": "m"}
                },
            }
        ),
    )
    config = load_config(global_file, customer_file, "redis")
    with pytest.raises(ConfigError) as failure:
        service.prepare(config)
    assert "redis.server.announce-hostname" in str(failure.value)
