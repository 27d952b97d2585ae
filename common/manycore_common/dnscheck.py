"""``manycore-dns --check``: what DNS answers for each record of dnsrecords, judged ok / missing /
wrong. ``judge`` is pure (the answers in, a verdict out); ``lookup`` is the one place that asks
a resolver (dnspython), the system's or the ``--nameserver`` given.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import dns.exception
import dns.rdatatype
import dns.resolver

from .dnsrecords import UNKNOWN_KEY, Record, ptr_records

Status = Literal["ok", "missing", "wrong"]
#: The answers to one query (rdata as text, TXT strings joined), or None when the name or
#: the type does not exist; a lookup failure is an exception message.
Answers = list[str] | None
Lookup = Callable[[str, str], Answers]


class LookupFailed(Exception):
    """No answer at all (timeout, SERVFAIL, no nameserver reachable)."""


@dataclass(frozen=True)
class Verdict:
    record: Record
    status: Status
    detail: str = ""


def tags(text: str) -> dict[str, str]:
    """A tag=value list (RFC 6376 §3.2; DMARC, MTA-STS and TLS-RPT records use the same form):
    tag names lower-cased, whitespace around separators dropped."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            out.setdefault(name.strip().lower(), value.strip())
    return out


def _versioned(found: Sequence[str], version: str) -> list[str]:
    """The TXT records of one kind, by their first tag (e.g. ``v=spf1``, ``v=DMARC1``)."""
    prefix = version.lower()
    return [t for t in found if re.split(r"[;\s]", t.strip(), maxsplit=1)[0].lower() == prefix]


def _judge_spf(record: Record, found: Sequence[str]) -> Verdict:
    spf = _versioned(found, "v=spf1")
    if not spf:
        return Verdict(record, "missing", "no v=spf1 record")
    if len(spf) > 1:
        # RFC 7208 §4.5: more than one SPF record is a permerror: none of them counts.
        return Verdict(record, "wrong", f"{len(spf)} v=spf1 records (permerror): {spf}")
    terms = {t.lower() for t in spf[0].split()[1:]}
    wanted = [t for t in record.value.split()[1:] if not t.endswith("all")]
    absent = [t for t in wanted if t.lower() not in terms]
    if absent:
        return Verdict(record, "wrong", f"{spf[0]!r} lacks {' '.join(absent)}")
    return Verdict(record, "ok", spf[0])


def _judge_dkim(record: Record, found: Sequence[str]) -> Verdict:
    if not found:
        return Verdict(record, "missing", "no TXT record")
    want = tags(record.value)
    for text in found:
        got = tags(text)
        # RFC 6376 §3.6.1: k= defaults to rsa; whitespace inside p= is allowed and ignored.
        key = re.sub(r"\s", "", got.get("p", ""))
        same_key = key == want["p"] or (want["p"] == UNKNOWN_KEY and key != "")
        if same_key and got.get("k", "rsa").lower() == want["k"]:
            return Verdict(record, "ok")
    shown = [t if len(t) < 80 else t[:77] + "..." for t in found]
    return Verdict(record, "wrong", f"another key is published: {shown}")


def _judge_one_policy(record: Record, found: Sequence[str], version: str, need: str) -> Verdict:
    """DMARC, MTA-STS, TLS-RPT: exactly one record of the version (RFC 7489 §6.6.3, RFC 8461
    §3.1, RFC 8460 §3: with several, none applies) carrying the tag ``need``."""
    ours = _versioned(found, version)
    if not ours:
        return Verdict(record, "missing", f"no {version} record")
    if len(ours) > 1:
        return Verdict(record, "wrong", f"{len(ours)} {version} records (none applies): {ours}")
    if not tags(ours[0]).get(need):
        return Verdict(record, "wrong", f"{ours[0]!r} has no {need}=")
    return Verdict(record, "ok", ours[0])


