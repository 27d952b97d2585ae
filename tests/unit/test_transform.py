"""The Transformer's pure function: headers, DKIM signatures that two independent verifiers
accept, the beacon, and the errors that send a message to the dead-letter list."""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import hashlib
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from manycore_common import feedbacktag
from manycore_transformer import bodycanon, dkim
from manycore_transformer import transform as transform_module
from manycore_transformer.headers import split_message, values
from manycore_transformer.identity import TransformError
from manycore_transformer.settings import check_templates, upgrade_inject
from manycore_transformer.templates import upgrade_legacy
from manycore_transformer.transform import (
    Copy,
    DomainSigner,
    Settings,
    transform,
)
from tests.dkimcheck import dkimpy_results, opendkim_results
from tests.helpers import FEEDBACK_SECRET, ed25519_pem, rsa_pem
from tests.integration.conftest import build_message

NOW = 1_764_290_000.0  # Fri, 28 Nov 2025 00:33:20 +0000
RSA = dkim.load_key(rsa_pem(label="unit"))
ED = dkim.load_key(ed25519_pem(label="unit"))
KEY = FEEDBACK_SECRET.encode()
RCPT = "alice@example.net"
RECORDS = {
    "mailer._domainkey.example.com": RSA.public_record(),
    "ed._domainkey.example.com": ED.public_record(),
}


def settings(**changes: object) -> Settings:
    signer = DomainSigner(
        domain="example.com",
        return_path_domain="rp.example.com",
        selector="mailer",
        rsa=RSA,
        ed25519_selector="ed",
        ed25519=ED,
    )
    base: dict[str, object] = {
        "domains": {"example.com": signer},
        "x_mailer": "Manycore-Mail",
        "feedback_key": KEY,
        "inject": (("List-Unsubscribe", "<mailto:{{unsubscribe-address}}>"),),
        "campaign_id": "default-campaign",
        "mail_type": "transactional",
        "sender_id": "shop",
    }
    base.update(changes)
    return Settings(**base)  # type: ignore[arg-type]


def one(message: bytes, settings_: Settings | None = None) -> Copy:
    """The copy for alice@example.net alone."""
    (copy,) = transform(message, settings_ or settings(), NOW, [RCPT]).copies
    return copy


def headers_of(data: bytes) -> list[tuple[str, str]]:
    fields, _ = split_message(data)
    return [(f.name, f.value) for f in fields]


def test_golden_headers() -> None:
    message = build_message(
        "abc123",
        "0",
        stream_id="spring-sale",
        extra_headers=[
            "Bcc: hidden@example.org",
            "Message-ID: <customer@example.com>",
            "Date: Mon, 1 Jan 2024 00:00:00 +0000",
            "X-Mailer: Customer's mailer",
            "List-Unsubscribe: <mailto:old@example.com>",
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            "Feedback-ID: per:message:id",
            "DKIM-Signature: v=1; a=rsa-sha256; b=old",
            "X-ReturnPathIb: bounce-forged@evil.example",
            "Reply-To: help@example.com",
        ],
    )
    result = transform(message, settings(), NOW, [RCPT])
    (copy,) = result.copies
    got = headers_of(copy.data)
    names = [name for name, _ in got]
    assert names == [
        "DKIM-Signature",
        "DKIM-Signature",
        "X-ReturnPathIb",
        "Message-ID",
        "Date",
        "X-Mailer",
        "Feedback-ID",
        "List-Unsubscribe",
        "From",
        "To",
        "Cc",
        "Subject",
        "Reply-To",
        "MIME-Version",
        "Content-Type",
    ]
    values_ = dict(got[2:])
    return_path = feedbacktag.make_address(
        KEY, "bounce", "abc123", RCPT, "rp.example.com", "spring-sale"
    )
    unsub = feedbacktag.make_address(KEY, "unsub", "abc123", RCPT, "rp.example.com", "spring-sale")
    assert values_["X-ReturnPathIb"] == return_path
    message_id = feedbacktag.make_address(
        KEY, "message", "abc123", RCPT, "rp.example.com", "spring-sale"
    )
    assert values_["Message-ID"] == f"<{message_id}>"
    assert values_["Date"] == "Fri, 28 Nov 2025 00:33:20 +0000"
    assert values_["X-Mailer"] == "Manycore-Mail"
    assert values_["Feedback-ID"] == "spring-sale:transactional:shop"
    assert values_["List-Unsubscribe"] == f"<mailto:{unsub}>"
    assert result.uuid == "abc123" and result.stream_id == "spring-sale"
    assert result.from_domain == "example.com"
    assert (copy.rcpt, copy.return_path) == (RCPT, return_path)
    assert not result.rcpts_from_headers
    rsa_sig, ed_sig = got[0][1], got[1][1]
    assert "a=rsa-sha256" in rsa_sig and "a=ed25519-sha256" in ed_sig
    assert "d=example.com" in rsa_sig and "s=mailer" in rsa_sig and "s=ed" in ed_sig
    assert "c=relaxed/relaxed" in rsa_sig
    assert (
        "h=from:from:to:cc:subject:date:message-id:reply-to:mime-version:content-type:"
        "feedback-id:list-unsubscribe;" in rsa_sig.replace(" ", "")
    )
    # The body is untouched.
    assert copy.data.split(b"\r\n\r\n", 1)[1] == message.split(b"\r\n\r\n", 1)[1]


