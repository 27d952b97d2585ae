"""manycore-dns's records, each compared with the syntax its RFC gives (SPF RFC 7208 §12,
DKIM RFC 6376 §3.6.1 and RFC 8463, DMARC RFC 7489 §6.4, MTA-STS RFC 8461 §3, TLS-RPT RFC 8460
§3), the zone file with dnspython's zone parser, and the DKIM keys with dkimpy signing and
verifying a message against the printed record."""

from __future__ import annotations

import base64
import re

import dkim
import dns.zone
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from manycore_common import dnsrecords as d
from tests.helpers import ed25519_pem, rsa_pem

RSA = rsa_pem(label="dns")
ED = ed25519_pem(label="dns")


def facts(ips: tuple[str, ...] = (), rp: str = "bounce.example.com") -> d.Facts:
    _, rsa_key = d.dkim_public_key(RSA)
    _, ed_key = d.dkim_public_key(ED)
    return d.Facts(
        domains=(
            d.SendingDomain("example.com", rp, (
                d.DkimKey("mailer", "rsa", rsa_key), d.DkimKey("mailer-ed", "ed25519", ed_key))),
            d.SendingDomain("bexample.com", "bounce.bexample.com",
                            (d.DkimKey("mailer", "rsa", rsa_key),)),
        ),
        mx_host="mx.example.com",
        helo="out.example.com",
        outbound_ips=ips,
    )  # fmt: skip


def by(records: list[d.Record], kind: str, name: str) -> d.Record:
    [record] = [r for r in records if r.kind == kind and r.name == name]
    return record


# RFC 7208 §12 (collected ABNF), for the terms we emit: version, a/ip4/ip6 mechanisms with an
# optional qualifier, "all".
DOMAIN = r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}"
IP4 = r"(?:\d{1,3}\.){3}\d{1,3}"
SPF_RE = re.compile(
    rf"v=spf1(?: [-+~?]?(?:a(?::{DOMAIN})?|ip4:{IP4}(?:/\d+)?|ip6:[0-9a-f:]+(?:/\d+)?))* -all"
)
# RFC 7489 §6.4: dmarc-record = dmarc-version dmarc-sep dmarc-request [dmarc-sep dmarc-auri]...
DMARC_RE = re.compile(r"v=DMARC1;\s*p=(?:none|quarantine|reject)(?:;\s*rua=mailto:[^;,!\s]+)?")
# RFC 8461 §3.1: sts-text-record = sts-version *WSP %x3B *WSP sts-id; sts-id = 1*32(ALPHA/DIGIT)
STS_RE = re.compile(r"v=STSv1[ \t]*;[ \t]*id=[A-Za-z0-9]{1,32}")
# RFC 8460 §3: tlsrpt-record = tlsrpt-version 1*(field-delim tlsrpt-field) [field-delim]
TLSRPT_RE = re.compile(r"v=TLSRPTv1[ \t]*;[ \t]*rua=mailto:[^,!;\s]+@[^,!;\s]+")


def test_mx_of_each_return_path_domain_names_the_mxserver() -> None:
    records = d.build_records(facts())
    mx = [r for r in records if r.kind == "mx"]
    assert [(r.name, r.value) for r in mx] == [
        ("bounce.example.com", "10 mx.example.com"),
        ("bounce.bexample.com", "10 mx.example.com"),
    ]
    assert d.zone_line(mx[0]) == "bounce.example.com.\t3600\tIN\tMX\t10 mx.example.com."


def test_a_return_path_domain_shared_by_two_from_domains_gets_its_records_once() -> None:
    senders = ("example.com", "a.example.com")
    shared = d.Facts(
        tuple(d.SendingDomain(f, "bounce.example.com", ()) for f in senders),
        "mx.example.com",
        "out.example.com",
    )
    assert [r.name for r in d.build_records(shared) if r.kind == "mx"] == ["bounce.example.com"]


