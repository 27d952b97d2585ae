"""The user's contract: every ``kubectl create -f`` line of the README (and of
deploy/README.md, which replaces its deployment text) names a manifest that exists, the pods
have the names ``kubectl delete pod`` uses, the production config loads with the services'
own config model, every secret it names is in the documented Secrets, and every path it names
is mounted where it is used. The module manifests and the production ones agree on images and
ports."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

import manycore_common.config as config_model
from tests.deploy.support import (
    BY_NAME,
    DEPLOY,
    MODULE_FILES,
    MODULES,
    OVERLAYS_DIR,
    REPO,
    Doc,
    Workload,
    describe,
    kind_of,
    load_docs,
    module_docs,
    overlay_names,
    render,
    workloads,
)

README = REPO / "README.md"
DEPLOY_README = DEPLOY / "README.md"
PRODUCTION_CONFIG = OVERLAYS_DIR / "production" / "config"
#: Where every pod finds its own Secret, manycore-<service>.
SECRETS_DIR = PurePosixPath("/secrets/manycore")
#: Config section (service) → the pod that runs it.
POD_OF = {
    "receiver": "receiver",
    "httpreceiver": "httpreceiver",
    "transformer": "transformer",
    "postfixlog": "postfix",
    "mxserver": "mxserver",
    "backdata": "backdata",
    "redis": "redis",
}


def commands(path: Path) -> list[str]:
    """Shell commands of the file's code blocks, continuation lines joined."""
    text = path.read_text(encoding="utf-8")
    blocks = re.findall(r"```shell\n(.*?)```", text, flags=re.S)
    joined = "\n".join(blocks).replace("\\\n", " ")
    return [re.sub(r"\s+", " ", line.split("#")[0]).strip() for line in joined.splitlines()]


def create_f_targets(path: Path) -> list[str]:
    return [
        m.group(1) for c in commands(path) for m in [re.match(r"kubectl create -f (\S+)$", c)] if m
    ]


@pytest.mark.parametrize("readme", [README], ids=["README"])
def test_every_create_line_names_a_module_manifest(readme: Path) -> None:
    targets = create_f_targets(readme)
    expected = {f"{m.folder}/{name}" for m in MODULES for name in MODULE_FILES}
    assert set(targets) == expected, set(targets) ^ expected
    for target in targets:
        assert load_docs(REPO / target), f"{target} is empty"


@pytest.mark.parametrize("readme", [README], ids=["README"])
def test_deleted_pods_are_the_module_pods(readme: Path) -> None:
    deleted = {
        m.group(1)
        for c in commands(readme)
        for m in [re.match(r"kubectl delete pod (\S+)$", c)]
        if m
    }
    pods = {doc["metadata"]["name"] for _, doc in module_docs() if doc["kind"] == "Pod"}
    assert pods == {m.name for m in MODULES}
    assert deleted == pods


def test_the_deploy_readme_applies_existing_overlays() -> None:
    applied = {
        m.group(1)
        for c in commands(DEPLOY_README)
        for m in [re.match(r"kubectl apply -k deploy/overlays/(\S+)$", c)]
        if m
    }
    assert "production" in applied
    assert applied <= set(overlay_names())


def documented_secrets() -> dict[str, set[str]]:
    """Secret name → keys, from the ``kubectl create secret`` commands of both READMEs."""
    found: dict[str, set[str]] = {}
    for command in [*commands(README), *commands(DEPLOY_README)]:
        match = re.match(r"kubectl (?:-n \S+ )?create secret (generic|tls) (\S+)(.*)$", command)
        if not match:
            continue
        kind, name, rest = match.groups()
        keys = set(re.findall(r"--from-(?:file|literal)=([^=\s]+)=", rest))
        found.setdefault(name, set()).update({"tls.crt", "tls.key"} if kind == "tls" else keys)
    return found