def test_feedback_id_without_stream_uses_the_campaign() -> None:
    result = one(build_message("u1"))
    assert values(split_message(result.data)[0], "Feedback-ID") == [
        "default-campaign:transactional:shop"
    ]


def test_one_click_header_only_with_an_https_url() -> None:
    inject = (
        (
            "List-Unsubscribe",
            "<mailto:{{unsubscribe-address}}>, <https://u.example.com/{{uuid}}>",
        ),
    )
    result = one(build_message("u1"), settings(inject=inject))
    fields, _ = split_message(result.data)
    assert values(fields, "List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    assert "list-unsubscribe-post" in values(fields, "DKIM-Signature")[0]
    plain = one(build_message("u1"))
    assert values(split_message(plain.data)[0], "List-Unsubscribe-Post") == []


def test_bare_line_feeds_become_crlf() -> None:
    message = build_message("u1").replace(b"\r\n", b"\n")
    result = one(message)
    assert b"\n" not in result.data.replace(b"\r\n", b"")
    assert dkimpy_results(result.data, RECORDS) == [True, True]


@pytest.mark.parametrize(
    "body",
    [
        "Hello\r\n",
        "",
        "no final newline",
        "  leading and trailing spaces  \r\n\tand tabs\t\r\n\r\n\r\n",
        "\u00e5\u00e4\u00f6 8-bit text\r\n",
    ],
)
def test_signatures_verify_with_two_independent_verifiers(body: str, tmp_path: Path) -> None:
    message = build_message("u1", stream_id="s1", body=body)
    result = one(message)
    assert dkimpy_results(result.data, RECORDS) == [True, True]
    assert opendkim_results(result.data, RECORDS, tmp_path) == {
        "rsa-sha256": "pass",
        "ed25519-sha256": "pass",
    }


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"This is a test.", b"This is a tesT."),  # body
        (b"Subject: Test message", b"Subject: Test massage"),  # signed header
        (b"From: Shop <news@example.com>", b"From: Shop <news@example.com>\r\nFrom: x@y.z"),
    ],
)
def test_changes_break_the_signatures(old: bytes, new: bytes, tmp_path: Path) -> None:
    signed = one(build_message("u1")).data
    assert old in signed
    tampered = signed.replace(old, new)
    assert dkimpy_results(tampered, RECORDS) == [False, False]
    verdicts = opendkim_results(tampered, RECORDS, tmp_path)
    assert verdicts["rsa-sha256"] != "pass" and verdicts["ed25519-sha256"] != "pass"


def test_unsigned_header_added_later_keeps_signatures_valid() -> None:
    signed = one(build_message("u1")).data
    assert dkimpy_results(b"Received: by mx.example.net\r\n" + signed, RECORDS) == [True, True]


