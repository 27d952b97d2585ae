"""What a document names that must exist: repository paths, ``file.md#anchor`` sections and
``manycore-*`` console scripts. Pure functions of the text and of a ``Repo`` (the facts about
the repository), so the checker itself is tested on planted mistakes (tests/deploy/test_docs.py).

Only what is unmistakably a reference is checked, so prose never trips it:

* paths in link targets, code spans and fenced code blocks, when their first component is a
  top-level folder of the repository (or a folder beside the document, for a service README's
  ``manycore_x/...``); placeholders (``<name>``, ``{x}``, ``*``, ``…``), absolute paths, URLs
  and what ``.gitignore`` names (``.run/``, ``bench/results/``: made by running) are skipped;
* a bare ``name.py`` in a code span, which must be a file of the document's folder (a service
  README) or of the repository;
* a dotted ``manycore_x.module`` in a code span, which must be a module of that package;
* ``file.md#anchor`` and ``(#anchor)``, against the headings of that file, as GitHub makes
  anchors of them;
* every ``manycore-*`` word, which must be a console script of a ``pyproject.toml`` or a name
  the manifests give (the Secrets, the namespace, the dashboard's ConfigMap).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_LINK_WHOLE = re.compile(r"\[[^\]]*\]\([^)]*\)")
_SPAN = re.compile(r"(`+)(.+?)\1")
_MD_ANCHOR = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)#([\w-]+)")
_SCRIPT = re.compile(r"(?<![\w-])manycore-[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?![\w<])")
_DOTTED = re.compile(r"^(manycore_[a-z]+)\.([a-z_][a-z0-9_]*)")
_PLACEHOLDER = re.compile(r"[<>{}*…$%|\\]|\.\.\.")


@dataclass(frozen=True)
class Repo:
    """The facts a document is checked against."""

    #: Every tracked file and every folder above one, as POSIX paths relative to the root.
    paths: frozenset[str]
    #: Folder prefixes nothing is tracked under because running makes them (``.gitignore``).
    ignored: tuple[str, ...]
    #: Console scripts of every ``pyproject.toml``.
    scripts: frozenset[str]
    #: ``manycore-*`` names the manifests give to Kubernetes objects.
    object_names: frozenset[str]
    #: Anchors of every markdown file, by path.
    anchors: dict[str, frozenset[str]]
    #: Python packages (``manycore_x``) → their folder.
    packages: dict[str, str]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces
    to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](target) → text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def prose_lines(text: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, line, inside a fenced code block)."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        yield number, line, fenced


def anchors_of(text: str) -> frozenset[str]:
    """Every anchor GitHub gives the headings of a markdown text (``-1``, ``-2`` for repeats)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line, fenced in prose_lines(text):
        match = None if fenced else _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return frozenset(out)


def _resolve(target: str, doc: str) -> str:
    """A relative link target as a path from the repository root ("" when it leaves it)."""
    parts: list[str] = []
    for part in [*PurePosixPath(doc).parent.parts, *PurePosixPath(target).parts]:
        if part == "..":
            if not parts:
                return ""
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)


def _exists(path: str, repo: Repo) -> bool:
    return path.rstrip("/") in repo.paths


def _ignored(path: str, repo: Repo) -> bool:
    return any(path == p.rstrip("/") or path.startswith(p) for p in repo.ignored)


