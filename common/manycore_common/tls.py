"""TLS server contexts from a certificate and key in the config directory, or from a freshly
generated self-signed pair when they are missing (the caller logs that).

The certificate is read once, when the service starts: a renewed certificate is served after
a restart. ``tls_certificate_expiry_timestamp_seconds`` says when the one being served
expires, so an alert can ask for that restart (or a renewal) in time."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import Gauge

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
    §4.4.2: it comes first in the chain), in Unix seconds."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc.timestamp()


def server_context(cert_file: Path, key_file: Path, hostname: str) -> tuple[ssl.SSLContext, bool]:
    """A server context; the flag is True when a self-signed pair had to be generated."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file.exists() and key_file.exists():
        context.load_cert_chain(cert_file, key_file)
        CERTIFICATE_EXPIRY.set(not_after(cert_file.read_bytes()))
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