def test_rsa_only_domain() -> None:
    signer = DomainSigner("example.com", "rp.example.com", "mailer", RSA)
    result = one(build_message("u1"), settings(domains={"example.com": signer}))
    assert dkimpy_results(result.data, RECORDS) == [True]


def test_from_domain_is_case_insensitive() -> None:
    message = build_message("u1", sender='"Shop, Inc." <News@EXAMPLE.COM>')
    assert transform(message, settings(), NOW, [RCPT]).from_domain == "example.com"


@pytest.mark.parametrize(
    ("message", "reason", "text"),
    [
        (
            build_message("u1", sender="news@example.org"),
            "unknown-domain",
            "From domain example.org is not configured",
        ),
        (build_message(None), "bad-uuid", "X-Uuid"),
        (build_message("NOT_OK"), "bad-uuid", "1 to 36 characters of a-z, 0-9 and '-'"),
        (build_message("-abc"), "bad-uuid", "X-Uuid"),
        (build_message("a" * 37), "bad-uuid", "X-Uuid"),
        (build_message("u1", to="a@", cc=None), "bad-recipients", "Invalid recipient"),
        (build_message("u1", to="undisclosed:;", cc=None), "bad-recipients", "No recipient"),
        (build_message("u1", sender="a@example.com, b@example.com"), "bad-from", "From"),
        (build_message("u1", stream_id="a b"), "bad-stream-id", "X-Stream-Id"),
        (b"not a header\r\n\r\nbody", "unparseable", "header"),
    ],
)
def test_errors(message: bytes, reason: str, text: str) -> None:
    with pytest.raises(TransformError) as failure:
        transform(message, settings(), NOW)
    assert failure.value.reason == reason
    assert text in failure.value.text


def test_unknown_domain_error_carries_the_uuid() -> None:
    with pytest.raises(TransformError) as failure:
        transform(build_message("u77", sender="x@nowhere.example"), settings(), NOW)
    assert failure.value.uuid == "u77"


def test_template_problems_are_found_at_start() -> None:
    bad = settings(inject=(("List-Unsubscribe", "<mailto:{{nope}}@x>"),), feedback_format="{{x}}")
    problems = check_templates(bad)
    assert any("email-headers.inject.List-Unsubscribe" in p and "nope" in p for p in problems)
    assert any("feedback-id.format" in p for p in problems)
    assert check_templates(settings()) == []


# ------------------------------------------------------------------ one copy per recipient

RCPTS = ["alice@example.net", "Bob@Example.ORG", "carol@example.org"]


def test_one_copy_per_recipient_each_with_its_own_tagged_addresses(tmp_path: Path) -> None:
    uuid = "9f1c2e4a-0b7d-4c3e-8a1f-2d3e4f5a6b7c"
    message = build_message(uuid, stream_id="spring-sale")
    result = transform(message, settings(), NOW, RCPTS)
    assert [c.rcpt for c in result.copies] == RCPTS
    bodies = {c.data.split(b"\r\n\r\n", 1)[1] for c in result.copies}
    assert bodies == {message.split(b"\r\n\r\n", 1)[1]}
    for copy, other in zip(result.copies, [*result.copies[1:], result.copies[0]], strict=True):
        fields, _ = split_message(copy.data)
        (return_path,) = values(fields, "X-ReturnPathIb")
        (unsub,) = values(fields, "List-Unsubscribe")
        assert return_path == copy.return_path and len(return_path.partition("@")[0]) == 64
        (message_id,) = values(fields, "Message-ID")
        assert message_id.startswith("<m") and message_id != f"<{return_path}>"
        tag = feedbacktag.read_address([KEY], return_path, ["rp.example.com"])
        assert tag is not None and (tag.kind, tag.uuid) == ("bounce", uuid)
        assert tag.names(copy.rcpt) and not tag.names(other.rcpt)
        assert tag.stream_field == feedbacktag.stream_field("spring-sale")
        address = unsub.removeprefix("<mailto:").removesuffix(">")
        unsub_tag = feedbacktag.read_address([KEY], address, ["rp.example.com"])
        assert unsub_tag is not None and unsub_tag.kind == "unsub"
        assert unsub_tag.names(copy.rcpt) and not unsub_tag.names(other.rcpt)
        assert dkimpy_results(copy.data, RECORDS) == [True, True]
    assert opendkim_results(result.copies[1].data, RECORDS, tmp_path) == {
        "rsa-sha256": "pass",
        "ed25519-sha256": "pass",
    }
    assert len({c.return_path for c in result.copies}) == len(RCPTS)


