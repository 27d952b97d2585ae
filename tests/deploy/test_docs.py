"""The documents name only what exists: every repository path, ``file.md#anchor`` section and
``manycore-*`` console script in README.md, docs/, the folders' READMEs (deploy/, bench/,
tests/, each service's), and every ``*.md#anchor`` a code comment cites. The rules of what
counts as a reference are in tests/deploy/docrefs.py; the checker is tested here on planted
mistakes, so a green run means the references hold, not that nothing was looked at."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path, PurePosixPath

import pytest

from tests.deploy.docrefs import Repo, anchors_of, code_problems, problems, slug
from tests.deploy.support import REPO

CODE_SUFFIXES = (".py", ".cf", ".toml", ".yaml", ".yml", ".sh", ".conf")
#: The checker and its tests, whose examples name nothing on purpose.
CHECKER = ("tests/deploy/docrefs.py", "tests/deploy/test_docs.py")


def repo_files() -> list[str]:
    """Tracked files plus new ones not ignored (a doc and the file it names may be added in
    the same change)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [f for f in out.splitlines() if (REPO / f).exists()]


def documents(files: list[str]) -> list[str]:
    return sorted(
        f
        for f in files
        if f == "README.md"
        or (f.startswith("docs/") and f.endswith(".md"))
        or re.fullmatch(r"[^/]+/README\.md", f)
    )


