"""The two forms of ``reliable-queue.redis`` (one node, Sentinel) and what each implies for
the replica acknowledgement (issue 17, item 3)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from manycore_common import redisconn, replicas
from manycore_common.config import RedisConnection

SENTINELS = [{"hostname": "127.0.0.1", "port": 26379}, {"hostname": "127.0.0.1", "port": 26380}]


def test_one_node_waits_for_no_replica_by_default() -> None:
    settings = RedisConnection.model_validate({"hostname": "127.0.0.1", "port": 6379})
    assert settings.replicas_to_ack == 0
    assert replicas.ack_of(redisconn.connect(settings)) is None


def test_sentinel_form_waits_for_one_replica_by_default() -> None:
    settings = RedisConnection.model_validate({"sentinels": SENTINELS, "master-name": "mc"})
    assert settings.replicas_to_ack == 1
    client = redisconn.connect(settings)
    assert replicas.ack_of(client) == replicas.ReplicaAck(1, 2000)
    # Every connection asks the sentinels where the primary is.
    assert type(client.connection_pool).__name__ == "SentinelConnectionPool"


def test_the_ack_is_configurable() -> None:
    settings = RedisConnection.model_validate(
        {
            "sentinels": SENTINELS,
            "master-name": "mc",
            "min-replicas-ack": 2,
            "replica-ack-timeout-ms": 500,
        }
    )
    assert replicas.ack_of(redisconn.connect(settings)) == replicas.ReplicaAck(2, 500)
    off = RedisConnection.model_validate(
        {"sentinels": SENTINELS, "master-name": "mc", "min-replicas-ack": 0}
    )
    assert replicas.ack_of(redisconn.connect(off)) is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"sentinels": SENTINELS}, "sentinels and master-name go together"),
        ({"master-name": "mc"}, "sentinels and master-name go together"),
        (
            {"sentinels": SENTINELS, "master-name": "mc", "hostname": "redis"},
            "either hostname/port or sentinels",
        ),
        ({"sentinel-password": "x" * 20}, "need sentinels"),
        ({"sentinels": [{"port": 26379}], "master-name": "mc"}, "hostname"),
        ({"min-replicas-ack": -1}, "greater than or equal to 0"),
    ],
)
def test_bad_forms_name_the_problem(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as failure:
        RedisConnection.model_validate(data)
    assert message in str(failure.value)


def test_sentinel_password_may_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "spw").write_text("sentinel-secret\n")
    settings = RedisConnection.model_validate(
        {"sentinels": SENTINELS, "master-name": "mc", "sentinel-password-file": "spw"},
        context={"base_dir": str(tmp_path)},
    )
    assert settings.sentinel_password is not None
    assert settings.sentinel_password.get_secret_value() == "sentinel-secret"
