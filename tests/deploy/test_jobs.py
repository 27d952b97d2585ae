"""The scheduled jobs of the base (``support.JOBS``): the suppression purge runs the real
console command on a schedule, with its service's config section and, of that service's
Secret, only the keys that section reads, mode 0400."""

from __future__ import annotations

import re
import shlex
from pathlib import PurePosixPath

import pytest

from manycore_common import suppressioncli
from tests.deploy.support import JOBS, Doc, Workload, overlay_names, workloads
from tests.deploy.test_contract import documented_secrets, load_production_config
from tests.deploy.test_secrets import SECRET_MODE, secret_mounts

#: The jobs are in deploy/base, so in every overlay (the module folders have none).
OVERLAYS = [f"overlay:{name}" for name in overlay_names()]
CRON_FIELD = re.compile(r"(\*|[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*)(/[0-9]+)?")


def jobs(docs: list[Doc]) -> dict[str, Workload]:
    found = {w.name: w for w in workloads(docs) if w.doc.get("kind") == "CronJob"}
    assert set(found) == set(JOBS), f"CronJobs {sorted(found)}, expected {sorted(JOBS)}"
    return found


@pytest.mark.parametrize("docs", OVERLAYS, indirect=True)
def test_the_purge_runs_the_real_command_on_a_schedule(docs: list[Doc]) -> None:
    purge = jobs(docs)["suppression-purge"]
    spec = purge.doc["spec"]
    fields = spec["schedule"].split()
    assert len(fields) == 5 and all(CRON_FIELD.fullmatch(f) for f in fields), spec["schedule"]
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] > 0 and job["backoffLimit"] >= 1
    assert purge.spec["restartPolicy"] in ("Never", "OnFailure")
    (container,) = purge.spec["containers"]
    script, *args = container["command"] + container.get("args", [])
    assert PurePosixPath(script).name == "manycore-suppressions", script
    parsed = suppressioncli.parse_args(args)
    assert parsed.command == "purge" and parsed.section == JOBS[purge.name], shlex.join(args)
    # The image is one the overlays point at their registry (every image has the scripts).
    assert re.fullmatch(
        r"(registry\.example\.com/)?manycore-mail/[a-z]+:[0-9.]+", container["image"]
    )


@pytest.mark.parametrize("docs", OVERLAYS, indirect=True)
def test_each_job_gets_only_the_secret_keys_its_section_reads(
    docs: list[Doc], monkeypatch: pytest.MonkeyPatch
) -> None:
    documented = documented_secrets()
    for name, workload in jobs(docs).items():
        service = JOBS[name]
        loaded, read = load_production_config(monkeypatch, service)
        assert getattr(loaded.customer, service).reliable_queue.redis is not None
        (mounted,) = secret_mounts(workload)
        volume, mount = mounted
        secret = volume["secret"]
        assert secret["secretName"] == f"manycore-{service}", name
        assert secret["defaultMode"] == SECRET_MODE
        needed = {PurePosixPath(p).name for p in read if PurePosixPath(p).parent == mount}
        projected = {item["path"] for item in secret.get("items", [])}
        assert {item["key"] for item in secret["items"]} == projected
        # Exactly what the section reads there: never the whole Secret.
        assert needed and projected == needed, (name, projected, needed)
        assert projected <= documented[secret["secretName"]], name