def referenced_secrets(docs: list[Doc]) -> Iterator[tuple[str, str]]:
    """(what refers, Secret name) for every Secret the manifests need."""
    for workload in workloads(docs):
        for volume in workload.spec.get("volumes", []):
            if "secret" in volume:
                yield workload.name, volume["secret"]["secretName"]
    for ingress in kind_of(docs, "Ingress"):
        for tls in ingress["spec"].get("tls", []):
            yield describe(ingress), tls["secretName"]
    for auth in kind_of(docs, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            yield describe(auth), ref["name"]


@pytest.mark.parametrize("overlay", overlay_names())
def test_every_secret_the_overlay_needs_is_documented(overlay: str) -> None:
    documented = documented_secrets()
    docs = list(render(overlay))
    for who, name in referenced_secrets(docs):
        assert name in documented, f"{who} needs Secret {name}: no `kubectl create secret` for it"
    for auth in kind_of(docs, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in documented[ref["name"]], f"{ref['name']} lacks key {ref['key']}"


def load_production_config(
    monkeypatch: pytest.MonkeyPatch, service: str | None = None
) -> tuple[Any, list[str]]:
    """The overlay's config, validated by the services' own model, as ``service`` loads it
    (everything when None). Secret files live only in the cluster, so reading one returns a
    stand-in and records the path."""
    read: list[str] = []

    def stand_in(base: Path, value: object, key: str) -> str:
        read.append(str(value))
        return "s" * 40

    monkeypatch.setattr(config_model, "read_secret_file", stand_in)
    loaded = config_model.load_config(
        PRODUCTION_CONFIG / "inboxbooster-mailer-global.yaml",
        PRODUCTION_CONFIG / "inboxbooster-mailer-customer.yaml",
        service,
    )
    return loaded, read


@pytest.mark.parametrize("service", sorted(POD_OF))
def test_production_config_names_only_documented_secrets(
    monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    """Every secret file a service reads is a key of its own Secret, and every key of its
    Secret is read (a key nobody reads is a secret handed out for nothing)."""
    _, read = load_production_config(monkeypatch, service)
    assert read, f"{service} reads no secret file"
    keys = documented_secrets()[f"manycore-{service}"]
    for path in read:
        pure = PurePosixPath(path)
        assert pure.parent == SECRETS_DIR, f"{path}: secrets come from {SECRETS_DIR}"
        assert pure.name in keys, f"{path}: key {pure.name} is not in manycore-{service}"
    assert keys == {PurePosixPath(p).name for p in read}, f"manycore-{service}: unread keys"


def mount_for(workload: Workload, path: PurePosixPath) -> Doc | None:
    """The volume mount holding ``path`` in the workload's main container."""
    mounts = workload.spec["containers"][0].get("volumeMounts", [])
    holding = [m for m in mounts if path.is_relative_to(m["mountPath"])]
    return max(holding, key=lambda m: len(m["mountPath"]), default=None)


def test_production_config_paths_are_mounted(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded, _ = load_production_config(monkeypatch)
    pods = {w.name: w for w in workloads(list(render("production")))}
    customer = loaded.customer
    wanted: list[tuple[str, PurePosixPath, bool]] = [
        (pod, PurePosixPath(p), False)
        for service, pod in POD_OF.items()
        for p in load_production_config(monkeypatch, service)[1]
    ]
    wanted += [
        ("transformer", PurePosixPath(str(d.dkim_private_key_file)), False)
        for d in customer.transformer.domain_settings
        if d.dkim_private_key_file is not None
    ]
    wanted += [
        ("receiver", PurePosixPath(str(customer.receiver.tls.cert_file)), False),
        ("receiver", PurePosixPath(str(customer.receiver.tls.key_file)), False),
        ("mxserver", PurePosixPath(str(customer.mxserver.tls.cert_file)), False),
        ("postfix", PurePosixPath(str(customer.postfixlog.logfile)), True),
        ("postfix", PurePosixPath(str(customer.postfixlog.postfix_directory)), True),
        ("redis", PurePosixPath(str(customer.redis.server.data_dir)), True),
    ]
    for pod, path, writable in wanted:
        assert path.is_absolute(), f"{path}: relative paths land in the read-only /configs"
        mount = mount_for(pods[pod], path)
        assert mount is not None, f"{pod}: {path} is not on a mounted volume"
        assert not writable or not mount.get("readOnly"), f"{pod}: {path} must be writable"


def test_module_pods_and_production_workloads_agree() -> None:
    """The README's pods and the overlay run the same images with the same ports and the
    same grace periods."""
    production = {w.name: w for w in workloads(list(render("production")))}
    for path, doc in module_docs():
        if doc["kind"] != "Pod":
            continue
        pod = Workload(doc, doc["metadata"]["labels"], doc["spec"])
        other = production[pod.name]
        assert pod.name in BY_NAME, path
        for mine, theirs in zip(pod.containers, other.containers, strict=True):
            assert mine["name"] == theirs["name"]
            repository = mine["image"].rpartition(":")[0]
            assert theirs["image"].rpartition(":")[0].endswith(repository), (mine, theirs)
            assert mine.get("ports") == theirs.get("ports"), pod.name
            assert mine["securityContext"] == theirs["securityContext"], pod.name
        assert (
            pod.spec["terminationGracePeriodSeconds"]
            == (other.spec["terminationGracePeriodSeconds"])
        ), pod.name
