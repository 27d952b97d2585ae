"""Every alert links its runbook (a section of docs/operations/runbooks.md that exists), and
the alerts on rates and ratios fire on the series that should fire them and stay quiet on
the others (``promtool test rules`` on synthetic series)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import DEPLOY, REPO, kind_of, kubectl, overlay_names, render
from tests.deploy.test_monitoring import rule_docs, rules
from tests.helpers import require_binary

#: Where runbook_url points in the base: the repository's default branch on its forge. The
#: production overlay sets its own (the ConfigMap manycore-mail-runbooks and a replacement).
RUNBOOK_BASE = "https://github.com/manycore-mail/manycore-mail/blob/main/"
RUNBOOK_PATH = "docs/operations/runbooks.md#"
RUNBOOKS = REPO / "docs" / "operations" / "runbooks.md"


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in rules() if "alert" in r}


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a file's headings: lower case, punctuation dropped, spaces
    as hyphens (code blocks skipped)."""
    found = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced or not re.match(r"#{1,6} ", line):
            continue
        title = line.lstrip("#").strip().lower()
        found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_every_alert_has_a_runbook_url_to_its_own_section() -> None:
    problems = []
    for name, rule in alerts().items():
        url = rule["annotations"].get("runbook_url", "")
        if not url.startswith(RUNBOOK_BASE):
            problems.append(f"{name}: runbook_url {url!r} is not under {RUNBOOK_BASE}")
            continue
        path, _, anchor = url.removeprefix(RUNBOOK_BASE).partition("#")
        target = REPO / path
        if not target.is_file():
            problems.append(f"{name}: {path} does not exist")
        elif anchor not in anchors(target.read_text(encoding="utf-8")):
            problems.append(f"{name}: {path} has no section #{anchor}")
        elif anchor != name.lower():
            problems.append(f"{name}: links #{anchor}, not its own section")
    assert not problems, "\n".join(problems)
    assert len(alerts()) >= 19


