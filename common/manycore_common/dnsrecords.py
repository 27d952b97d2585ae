"""The DNS records an operator publishes for Manycore-Mail, as pure functions of the config's
facts (``manycore-dns`` prints them, ``manycore-dns --check`` compares them with DNS).

For each return-path domain (the MAIL FROM domain, where bounces come back):
  MX to the MxServer; SPF (RFC 7208 checks the MAIL FROM domain, and the HELO name);
  MTA-STS (RFC 8461) and TLS-RPT (RFC 8460), since the MxServer receives mail for it.
For each From domain: DKIM keys (RFC 6376, Ed25519 RFC 8463) and a DMARC record (RFC 7489).
For the HELO name (Postfix's myhostname): SPF, and an A record that, with the PTR of the
outbound address, gives forward-confirmed reverse DNS.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

Kind = Literal["mx", "spf", "dkim", "dmarc", "mta-sts", "tls-rpt", "a", "ptr"]
DkimAlgorithm = Literal["rsa", "ed25519"]

#: RFC 1035 §3.3: a <character-string> holds at most 255 octets; longer TXT data is several
#: strings, which DKIM (RFC 6376 §3.6.2.2) and SPF (RFC 7208 §3.3) concatenate.
TXT_STRING_OCTETS = 255
DEFAULT_TTL = 3600
#: RFC 8461 §3.2: max_age in seconds; a week while testing, raise it once in "enforce".
MTA_STS_MAX_AGE = 604800
#: The p= of a key whose file does not exist yet (printed as a comment; --check then only
#: asks for some key of the right type).
UNKNOWN_KEY = "<public key>"


@dataclass(frozen=True)
class DkimKey:
    selector: str
    algorithm: DkimAlgorithm
    public_key: str | None  # base64, as the p= tag carries it; None: key file not made yet


@dataclass(frozen=True)
class SendingDomain:
    domain: str  # the From domain (d= of the signatures)
    return_path_domain: str  # the MAIL FROM domain
    keys: tuple[DkimKey, ...]


@dataclass(frozen=True)
class Facts:
    """What the records are made of, read from the config by the CLI."""

    domains: tuple[SendingDomain, ...]
    mx_host: str  # the MxServer's DNS name (MX target)
    helo: str  # Postfix's myhostname: its HELO/EHLO name
    outbound_ips: tuple[str, ...] = ()  # Postfix's sending addresses, when known


@dataclass(frozen=True)
class Record:
    name: str  # without the final dot
    rtype: Literal["MX", "TXT", "A", "AAAA", "PTR"]
    value: str  # MX "10 host"; TXT the whole text (split only when printed); A; PTR host
    kind: Kind
    comments: tuple[str, ...] = ()
    #: False: someone else publishes it (a PTR, set by whoever owns the address) or its
    #: value is not known here; printed as a comment, still checked.
    publish: bool = True


# --------------------------------------------------------------------------- values


def dkim_public_key(private: bytes) -> tuple[DkimAlgorithm, str]:
    """The algorithm and p= value of a private key given as PEM, or as the base64 of a 32-byte
    Ed25519 seed (the Transformer accepts both). RSA: the DER SubjectPublicKeyInfo (RFC 6376
    §3.6.1); Ed25519: the raw 32-byte public key (RFC 8463 §4.2)."""
    text = private.strip()
    if not text.startswith(b"-----"):
        seed = base64.b64decode(text, validate=True)
        if len(seed) != 32:
            raise ValueError("a base64 Ed25519 seed must decode to 32 bytes")
        key: object = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    else:
        key = serialization.load_pem_private_key(text, password=None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return "ed25519", base64.b64encode(raw).decode()
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "rsa", base64.b64encode(der).decode()
    raise ValueError(f"unsupported key type {type(key).__name__}; use RSA or Ed25519")


def dkim_txt(algorithm: DkimAlgorithm, public_key: str) -> str:
    # RFC 6376 §3.6.1: v= first when present; k= defaults to rsa but is written out.
    return f"v=DKIM1; k={algorithm}; p={public_key}"


def sender_mechanisms(helo: str, outbound_ips: Sequence[str]) -> tuple[str, ...]:
    """What authorizes the outbound addresses (RFC 7208 §5.6 ip4/ip6). Without known addresses,
    ``a:<helo>``: the HELO name's A record must be the outbound address anyway (FCrDNS)."""
    if not outbound_ips:
        return (f"a:{helo}",)
    return tuple(
        f"ip{ipaddress.ip_address(ip).version}:{ipaddress.ip_address(ip)}" for ip in outbound_ips
    )


