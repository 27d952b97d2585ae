"""Which events a classified message may give: only events about recipients our tags prove.

A report is written by a stranger; what it claims (a Final-Recipient, a complainer, an
``Original-Rcpt-To``) is believed only where a verified feedback tag
(:mod:`manycore_common.feedbacktag`) names the same recipient. The tags come from the
envelope (the tagged return path or unsubscribe address the report was sent to, verified at
RCPT) and from a bounded prefix of the message (a quoted original's Return-Path or
List-Unsubscribe, an ARF's Original-Mail-From: how an ARF sent to an abuse address, or a bounce
sent to postmaster, is tied to one of our messages; only proof kinds count, so today's
Message-ID, an ``m`` tag, does not). Every event's ``rcpt`` is a candidate address that
``Tag.names`` confirms, its uuid is the tag's, and a tag gives at most one event per kind.

Pure functions: no IO, bounded work (linear patterns over a bounded prefix, capped counts).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from manycore_common import feedbacktag
from manycore_common.bounce_rules import permanent_type
from manycore_common.feedbacktag import Tag

from .classify import Classification
from .reports import Failure

FindingKind = Literal["bounce", "autoreply", "spam-report", "unsubscribe"]

#: An address in free text. The look-behind lets a match start only where a run of
#: local-part characters starts, and every repetition is bounded: linear in the text.
_ADDRESS = re.compile(
    r"(?<![A-Za-z0-9._%+=-])[A-Za-z0-9._%+=-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,8}"
)
_SOFT_BREAK = re.compile(rb"=\r?\n")
#: Two or more full lines of base64 (RFC 2045 §6.8: at most 76 characters each) and the
#: padded last one. A line cannot run into the next: linear.
_BASE64_BLOCK = re.compile(
    rb"(?m)(?:^[A-Za-z0-9+/]{16,76}\r?\n){2,}(?:^[A-Za-z0-9+/]{0,76}={0,2}\r?\n)?"
)
_WHITESPACE = re.compile(rb"\s+")
#: Most addresses taken from a message's prefix as candidates.
MAX_CANDIDATES = 1000
#: Most tags taken from a message's prefix (a quoted thread may hold a few of ours).
MAX_FOUND_TAGS = 8


@dataclass(frozen=True)
class Finding:
    """One event a message gives: its kind, the tag that proves it, the confirmed recipient
    (None only where the kind allows it: a redacted spam report, an unsubscribe or an
    auto-reply from an address other than the recipient's) and the failure it is about."""

    kind: FindingKind
    tag: Tag
    rcpt: str | None
    failure: Failure | None = None


@dataclass(frozen=True)
class Evidence:
    """What a message carries that can prove something: verified tags and candidate
    addresses (in the order they are tried)."""

    envelope_tags: tuple[Tag, ...]
    found_tags: tuple[Tag, ...]
    candidates: tuple[str, ...]


def prefix_text(data: bytes, scan_bytes: int) -> str:
    """The first ``scan_bytes`` octets of a message as text (headers are ASCII; anything
    else only has to survive long enough to be searched), followed by what its
    transfer encodings hide: quoted-printable soft line breaks removed (RFC 2045 §6.7 rule 5
    may split an address) and base64 blocks decoded (an original attached as base64)."""
    prefix = data[:scan_bytes]
    extra = [b""]
    if b"=\n" in prefix or b"=\r\n" in prefix:
        extra.append(_SOFT_BREAK.sub(b"", prefix))
    for block in _BASE64_BLOCK.finditer(prefix):
        with contextlib.suppress(binascii.Error, ValueError):
            extra.append(base64.b64decode(_WHITESPACE.sub(b"", block.group(0)) + b"=="))
    return b"\n".join([prefix, *extra])[: 3 * scan_bytes].decode("latin-1")


def addresses_in(text: str, limit: int = MAX_CANDIDATES) -> list[str]:
    """Distinct addresses in ``text``, in order of appearance, at most ``limit``."""
    found: dict[str, None] = {}
    for match in _ADDRESS.finditer(text):
        found.setdefault(match.group(0).strip("."), None)
        if len(found) >= limit:
            break
    return list(found)


def named(failure: Failure) -> list[str]:
    """Every address a failure names: the Original-Recipient (RFC 3464 §2.3.1, the one we
    sent to when it is given), the failed recipient, the Final-Recipient, as the classifier
    gives them."""
    found: list[str] = []
    for value in (failure.original_rcpt, failure.rcpt, failure.final_rcpt):
        if value and value not in found:
            found.append(value)
    return found


def bounce_type(failure: Failure) -> tuple[str, str]:
    """(bounce type, category) of a failure, the category as the classifier gave it."""
    kind = permanent_type(failure.category) if failure.permanent else "soft"
    return kind, failure.category


def gather(
    c: Classification,
    mail_from: str,
    envelope_tags: Sequence[Tag],
    text: str,
    keys: Sequence[bytes],
    domains: Iterable[str],
) -> Evidence:
    """The evidence in a message: the envelope's tags, the tags in ``text`` (the bounded
    prefix) and the candidate addresses (what the report names first, then the sender, then
    every address in the prefix)."""
    reported = [address for failure in c.failures for address in named(failure)]
    reported += [a for a in (c.email, mail_from) if a]
    candidates = dict.fromkeys([*reported, *addresses_in(text)])
    found = feedbacktag.find_tags(keys, text, domains, limit=MAX_FOUND_TAGS)
    return Evidence(tuple(envelope_tags), tuple(found), tuple(candidates))


def _distinct(tags: Iterable[Tag]) -> list[Tag]:
    """One tag per (message, recipient): a return path, a Message-ID and an unsubscribe
    address of one message to one recipient are one source of events."""
    seen: dict[tuple[str, bytes], Tag] = {}
    for tag in tags:
        seen.setdefault((tag.uuid, tag.fingerprint), tag)
    return list(seen.values())


class _Recipients:
    """Which candidate a tag names: one HMAC per candidate and key, however many tags."""

    def __init__(self, candidates: Sequence[str]) -> None:
        self.candidates = candidates
        self._by_key: dict[bytes, dict[bytes, str]] = {}

    def of(self, tag: Tag) -> str | None:
        index = self._by_key.get(tag.key)
        if index is None:
            index = {}
            for address in self.candidates:
                index.setdefault(feedbacktag.fingerprint(tag.key, address), address)
            self._by_key[tag.key] = index
        return index.get(tag.fingerprint)


def _bounce(tag: Tag, failures: Sequence[Failure], candidates: _Recipients) -> Finding | None:
    for failure in failures:
        for address in named(failure):
            if tag.names(address):
                return Finding("bounce", tag, address, failure)
    # The failed address is not the one we sent to (a forward, an alias): the recipient may
    # appear only in the quoted original. The report's first failure is the one about it.
    rcpt = candidates.of(tag)
    if rcpt is None or not failures:
        return None
    return Finding("bounce", tag, rcpt, failures[0])


def findings(c: Classification, evidence: Evidence) -> list[Finding]:
    """The events a classified message may give, each tied to a verified tag.

    Mail to an unsubscribe address is an unsubscribe whatever it says (RFC 2369 mailto).
    Bounces and spam reports may be tied by the envelope or by a quoted original;
    auto-replies (RFC 3834 §4: sent to the return path) only by the envelope."""
    candidates = _Recipients(evidence.candidates)
    unsubscribe = [t for t in evidence.envelope_tags if t.kind == "unsub"]
    if unsubscribe:
        return [Finding("unsubscribe", t, candidates.of(t)) for t in _distinct(unsubscribe)]
    tags = _distinct([*evidence.envelope_tags, *evidence.found_tags])
    if c.kind == "bounce":
        bounces = (_bounce(t, c.failures, candidates) for t in tags)
        return [f for f in bounces if f is not None]
    if c.kind == "autoreply":
        # The envelope tag proves the message and its recipient even when the reply comes
        # from another address (a forwarded mailbox): the event then has no rcpt, as
        # docs/events.schema.json allows for type autoreply only.
        return [
            Finding("autoreply", t, candidates.of(t)) for t in _distinct(evidence.envelope_tags)
        ]
    if c.kind == "spam-report":
        # Providers that redact the complainer still name the message through the tag.
        return [Finding("spam-report", t, candidates.of(t)) for t in tags]
    return []


@dataclass(frozen=True)
class Scope:
    """What the analysis of one message may use and how far it may go."""

    keys: tuple[bytes, ...]
    domains: frozenset[str]
    scan_bytes: int
    max_failures: int


@dataclass(frozen=True)
class Analysis:
    """A classification (its failures cut to the cap) and the events it may give."""

    classification: Classification
    findings: tuple[Finding, ...]
    #: Failures past ``max_failures``, not read.
    ignored_failures: int = 0
    #: The uuid of the first verified tag (the envelope's, else one in the prefix), with or
    #: without findings: what ties an unclassified message to mail we sent.
    tag_uuid: str | None = None


def analyse(
    c: Classification, mail_from: str, envelope_tags: Sequence[Tag], data: bytes, scope: Scope
) -> Analysis:
    """Findings for a classified message, reading at most ``scope.max_failures`` failures
    and ``scope.scan_bytes`` octets."""
    ignored = max(0, len(c.failures) - scope.max_failures)
    if ignored:
        c = replace(c, failures=tuple(c.failures[: scope.max_failures]))
    text = prefix_text(data, scope.scan_bytes)
    evidence = gather(c, mail_from, envelope_tags, text, scope.keys, scope.domains)
    proof = next((t.uuid for t in (*evidence.envelope_tags, *evidence.found_tags)), None)
    return Analysis(c, tuple(findings(c, evidence)), ignored, proof)