@pytest.mark.parametrize(
    ("ips", "mechanisms"),
    [
        ((), "a:out.example.com"),
        (("203.0.113.5",), "ip4:203.0.113.5"),
        (("203.0.113.5", "2001:DB8::25"), "ip4:203.0.113.5 ip6:2001:db8::25"),
    ],
)
def test_spf_of_the_return_path_domain_and_the_helo_name(
    ips: tuple[str, ...], mechanisms: str
) -> None:
    records = d.build_records(facts(ips))
    rp_spf = by(records, "spf", "bounce.example.com")
    assert rp_spf.value == f"v=spf1 {mechanisms} -all"
    helo_spf = by(records, "spf", "out.example.com")
    # RFC 7208 §2.3: the HELO identity; "a" is the HELO name's own address.
    assert helo_spf.value == ("v=spf1 a -all" if not ips else f"v=spf1 {mechanisms} -all")
    for record in (rp_spf, helo_spf, by(records, "spf", "bounce.bexample.com")):
        assert SPF_RE.fullmatch(record.value), record.value
    # No SPF for the From domains: SPF never checks them (RFC 7208 §1.1.3, §2.4).
    assert not [r for r in records if r.kind == "spf" and r.name in {"example.com", "bexample.com"}]


def test_dkim_rsa_record_carries_the_public_key_of_the_private_one() -> None:
    record = by(d.build_records(facts()), "dkim", "mailer._domainkey.example.com")
    tags = dkim.util.parse_tag_value(record.value.encode())
    assert (tags[b"v"], tags[b"k"]) == (b"DKIM1", b"rsa")
    assert record.value.startswith("v=DKIM1;")  # RFC 6376 §3.6.1: v= first
    public = serialization.load_der_public_key(base64.b64decode(tags[b"p"]))
    private = serialization.load_pem_private_key(RSA, None)
    assert isinstance(public, rsa.RSAPublicKey) and isinstance(private, rsa.RSAPrivateKey)
    assert public.public_numbers() == private.public_key().public_numbers()


