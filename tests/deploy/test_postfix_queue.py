"""Postfix's queue on a volume and its configuration live (docs/operations/postfix-queue.md,
docs/operations/upgrade.md): in every overlay PostfixLog is a StatefulSet whose own claim
holds postfix-directory and the log, it mounts the ConfigMap without a hash suffix (an edit
arrives in the running pod instead of rolling it), and the KEDA overlays hand the queue back
on stop while the plain production overlay keeps it."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest
import yaml

from tests.deploy.support import ROOT_POD, Doc, kind_of, overlay_names, render

LIVE_CONFIG = "inboxbooster-config-live"
QUEUE_ENV = "MANYCORE_POSTFIXLOG_QUEUE_ON_STOP"


def postfix_set(docs: list[Doc]) -> Doc:
    (found,) = [d for d in kind_of(docs, "StatefulSet") if d["metadata"]["name"] == ROOT_POD]
    return found


def customer_config(docs: list[Doc], name: str) -> dict[str, object]:
    (config_map,) = [d for d in kind_of(docs, "ConfigMap") if d["metadata"]["name"] == name]
    data: dict[str, object] = yaml.safe_load(
        config_map["data"]["inboxbooster-mailer-customer.yaml"]
    )
    return data


def under(path: str, mount: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(mount))


@pytest.mark.parametrize("overlay", overlay_names())
def test_postfix_keeps_its_queue_and_log_on_its_own_claim(overlay: str) -> None:
    docs = list(render(overlay))
    stateful = postfix_set(docs)
    assert not [d for d in kind_of(docs, "Deployment") if d["metadata"]["name"] == ROOT_POD]
    spec = stateful["spec"]
    claims = {c["metadata"]["name"]: c for c in spec["volumeClaimTemplates"]}
    retention = spec["persistentVolumeClaimRetentionPolicy"]
    assert retention == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    (container,) = spec["template"]["spec"]["containers"]
    on_claims = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in claims]
    section = customer_config(docs, LIVE_CONFIG)["postfixlog"]
    assert isinstance(section, dict)
    for key in ("postfix-directory", "logfile"):
        assert any(under(section[key], mount) for mount in on_claims), (overlay, key)


@pytest.mark.parametrize("overlay", overlay_names())
def test_postfix_config_map_has_no_hash_and_the_same_files(overlay: str) -> None:
    docs = list(render(overlay))
    template = postfix_set(docs)["spec"]["template"]["spec"]
    (configs,) = [v for v in template["volumes"] if v["name"] == "configs"]
    assert configs["configMap"]["name"] == LIVE_CONFIG
    maps = {d["metadata"]["name"]: d["data"] for d in kind_of(docs, "ConfigMap")}
    (hashed,) = [n for n in maps if n.startswith("inboxbooster-config-") and n != LIVE_CONFIG]
    assert maps[LIVE_CONFIG] == maps[hashed]
    # Every other workload still rolls on a config change (they read it only at start).
    for doc in docs:
        if doc.get("kind") in ("Deployment", "StatefulSet") and doc is not postfix_set(docs):
            names = {
                v["configMap"]["name"]
                for v in doc["spec"]["template"]["spec"].get("volumes", [])
                if "configMap" in v
            }
            assert LIVE_CONFIG not in names, doc["metadata"]["name"]


@pytest.mark.parametrize("overlay", overlay_names())
def test_queue_kept_unless_an_autoscaler_may_remove_the_pod(overlay: str) -> None:
    docs = list(render(overlay))
    (container,) = postfix_set(docs)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    section = customer_config(docs, LIVE_CONFIG)["postfixlog"]
    assert isinstance(section, dict)
    configured = section.get("queue-on-stop", "hand-back")
    effective = env.get(QUEUE_ENV, configured)
    autoscaled = any(
        s["spec"]["scaleTargetRef"]
        == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": ROOT_POD}
        for s in kind_of(docs, "ScaledObject")
    )
    assert effective == ("hand-back" if autoscaled else "keep"), overlay
