"""Least privilege in the manifests: a Secret is mounted only into the pods whose service reads
it, every key of a mounted Secret is read there, and every secret volume has mode 0400 in a
pod whose fsGroup (or root) lets the service read it.

What a service reads comes from the code, not from a table: the production config loaded as
that service loads it (``load_config(..., service)``, which reads only its own secret files),
plus the paths its own section names (certificates, DKIM keys)."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml

from tests.deploy.support import Doc, Workload, sources, workloads
from tests.deploy.test_contract import (
    POD_OF,
    PRODUCTION_CONFIG,
    documented_secrets,
    load_production_config,
)

SERVICE_OF = {pod: service for service, pod in POD_OF.items()}
#: 0400: owner read only (the kubelet adds group read for the pod's fsGroup).
SECRET_MODE = 0o400


def paths_named(value: Any) -> set[PurePosixPath]:
    """Every absolute path a piece of config names."""
    if isinstance(value, dict):
        return {p for v in value.values() for p in paths_named(v)}
    if isinstance(value, list):
        return {p for v in value for p in paths_named(v)}
    if isinstance(value, str) and value.startswith("/"):
        return {PurePosixPath(value)}
    return set()


def reads(monkeypatch: pytest.MonkeyPatch, service: str) -> set[PurePosixPath]:
    """The files ``service`` reads in production: its secret files, and the paths of its
    own section (the DKIM keys, the STARTTLS certificate)."""
    _, read = load_production_config(monkeypatch, service)
    customer = yaml.safe_load((PRODUCTION_CONFIG / "inboxbooster-mailer-customer.yaml").read_text())
    return {PurePosixPath(p) for p in read} | paths_named(customer[service])


def secret_mounts(workload: Workload) -> list[tuple[Doc, PurePosixPath]]:
    """(secret volume, where the main container mounts it)."""
    volumes = {v["name"]: v for v in workload.spec.get("volumes", []) if "secret" in v}
    mounts = workload.spec["containers"][0].get("volumeMounts", [])
    found = [
        (volumes[m["name"]], PurePosixPath(m["mountPath"])) for m in mounts if m["name"] in volumes
    ]
    unmounted = set(volumes) - {v["name"] for v, _ in found}
    assert not unmounted, f"{workload.name}: secret volumes {unmounted} not mounted"
    return found


def module_workloads(docs: list[Doc]) -> list[Workload]:
    found = [w for w in workloads(docs) if w.name in SERVICE_OF]
    assert {w.name for w in found} == set(SERVICE_OF), "a module's workload is missing"
    return found


@pytest.mark.parametrize("docs", sources(), indirect=True)
def test_secrets_are_mounted_only_where_read(
    docs: list[Doc], monkeypatch: pytest.MonkeyPatch
) -> None:
    documented = documented_secrets()
    for workload in module_workloads(docs):
        service = SERVICE_OF[workload.name]
        read = reads(monkeypatch, service)
        for volume, mount in secret_mounts(workload):
            name = volume["secret"]["secretName"]
            here = {p.name for p in read if p.parent == mount}
            assert here, f"{workload.name} mounts Secret {name} at {mount} but reads nothing there"
            keys = documented.get(name, set())
            assert keys <= here, f"{workload.name} gets {keys - here} of {name} and never reads it"


@pytest.mark.parametrize("docs", sources(), indirect=True)
def test_each_pod_mounts_its_own_secret_at_the_common_path(docs: list[Doc]) -> None:
    for workload in module_workloads(docs):
        service = SERVICE_OF[workload.name]
        names = {
            v["secret"]["secretName"]
            for v, mount in secret_mounts(workload)
            if str(mount) == "/secrets/manycore"
        }
        assert names == {f"manycore-{service}"}, f"{workload.name}: {names}"


@pytest.mark.parametrize("docs", sources(), indirect=True)
def test_secret_volumes_are_0400_and_readable_by_the_service(docs: list[Doc]) -> None:
    for workload in workloads(docs):
        mounted = secret_mounts(workload)
        for volume, _ in mounted:
            secret = volume["secret"]
            assert secret.get("defaultMode") == SECRET_MODE, (
                f"{workload.name}: Secret {secret['secretName']} has mode "
                f"{oct(secret.get('defaultMode', 0o644))}, not 0400"
            )
            for item in secret.get("items", []):
                assert item.get("mode", SECRET_MODE) == SECRET_MODE, (workload.name, item)
        if not mounted:
            continue
        context = workload.spec.get("securityContext", {})
        if context.get("runAsUser", 0) != 0:
            # 0400 files belong to root; the kubelet gives them to the fsGroup (0440).
            assert context.get("fsGroup") == context.get("runAsGroup"), (
                f"{workload.name}: non-root with 0400 Secrets needs fsGroup = runAsGroup"
            )


def test_a_service_that_reads_nothing_from_a_secret_would_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check above can fail: MxServer reads nothing of the Receiver's TLS Secret, or of
    the Backdata's signing secret."""
    read = reads(monkeypatch, "mxserver")
    assert not {p for p in read if p.parent == PurePosixPath("/secrets/receiver-tls")}
    assert "backdata-signing-secret" not in {p.name for p in read}
    assert "feedback-secret" in {p.name for p in read}


def test_production_trusts_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ingress that SNATs clients into a trusted range would let five bad passwords lock
    every API client out: production trusts no proxy unless the operator lists one."""
    loaded, _ = load_production_config(monkeypatch, "httpreceiver")
    assert loaded.customer.httpreceiver.trusted_proxies == ()
