"""House rules for every manifest we ship (module folders and rendered overlays): pinned
images, probes, resources, restricted security contexts (Postfix: only the capabilities it
needs), no secrets in ConfigMaps, nothing public but the two SMTP doors, grace periods that
cover each module's graceful stop; and, for the overlays, NetworkPolicies, disruption
budgets, Redis' volume and autoscaler ownership of replica counts."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from manycore_common.config import Section
from tests.deploy.support import (
    BASELINE_CAPABILITIES,
    BY_NAME,
    EXTRA_WORKLOADS,
    JOBS,
    METRICS_PORT,
    MODULES,
    POSTFIX_CAPABILITIES,
    PUBLIC_LOAD_BALANCED,
    ROOT_POD,
    Doc,
    Workload,
    describe,
    drain_seconds,
    kind_of,
    overlay_names,
    prestop_sleep,
    selector_matches,
    service_selects,
    sources,
    workloads,
)

ALL = sources()
OVERLAYS = [f"overlay:{name}" for name in overlay_names()]


def test_there_is_a_production_overlay() -> None:
    assert "production" in overlay_names()


def containers(docs: list[Doc]) -> Iterator[tuple[Workload, Doc]]:
    for workload in workloads(docs):
        for container in workload.containers:
            yield workload, container


@pytest.mark.parametrize("docs", ALL, indirect=True)
def test_every_module_is_deployed_once(docs: list[Doc]) -> None:
    names = sorted(w.name for w in workloads(docs) if w.name not in {*EXTRA_WORKLOADS, *JOBS})
    assert names == sorted(m.name for m in MODULES)


@pytest.mark.parametrize("docs", ALL, indirect=True)
def test_images_are_pinned(docs: list[Doc]) -> None:
    for workload, container in containers(docs):
        image = container["image"]
        repository, _, tag = image.rpartition(":")
        assert "@sha256:" in image or (repository and "/" not in tag), (
            f"{workload.name}: image {image} has no tag"
        )
        assert tag != "latest" and not image.endswith(":latest"), f"{workload.name}: {image}"
        assert container.get("imagePullPolicy") != "Always" or "@sha256:" in image


def http_probe(container: Doc, kind: str) -> tuple[str, Any]:
    probe = container.get(kind)
    assert probe, f"{container['name']} has no {kind}"
    get = probe.get("httpGet")
    assert get, f"{container['name']}: {kind} is not an HTTP probe"
    return get["path"], get["port"]


@pytest.mark.parametrize("docs", ALL, indirect=True)
def test_probes_on_livez_and_readyz_of_the_metrics_port(docs: list[Doc]) -> None:
    for workload, container in containers(docs):
        if workload.name in JOBS:
            assert not container.get("livenessProbe"), workload.name  # it ends by itself
            continue
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        for kind, path in (
            ("startupProbe", "/livez"),
            ("livenessProbe", "/livez"),
            ("readinessProbe", "/readyz"),
        ):
            actual_path, port = http_probe(container, kind)
            assert actual_path == path, f"{container['name']}: {kind} on {actual_path}"
            number = ports.get(port, port)
            assert number == METRICS_PORT, f"{container['name']}: {kind} on port {port}"
        # The health server answers /readyz with up to 2 s per check, run one after another.
        assert container["readinessProbe"].get("timeoutSeconds", 1) >= 5


def quantity(value: str | int) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "m": 1e-3, "": 1}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match and match.group(2) in units, f"unknown quantity {value}"
    return float(match.group(1)) * units[match.group(2)]


@pytest.mark.parametrize("docs", ALL, indirect=True)
def test_requests_and_memory_limits(docs: list[Doc]) -> None:
    for _, container in containers(docs):
        resources = container.get("resources", {})
        requests, limits = resources.get("requests", {}), resources.get("limits", {})
        assert {"cpu", "memory"} <= requests.keys(), f"{container['name']}: requests {requests}"
        assert "memory" in limits, f"{container['name']}: no memory limit"
        assert quantity(limits["memory"]) >= quantity(requests["memory"])


@pytest.mark.parametrize("docs", ALL, indirect=True)
def test_security_contexts(docs: list[Doc]) -> None:
    for workload in workloads(docs):
        spec = workload.spec
        pod_sc = spec.get("securityContext", {})
        where = workload.name
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host), f"{where}: {host}"
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, f"{where}: hostPath volume {volume['name']}"
        for sysctl in pod_sc.get("sysctls", []):
            # The one sysctl both "baseline" and "restricted" allow that we need: binding a
            # port below 1024 without a capability.
            assert sysctl["name"] == "net.ipv4.ip_unprivileged_port_start", where
        for container in workload.containers:
            sc = container.get("securityContext", {})
            caps = sc.get("capabilities", {})
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert not sc.get("privileged"), where
            assert caps.get("drop") == ["ALL"], where
            for port in container.get("ports", []):
                assert "hostPort" not in port, f"{where}: hostPort"
            user = sc.get("runAsUser", pod_sc.get("runAsUser"))
            if workload.name == ROOT_POD:
                # Postfix's master runs as root; what root may do is cut to the measured set,
                # all of it within the "baseline" Pod Security Standard.
                assert set(caps.get("add", [])) == POSTFIX_CAPABILITIES, where
                assert POSTFIX_CAPABILITIES <= BASELINE_CAPABILITIES
            else:
                assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
                assert isinstance(user, int) and user > 0, f"{where}: runAsUser {user}"
                assert not caps.get("add"), f"{where}: adds capabilities {caps.get('add')}"


def secret_keys() -> set[str]:
    """Every key the config model treats as a secret (it may be given inline or as
    ``<key>-file``), plus the inline DKIM keys."""
    keys = {"dkim-private-key", "dkim-ed25519-private-key"}
    pending: list[type[Section]] = [Section]
    while pending:
        cls = pending.pop()
        keys.update(cls.secret_keys)
        pending.extend(cls.__subclasses__())
    return keys


def inline_secrets(node: Any, path: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in SECRET_KEYS and value not in (None, "", {}):
                yield f"{path}{key}"
            yield from inline_secrets(value, f"{path}{key}.")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from inline_secrets(value, f"{path}[{i}].")


SECRET_KEYS = secret_keys()
PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")


@pytest.mark.parametrize("docs", ALL, indirect=True)
def test_no_secrets_in_configmaps_or_in_the_repository(docs: list[Doc]) -> None:
    for doc in kind_of(docs, "ConfigMap"):
        for name, text in (doc.get("data") or {}).items():
            assert not PRIVATE_KEY.search(text), f"{describe(doc)}: {name} holds a private key"
            assert not name.endswith((".pem", ".key")), f"{describe(doc)}: {name}"
            if name.endswith((".yaml", ".yml")):
                found = list(inline_secrets(yaml.safe_load(text)))
                assert not found, f"{describe(doc)}: {name} has inline secrets {found}"
        assert not doc.get("binaryData"), describe(doc)
    # Secrets are created by the operator (deploy/README.md), never committed.
    for doc in kind_of(docs, "Secret"):
        assert not doc.get("data") and not doc.get("stringData"), describe(doc)


@pytest.mark.parametrize("docs", ALL, indirect=True)
def test_secrets_are_mounted_as_files_without_subpath(docs: list[Doc]) -> None:
    for workload, container in containers(docs):
        # A subPath mount never sees a rotated Secret or an updated ConfigMap.
        for mount in container.get("volumeMounts", []):
            assert "subPath" not in mount and "subPathExpr" not in mount, workload.name
        for env in container.get("env", []):
            assert "secretKeyRef" not in env.get("valueFrom", {}), workload.name
        assert not any("secretRef" in e for e in container.get("envFrom", [])), workload.name


@pytest.mark.parametrize("docs", ALL, indirect=True)
def test_the_config_map_is_mounted_at_configs(docs: list[Doc]) -> None:
    for workload, container in containers(docs):
        volumes = {v["name"]: v for v in workload.spec.get("volumes", [])}
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        assert "/configs" in mounts, f"{workload.name} does not mount /configs"
        volume = volumes[mounts["/configs"]["name"]]
        # Overlays add a content hash to the generated ConfigMap's name.
        assert re.fullmatch(r"inboxbooster-config(-[a-z0-9]+)?", volume["configMap"]["name"])
        assert mounts["/configs"].get("readOnly") is True


@pytest.mark.parametrize("docs", ALL, indirect=True)
def test_nothing_public_but_the_smtp_doors(docs: list[Doc]) -> None:
    pods = {w.name: w for w in workloads(docs)}
    for service in kind_of(docs, "Service"):
        chosen = [name for name, w in pods.items() if service_selects(service, w.labels)]
        kind = service["spec"].get("type", "ClusterIP")
        if kind in ("LoadBalancer", "NodePort"):
            assert set(chosen) <= PUBLIC_LOAD_BALANCED, f"{describe(service)} exposes {chosen}"
            ports = {p["port"] for p in service["spec"]["ports"]}
            expected = {BY_NAME[name].port for name in chosen}
            # Never the metrics port, nor anything else, on a public address.
            assert ports == expected, f"{describe(service)} exposes ports {ports}"
        else:
            assert kind == "ClusterIP", f"{describe(service)} is {kind}"
        assert not service["spec"].get("externalIPs"), describe(service)
        if ROOT_POD in chosen:
            # Postfix relays for anyone who reaches it: only the metrics port is a Service.
            for port in service["spec"]["ports"]:
                assert port["port"] == METRICS_PORT, f"{describe(service)}: {port}"
    postfix = pods[ROOT_POD]
    for container in postfix.containers:
        declared = {p["containerPort"] for p in container.get("ports", [])}
        assert declared == {METRICS_PORT}, f"postfix declares ports {declared}"
    for ingress in kind_of(docs, "Ingress"):
        for rule in ingress["spec"].get("rules", []):
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] == "httpreceiver", describe(ingress)


@pytest.mark.parametrize("docs", ALL, indirect=True)
def test_grace_period_covers_prestop_and_drain(docs: list[Doc]) -> None:
    for workload in workloads(docs):
        if workload.name in {*EXTRA_WORKLOADS, *JOBS}:
            continue  # a sentinel or a job holds no data and stops at SIGTERM: nothing to drain
        module = BY_NAME[workload.name]
        grace = workload.spec.get("terminationGracePeriodSeconds", 30)
        prestop = max(prestop_sleep(c) for c in workload.containers)
        needed = prestop + drain_seconds(module)
        assert grace >= needed, (
            f"{workload.name}: terminationGracePeriodSeconds {grace} < preStop {prestop} "
            f"+ drain {drain_seconds(module)}"
        )


@pytest.mark.parametrize("docs", ALL, indirect=True)
def test_postfix_volumes_cannot_get_it_evicted(docs: list[Doc]) -> None:
    """An emptyDir over its sizeLimit gets the pod evicted at once, without the graceful stop
    that hands Postfix's queue back to Redis: no limit on the Postfix pod's volumes."""
    (postfix,) = [w for w in workloads(docs) if w.name == ROOT_POD]
    for volume in postfix.spec["volumes"]:
        if "emptyDir" in volume:
            assert "sizeLimit" not in (volume["emptyDir"] or {}), volume["name"]


# --------------------------------------------------------------------------- overlays only


def policies_for(docs: list[Doc], labels: dict[str, str], kind: str) -> list[Doc]:
    return [
        p
        for p in kind_of(docs, "NetworkPolicy")
        if kind in p["spec"].get("policyTypes", ["Ingress"])
        and selector_matches(p["spec"]["podSelector"], labels)
    ]


def allows_port(rule: Doc, port: int) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("port") == port for p in ports)


@pytest.mark.parametrize("docs", OVERLAYS, indirect=True)
def test_default_deny(docs: list[Doc]) -> None:
    assert any(
        p["spec"]["podSelector"] == {}
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in kind_of(docs, "NetworkPolicy")
    ), "no default-deny NetworkPolicy"


@pytest.mark.parametrize("docs", OVERLAYS, indirect=True)
def test_every_redis_client_is_covered_by_a_network_policy(docs: list[Doc]) -> None:
    pods = {w.name: w for w in workloads(docs)}
    redis_labels = dict(pods["redis"].labels)
    # Every module talks to Redis (Redis' own exporter included).
    for workload in pods.values():
        egress = policies_for(docs, dict(workload.labels), "Egress")
        assert egress, f"{workload.name}: no egress NetworkPolicy"
        assert any(
            allows_port(rule, 6379)
            and any(selector_matches(peer.get("podSelector"), redis_labels) for peer in rule["to"])
            for policy in egress
            for rule in policy["spec"].get("egress", [])
            if rule.get("to")
        ), f"{workload.name} may not reach Redis"


def peer_selects(peer: Doc, labels: dict[str, str]) -> bool:
    return "namespaceSelector" not in peer and selector_matches(peer.get("podSelector"), labels)


@pytest.mark.parametrize("docs", OVERLAYS, indirect=True)
def test_redis_and_postfix_are_reachable_only_from_inside(docs: list[Doc]) -> None:
    pods = {w.name: w for w in workloads(docs)}
    for policy in policies_for(docs, dict(pods["redis"].labels), "Ingress"):
        for rule in policy["spec"].get("ingress", []):
            if not allows_port(rule, 6379):
                continue
            peers = rule.get("from")
            assert peers, f"{describe(policy)}: Redis open to everyone"
            for peer in peers:
                assert "ipBlock" not in peer, describe(policy)
                keda = peer.get("namespaceSelector", {}).get("matchLabels", {})
                if keda:
                    # The KEDA component's operator reads list lengths, nothing else.
                    assert keda == {"kubernetes.io/metadata.name": "keda"}, describe(policy)
                    continue
                chosen = [w.name for w in pods.values() if peer_selects(peer, dict(w.labels))]
                assert chosen, f"{describe(policy)}: peer {peer} selects none of the suite"
                assert peer["podSelector"]["matchLabels"].get("app.kubernetes.io/part-of") == (
                    "manycore-mail"
                ), describe(policy)
    for policy in policies_for(docs, dict(pods[ROOT_POD].labels), "Ingress"):
        for rule in policy["spec"].get("ingress", []):
            ports = {p.get("port") for p in rule.get("ports", [])}
            assert ports == {METRICS_PORT}, f"{describe(policy)} lets {ports or 'all'} in"


@pytest.mark.parametrize("docs", OVERLAYS, indirect=True)
def test_network_paths_the_suite_needs(docs: list[Doc]) -> None:
    pods = {w.name: dict(w.labels) for w in workloads(docs)}

    def open_from_anywhere(name: str, port: int) -> bool:
        return any(
            allows_port(rule, port) and not rule.get("from")
            for p in policies_for(docs, pods[name], "Ingress")
            for rule in p["spec"].get("ingress", [])
        )

    def egress_anywhere(name: str, port: int) -> bool:
        return any(
            allows_port(rule, port)
            and any(peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0" for peer in rule["to"])
            for p in policies_for(docs, pods[name], "Egress")
            for rule in p["spec"].get("egress", [])
            if rule.get("to")
        )

    assert open_from_anywhere("receiver", 587)
    assert open_from_anywhere("mxserver", 25)
    assert egress_anywhere(ROOT_POD, 25), "Postfix cannot reach the recipients' MX"
    assert egress_anywhere("backdata", 443), "BackData cannot reach the webhook"


@pytest.mark.parametrize("docs", OVERLAYS, indirect=True)
def test_every_workload_has_a_disruption_budget(docs: list[Doc]) -> None:
    budgets = kind_of(docs, "PodDisruptionBudget")
    for workload in workloads(docs):
        if workload.name in JOBS:
            continue  # a Job evicted mid-run is retried (backoffLimit)
        assert any(selector_matches(b["spec"]["selector"], dict(workload.labels)) for b in budgets)


@pytest.mark.parametrize("docs", OVERLAYS, indirect=True)
def test_redis_is_a_statefulset_with_a_volume(docs: list[Doc]) -> None:
    (redis,) = [d for d in kind_of(docs, "StatefulSet") if d["metadata"]["name"] == "redis"]
    claims = {c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]}
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    data = [m for m in container["volumeMounts"] if m["mountPath"] == "/data"]
    assert data and data[0]["name"] in claims
    # Everything else but Postfix (its queue, tests/deploy/test_postfix_queue.py) is a
    # Deployment: stateless apart from a pod's own emptyDirs.
    assert {d["metadata"]["name"] for d in kind_of(docs, "Deployment")} == {
        m.name for m in MODULES if m.name not in ("redis", ROOT_POD)
    }


@pytest.mark.parametrize("docs", OVERLAYS, indirect=True)
def test_autoscaled_workloads_have_no_replica_count(docs: list[Doc]) -> None:
    targets = [
        (describe(s), s["spec"]["scaleTargetRef"]) for s in kind_of(docs, "ScaledObject")
    ] + [
        (describe(h), h["spec"]["scaleTargetRef"]) for h in kind_of(docs, "HorizontalPodAutoscaler")
    ]
    workloads_by_name = {
        (d["kind"], d["metadata"]["name"]): d
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
    }
    for owner, ref in targets:
        target = workloads_by_name.get((ref.get("kind", "Deployment"), ref["name"]))
        assert target is not None, f"{owner} scales {ref['name']}, which is not deployed"
        # A replicas field would be reset by every apply, fighting the autoscaler.
        assert "replicas" not in target["spec"], f"{ref['name']} has replicas and {owner}"
    if targets:
        assert {ref["name"] for _, ref in targets} == {"transformer", "postfix", "backdata"}
