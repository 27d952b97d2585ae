"""Redis' maxmemory in the production config against the Redis pod's memory limit in each
rendered overlay: high enough to use the memory paid for, low enough that a full Redis refuses
writes (noeviction) before the kernel kills it (fragmentation, buffers and the copy-on-write
of a forked AOF rewrite or snapshot come on top of maxmemory)."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.deploy.support import kind_of, overlay_names, render

#: Redis' units (redis.conf): k/m/g are powers of 1000, kb/mb/gb of 1024.
_REDIS_UNITS = {"": 1, "k": 10**3, "kb": 2**10, "m": 10**6, "mb": 2**20, "g": 10**9, "gb": 2**30}
#: Kubernetes quantities (binary and decimal suffixes).
_K8S_UNITS = {
    "": 1,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
}


def redis_bytes(value: str) -> int:
    match = re.fullmatch(r"(\d+)([kmg]b?)?", value.strip().lower())
    assert match, f"not a Redis memory size: {value!r}"
    return int(match.group(1)) * _REDIS_UNITS[match.group(2) or ""]


def quantity_bytes(value: str) -> int:
    match = re.fullmatch(r"(\d+)([KMGT]i|[kMG])?", str(value))
    assert match, f"not a memory quantity: {value!r}"
    return int(match.group(1)) * _K8S_UNITS[match.group(2) or ""]


def test_units() -> None:
    assert redis_bytes("2gb") == 2 * 2**30 and redis_bytes("2g") == 2 * 10**9
    assert redis_bytes("5600mb") == 5600 * 2**20
    assert quantity_bytes("8Gi") == 8 * 2**30 and quantity_bytes("512M") == 512 * 10**6


@pytest.mark.parametrize("overlay", overlay_names())
def test_maxmemory_is_about_70_percent_of_the_redis_limit(overlay: str) -> None:
    docs = list(render(overlay))
    (redis,) = [s for s in kind_of(docs, "StatefulSet") if s["metadata"]["name"] == "redis"]
    container = redis["spec"]["template"]["spec"]["containers"][0]
    limit = quantity_bytes(container["resources"]["limits"]["memory"])
    # The customer config as the overlay ships it (the ConfigMap Redis mounts; Postfix's
    # inboxbooster-config-live holds the same files).
    (configmap,) = [
        c
        for c in kind_of(docs, "ConfigMap")
        if c["metadata"]["name"].startswith("inboxbooster-config-")
        and c["metadata"]["name"] != "inboxbooster-config-live"
    ]
    config = yaml.safe_load(configmap["data"]["inboxbooster-mailer-customer.yaml"])
    maxmemory = redis_bytes(str(config["redis"]["server"]["maxmemory"]))
    assert 0.5 <= maxmemory / limit <= 0.75, (overlay, maxmemory, limit)
