"""The transformation: a pure function of (message bytes, recipients, settings, clock).

What it does (docs/ARCHITECTURE.md#messages-and-headers):

* reads X-Uuid, X-Stream-Id and the From domain, and finds the domain's settings;
* removes what the customer must not set or what we set ourselves (no duplicates ever go
  out): X-Uuid, X-Priority, X-Stream-Id, Bcc, Message-ID, Date, X-Mailer, List-Unsubscribe,
  List-Unsubscribe-Post, Feedback-ID, DKIM-Signature, X-ReturnPathIb and any injected header;
* inserts the beacon into HTML parts when the domain has one;
* makes one copy per recipient (VERP: every recipient gets its own envelope sender), each with
  Date, X-Mailer, Feedback-ID, the injected headers (List-Unsubscribe; List-Unsubscribe-Post
  for an https unsubscribe URL, RFC 8058) and three headers of its own, all minted by
  ``manycore_common.feedbacktag`` for that recipient:
  ``X-ReturnPathIb: <return path>`` (PostfixLog's MAIL FROM, removed before sending),
  ``Message-ID`` (a tag of its own kind, never proof: ``feedbacktag``) and the
  ``{{unsubscribe-address}}`` placeholder;
* signs every copy with DKIM last: Ed25519 (when configured) and RSA. The body is the same
  in every copy, so its hash is computed once; only the header sets are signed n times.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime

from manycore_common import feedbacktag
from manycore_common.unsubscribe import make_token

from . import bodycanon, dkim, identity
from .beacon import add_beacon
from .headers import Field, join_message, make_field, split_message, without
from .identity import TransformError
from .templates import HEADER_VALUE, render

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


#: Most bytes the copies of one message may add up to (recipients × message size). Every copy
#: is held in memory, crosses from the signing process, and lands in Redis and in Postfix's
#: queue; past this a message goes to the dead-letter list ("too-many-copies") rather than
#: taking the Transformer down. 128 MiB: 2,600 recipients of a 50 KB message, 5 of 25 MB.
MAX_COPIES_BYTES = 128 * 2**20


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
    #: Mints the tagged feedback addresses (``common-config.feedback-secret``).
    feedback_key: bytes
    #: (header name, template), e.g. ("List-Unsubscribe", "<mailto:{{unsubscribe-address}}>")
    inject: tuple[tuple[str, str], ...] = ()
    feedback_format: str = "{{campaign}}:{{mail-type}}:{{sender-id}}"
    campaign_id: str = "default"
    mail_type: str = "default"
    sender_id: str = "default"
    removed: frozenset[str] = field(default=REMOVED)
    #: Signs {{unsubscribe-token}}; None when common-config.unsubscribe-secret is not set.
    unsubscribe_secret: bytes | None = None


@dataclass(frozen=True, slots=True)
class Copy:
    """The message as it goes to one recipient: its own header section, and the body every
    copy shares (the same object, so pickling a message's copies to the main process sends
    it once, and it is copied only into each queue item)."""

    rcpt: str
    #: The tagged envelope sender (VERP), also in the copy's X-ReturnPathIb.
    return_path: str
    #: The header fields and the empty line that ends them.
    head: bytes
    body: bytes

    @property
    def data(self) -> bytes:
        return self.head + self.body


@dataclass(frozen=True, slots=True)
class Transformed:
    uuid: str
    stream_id: str | None
    from_domain: str
    #: One per distinct recipient, in the order given.
    copies: tuple[Copy, ...]
    #: Body hash and every copy's headers and signatures.
    sign_seconds: float
    #: The recipients came from To and Cc (the item had none of its own).
    rcpts_from_headers: bool = False


@functools.lru_cache(maxsize=4)
def _date_field(second: int) -> Field:
    """One Date field per second, shared by the messages of that second (and its DKIM
    relaxed form with it, ``Field.relaxed``)."""
    return make_field("Date", format_datetime(datetime.fromtimestamp(second, UTC)))


@functools.lru_cache(maxsize=256)
def _shared_field(name: str, value: str) -> Field | None:
    """A field whose value repeats from message to message (X-Mailer, a stream's
    Feedback-ID, List-Unsubscribe-Post), made and canonicalized once; None when the value is
    no header value."""
    return make_field(name, value) if HEADER_VALUE.fullmatch(value) else None


@functools.lru_cache(maxsize=16)
def _removed(removed: frozenset[str], inject: tuple[tuple[str, str], ...]) -> frozenset[str]:
    """Header names to drop: ours, plus every header we inject (no duplicates go out)."""
    return removed | {name.lower() for name, _ in inject}


#: RFC 8058 §3.1; one field for every copy (its DKIM relaxed form computed once with it).
_ONE_CLICK = make_field("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")


def _bad_value(name: str, uuid: str) -> TransformError:
    return TransformError("bad-header-value", f"generated {name} is not a valid header", uuid)


def _signer(
    index: dict[str, list[Field]], settings: Settings, uuid: str
) -> tuple[str, DomainSigner]:
    from_domain = identity.from_domain([f.value for f in index.get("from", ())])
    if from_domain is None:
        raise TransformError("bad-from", "the From header must hold exactly one address", uuid)
    signer = settings.domains.get(from_domain)
    if signer is None:
        raise TransformError(
            "unknown-domain",
            f"From domain {from_domain} is not configured in transformer.domain-settings",
            uuid,
        )
    return from_domain, signer


@dataclass(slots=True)
class _Message:
    """What every copy of one message shares. Not frozen: made once per message, inside this
    module only, and a frozen dataclass is dearer to build."""

    uuid: str
    stream_id: str | None
    from_domain: str
    signer: DomainSigner
    names: dict[str, str]
    #: Date, X-Mailer, Feedback-ID: before the injected headers.
    common: list[Field]
    #: The customer's headers that stay: after ours.
    kept: list[Field]
    body: bytes
    #: ``feedbacktag.stream_hash(stream_id)``, once for every copy.
    stream_hash: bytes
    #: (selector, key) of each signature, RSA first.
    keys: tuple[tuple[str, dkim.SigningKey], ...]


def _common_fields(
    settings: Settings, uuid: str, stream_id: str | None, from_domain: str, now: float
) -> list[Field]:
    x_mailer, feedback_id = _stream_fields(
        settings.x_mailer,
        settings.feedback_format,
        stream_id or settings.campaign_id,
        settings.mail_type,
        settings.sender_id,
        stream_id or "",
        from_domain,
    )
    if x_mailer is None:
        raise _bad_value("X-Mailer", uuid)
    if feedback_id is None:
        raise _bad_value("Feedback-ID", uuid)
    return [_date_field(int(now)), x_mailer, feedback_id]


@functools.lru_cache(maxsize=256)
def _stream_fields(
    x_mailer: str,
    feedback_format: str,
    campaign: str,
    mail_type: str,
    sender_id: str,
    stream_id: str,
    from_domain: str,
) -> tuple[Field | None, Field | None]:
    """X-Mailer and Feedback-ID (None: not a header value), the same for every message of a
    stream and From domain: rendered once, not per message."""
    feedback_id = render(
        feedback_format,
        {
            "campaign": campaign,
            "mail-type": mail_type,
            "sender-id": sender_id,
            "stream-id": stream_id,
            "from-domain": from_domain,
        },
    )
    return _shared_field("X-Mailer", x_mailer), _shared_field("Feedback-ID", feedback_id)


def _copy(
    message: _Message, body_hash: str, rcpt: tuple[str, str], settings: Settings, now: float
) -> Copy:
    """One recipient's copy (its normalised form, its spelling): its own return path,
    Message-ID and unsubscribe address, its own signatures over the shared body hash."""
    uuid = message.uuid
    normalized, rcpt_ = rcpt
    tags = feedbacktag.make_copy_tags(
        settings.feedback_key,
        uuid,
        normalized,
        message.signer.return_path_domain,
        message.stream_hash,
    )
    return_path = tags.bounce
    fields = [
        make_field("X-ReturnPathIb", return_path),
        # Unique per copy, and a tag of the "message" kind: replies copy it into References
        # (RFC 5322 §3.6.4), so it must never be proof of anything about this recipient.
        dkim.new_field("Message-ID", f"<{tags.message}>"),
        *message.common,
    ]
    if settings.inject:
        fields += _injected(message, tags.unsub, rcpt_, settings, now)
    fields += message.kept
    timestamp = int(now)
    signatures = [
        dkim.sign(
            fields,
            body_hash,
            key=signing_key,
            domain=message.from_domain,
            selector=selector,
            timestamp=timestamp,
            header_names=SIGNED_HEADERS,
        )
        for selector, signing_key in message.keys
    ]
    return Copy(rcpt_, return_path, join_message(signatures + fields, b""), message.body)


def _injected(
    message: _Message, unsub: str, rcpt: str, settings: Settings, now: float
) -> list[Field]:
    """The injected headers of one recipient's copy (List-Unsubscribe with its own
    unsubscribe address)."""
    uuid, stream_id = message.uuid, message.stream_id
    names = dict(message.names)
    names["unsubscribe-address"] = unsub
    if secret := settings.unsubscribe_secret:  # per recipient, like the mailto
        names["unsubscribe-token"] = make_token(
            secret, uuid, stream_id, int(now), rcpt=rcpt, domain=message.from_domain
        )
    fields = []
    for name, template in settings.inject:
        value = render(template, names)
        if not HEADER_VALUE.fullmatch(value):
            raise _bad_value(name, uuid)
        fields.append(dkim.new_field(name, value))
        # RFC 8058: one-click unsubscribe needs an https URI in List-Unsubscribe.
        if name.lower() == "list-unsubscribe" and "<https://" in value.lower():
            fields.append(_ONE_CLICK)
    return fields


def _keys(signer: DomainSigner) -> tuple[tuple[str, dkim.SigningKey], ...]:
    # The RSA signature goes on top (the one every verifier understands).
    if signer.ed25519 is None:
        return ((signer.selector, signer.rsa),)
    return (
        (signer.selector, signer.rsa),
        (signer.ed25519_selector or signer.selector, signer.ed25519),
    )


def _prepare(
    fields: list[Field], body: bytes, settings: Settings, now: float
) -> tuple[_Message, dict[str, list[Field]]]:
    index: dict[str, list[Field]] = {}
    for f in fields:
        index.setdefault(f.key, []).append(f)
    uuid, stream_id = identity.ids(index)
    from_domain, signer = _signer(index, settings, uuid)
    names = {
        "uuid": uuid,
        "stream-id": stream_id or "",
        "from-domain": from_domain,
        "return-path-domain": signer.return_path_domain,
    }
    if signer.beacon_url:
        body = add_beacon(fields, body, render(signer.beacon_url, names))
    if body and not body.endswith(b"\r\n"):
        # SMTP ends DATA with CRLF anyway (RFC 5321 §4.1.1.4); store what will be sent.
        body += b"\r\n"
    # Positional: keywords cost more than the rest of building it (0.84 against 0.36 µs).
    message = _Message(
        uuid,
        stream_id,
        from_domain,
        signer,
        names,
        _common_fields(settings, uuid, stream_id, from_domain, now),
        without(fields, _removed(settings.removed, settings.inject)),
        body,
        feedbacktag.stream_hash(stream_id),
        _keys(signer),
    )
    return message, index


def transform(
    data: bytes, settings: Settings, now: float, rcpts: Sequence[str] | None = None
) -> Transformed:
    """The message as it will be sent to each of ``rcpts`` (None or empty: To and Cc), or
    TransformError."""
    data = bodycanon.normalize(data)
    try:
        fields, body = split_message(data)
    except ValueError as exc:
        raise TransformError("unparseable", f"cannot parse the header section: {exc}") from None
    message, index = _prepare(fields, body, settings, now)
    recipients, from_headers = identity.distinct_recipients(rcpts, index, message.uuid)
    if len(recipients) * len(data) > MAX_COPIES_BYTES:
        raise TransformError(
            "too-many-copies",
            f"{len(recipients)} recipients of a {len(data)}-byte message make more than "
            f"{MAX_COPIES_BYTES} bytes of copies (one per recipient); send fewer per message",
            message.uuid,
        )

    started = time.perf_counter()
    body_hash = bodycanon.body_hash(message.body)
    copies = tuple([_copy(message, body_hash, rcpt, settings, now) for rcpt in recipients.items()])
    return Transformed(
        message.uuid,
        message.stream_id,
        message.from_domain,
        copies,
        time.perf_counter() - started,
        from_headers,
    )