def ignored_prefixes() -> tuple[str, ...]:
    """The folders ``.gitignore`` names by path (``.run/``, ``bench/results/``)."""
    lines = (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()
    return tuple(
        line.lstrip("/") for line in lines if line.endswith("/") and not line.startswith("#")
    )


def console_scripts() -> frozenset[str]:
    names: set[str] = set()
    for pyproject in REPO.glob("*/pyproject.toml"):
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        names.update(data.get("project", {}).get("scripts", {}))
    return frozenset(names)


def manifest_names(files: list[str]) -> frozenset[str]:
    """``manycore-*`` names the manifests give to objects (Secrets, namespace, ConfigMaps)."""
    names: set[str] = set()
    for f in files:
        if f.endswith((".yaml", ".yml", ".json")) and not f.startswith("tests/"):
            text = (REPO / f).read_text(encoding="utf-8")
            names.update(re.findall(r"(?<![\w-])manycore-[a-z0-9]+(?:-[a-z0-9]+)*", text))
    return frozenset(names)


def build_repo() -> Repo:
    files = repo_files()
    paths = set(files)
    for f in files:
        paths.update(str(p) for p in PurePosixPath(f).parents if str(p) != ".")
    anchors = {
        f: anchors_of((REPO / f).read_text(encoding="utf-8")) for f in files if f.endswith(".md")
    }
    packages = {
        p.name: p.parent.name for p in REPO.glob("*/manycore_*") if (p / "__init__.py").exists()
    }
    return Repo(
        frozenset(paths),
        ignored_prefixes(),
        console_scripts(),
        manifest_names(files),
        anchors,
        packages,
    )


REPO_FACTS = build_repo()
FILES = repo_files()


@pytest.mark.parametrize("doc", documents(FILES))
def test_documents_name_only_what_exists(doc: str) -> None:
    text = (REPO / doc).read_text(encoding="utf-8")
    assert problems(text, doc, REPO_FACTS) == []


def test_code_comments_cite_existing_sections() -> None:
    found: list[str] = []
    for f in FILES:
        if (f.endswith(CODE_SUFFIXES) or Path(f).name == "Makefile") and f not in CHECKER:
            found += code_problems((REPO / f).read_text(encoding="utf-8"), f, REPO_FACTS)
    assert found == []


def test_nothing_cites_the_old_design_file() -> None:
    """The repository explains itself: references go to docs/ARCHITECTURE.md, not to a
    design document a clone does not have."""
    old = "DESIGN " + "\u00a7"  # written so that this file does not match itself
    found = [
        f
        for f in FILES
        if not f.startswith("tests/fixtures/")
        and old in (REPO / f).read_text(encoding="utf-8", errors="replace")
    ]
    assert found == []


def test_the_documents_are_found() -> None:
    docs = documents(FILES)
    for doc in ("README.md", "docs/ARCHITECTURE.md", "deploy/README.md", "tests/README.md"):
        assert doc in docs
    assert {"manycore-queues", "manycore-dns", "manycore-receiver"} <= REPO_FACTS.scripts
    assert "manycore-dkim" in REPO_FACTS.object_names


def test_the_readme_links_the_architecture_guide_at_its_top() -> None:
    head = (REPO / "README.md").read_text(encoding="utf-8").split("\n# ", 1)[0]
    assert "(docs/ARCHITECTURE.md)" in head


def test_every_module_of_common_is_listed_in_its_package_docstring() -> None:
    package = REPO / "common" / "manycore_common"
    doc = (package / "__init__.py").read_text(encoding="utf-8")
    missing = [p.stem for p in package.glob("*.py") if p.stem != "__init__"]
    assert [m for m in missing if f"``{m}``" not in doc] == []


# ----------------------------------------------------------------- the checker itself

PLANTED_REPO = Repo(
    paths=frozenset(
        {
            "README.md",
            "docs",
            "docs/GUIDE.md",
            "Svc",
            "Svc/README.md",
            "Svc/manycore_svc",
            "Svc/manycore_svc/__init__.py",
            "Svc/manycore_svc/poster.py",
            "common",
            "common/queue.py",
        }
    ),
    ignored=(".run/", "bench/results/"),
    scripts=frozenset({"manycore-svc", "manycore-queues"}),
    object_names=frozenset({"manycore-dkim", "manycore-mail"}),
    anchors={"docs/GUIDE.md": frozenset({"queues", "dead-letters"}), "README.md": frozenset()},
    packages={"manycore_svc": "Svc"},
)

GOOD = """# Title
See [the guide](docs/GUIDE.md#queues), `common/queue.py`, `docs/GUIDE.md#dead-letters`,
`manycore_svc.poster`, and run `manycore-queues dead QUEUE` or `manycore-svc`. The Secret
`manycore-dkim` in the namespace `manycore-mail`. Not references: `X-Manycore-Signature`,
`manycore-<module>`, `deploy/overlays/<name>`, `/configs/x.yaml`, `.run/configs`,
`bench/results/x.md`, `dkim/key.pem`, https://example.com/a/b, a/b in prose, and
[a site](https://example.com/docs/GUIDE.md#nowhere).

```shell
manycore-queues stats
kubectl create -f common/queue.py
```
"""


def test_the_checker_passes_what_exists() -> None:
    assert problems(GOOD, "README.md", PLANTED_REPO) == []


@pytest.mark.parametrize(
    ("line", "doc", "what"),
    [
        ("[guide](docs/GUIDES.md)", "README.md", "docs/GUIDES.md"),
        ("[guide](docs/GUIDE.md#queue)", "README.md", "docs/GUIDE.md#queue"),
        ("[top](#nowhere)", "README.md", "#nowhere"),
        ("[up](../../x.md)", "Svc/README.md", "leaves the repository"),
        ("see `common/queues.py`", "README.md", "common/queues.py"),
        ("see `docs/GUIDE.md#deadletters`", "README.md", "deadletters"),
        ("see `manycore_svc/consumer.py`", "Svc/README.md", "manycore_svc/consumer.py"),
        ("Modules: `poster.py`, `consumer.py`", "Svc/README.md", "consumer.py"),
        ("the module `manycore_svc.consumer`", "README.md", "manycore_svc.consumer"),
        ("run `manycore-queue stats`", "README.md", "manycore-queue"),
        ("or manycore-queus in prose", "README.md", "manycore-queus"),
    ],
)
def test_the_checker_catches_a_planted_bad_reference(line: str, doc: str, what: str) -> None:
    found = problems(f"# Title\n\n{line}\n", doc, PLANTED_REPO)
    assert len(found) == 1 and what in found[0], found


def test_the_checker_reads_fenced_blocks_for_paths_only_as_words() -> None:
    text = (
        "# T\n```\nkubectl create -f common/nothing.yaml\n# a shell comment, not a heading\n```\n"
    )
    assert problems(text, "README.md", PLANTED_REPO) == [
        "README.md:3: 'common/nothing.yaml': no such file or folder"
    ]
    assert anchors_of(text) == frozenset({"t"})


def test_code_comments_with_a_bad_anchor_are_caught() -> None:
    code = "# see docs/GUIDE.md#queues\n# and docs/GUIDE.md#reapers\n# and docs/NONE.md#x\n"
    assert code_problems(code, "x.py", PLANTED_REPO) == [
        "x.py:2: docs/GUIDE.md has no section #reapers",
        "x.py:3: docs/NONE.md: no such file",
    ]


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Postfix's capabilities", "postfixs-capabilities"),
        ("Outbound port 25 and reverse DNS", "outbound-port-25-and-reverse-dns"),
        ("[inboxbooster-mailer-global.yaml](x.example)", "inboxbooster-mailer-globalyaml"),
        ("`make run` and `make test`", "make-run-and-make-test"),
        ("1. Redis", "1-redis"),
    ],
)
def test_anchors_as_github_makes_them(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_repeated_headings_get_numbered_anchors() -> None:
    assert anchors_of("# A\n## B\n## B\n") == frozenset({"a", "b", "b-1"})