def test_a_signature_of_one_copy_does_not_fit_another() -> None:
    first, second = transform(build_message("u1"), settings(), NOW, RCPTS[:2]).copies
    head_1, body = first.data.split(b"\r\n\r\n", 1)
    head_2, _ = second.data.split(b"\r\n\r\n", 1)
    signatures_1 = b"".join(f.raw for f in split_message(first.data)[0][:2])
    rest_2 = b"".join(f.raw for f in split_message(second.data)[0][2:])
    assert head_1 != head_2
    assert dkimpy_results(signatures_1 + rest_2 + b"\r\n" + body, RECORDS) == [False, False]


def test_recipients_are_distinct_as_the_tag_sees_them() -> None:
    result = transform(
        build_message("u1"), settings(), NOW, ["a@x.example", "A@X.EXAMPLE.", " <a@x.example>"]
    )
    assert [c.rcpt for c in result.copies] == ["a@x.example"]


def test_without_item_recipients_to_and_cc_are_used() -> None:
    result = transform(build_message("u1"), settings(), NOW)
    assert result.rcpts_from_headers
    assert [c.rcpt for c in result.copies] == [
        "alice@example.net",
        "bob@example.org",
        "carol@example.org",
    ]
    assert transform(build_message("u1"), settings(), NOW, []).rcpts_from_headers


def test_too_many_copies_go_to_the_dead_letters(monkeypatch: pytest.MonkeyPatch) -> None:
    message = build_message("u1")
    monkeypatch.setattr(transform_module, "MAX_COPIES_BYTES", 3 * len(message))
    assert len(transform(message, settings(), NOW, RCPTS).copies) == 3
    with pytest.raises(TransformError) as failure:
        transform(message, settings(), NOW, [*RCPTS, "dave@example.org"])
    assert failure.value.reason == "too-many-copies" and failure.value.uuid == "u1"
    assert "4 recipients" in failure.value.text


def test_without_a_stream_the_tag_has_none() -> None:
    copy = one(build_message("u1"))
    tag = feedbacktag.read_address([KEY], copy.return_path, ["rp.example.com"])
    assert tag is not None and tag.stream_field is None and tag.names(RCPT)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("<mailto:unsub-{{uuid}}@{{return-path-domain}}>", "<mailto:{{unsubscribe-address}}>"),
        (
            "<mailto:unsub-{{ uuid }}@{{return-path-domain }}?subject=unsubscribe>, "
            "<https://u.example.com/{{uuid}}>",
            "<mailto:{{unsubscribe-address}}?subject=unsubscribe>, <https://u.example.com/{{uuid}}>",
        ),
        # Not the old address: left as written.
        ("<mailto:unsub-{{uuid}}@{{from-domain}}>", "<mailto:unsub-{{uuid}}@{{from-domain}}>"),
        ("<mailto:{{unsubscribe-address}}>", "<mailto:{{unsubscribe-address}}>"),
        (
            "<https://u.example.com/{{unsubscribe-token}}>",
            "<https://u.example.com/{{unsubscribe-token}}>",
        ),
    ],
)
def test_old_unsubscribe_address_is_read_as_the_tagged_one(old: str, new: str) -> None:
    assert upgrade_legacy(old) == new