def test_dkim_ed25519_record_is_the_raw_32_byte_key() -> None:
    record = by(d.build_records(facts()), "dkim", "mailer-ed._domainkey.example.com")
    tags = dkim.util.parse_tag_value(record.value.encode())
    assert tags[b"k"] == b"ed25519"  # RFC 8463 §4.2
    private = serialization.load_pem_private_key(ED, None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert base64.b64decode(tags[b"p"]) == raw and len(raw) == 32


def test_an_ed25519_seed_gives_the_same_key_as_its_pem() -> None:
    private = serialization.load_pem_private_key(ED, None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert d.dkim_public_key(base64.b64encode(seed)) == d.dkim_public_key(ED)
    with pytest.raises(ValueError, match="32 bytes"):
        d.dkim_public_key(base64.b64encode(b"short"))


@pytest.mark.parametrize(("pem", "selector", "algorithm"), [
    (RSA, b"mailer", b"rsa-sha256"), (ED, b"mailer-ed", b"ed25519-sha256")])  # fmt: skip
def test_dkimpy_verifies_a_signature_against_the_printed_record(
    pem: bytes, selector: bytes, algorithm: bytes
) -> None:
    """The record as a verifier reads it from DNS: the zone file's strings, concatenated."""
    records = d.build_records(facts())
    record = by(records, "dkim", f"{selector.decode()}._domainkey.example.com")
    zone = dns.zone.from_text(
        d.render(records, []), origin=".", relativize=False, check_origin=False
    )
    txt = zone.find_rdataset(f"{record.name}.", "TXT")
    published = b"".join(next(iter(txt)).strings)
    message = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n"
    private = serialization.load_pem_private_key(pem, None)
    if isinstance(private, ed25519.Ed25519PrivateKey):  # dkimpy takes the base64 seed
        pem = base64.b64encode(
            private.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
        )
    signature = dkim.sign(message, selector, b"example.com", pem, signature_algorithm=algorithm)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == f"{record.name}.".encode()
        return published

    assert dkim.verify(signature + message, dnsfunc=dnsfunc)


def test_long_txt_is_split_into_255_octet_strings() -> None:
    text = "v=DKIM1; k=rsa; p=" + "A" * 600
    strings = d.txt_strings(text)
    assert [len(s) for s in strings] == [255, 255, len(text) - 510]
    assert "".join(strings) == text
    assert d.txt_strings("x" * 255) == ["x" * 255]
    line = d.zone_line(d.Record("s._domainkey.example.com", "TXT", text, "dkim"))
    assert line.count('"') == 6
    assert d.rdata(d.Record("n", "TXT", 'a"b\\c', "spf")) == '"a\\"b\\\\c"'


def test_dmarc_suggestion_per_from_domain() -> None:
    records = d.build_records(facts())
    for domain in ("example.com", "bexample.com"):
        record = by(records, "dmarc", f"_dmarc.{domain}")
        assert DMARC_RE.fullmatch(record.value), record.value
        # p=none to start; aggregate reports to the From domain itself, so no external
        # destination verification is needed (RFC 7489 §7.1).
        assert record.value == f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}"


def test_mta_sts_record_and_policy() -> None:
    records = d.build_records(facts())
    record = by(records, "mta-sts", "_mta-sts.bounce.example.com")
    assert STS_RE.fullmatch(record.value), record.value
    policy = d.mta_sts_policy(["mx.example.com"])
    assert policy == (
        "version: STSv1\r\nmode: testing\r\nmx: mx.example.com\r\nmax_age: 604800\r\n"
    )
    assert 0 < d.MTA_STS_MAX_AGE <= 31557600  # RFC 8461 §3.2
    assert "  mx: mx.example.com" in record.comments
    # The id must change whenever the policy does (RFC 8461 §3.1).
    enforce = d.mta_sts_policy(["mx.example.com"], mode="enforce")
    assert d.mta_sts_txt(enforce) != d.mta_sts_txt(policy)
    assert d.mta_sts_txt(policy) == d.mta_sts_txt(d.mta_sts_policy(["mx.example.com"]))


def test_tls_rpt_record() -> None:
    record = by(d.build_records(facts()), "tls-rpt", "_smtp._tls.bounce.example.com")
    assert TLSRPT_RE.fullmatch(record.value), record.value


def test_ptr_and_a_of_the_helo_name() -> None:
    records = d.build_records(facts(("203.0.113.5", "2001:db8::25")))
    a = [r for r in records if r.kind == "a" and r.name == "out.example.com"]
    assert [(r.rtype, r.value, r.publish) for r in a] == [
        ("A", "203.0.113.5", True),
        ("AAAA", "2001:db8::25", True),
    ]
    ptr = [r for r in records if r.kind == "ptr"]
    assert [r.name for r in ptr] == [
        "5.113.0.203.in-addr.arpa",
        "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
    ]
    # The address's owner publishes the PTR: a comment, not a line of the operator's zone.
    assert d.zone_line(ptr[0]) == "; 5.113.0.203.in-addr.arpa.\t3600\tIN\tPTR\tout.example.com."
    unknown = by(d.build_records(facts()), "a", "out.example.com")
    assert not unknown.publish and "forward-confirmed" in " ".join(unknown.comments)


@pytest.mark.parametrize(
    ("from_domain", "rp", "ok"),
    [
        ("example.com", "bounce.example.com", True),
        ("example.com", "example.com", True),
        ("news.example.com", "example.com", True),
        ("bexample.com", "example.com", False),
        ("example.com", "bounce.bexample.com", False),
        ("example.com", "notexample.com", False),
    ],
)
def test_relaxed_alignment(from_domain: str, rp: str, ok: bool) -> None:
    assert d.aligned(from_domain, rp) is ok


def test_warnings_name_the_unaligned_and_the_apex_return_path_domains() -> None:
    assert d.warnings_for(facts()) == []
    [unaligned] = d.warnings_for(facts(rp="bounce.bexample.com"))
    assert unaligned.startswith("example.com: return-path-domain bounce.bexample.com is not")
    assert "bounce.example.com" in unaligned
    [apex] = d.warnings_for(facts(rp="example.com"))
    assert "is the From domain itself" in apex


def test_the_whole_output_is_a_valid_zone_file() -> None:
    records = d.build_records(facts(("203.0.113.5",)))
    text = d.render(records, ["something to say"])
    assert "; WARNING: something to say" in text
    zone = dns.zone.from_text(text, origin=".", relativize=False, check_origin=False)
    published = {(f"{r.name}.", r.rtype) for r in records if r.publish}
    found = {(name.to_text(), dns.rdatatype.to_text(rds.rdtype)) for name, rds in
             zone.iterate_rdatasets()}  # fmt: skip
    assert found == published
    for _, rds in zone.iterate_rdatasets("TXT"):
        for rdata in rds:
            assert all(len(s) <= 255 for s in rdata.strings)
