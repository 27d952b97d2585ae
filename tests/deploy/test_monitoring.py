"""The Grafana dashboard and the alert rules read only metrics the services really export
(found in their code), the dashboard shows every metric the README promises, and the
dashboard ships as a ConfigMap with a datasource variable."""

from __future__ import annotations

import ast
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    COMMON,
    DEPLOY,
    PROMETHEUS_BUILTIN,
    Doc,
    is_exported,
    kind_of,
    metric_constructors,
    metric_sources,
    overlay_names,
    promql_metrics,
    readme_metrics,
    render,
    service_sources,
)
from tests.helpers import require_binary

DASHBOARD = DEPLOY / "base" / "monitoring" / "manycore-mail-dashboard.json"
RULES = DEPLOY / "base" / "monitoring" / "prometheusrule.yaml"


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def dashboard_queries() -> list[str]:
    queries = [t["expr"] for p in panels(dashboard()["panels"]) for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            # label_values(metric, label): only the metric is a series name.
            queries.append(text.removeprefix("label_values(").split(",")[0])
    return queries


def rule_docs() -> list[Doc]:
    with RULES.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def rules() -> list[dict[str, Any]]:
    return [
        rule for doc in rule_docs() for group in doc["spec"]["groups"] for rule in group["rules"]
    ]


def unknown(queries: list[str]) -> dict[str, set[str]]:
    found = {}
    for query in queries:
        names = {n for n in promql_metrics(query) if not is_exported(n)}
        if names:
            found[query] = names
    return found


def balanced(expr: str) -> bool:
    depth = {"(": 0, "[": 0, "{": 0}
    closing = {")": "(", "]": "[", "}": "{"}
    for char in expr:
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
            if depth[closing[char]] < 0:
                return False
    return all(v == 0 for v in depth.values())


def test_dashboard_queries_use_only_exported_metrics() -> None:
    queries = dashboard_queries()
    assert queries
    assert not unknown(queries), f"metrics no service exports: {unknown(queries)}"
    assert all(balanced(q) for q in queries)


def test_dashboard_shows_every_readme_metric() -> None:
    shown = set().union(*(promql_metrics(q) for q in dashboard_queries()))
    promised = readme_metrics()
    assert len(promised) > 30, "the README's Monitoring section was not found"
    assert not promised - shown, f"README metrics missing from the dashboard: {promised - shown}"


def test_readme_metrics_exist_in_the_code() -> None:
    missing = sorted(m for m in readme_metrics() if not is_exported(m))
    assert not missing, f"README promises metrics no service exports: {missing}"


def test_each_service_defines_its_metrics_in_its_metrics_py() -> None:
    """One file per service to read for its metric contract; the shared library keeps a
    concern's metrics in that concern's module."""
    elsewhere = [
        f"{path.relative_to(COMMON.parents[1])}:{node.lineno} {callee}"
        for path in service_sources()
        if path not in set(metric_sources())
        for callee, node in metric_constructors(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert not elsewhere, f"metrics defined outside metrics.py: {elsewhere}"
    services = {p.parent.parent.name for p in metric_sources() if p.name == "metrics.py"}
    assert services == {
        "Receiver",
        "HttpReceiver",
        "Transformer",
        "PostfixLog",
        "BackData",
        "MxServer",
        "Redis",
    }


def test_dashboard_has_a_datasource_variable() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    source = variables.get("datasource")
    assert source and source["type"] == "datasource" and source["query"] == "prometheus"
    # Every query goes through the variable: the dashboard imports into any Grafana.
    for panel in panels(board["panels"]):
        if panel.get("type") == "row":
            continue
        for holder in [panel, *panel.get("targets", [])]:
            assert holder["datasource"]["uid"] == "${datasource}", panel["title"]
    assert board["uid"] and board["title"]


@pytest.mark.parametrize("overlay", overlay_names())
def test_dashboard_ships_as_a_configmap(overlay: str) -> None:
    maps = [
        d
        for d in kind_of(list(render(overlay)), "ConfigMap")
        if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    assert len(maps) == 1
    (text,) = maps[0]["data"].values()
    assert json.loads(text) == dashboard()


def test_rules_use_only_exported_metrics() -> None:
    queries = [r["expr"] for r in rules()]
    found = {
        q: n - PROMETHEUS_BUILTIN for q, n in unknown(queries).items() if n - PROMETHEUS_BUILTIN
    }
    assert not found, f"metrics no service exports: {found}"
    assert all(balanced(q) for q in queries)


def test_rules_cover_what_an_operator_must_hear_about() -> None:
    alerts = {r["alert"]: r["expr"] for r in rules() if "alert" in r}
    reads = {name: promql_metrics(expr) for name, expr in alerts.items()}

    def some_alert_reads(*metrics: str) -> bool:
        return any(set(metrics) <= used for used in reads.values())

    assert some_alert_reads("redis_queue_oldest_age_seconds"), "queue backlog"
    assert some_alert_reads("redis_queue_processing_messages"), "stuck processing items"
    assert some_alert_reads("redis_queue_dead_messages"), "dead letters growing"
    assert some_alert_reads("delivered_events_total", "nbr_recipients_total"), "delivered ratio"
    assert some_alert_reads("redis_up"), "Redis down"


def grafana_to_promql(query: str) -> str:
    """A dashboard query as Prometheus would receive it from Grafana."""
    return query.replace("$__rate_interval", "5m").replace("$namespace", "manycore-mail")


def test_promtool_accepts_the_rules_and_the_dashboard_queries(tmp_path: Path) -> None:
    promtool = require_binary("promtool")  # make test installs it (scripts/install-system-deps.sh)
    (doc,) = rule_docs()
    # The dashboard's queries as recording rules: promtool then parses them too.
    recorded = [
        {"record": f"manycore:dashboard_query_{i}", "expr": grafana_to_promql(q)}
        for i, q in enumerate(dashboard_queries())
    ]
    groups = [*doc["spec"]["groups"], {"name": "dashboard", "rules": recorded}]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