def spf_txt(mechanisms: Iterable[str]) -> str:
    # "-all": these names are used by this MTA only, so any other sender is a forgery
    # (RFC 7208 §5.1, §8.4 fail).
    return " ".join(("v=spf1", *mechanisms, "-all"))


def dmarc_txt(rua: str) -> str:
    # RFC 7489 §6.3: v= first, then p=. p=none only monitors: start there, read the aggregate
    # reports (rua), then move to quarantine and reject.
    return f"v=DMARC1; p=none; rua=mailto:{rua}"


def mta_sts_policy(mx_hosts: Sequence[str], mode: str = "testing") -> str:
    """The policy file served at https://mta-sts.<domain>/.well-known/mta-sts.txt (RFC 8461
    §3.2, CRLF line endings)."""
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {h}" for h in mx_hosts)]
    lines.append(f"max_age: {MTA_STS_MAX_AGE}")
    return "".join(f"{line}\r\n" for line in lines)


def mta_sts_txt(policy: str) -> str:
    # RFC 8461 §3.1: id is 1-32 alphanumerics and must change whenever the policy does: a
    # digest of the policy does exactly that.
    return f"v=STSv1; id={hashlib.sha256(policy.encode()).hexdigest()[:20]}"


def tls_rpt_txt(rua: str) -> str:
    return f"v=TLSRPTv1; rua=mailto:{rua}"  # RFC 8460 §3


def aligned(from_domain: str, return_path_domain: str) -> bool:
    """Relaxed SPF alignment (RFC 7489 §3.1.2): both in one organizational domain. Without the
    Public Suffix List, one name must be the other or a subdomain of it."""
    a, b = from_domain.lower().rstrip("."), return_path_domain.lower().rstrip(".")
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def warnings_for(facts: Facts) -> list[str]:
    out = []
    for d in facts.domains:
        if not aligned(d.domain, d.return_path_domain):
            out.append(
                f"{d.domain}: return-path-domain {d.return_path_domain} is not aligned with it: "
                f"SPF passes for {d.return_path_domain} but DMARC (RFC 7489 §3.1.2) needs the "
                f"return-path domain in the From domain, e.g. bounce.{d.domain}"
            )
        elif d.domain == d.return_path_domain:
            out.append(
                f"{d.domain}: return-path-domain is the From domain itself: its MX must then "
                f"point at the MxServer, away from your mailboxes; use e.g. bounce.{d.domain}"
            )
    return out


# --------------------------------------------------------------------------- records


def _return_path_domains(facts: Facts) -> dict[str, str]:
    """Each return-path domain, with the first From domain using it (where reports go)."""
    out: dict[str, str] = {}
    for d in facts.domains:
        out.setdefault(d.return_path_domain, d.domain)
    return out


def return_path_records(facts: Facts) -> list[Record]:
    records = []
    policy = mta_sts_policy([facts.mx_host])
    spf = spf_txt(sender_mechanisms(facts.helo, facts.outbound_ips))
    for rp, from_domain in _return_path_domains(facts).items():
        records += [
            Record(rp, "MX", f"10 {facts.mx_host}", "mx", (
                f"Return-path domain {rp}: bounces and replies come back to the MxServer.",)),
            Record(rp, "TXT", spf, "spf", (
                "SPF of the MAIL FROM domain (RFC 7208 §2.4): only Postfix's outbound "
                "address may use it.",)),
            Record(f"_mta-sts.{rp}", "TXT", mta_sts_txt(policy), "mta-sts", (
                "MTA-STS (RFC 8461): senders require TLS to the MX. Serve this policy at",
                f"https://mta-sts.{rp}/.well-known/mta-sts.txt (a valid certificate for",
                f"mta-sts.{rp}; the MxServer's certificate must be valid for {facts.mx_host}):",
                *(f"  {line}" for line in policy.splitlines()),
                "Change mode to enforce once TLS-RPT reports are clean; the id changes with it.",
            )),
            Record(f"_smtp._tls.{rp}", "TXT", tls_rpt_txt(f"tls-reports@{from_domain}"),
                   "tls-rpt", ("TLS-RPT (RFC 8460): daily reports of TLS failures to the MX.",)),
        ]  # fmt: skip
    return records


