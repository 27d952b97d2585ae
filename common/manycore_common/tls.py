"""TLS server contexts from a certificate and key in the config directory, or from a freshly
generated self-signed pair when they are missing (the caller logs that).

A context made from files is remembered, and ``keep_reloaded`` (run by every SMTP front door)
loads the files again into the same context when they change: a renewed certificate (a
Kubernetes Secret updates its mounted files in place) is served to new connections without a
restart. ``tls_certificate_expiry_timestamp_seconds`` says when the one being served expires,
so an alert can ask for a renewal in time."""

from __future__ import annotations

import asyncio
import base64
import calendar
import contextlib
import datetime
import ipaddress
import logging
import os
import ssl
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Gauge

log = logging.getLogger(__name__)

#: How often a front door looks for a renewed certificate. The kubelet rewrites a mounted
#: Secret within about a minute of its update; this adds at most half a minute. The
#: environment variable exists for the tests (a renewal seen in a second, not in 30).
RELOAD_SECONDS = float(os.environ.get("MANYCORE_TLS_RELOAD_SECONDS", "30"))

# One certificate per process (Receiver's or MxServer's STARTTLS); with front-door workers
# (prometheus_client's multiprocess mode) every worker loads the same file: "max" reports it once.
CERTIFICATE_EXPIRY = Gauge(
    "tls_certificate_expiry_timestamp_seconds",
    "When the STARTTLS certificate served expires (its notAfter, Unix seconds)",
    multiprocess_mode="max",
)


def self_signed_pem(
    hostname: str, days: int = 825, ip_addresses: tuple[str, ...] = ()
) -> tuple[bytes, bytes]:
    """A self-signed certificate and its key (PEM) for ``hostname`` (and IP addresses)."""
    # Imported here: a front door that serves its configured files never needs them, and
    # cryptography's x509 modules cost about 8 MB of RSS per process (README, Performance).
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(hostname),
                    *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def not_after(cert_pem: bytes) -> float:
    """The notAfter of the first certificate of a PEM file (the server's own, RFC 8446
    §4.4.2: it comes first in the chain), in Unix seconds. Read from the DER without
    cryptography (see ``self_signed_pem``); ValueError for anything that is no certificate."""
    begin, end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    start = cert_pem.find(begin)
    stop = cert_pem.find(end, start)
    if start < 0 or stop < 0:
        raise ValueError("no PEM certificate")
    der = base64.b64decode(b"".join(cert_pem[start + len(begin) : stop].split()))
    try:
        return _der_not_after(der)
    except IndexError:
        raise ValueError("truncated DER") from None


def _der_tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, where the value starts, where it ends) of the DER element at ``pos`` (X.690
    §8.1: one tag octet here, then a short or long form length)."""
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        octets = length & 0x7F
        length = int.from_bytes(der[pos : pos + octets], "big")
        pos += octets
    if pos + length > len(der):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _der_not_after(der: bytes) -> float:
    """Certificate → tbsCertificate → [version], serialNumber, signature, issuer, validity
    → notAfter (RFC 5280 §4.1), a UTCTime (YYMMDDHHMMSSZ, years 1950-2049) or a
    GeneralizedTime (YYYYMMDDHHMMSSZ), both in UTC (§4.1.2.5)."""
    _, pos, _ = _der_tlv(der, 0)  # Certificate
    _, pos, _ = _der_tlv(der, pos)  # tbsCertificate
    if der[pos] == 0xA0:  # [0] version, absent in v1 certificates
        pos = _der_tlv(der, pos)[2]
    for _ in range(3):  # serialNumber, signature, issuer
        pos = _der_tlv(der, pos)[2]
    _, pos, _ = _der_tlv(der, pos)  # validity
    pos = _der_tlv(der, pos)[2]  # notBefore
    tag, start, stop = _der_tlv(der, pos)
    text = der[start:stop].decode("ascii")
    if tag == 0x17:
        year = int(text[:2])
        text = f"{year + (1900 if year >= 50 else 2000)}{text[2:]}"
    elif tag != 0x18:
        raise ValueError("notAfter is no time")
    when = datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ")
    return float(calendar.timegm(when.timetuple()))


@dataclass
class _Files:
    cert_file: Path
    key_file: Path
    #: What the files were when last loaded (see ``_stamp``).
    stamp: tuple[int, ...]


#: Contexts made from files, to load again when the files change.
_FROM_FILES: weakref.WeakKeyDictionary[ssl.SSLContext, _Files] = weakref.WeakKeyDictionary()


def _stamp(*paths: Path) -> tuple[int, ...]:
    """Inode, modification time and size of each file, symlinks followed: a Secret update
    swaps the mount's symlink to new files, an edit in place changes the time."""
    found: list[int] = []
    for path in paths:
        st = path.stat()
        found += [st.st_ino, st.st_mtime_ns, st.st_size]
    return tuple(found)


def _load(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    context.load_cert_chain(cert_file, key_file)
    CERTIFICATE_EXPIRY.set(not_after(cert_file.read_bytes()))


def reload_changed() -> int:
    """Load the files of every remembered context again if they changed; returns how many
    were reloaded. A pair that does not load (a key that does not match yet) is logged and
    tried again next time; the context keeps serving the previous certificate."""
    reloaded = 0
    for context, files in list(_FROM_FILES.items()):
        try:
            stamp = _stamp(files.cert_file, files.key_file)
            if stamp == files.stamp:
                continue
            # load_cert_chain is not atomic: a key that does not match leaves the new
            # certificate in the context with the old key, and every handshake fails. Try
            # the pair in a scratch context first; only a pair that loads reaches the live one.
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                files.cert_file, files.key_file
            )
            _load(context, files.cert_file, files.key_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning(
                "TLS certificate changed but does not load: still serving the previous one",
                extra={"cert_file": str(files.cert_file), "error": str(exc)},
            )
            continue
        files.stamp = stamp
        reloaded += 1
        log.info("TLS certificate reloaded", extra={"cert_file": str(files.cert_file)})
    return reloaded


async def keep_reloaded(stop: asyncio.Event, interval: float = RELOAD_SECONDS) -> None:
    """``reload_changed`` every ``interval`` seconds until ``stop``."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if not stop.is_set():
            reload_changed()


def server_context(cert_file: Path, key_file: Path, hostname: str) -> tuple[ssl.SSLContext, bool]:
    """A server context; the flag is True when a self-signed pair had to be generated."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file.exists() and key_file.exists():
        stamp = _stamp(cert_file, key_file)
        _load(context, cert_file, key_file)
        _FROM_FILES[context] = _Files(cert_file, key_file, stamp)
        return context, False
    cert_pem, key_pem = self_signed_pem(hostname)
    CERTIFICATE_EXPIRY.set(not_after(cert_pem))
    # load_cert_chain reads files; keep them in a private directory only for that call.
    with tempfile.TemporaryDirectory(prefix="manycore-tls-") as tmp:
        cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_path.write_bytes(cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem)
        context.load_cert_chain(cert_path, key_path)
    return context, True