def test_upgrading_the_config_warns_once_per_header() -> None:
    inject, warnings = upgrade_inject(
        {
            "List-Unsubscribe": "<mailto:unsub-{{uuid}}@{{return-path-domain}}>",
            "X-Other": "{{uuid}}",
        }
    )
    assert inject == (
        ("List-Unsubscribe", "<mailto:{{unsubscribe-address}}>"),
        ("X-Other", "{{uuid}}"),
    )
    assert warnings == [
        (
            "legacy-unsubscribe-address",
            "transformer.email-headers.inject.List-Unsubscribe: "
            "unsub-{{uuid}}@{{return-path-domain}} is read as {{unsubscribe-address}} "
            "(a tagged address per recipient); write that in the config",
        )
    ]
    assert upgrade_inject({"X-Other": "{{uuid}}"})[1] == []
    # Another domain: maybe the customer's own MX, so left alone, with a warning.
    own = {"List-Unsubscribe": "<mailto:unsub-{{uuid}}@{{from-domain}}>"}
    assert upgrade_inject(own) == (
        (("List-Unsubscribe", "<mailto:unsub-{{uuid}}@{{from-domain}}>"),),
        [
            (
                "untagged-unsubscribe-address",
                "transformer.email-headers.inject.List-Unsubscribe: unsub-{{uuid}}@… is not a "
                "tagged address and MxServer refuses it; for mail to a return-path domain "
                "write {{unsubscribe-address}}",
            )
        ],
    )
    assert check_templates(settings(inject=inject)) == []


# ------------------------------------------------------------------ keys


def test_key_formats_and_limits() -> None:
    assert dkim.load_key(rsa_pem(1024, "small")).bits == 1024
    raw_seed = base64.b64encode(b"\x01" * 32)
    assert dkim.load_key(raw_seed).algorithm == "ed25519-sha256"
    with pytest.raises(dkim.KeyError_):
        dkim.load_key(b"-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n")
    with pytest.raises(dkim.KeyError_):
        dkim.load_key(b"not base64 at all!")


# ------------------------------------------------------------------ beacon

HTML = "<html><body><p>Hello \u00e5 world</p></body></html>"


def alternative_message(uuid: str = "u1") -> bytes:
    b64_html = base64.encodebytes(HTML.encode()).decode().replace("\n", "\r\n")
    qp_html = binascii.b2a_qp(HTML.encode()).decode().replace("\n", "\r\n")
    return (
        "From: Shop <news@example.com>\r\n"
        "To: alice@example.net\r\n"
        "Subject: Offer\r\n"
        f"X-Uuid: {uuid}\r\n"
        "X-Stream-Id: camp9\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="outer"\r\n'
        "\r\n"
        "This is a multi-part message.\r\n"
        "--outer\r\n"
        'Content-Type: multipart/alternative; boundary="inner"\r\n'
        "\r\n"
        "--inner\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        "Hello plain </body> text\r\n"
        "--inner\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
        f"{b64_html}"
        "--inner\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n"
        "\r\n"
        f"{qp_html}\r\n"
        "--inner--\r\n"
        "--outer\r\n"
        "Content-Type: application/pdf\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="a.pdf"\r\n'
        "\r\n"
        "JVBERi0xLjQK\r\n"
        "--outer--\r\n"
        "epilogue\r\n"
    ).encode()


def parts(data: bytes) -> list[tuple[str, bytes]]:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    found = []
    for part in msg.walk():
        if not part.is_multipart():
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes), payload
            found.append((part.get_content_type(), payload))
    return found


def with_beacon(url: str = "https://t.example.com/o/{{uuid}}/{{stream-id}}.gif") -> Settings:
    signer = DomainSigner(
        domain="example.com",
        return_path_domain="rp.example.com",
        selector="mailer",
        rsa=RSA,
        beacon_url=url,
    )
    return settings(domains={"example.com": signer})


def test_beacon_goes_into_every_html_part_and_nothing_else(tmp_path: Path) -> None:
    message = alternative_message()
    result = one(message, with_beacon())
    tag = (
        '<img src="https://t.example.com/o/u1/camp9.gif" width="1" height="1" alt="" '
        'style="border:0;width:1px;height:1px" />'
    )
    expected_html = HTML.replace("</body>", tag + "</body>").encode()
    got = parts(result.data)
    assert got == [
        ("text/plain", b"Hello plain </body> text"),
        ("text/html", expected_html),
        ("text/html", expected_html),
        ("application/pdf", base64.b64decode("JVBERi0xLjQK")),
    ]
    assert result.data.endswith(b"--outer--\r\nepilogue\r\n")
    assert dkimpy_results(result.data, RECORDS) == [True]
    assert opendkim_results(result.data, RECORDS, tmp_path)["rsa-sha256"] == "pass"


