"""The transformation: a pure function of (message bytes, settings, clock).

What it does (DESIGN §5):

* reads X-Uuid, X-Stream-Id and the From domain, and finds the domain's settings;
* removes what the customer must not set or what we set ourselves (no duplicates ever go
  out): X-Uuid, X-Priority, X-Stream-Id, Bcc, Message-ID, Date, X-Mailer, List-Unsubscribe,
  List-Unsubscribe-Post, Feedback-ID, DKIM-Signature, X-ReturnPathIb and any injected header;
* adds Date, Message-ID <uuid@return-path-domain>, X-Mailer, Feedback-ID, the injected
  headers (List-Unsubscribe), List-Unsubscribe-Post for an https unsubscribe URL (RFC 8058)
  and X-ReturnPathIb: bounce-<uuid>@<return-path-domain> for PostfixLog;
* inserts the beacon into HTML parts when the domain has one;
* signs with DKIM last: Ed25519 (when configured) and RSA.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, getaddresses

from manycore_common.message import STREAM_ID_RE, UUID_RE
from manycore_common.unsubscribe import make_token

from . import dkim
from .beacon import add_beacon
from .headers import (
    Field,
    join_message,
    make_field,
    normalize_line_endings,
    split_message,
    without,
)

REMOVED = frozenset(
    {
        "x-uuid",
        "x-priority",
        "x-stream-id",
        "bcc",
        "message-id",
        "date",
        "x-mailer",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "feedback-id",
        "dkim-signature",
        "x-returnpathib",
    }
)

#: Signed when present, in this order (RFC 6376 §5.4.1 recommends the first ones).
SIGNED_HEADERS = (
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "feedback-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "in-reply-to",
    "references",
)

_PLACEHOLDER = re.compile(r"\{\{\s*([a-z-]+)\s*\}\}")
# What a generated header value may contain: visible ASCII and spaces (RFC 5322 §2.2).
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")


class TransformError(Exception):
    """The message cannot be transformed; it goes to the dead-letter list with this reason."""

    def __init__(self, reason: str, text: str, uuid: str | None = None) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text
        self.uuid = uuid


class TemplateError(ValueError):
    pass


@functools.lru_cache(maxsize=256)
def _compile(template: str) -> tuple[tuple[str, str | None], ...]:
    """(literal, placeholder or None) pieces; templates are few, messages many."""
    pieces: list[tuple[str, str | None]] = []
    position = 0
    for match in _PLACEHOLDER.finditer(template):
        pieces.append((template[position : match.start()], match.group(1)))
        position = match.end()
    pieces.append((template[position:], None))
    return tuple(pieces)


def render(template: str, values: Mapping[str, str]) -> str:
    """``{{name}}`` (spaces allowed inside the braces) replaced by ``values[name]``."""
    out = []
    for literal, name in _compile(template):
        out.append(literal)
        if name is not None:
            if name not in values:
                raise TemplateError(f"unknown placeholder {{{{{name}}}}} in {template!r}")
            out.append(values[name])
    return "".join(out)


@dataclass(frozen=True)
class DomainSigner:
    domain: str
    return_path_domain: str
    selector: str
    rsa: dkim.SigningKey
    ed25519_selector: str | None = None
    ed25519: dkim.SigningKey | None = None
    beacon_url: str | None = None


@dataclass(frozen=True)
class Settings:
    domains: Mapping[str, DomainSigner]
    x_mailer: str
    #: (header name, template), e.g. ("List-Unsubscribe", "<mailto:unsub-{{uuid}}@...>")
    inject: tuple[tuple[str, str], ...] = ()
    feedback_format: str = "{{campaign}}:{{mail-type}}:{{sender-id}}"
    campaign_id: str = "default"
    mail_type: str = "default"
    sender_id: str = "default"
    removed: frozenset[str] = field(default=REMOVED)
    #: Signs {{unsubscribe-token}}; None when common-config.unsubscribe-secret is not set.
    unsubscribe_secret: bytes | None = None


#: Placeholders each template may use.
INJECT_PLACEHOLDERS = (
    "uuid",
    "return-path-domain",
    "from-domain",
    "stream-id",
    "unsubscribe-token",
)
FEEDBACK_PLACEHOLDERS = ("campaign", "mail-type", "sender-id", "stream-id", "from-domain")
BEACON_PLACEHOLDERS = ("uuid", "stream-id", "from-domain", "return-path-domain")


def check_templates(settings: Settings) -> list[str]:
    """Problems with the configured templates, found at start rather than per message."""
    problems = []
    sample = dict.fromkeys((*INJECT_PLACEHOLDERS, *FEEDBACK_PLACEHOLDERS), "x")
    checks: list[tuple[str, str, tuple[str, ...]]] = [
        (f"email-headers.inject.{n}", t, INJECT_PLACEHOLDERS) for n, t in settings.inject
    ]
    checks.append(("feedback-id.format", settings.feedback_format, FEEDBACK_PLACEHOLDERS))
    for signer in settings.domains.values():
        if signer.beacon_url:
            checks.append(
                (
                    f"domain-settings[{signer.domain}].beacon-url",
                    signer.beacon_url,
                    BEACON_PLACEHOLDERS,
                )
            )
    for where, template, allowed in checks:
        if "unsubscribe-token" in template and settings.unsubscribe_secret is None:
            problems.append(
                f"transformer.{where}: {{{{unsubscribe-token}}}} needs "
                "common-config.unsubscribe-secret"
            )
            continue
        try:
            rendered = render(template, {k: sample.get(k, "x") for k in allowed})
        except TemplateError as exc:
            problems.append(f"transformer.{where}: {exc}")
            continue
        if not _HEADER_VALUE.fullmatch(rendered):
            problems.append(f"transformer.{where}: must be printable ASCII on one line")
    return problems


@dataclass(frozen=True, slots=True)
class Transformed:
    data: bytes
    uuid: str
    stream_id: str | None
    from_domain: str
    return_path: str
    sign_seconds: float


def _single(index: dict[str, list[Field]], name: str, uuid: str | None = None) -> str | None:
    found = [f.value for f in index.get(name.lower(), ())]
    if len(found) > 1:
        raise TransformError("bad-headers", f"header {name} appears {len(found)} times", uuid)
    return found[0] if found else None


@functools.lru_cache(maxsize=4)
def _rfc5322_date(second: int) -> str:
    return format_datetime(datetime.fromtimestamp(second, UTC))


@functools.lru_cache(maxsize=16)
def _removed(removed: frozenset[str], inject: tuple[tuple[str, str], ...]) -> frozenset[str]:
    """Header names to drop: ours, plus every header we inject (no duplicates go out)."""
    return removed | {name.lower() for name, _ in inject}


# The common forms of From: "Name <local@domain>" or a bare "local@domain".
_SIMPLE_FROM = re.compile(r'(?:[^<>",@;:]*<)?\s*[^\s<>",@;:()]+@([^\s<>",@;:()]+)\s*>?\s*')


def _from_domain(from_values: list[str]) -> str | None:
    """The domain of the single From address (lower case), or None."""
    if len(from_values) != 1:
        return None
    simple = _SIMPLE_FROM.fullmatch(from_values[0])
    if simple:
        return simple.group(1).lower()
    senders = [addr for _, addr in getaddresses(from_values) if "@" in addr]
    if len(senders) != 1:
        return None
    return senders[0].rpartition("@")[2].strip().lower() or None


def _header_value(name: str, value: str, uuid: str) -> Field:
    if not _HEADER_VALUE.fullmatch(value):
        raise TransformError("bad-header-value", f"generated {name} is not a valid header", uuid)
    return make_field(name, value)


def transform(data: bytes, settings: Settings, now: float) -> Transformed:
    """The message as it will be sent, or TransformError."""
    data = normalize_line_endings(data)
    try:
        fields, body = split_message(data)
    except ValueError as exc:
        raise TransformError("unparseable", f"cannot parse the header section: {exc}") from None

    index: dict[str, list[Field]] = {}
    for f in fields:
        index.setdefault(f.key, []).append(f)
    uuid = _single(index, "X-Uuid")
    if uuid is None or not UUID_RE.fullmatch(uuid):
        raise TransformError("bad-uuid", "missing or malformed X-Uuid (it must be [a-z0-9]+)")
    stream_id = _single(index, "X-Stream-Id", uuid)
    if stream_id is not None and not STREAM_ID_RE.fullmatch(stream_id):
        raise TransformError("bad-stream-id", "malformed X-Stream-Id", uuid)

    from_domain = _from_domain([f.value for f in index.get("from", ())])
    if from_domain is None:
        raise TransformError("bad-from", "the From header must hold exactly one address", uuid)
    signer = settings.domains.get(from_domain)
    if signer is None:
        raise TransformError(
            "unknown-domain",
            f"From domain {from_domain} is not configured in transformer.domain-settings",
            uuid,
        )

    names = {
        "uuid": uuid,
        "stream-id": stream_id or "",
        "from-domain": from_domain,
        "return-path-domain": signer.return_path_domain,
    }
    if settings.unsubscribe_secret is not None:
        names["unsubscribe-token"] = make_token(
            settings.unsubscribe_secret, uuid, stream_id, int(now)
        )
    if signer.beacon_url:
        body = add_beacon(fields, body, render(signer.beacon_url, names))
    if body and not body.endswith(b"\r\n"):
        # SMTP ends DATA with CRLF anyway (RFC 5321 §4.1.1.4); store what will be sent.
        body += b"\r\n"

    kept = without(fields, _removed(settings.removed, settings.inject))
    return_path = f"bounce-{uuid}@{signer.return_path_domain}"
    added = [
        make_field("X-ReturnPathIb", return_path),
        make_field("Message-ID", f"<{uuid}@{signer.return_path_domain}>"),
        make_field("Date", _rfc5322_date(int(now))),
        _header_value("X-Mailer", settings.x_mailer, uuid),
        _header_value(
            "Feedback-ID",
            render(
                settings.feedback_format,
                {
                    "campaign": stream_id or settings.campaign_id,
                    "mail-type": settings.mail_type,
                    "sender-id": settings.sender_id,
                    "stream-id": stream_id or "",
                    "from-domain": from_domain,
                },
            ),
            uuid,
        ),
    ]
    for name, template in settings.inject:
        value = render(template, names)
        added.append(_header_value(name, value, uuid))
        # RFC 8058: one-click unsubscribe needs an https URI in List-Unsubscribe.
        if name.lower() == "list-unsubscribe" and "<https://" in value.lower():
            added.append(make_field("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    fields = added + kept

    started = time.perf_counter()
    bh = dkim.body_hash(body)
    signatures = []
    for selector, key in (
        (signer.ed25519_selector or signer.selector, signer.ed25519),
        (signer.selector, signer.rsa),
    ):
        if key is None:
            continue
        signatures.append(
            dkim.sign(
                fields,
                bh,
                key=key,
                domain=from_domain,
                selector=selector,
                timestamp=int(now),
                header_names=SIGNED_HEADERS,
            )
        )
    sign_seconds = time.perf_counter() - started
    # The RSA signature goes on top (the one every verifier understands).
    return Transformed(
        data=join_message(list(reversed(signatures)) + fields, body),
        uuid=uuid,
        stream_id=stream_id,
        from_domain=from_domain,
        return_path=return_path,
        sign_seconds=sign_seconds,
    )