def check_link(target: str, doc: str, repo: Repo) -> str | None:
    """A problem with a markdown link target, or None."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("//"):
        return None  # https:, mailto:, ...
    path, _, anchor = target.partition("#")
    full = _resolve(path, doc) if path else doc
    if path and not full:
        return f"link {target!r} leaves the repository"
    if path and not _ignored(full, repo) and not _exists(full, repo):
        return f"link to {path!r}: no such file"
    if anchor and full.endswith(".md") and anchor not in repo.anchors.get(full, frozenset()):
        return f"link to {target!r}: {full} has no section with that anchor"
    return None


def check_path(token: str, doc: str, repo: Repo, *, command: bool = False) -> str | None:
    """A problem with a path-like word of a code span or block, or None when it is fine or
    not a repository path at all. In a ``command`` (a span of several words, a fenced block)
    only words that look like files (an extension, or a trailing ``/``) count:
    ``kubectl exec deploy/postfix`` names a Deployment, not the folder ``deploy/``."""
    word = token.strip("`'\".,;:()[]").removesuffix(")")
    if not word or _PLACEHOLDER.search(word) or "://" in word or word.startswith(("/", "-")):
        return None
    path, _, anchor = word.partition("#")
    if command and not (path.endswith("/") or "." in path.rsplit("/", 1)[-1]):
        return None
    if "/" not in path:
        return _check_bare(path, doc, repo)
    here = str(PurePosixPath(doc).parent)
    first = path.split("/", 1)[0]
    candidates = []
    if first in repo.paths:
        candidates.append(path)
    if here != "." and f"{here}/{first}" in repo.paths:
        candidates.append(f"{here}/{path}")
    if not candidates or any(_ignored(c, repo) for c in candidates):
        return None
    found = [c for c in candidates if _exists(c, repo)]
    if not found:
        return f"{path!r}: no such file or folder"
    if anchor and found[0].endswith(".md") and anchor not in repo.anchors.get(found[0], set()):
        return f"{word!r}: {found[0]} has no section with that anchor"
    return None


def _check_bare(word: str, doc: str, repo: Repo) -> str | None:
    """A bare ``name.py`` or a dotted ``manycore_x.module``."""
    dotted = _DOTTED.match(word)
    if dotted and not word.endswith(".py"):
        package, module = dotted.groups()
        folder = repo.packages.get(package)
        if folder is None:
            return f"{word!r}: no package {package}"
        base = f"{folder}/{package}/{module}"
        if f"{base}.py" in repo.paths or base in repo.paths:
            return None
        return f"{word!r}: no module {package}.{module}"
    if not re.fullmatch(r"[\w-]+\.py", word):
        return None
    here = str(PurePosixPath(doc).parent)
    scope = "" if here == "." or here == "docs" else here + "/"
    if any(p.startswith(scope) and p.rsplit("/", 1)[-1] == word for p in repo.paths):
        return None
    return f"{word!r}: no such file in {scope or 'the repository'}"


def check_scripts(line: str, repo: Repo) -> list[str]:
    return [
        f"{name!r}: neither a console script nor a name in the manifests"
        for name in _SCRIPT.findall(line)
        if name not in repo.scripts and name not in repo.object_names
    ]


def problems(text: str, doc: str, repo: Repo) -> list[str]:
    """Every reference in a markdown document that names nothing, as ``doc:line: what``."""
    found: list[str] = []
    for number, line, fenced in prose_lines(text):
        issues: list[str | None] = []
        if fenced:
            issues += [check_path(word, doc, repo, command=True) for word in line.split()]
        else:
            issues += [check_link(target, doc, repo) for target in _LINK.findall(line)]
            # A link's text is checked through its target.
            for _, span in _SPAN.findall(_LINK_WHOLE.sub("", line)):
                words = span.split()
                many = len(words) > 1
                issues += [check_path(word, doc, repo, command=many) for word in words]
        issues += check_scripts(line, repo)
        found += [f"{doc}:{number}: {issue}" for issue in issues if issue]
    return sorted(set(found))


def code_problems(text: str, source: str, repo: Repo) -> list[str]:
    """``something.md#anchor`` references in code comments, against the anchors they name."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for path, anchor in _MD_ANCHOR.findall(line):
            if path.split("/", 1)[0] not in repo.paths:
                continue  # not a repository path ("file.md#anchor" in a sentence)
            if path not in repo.paths:
                found.append(f"{source}:{number}: {path}: no such file")
            elif anchor not in repo.anchors.get(path, frozenset()):
                found.append(f"{source}:{number}: {path} has no section #{anchor}")
    return found