def _judge_address(record: Record, found: Sequence[str]) -> Verdict:
    if not found:
        return Verdict(record, "missing", f"no {record.rtype} record")
    if record.value.startswith("<"):  # any address will do: the value is not known here
        return Verdict(record, "ok", " ".join(found))
    want = ipaddress.ip_address(record.value)
    if any(ipaddress.ip_address(a) == want for a in found):
        return Verdict(record, "ok", " ".join(found))
    return Verdict(record, "wrong", f"found {' '.join(found)}")


def _host(name: str) -> str:
    return name.lower().rstrip(".")


def judge(record: Record, found: Answers) -> Verdict:
    """The verdict on one record given what DNS answered for its name and type."""
    answers = found or []
    if record.kind == "mx":
        want = _host(record.value.split()[1])
        if not answers:
            return Verdict(record, "missing", "no MX record")
        hosts = [_host(a.split()[-1]) for a in answers]
        ok = want in hosts
        return Verdict(record, "ok" if ok else "wrong", "" if ok else f"MX is {' '.join(hosts)}")
    if record.kind == "spf":
        return _judge_spf(record, answers)
    if record.kind == "dkim":
        return _judge_dkim(record, answers)
    if record.kind == "dmarc":
        return _judge_one_policy(record, answers, "v=DMARC1", "p")
    if record.kind == "mta-sts":
        return _judge_one_policy(record, answers, "v=STSv1", "id")
    if record.kind == "tls-rpt":
        return _judge_one_policy(record, answers, "v=TLSRPTv1", "rua")
    if record.kind == "a":
        return _judge_address(record, answers)
    # ptr
    if not answers:
        return Verdict(record, "missing", "no PTR record")
    names = [_host(a) for a in answers]
    ok = _host(record.value) in names
    return Verdict(record, "ok" if ok else "wrong", "" if ok else f"PTR is {' '.join(names)}")


def check(records: Sequence[Record], lookup: Lookup, helo: str) -> list[Verdict]:
    """Every record looked up and judged; when the outbound addresses were not given, the PTR
    of each address the HELO name resolves to is checked instead (FCrDNS)."""
    verdicts = []
    ptr_pending = not any(r.kind == "ptr" for r in records)
    for record in records:
        try:
            found = lookup(record.name, record.rtype)
        except LookupFailed as exc:
            verdicts.append(Verdict(record, "missing", f"lookup failed: {exc}"))
            continue
        verdicts.append(judge(record, found))
        if record.kind == "a" and record.name == helo and ptr_pending and found:
            ptr_pending = False
            verdicts += check(ptr_records(helo, found), lookup, helo)
    return verdicts


# --------------------------------------------------------------------------- IO edge


def resolver_for(nameserver: str | None, timeout: float) -> dns.resolver.Resolver:
    """The system's resolver, or one asking only ``IP``, ``IP:port`` or ``[IPv6]:port``."""
    if nameserver is None:
        resolver = dns.resolver.Resolver()
    else:
        ip, port = parse_nameserver(nameserver)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [ip]
        resolver.port = port
    resolver.lifetime = timeout
    return resolver


def parse_nameserver(text: str) -> tuple[str, int]:
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = int(number)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return str(ipaddress.ip_address(host)), port


def lookup_with(resolver: dns.resolver.Resolver) -> Lookup:
    def lookup(name: str, rtype: str) -> Answers:
        try:
            answer = resolver.resolve(name, rtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return None
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise LookupFailed(str(exc)) from None
        if answer.rrset is None:
            return None
        return [_text(rdata) for rdata in answer.rrset]

    return lookup


def _text(rdata: object) -> str:
    strings = getattr(rdata, "strings", None)
    if strings is not None:  # TXT: the strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2)
        return b"".join(strings).decode("utf-8", "replace")
    rdtype = getattr(rdata, "rdtype", None)
    if rdtype == dns.rdatatype.MX:
        return f"{rdata.preference} {rdata.exchange.to_text(omit_final_dot=True)}"  # type: ignore[attr-defined]
    if rdtype == dns.rdatatype.PTR:
        return str(rdata.target.to_text(omit_final_dot=True))  # type: ignore[attr-defined]
    return str(rdata)
