"""TLS server contexts from a certificate and key in the config directory, or from a freshly
generated self-signed pair when they are missing (the caller logs that)."""

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


def server_context(cert_file: Path, key_file: Path, hostname: str) -> tuple[ssl.SSLContext, bool]:
    """A server context; the flag is True when a self-signed pair had to be generated."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file.exists() and key_file.exists():
        context.load_cert_chain(cert_file, key_file)
        return context, False
    cert_pem, key_pem = self_signed_pem(hostname)
    # load_cert_chain reads files; keep them in a private directory only for that call.
    with tempfile.TemporaryDirectory(prefix="manycore-tls-") as tmp:
        cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_path.write_bytes(cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem)
        context.load_cert_chain(cert_path, key_path)
    return context, True