def test_without_beacon_the_mime_body_is_byte_identical() -> None:
    message = alternative_message()
    result = one(message)
    assert result.data.split(b"\r\n\r\n", 1)[1] == message.split(b"\r\n\r\n", 1)[1]
    assert [p[1] for p in parts(result.data)][1] == HTML.encode()


def test_beacon_in_single_part_html_without_body_tag() -> None:
    message = build_message("u1", body="<p>hi</p>\r\n").replace(
        b"Content-Type: text/plain", b"Content-Type: text/html"
    )
    result = one(message, with_beacon("https://t.example.com/{{uuid}}.gif"))
    body = result.data.split(b"\r\n\r\n", 1)[1]
    assert body.startswith(b'<p>hi</p><img src="https://t.example.com/u1.gif"')
    assert body.endswith(b"/>\r\n")


def test_malformed_multipart_is_left_alone() -> None:
    message = build_message("u1", body="--b\r\nno close delimiter\r\n").replace(
        b"Content-Type: text/plain; charset=utf-8", b'Content-Type: multipart/mixed; boundary="b"'
    )
    result = one(message, with_beacon())
    assert result.data.split(b"\r\n\r\n", 1)[1] == message.split(b"\r\n\r\n", 1)[1]


def test_unsubscribe_token_placeholder() -> None:
    from manycore_common.unsubscribe import parse_token, read_token

    secret = b"test-only-secret-0123456789abcdef"
    inject = (
        ("List-Unsubscribe", "<https://mail.example.com/v1/unsubscribe/{{unsubscribe-token}}>"),
    )
    result = one(
        build_message("u42", stream_id="s9"), settings(inject=inject, unsubscribe_secret=secret)
    )
    (value,) = values(split_message(result.data)[0], "List-Unsubscribe")
    token = value.removeprefix("<https://mail.example.com/v1/unsubscribe/").removesuffix(">")
    assert parse_token(secret, token) == ("u42", "s9")
    # One token per recipient, each naming its own recipient and the From domain.
    transformed = transform(
        build_message("u43", stream_id="s9"),
        settings(inject=inject, unsubscribe_secret=secret),
        NOW,
        ["ann@example.org", "Bob@Example.org"],
    )
    tokens = [
        read_token(secret, values(split_message(c.data)[0], "List-Unsubscribe")[0][41:-1])
        for c in transformed.copies
    ]
    assert [(t.rcpt, t.domain) for t in tokens if t] == [
        ("ann@example.org", "example.com"),
        ("bob@example.org", "example.com"),
    ]
    assert check_templates(settings(inject=inject)) == [
        "transformer.email-headers.inject.List-Unsubscribe: {{unsubscribe-token}} needs "
        "common-config.unsubscribe-secret"
    ]


BODY_PIECES = [b"a", b" ", b"\t", b"  ", b"\r\n", b" \r\n", b"\t\r\n"]


@given(st.lists(st.sampled_from(BODY_PIECES), max_size=40))
def test_relaxed_body_and_its_hash_agree_with_dkimpy(parts: list[bytes]) -> None:
    # Our canonicalization avoids copies for speed; dkimpy's is the reference (RFC 6376 §3.4.4)
    # on the body as it is sent: SMTP ends every body with CRLF (RFC 5321 §4.1.1.4).
    from dkim.canonicalization import Relaxed

    body = b"".join(parts)
    sent = body if body.endswith(b"\r\n") or not body else body + b"\r\n"
    reference = Relaxed.canonicalize_body(sent)
    assert bodycanon.relaxed_body(body) == reference
    expected = base64.b64encode(hashlib.sha256(reference).digest())
    assert bodycanon.body_hash(body) == expected.decode()