def from_domain_records(facts: Facts) -> list[Record]:
    records = []
    for d in facts.domains:
        for key in d.keys:
            note = f"DKIM key of {d.domain}, selector {key.selector} ({key.algorithm})."
            records.append(
                Record(f"{key.selector}._domainkey.{d.domain}", "TXT",
                       dkim_txt(key.algorithm, key.public_key or UNKNOWN_KEY), "dkim",
                       (note,) if key.public_key else (note, "Its key file does not exist yet."),
                       publish=key.public_key is not None)
            )  # fmt: skip
        records.append(
            Record(f"_dmarc.{d.domain}", "TXT", dmarc_txt(f"dmarc-reports@{d.domain}"), "dmarc", (
                f"DMARC suggestion for {d.domain}: monitor first (p=none), then quarantine or",
                "reject. Passes when DKIM d= or the SPF-checked return-path domain aligns.",
                "If you publish DMARC already, keep yours and compare.",
            ))
        )  # fmt: skip
    return records


def helo_records(facts: Facts) -> list[Record]:
    helo = facts.helo
    ips = facts.outbound_ips
    records = [
        Record(helo, "TXT", spf_txt(sender_mechanisms(helo, ips) if ips else ("a",)), "spf", (
            f"SPF of the HELO name {helo} (RFC 7208 §2.3): checked for bounces (empty MAIL",
            "FROM) and by receivers that check HELO too.",
        )),
    ]  # fmt: skip
    fcrdns = (
        f"The HELO name {helo} must resolve to Postfix's outbound address, and that address's",
        f"PTR must name {helo} (forward-confirmed reverse DNS). The PTR is set by whoever owns",
        "the address (your cloud or provider), not in your zone.",
    )
    if not ips:
        unknown = (*fcrdns, "Publish this A record (manycore-dns --outbound-ip IP prints it):")
        return [*records, Record(helo, "A", "<outbound address>", "a", unknown, publish=False)]
    for n, ip in enumerate(ips):
        address = ipaddress.ip_address(ip)
        records.append(
            Record(helo, "A" if address.version == 4 else "AAAA", str(address), "a",
                   fcrdns if n == 0 else ())
        )  # fmt: skip
    records += ptr_records(helo, ips)
    return records


def ptr_records(helo: str, ips: Sequence[str]) -> list[Record]:
    return [
        Record(ipaddress.ip_address(ip).reverse_pointer, "PTR", helo, "ptr", publish=False)
        for ip in ips
    ]


def mx_host_record(facts: Facts) -> Record:
    return Record(facts.mx_host, "A", "<the mxserver load balancer's address>", "a", (
        f"The MX host {facts.mx_host}: the address of the mxserver Service (port 25).",),
        publish=False)  # fmt: skip


def build_records(facts: Facts) -> list[Record]:
    return [
        *return_path_records(facts),
        mx_host_record(facts),
        *from_domain_records(facts),
        *helo_records(facts),
    ]


# --------------------------------------------------------------------------- zone file


def txt_strings(text: str) -> list[str]:
    """The text cut into <character-string>s of at most 255 octets (RFC 1035 §3.3)."""
    data = text.encode("ascii")
    return [
        data[i : i + TXT_STRING_OCTETS].decode() for i in range(0, len(data), TXT_STRING_OCTETS)
    ] or [""]


def rdata(record: Record) -> str:
    """The record's data in zone-file syntax (RFC 1035 §5.1): names absolute, TXT quoted."""
    if record.rtype == "TXT":
        return " ".join(
            '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for s in txt_strings(record.value)
        )
    if record.rtype == "MX":
        preference, host = record.value.split()
        return f"{preference} {host}."
    if record.rtype == "PTR":
        return f"{record.value}."
    return record.value


def zone_line(record: Record, ttl: int = DEFAULT_TTL) -> str:
    line = f"{record.name}.\t{ttl}\tIN\t{record.rtype}\t{rdata(record)}"
    return line if record.publish else f"; {line}"


def render(records: Sequence[Record], warnings: Sequence[str], ttl: int = DEFAULT_TTL) -> str:
    out = ["; DNS records for Manycore-Mail (manycore-dns). Lines starting with ';' are notes."]
    out += [f"; WARNING: {w}" for w in warnings]
    for record in records:
        out.append("")
        out += [f"; {c}" if c else ";" for c in record.comments]
        out.append(zone_line(record, ttl))
    return "\n".join(out) + "\n"
