"""The egress options (docs/operations/egress.md): the production-egress overlay pins Postfix,
and only Postfix, to the labelled egress nodes and caps its replicas below KEDA's default;
the relayhost component, rendered over the production overlay, validates and mounts the SASL
password where the documented main-cf settings read it."""

from __future__ import annotations

import os
import subprocess

import kubernetes_validate.utils as kv  # type: ignore[import-untyped]
import pytest
import yaml

from tests.deploy.support import (
    DEPLOY,
    KUBERNETES_VERSIONS,
    REPO,
    Doc,
    describe,
    kind_of,
    kubectl,
    render,
    workloads,
)
from tests.deploy.test_schemas import is_builtin
from tests.integration.test_postfixlog_relay import RELAY_MAIN_CF

EGRESS_LABEL = "manycore.io/egress"
RELAY_MOUNT = "/secrets/postfix-relay"
EGRESS_DOC = REPO / "docs" / "operations" / "egress.md"


def scaled_object(docs: list[Doc], name: str) -> Doc:
    (found,) = [d for d in kind_of(docs, "ScaledObject") if d["metadata"]["name"] == name]
    return found


def test_only_postfix_runs_on_egress_nodes() -> None:
    docs = list(render("production-egress"))
    for workload in workloads(docs):
        spec = workload.spec
        tolerates = any(t.get("key") == EGRESS_LABEL for t in spec.get("tolerations", []))
        selects = spec.get("nodeSelector", {}).get(EGRESS_LABEL) == "true"
        if workload.name == "postfix":
            assert selects and tolerates, describe(workload.doc)
            (toleration,) = spec["tolerations"]
            assert toleration == {
                "key": EGRESS_LABEL,
                "operator": "Equal",
                "value": "true",
                "effect": "NoSchedule",
            }
        else:
            assert not selects and not tolerates, describe(workload.doc)


def test_postfix_replicas_are_capped_by_the_ip_plan() -> None:
    egress = scaled_object(list(render("production-egress")), "postfix")
    default = scaled_object(list(render("production-keda")), "postfix")
    assert egress["spec"]["maxReplicaCount"] == 2 < default["spec"]["maxReplicaCount"]
    # Only Postfix's cap changes.
    for name in ("transformer", "backdata"):
        assert scaled_object(list(render("production-egress")), name) == scaled_object(
            list(render("production-keda")), name
        )


def test_the_egress_docs_name_the_label_and_the_taint() -> None:
    text = EGRESS_DOC.read_text(encoding="utf-8")
    component = (DEPLOY / "components" / "egress" / "kustomization.yaml").read_text()
    for source in (text, component):
        assert f"kubectl label node <node> {EGRESS_LABEL}=true" in source
        assert f"kubectl taint node <node> {EGRESS_LABEL}=true:NoSchedule" in source


@pytest.fixture(scope="module")
def relayed(tmp_path_factory: pytest.TempPathFactory) -> list[Doc]:
    """The production overlay with the relayhost component, as an operator's overlay has it
    (Kustomize takes relative paths only)."""
    directory = tmp_path_factory.mktemp("relay-overlay")
    base = os.path.relpath(DEPLOY, directory)
    (directory / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [f"{base}/overlays/production"],
                "components": [f"{base}/components/relayhost"],
            }
        )
    )
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_relayhost_component_validates(relayed: list[Doc], version: str) -> None:
    # Custom resources (monitoring) are checked for every overlay by test_schemas.
    for doc in filter(is_builtin, relayed):
        kv.validate(doc, version, strict=True)


def test_the_relayhost_component_mounts_the_password_and_opens_587(relayed: list[Doc]) -> None:
    (postfix,) = [w for w in workloads(relayed) if w.name == "postfix"]
    (container,) = postfix.spec["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[RELAY_MOUNT]
    assert mount["readOnly"] is True and "subPath" not in mount
    (volume,) = [v for v in postfix.spec["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"] == {"secretName": "manycore-postfix-relay", "defaultMode": 0o400}
    path = RELAY_MAIN_CF["smtp_sasl_password_maps"].removeprefix("texthash:")
    assert path.startswith(RELAY_MOUNT + "/")
    ports = [
        p["port"]
        for policy in kind_of(relayed, "NetworkPolicy")
        if policy["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
        == "postfix"
        for rule in policy["spec"].get("egress", [])
        for p in rule.get("ports", [])
    ]
    assert 587 in ports and 25 in ports


def test_the_docs_give_the_settings_the_relay_test_uses() -> None:
    component = (DEPLOY / "components" / "relayhost" / "kustomization.yaml").read_text()
    text = EGRESS_DOC.read_text(encoding="utf-8")
    for key, value in RELAY_MAIN_CF.items():
        line = f"{key}: {value}"
        assert line in component, line
        assert line in text, line