# The body canonicalization before it stripped the end in C (kept as the reference that the
# current one must match byte for byte), and the RFC's per-line wording taken literally.
_OLD_WSP = re.compile(rb"[ \t]*\t[ \t]*|  +")


def old_relaxed_body(body: bytes) -> bytes:
    if b"\t" in body or b"  " in body:
        body = _OLD_WSP.sub(b" ", body)
    if b" \r\n" in body:
        body = re.sub(rb" \r\n", b"\r\n", body)
    end = len(body)
    while end and body[end - 1] == 0x20:
        end -= 1
    while end and body[end - 1] in (0x0D, 0x0A):
        end -= 1
    return body[:end] + b"\r\n" if end else b""


def per_line_simple_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.3: empty lines at the end ignored; an empty body is one CRLF."""
    lines = body.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    while lines and lines[-1] == b"":
        lines.pop()
    return b"".join(line + b"\r\n" for line in lines) or b"\r\n"


# Long runs at the end reach past the first window _rstrip_end looks at.
LONG_PIECES = [*BODY_PIECES, b"\r\n" * 300, b" " * 300, b"\t \t", b"x.y", b"\r\n.\r\n"]


@given(st.lists(st.sampled_from(LONG_PIECES), max_size=30))
def test_canonical_bodies_match_the_old_code_the_rfc_and_dkimpy(parts: list[bytes]) -> None:
    from dkim.canonicalization import Relaxed, Simple

    body = b"".join(parts)
    sent = body if body.endswith(b"\r\n") or not body else body + b"\r\n"
    relaxed = bodycanon.relaxed_body(sent)
    assert relaxed == old_relaxed_body(sent) == Relaxed.canonicalize_body(sent)
    assert bodycanon.relaxed_body(body) == old_relaxed_body(body)
    simple = bodycanon.simple_body(sent)
    assert simple == per_line_simple_body(sent)
    # dkimpy's Simple leaves an empty body empty; RFC 6376 §3.4.3 makes it one CRLF.
    assert simple == (Simple.canonicalize_body(sent) or b"\r\n")
    for canon, expected in (("relaxed", relaxed), ("simple", simple)):
        digest = base64.b64encode(hashlib.sha256(expected).digest()).decode()
        assert bodycanon.body_hash(sent, canon) == digest  # type: ignore[arg-type]


def test_simple_body_keeps_a_bare_line_end_before_the_empty_lines() -> None:
    assert bodycanon.simple_body(b"a\r\n\n\r\n\r\n") == b"a\r\n\n\r\n"
    assert bodycanon.simple_body(b"") == bodycanon.simple_body(b"\r\n\r\n") == b"\r\n"
    big = b"line  with\tspace \r\n" * 40_000 + b"\r\n" * 5000
    assert bodycanon.relaxed_body(big) == old_relaxed_body(big)
    assert (
        bodycanon.body_hash(big, "simple")
        == base64.b64encode(hashlib.sha256(per_line_simple_body(big)).digest()).decode()
    )


def old_relaxed_header(name: str, raw_value: bytes) -> bytes:
    if b"\r" in raw_value or b"\t" in raw_value or b"  " in raw_value:
        raw_value = re.sub(rb"[ \t]+", b" ", raw_value.replace(b"\r\n", b""))
    return name.lower().encode("ascii") + b":" + raw_value.strip(b" ") + b"\r\n"


@given(
    st.lists(st.sampled_from([b"a", b" ", b"\t", b"\r\n ", b"\r\n\t", b"\r", b"x y"]), max_size=20)
)
def test_relaxed_header_matches_the_old_code_and_dkimpy(parts: list[bytes]) -> None:
    from dkim.canonicalization import Relaxed

    for raw in (b"".join(parts), b"".join(parts) + b"\r\n"):
        ours = dkim.relaxed_header("Sub-Ject", raw)
        assert ours == old_relaxed_header("Sub-Ject", raw)
        if b"\r" not in raw.replace(b"\r\n", b""):
            ((name, value),) = Relaxed.canonicalize_headers([(b"Sub-Ject", raw)])
            assert ours == name + b":" + value
