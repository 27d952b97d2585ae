"""manycore-dns --check's judgement of what DNS answered, one record kind at a time."""

from __future__ import annotations

import pytest

from manycore_common import dnscheck as c
from manycore_common.dnsrecords import UNKNOWN_KEY, Record

MX = Record("bounce.example.com", "MX", "10 mx.example.com", "mx")
SPF = Record("bounce.example.com", "TXT", "v=spf1 ip4:203.0.113.5 -all", "spf")
DKIM = Record("s._domainkey.example.com", "TXT", "v=DKIM1; k=rsa; p=QUJD", "dkim")
DMARC = Record("_dmarc.example.com", "TXT", "v=DMARC1; p=none; rua=mailto:r@example.com", "dmarc")
STS = Record("_mta-sts.bounce.example.com", "TXT", "v=STSv1; id=abc", "mta-sts")
RPT = Record("_smtp._tls.bounce.example.com", "TXT", "v=TLSRPTv1; rua=mailto:t@x.com", "tls-rpt")
A = Record("out.example.com", "A", "203.0.113.5", "a")
PTR = Record("5.113.0.203.in-addr.arpa", "PTR", "out.example.com", "ptr", publish=False)


@pytest.mark.parametrize(
    ("record", "found", "status", "detail"),
    [
        (MX, ["10 mx.example.com"], "ok", ""),
        (MX, ["10 MX.Example.com.", "20 backup.example.net"], "ok", ""),
        (MX, None, "missing", "no MX record"),
        (MX, ["10 aspmx.l.google.com"], "wrong", "MX is aspmx.l.google.com"),
        (
            SPF,
            ["google-site-verification=x", "v=spf1 ip4:203.0.113.5 include:x.com ~all"],
            "ok",
            "",
        ),
        (SPF, ["google-site-verification=x"], "missing", "no v=spf1 record"),
        (SPF, ["v=spf1 ip4:198.51.100.1 -all"], "wrong", "lacks ip4:203.0.113.5"),
        (SPF, ["v=spf1 ip4:203.0.113.5 -all", "v=spf1 -all"], "wrong", "permerror"),
        (DKIM, ["v=DKIM1; k=rsa; p=QU JD"], "ok", ""),
        (DKIM, ["p=QUJD"], "ok", ""),  # k= defaults to rsa (RFC 6376 §3.6.1)
        (DKIM, None, "missing", "no TXT record"),
        (DKIM, ["v=DKIM1; k=rsa; p=T1RIRVI="], "wrong", "another key"),
        (DKIM, ["v=DKIM1; k=ed25519; p=QUJD"], "wrong", "another key"),
        (DMARC, ["v=DMARC1; p=reject"], "ok", ""),
        (DMARC, None, "missing", "no v=DMARC1 record"),
        (DMARC, ["v=DMARC1; rua=mailto:x@y.z"], "wrong", "has no p="),
        (DMARC, ["v=DMARC1; p=none", "v=DMARC1; p=reject"], "wrong", "none applies"),
        (STS, ["v=STSv1; id=20260101"], "ok", ""),
        (STS, ["v=spf1 -all"], "missing", "no v=STSv1 record"),
        (RPT, ["v=TLSRPTv1;rua=mailto:x@y.z"], "ok", ""),
        (RPT, ["v=TLSRPTv1;"], "wrong", "has no rua="),
        (A, ["203.0.113.5"], "ok", ""),
        (A, ["198.51.100.1"], "wrong", "found 198.51.100.1"),
        (A, None, "missing", "no A record"),
        (PTR, ["out.example.com."], "ok", ""),
        (PTR, ["203-0-113-5.cloud.example"], "wrong", "PTR is 203-0-113-5.cloud.example"),
        (PTR, None, "missing", "no PTR record"),
    ],
)
def test_judge(record: Record, found: list[str] | None, status: str, detail: str) -> None:
    verdict = c.judge(record, found)
    assert verdict.status == status
    assert detail in verdict.detail


def test_a_key_not_known_here_accepts_any_key_of_its_type() -> None:
    sketch = Record("s._domainkey.example.com", "TXT", f"v=DKIM1; k=rsa; p={UNKNOWN_KEY}", "dkim")
    assert c.judge(sketch, ["v=DKIM1; k=rsa; p=QUJD"]).status == "ok"
    assert c.judge(sketch, ["v=DKIM1; k=rsa; p="]).status == "wrong"  # a revoked key
    unknown_a = Record("out.example.com", "A", "<outbound address>", "a", publish=False)
    assert c.judge(unknown_a, ["192.0.2.1"]).status == "ok"


def test_check_follows_the_helo_address_to_its_ptr_when_no_address_was_given() -> None:
    unknown_a = Record("out.example.com", "A", "<outbound address>", "a", publish=False)
    answers = {
        ("out.example.com", "A"): ["192.0.2.1"],
        ("1.2.0.192.in-addr.arpa", "PTR"): ["other.example.net"],
    }
    verdicts = c.check([unknown_a], lambda n, t: answers.get((n, t)), "out.example.com")
    assert [(v.record.kind, v.status) for v in verdicts] == [("a", "ok"), ("ptr", "wrong")]


def test_a_failed_lookup_is_reported_not_raised() -> None:
    def failing(name: str, rtype: str) -> list[str] | None:
        raise c.LookupFailed("timed out")

    [verdict] = c.check([MX], failing, "out.example.com")
    assert (verdict.status, verdict.detail) == ("missing", "lookup failed: timed out")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
    ],
)
def test_parse_nameserver(text: str, parsed: tuple[str, int]) -> None:
    assert c.parse_nameserver(text) == parsed


@pytest.mark.parametrize("text", ["localhost", "127.0.0.1:0", "127.0.0.1:x", "[::1]:70000"])
def test_parse_nameserver_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        c.parse_nameserver(text)