def rendered_runbooks(docs: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """(the overlay's runbook base, every rendered alert's runbook_url)."""
    (source,) = [d for d in kind_of(docs, "ConfigMap") if d["metadata"]["name"] == RUNBOOK_MAP]
    (rule_doc,) = kind_of(docs, "PrometheusRule")
    urls = [
        r["annotations"]["runbook_url"]
        for group in rule_doc["spec"]["groups"]
        for r in group["rules"]
        if "alert" in r
    ]
    return source["data"]["base"], urls


RUNBOOK_MAP = "manycore-mail-runbooks"


@pytest.mark.parametrize("overlay", overlay_names())
def test_overlays_point_every_runbook_url_at_their_base(overlay: str) -> None:
    base, urls = rendered_runbooks(list(render(overlay)))
    assert base == RUNBOOK_BASE  # what the repository ships; operators change it
    assert sorted(urls) == sorted(r["annotations"]["runbook_url"] for r in alerts().values())


def test_a_changed_runbook_base_reaches_every_alert(tmp_path: Path) -> None:
    """The documented edit: another base in the production overlay, and every runbook_url
    follows (kustomize's replacement, rendered from a copy of deploy/)."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    kustomization = copy / "overlays" / "production" / "kustomization.yaml"
    text = kustomization.read_text(encoding="utf-8")
    fork = "https://git.example.com/ops/manycore-mail/-/blob/v9.1.0/"
    assert text.count(f"base={RUNBOOK_BASE}") == 1
    kustomization.write_text(text.replace(f"base={RUNBOOK_BASE}", f"base={fork}"))
    result = subprocess.run(
        [kubectl(), "kustomize", str(kustomization.parent)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    base, urls = rendered_runbooks([d for d in yaml.safe_load_all(result.stdout) if d])
    assert base == fork
    assert len(urls) == len(alerts())
    for url in urls:
        assert url.startswith(fork + RUNBOOK_PATH), url
        assert url.removeprefix(fork + RUNBOOK_PATH) in {n.lower() for n in alerts()}


def test_every_runbook_section_belongs_to_an_alert() -> None:
    """No runbook for an alert that was renamed or removed."""
    text = RUNBOOKS.read_text(encoding="utf-8")
    sections = {a for a in anchors(text) if a.startswith("manycore")}
    assert sections == {name.lower() for name in alerts()}


def test_the_new_alerts_exist() -> None:
    for name in (
        "ManycoreBounceRateHigh",
        "ManycoreComplaintRateHigh",
        "ManycoreCertificateExpiring",
        "ManycoreRedisMemoryHigh",
        "ManycoreUnclassifiedGrowing",
    ):
        assert name in alerts(), name


# (alert, input series as promtool writes them, minutes to evaluate at, fires?)
NS = 'namespace="mail"'
CASES: list[tuple[str, dict[str, str], int, bool]] = [
    # 1 bounce per 10 delivered: 9%.
    (
        "ManycoreBounceRateHigh",
        {f"bounced_events_total{{{NS}}}": "0+1x120", f"delivered_events_total{{{NS}}}": "0+10x120"},
        100,
        True,
    ),
    # 1 per 50: 2%.
    (
        "ManycoreBounceRateHigh",
        {f"bounced_events_total{{{NS}}}": "0+1x120", f"delivered_events_total{{{NS}}}": "0+50x120"},
        100,
        False,
    ),
    # Too few messages to judge.
    (
        "ManycoreBounceRateHigh",
        {f"bounced_events_total{{{NS}}}": "0+1x120", f"delivered_events_total{{{NS}}}": "0+1x120"},
        100,
        False,
    ),
    # 0.2% complaints over a day: warning, not critical.
    (
        "ManycoreComplaintRateHigh",
        {
            f"spam_report_events_total{{{NS}}}": "0+0.2x1500",
            f"delivered_events_total{{{NS}}}": "0+100x1500",
        },
        1490,
        True,
    ),
    (
        "ManycoreComplaintRateCritical",
        {
            f"spam_report_events_total{{{NS}}}": "0+0.2x1500",
            f"delivered_events_total{{{NS}}}": "0+100x1500",
        },
        1490,
        False,
    ),
    (
        "ManycoreComplaintRateCritical",
        {
            f"spam_report_events_total{{{NS}}}": "0+0.5x1500",
            f"delivered_events_total{{{NS}}}": "0+100x1500",
        },
        1490,
        True,
    ),
    # A certificate that expires 5 days after the start: within 14 days, not within 2.
    (
        "ManycoreCertificateExpiring",
        {f'tls_certificate_expiry_timestamp_seconds{{{NS},job="mxserver-metrics"}}': "432000x30"},
        20,
        True,
    ),
    (
        "ManycoreCertificateExpiryCritical",
        {f'tls_certificate_expiry_timestamp_seconds{{{NS},job="mxserver-metrics"}}': "432000x30"},
        20,
        False,
    ),
    (
        "ManycoreCertificateExpiring",
        {f'tls_certificate_expiry_timestamp_seconds{{{NS},job="mxserver-metrics"}}': "6048000x30"},
        20,
        False,
    ),
    # 90% of maxmemory: high, not critical; no maxmemory (0): no alert.
    (
        "ManycoreRedisMemoryHigh",
        {f"redis_used_memory_bytes{{{NS}}}": "900x30", f"redis_maxmemory_bytes{{{NS}}}": "1000x30"},
        20,
        True,
    ),
    (
        "ManycoreRedisMemoryCritical",
        {f"redis_used_memory_bytes{{{NS}}}": "900x30", f"redis_maxmemory_bytes{{{NS}}}": "1000x30"},
        20,
        False,
    ),
    (
        "ManycoreRedisMemoryHigh",
        {f"redis_used_memory_bytes{{{NS}}}": "900x30", f"redis_maxmemory_bytes{{{NS}}}": "0x30"},
        20,
        False,
    ),
    # One unclassified message a minute: 60 an hour.
    (
        "ManycoreUnclassifiedGrowing",
        {f"mxserver_received_unclassified_total{{{NS}}}": "0+1x120"},
        100,
        True,
    ),
    (
        "ManycoreUnclassifiedGrowing",
        {f"mxserver_received_unclassified_total{{{NS}}}": "0+0.5x120"},
        100,
        False,
    ),
]


def test_rate_and_ratio_alerts_fire_when_they_should(tmp_path: Path) -> None:
    promtool = require_binary("promtool")  # make test installs it
    (doc,) = rule_docs()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": doc["spec"]["groups"]}))
    tests = []
    for name, series, minutes, fires in CASES:
        expr = alerts()[name]["expr"]
        tests.append(
            {
                "interval": "1m",
                "input_series": [{"series": k, "values": v} for k, v in series.items()],
                # count() is 1 when the alert's expression returns anything, absent otherwise.
                "promql_expr_test": [
                    {
                        "expr": f"count({expr})",
                        "eval_time": f"{minutes}m",
                        "exp_samples": [{"labels": "{}", "value": 1}] if fires else [],
                    }
                ],
            }
        )
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests})
    )
    result = subprocess.run(
        [promtool, "test", "rules", "tests.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(alerts()))
def test_alert_descriptions_name_what_to_do(name: str) -> None:
    annotations = alerts()[name]["annotations"]
    assert annotations["summary"] and annotations["description"]
