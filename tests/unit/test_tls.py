"""The STARTTLS context: its certificate expiry gauge (tls_certificate_expiry_timestamp_seconds)
and the reload of a renewed certificate into the running context, over real TLS connections."""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import REGISTRY

from manycore_common import tls
from tests.helpers import LOOPBACK

GAUGE = "tls_certificate_expiry_timestamp_seconds"


def test_not_after_reads_the_first_certificate() -> None:
    cert, _ = tls.self_signed_pem("mx.example.com", days=10)
    other, _ = tls.self_signed_pem("other.example.com", days=400)
    expires = tls.not_after(cert + other)
    assert abs(expires - (time.time() + 10 * 86400)) < 120


def test_not_after_agrees_with_cryptography_for_both_time_forms() -> None:
    """UTCTime until 2049, GeneralizedTime from 2050 (RFC 5280 §4.1.2.5)."""
    for days in (1, 825, 30 * 365):
        cert, _ = tls.self_signed_pem("mx.example.com", days=days)
        expected = x509.load_pem_x509_certificate(cert).not_valid_after_utc.timestamp()
        assert tls.not_after(cert) == expected
    assert b"\x18\x0f" in _der(tls.self_signed_pem("mx.example.com", days=30 * 365)[0])


def test_not_after_refuses_what_is_no_certificate() -> None:
    cert, key = tls.self_signed_pem("mx.example.com")
    der = _der(cert)
    short = (
        b"-----BEGIN CERTIFICATE-----\n"
        + base64.b64encode(der[:40])
        + b"\n-----END CERTIFICATE-----\n"
    )
    for bad in (key, b"", cert[: len(cert) // 2], short):
        with pytest.raises(ValueError):
            tls.not_after(bad)


def test_server_context_exposes_the_expiry_of_the_served_certificate(tmp_path: Path) -> None:
    cert, key = tls.self_signed_pem("smtp.example.com", days=30)
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    _, generated = tls.server_context(tmp_path / "tls.crt", tmp_path / "tls.key", "smtp")
    assert not generated
    assert REGISTRY.get_sample_value(GAUGE) == tls.not_after(cert)
    # Without files: the generated certificate's (825 days by default).
    _, generated = tls.server_context(tmp_path / "none.crt", tmp_path / "none.key", "smtp")
    assert generated
    served = REGISTRY.get_sample_value(GAUGE)
    assert served is not None and served - time.time() > 800 * 86400


def _mount(directory: Path, version: str, cert: bytes, key: bytes) -> None:
    """Write a pair the way the kubelet updates a mounted Secret: new files in a new
    directory, then the ``..data`` symlink swapped to it (tls.crt and tls.key follow it)."""
    target = directory / f"..{version}"
    target.mkdir()
    (target / "tls.crt").write_bytes(cert)
    (target / "tls.key").write_bytes(key)
    (directory / "..data_tmp").symlink_to(target.name)
    (directory / "..data_tmp").replace(directory / "..data")
    for name in ("tls.crt", "tls.key"):
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")


async def _served_certificate(port: int) -> bytes:
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE  # the test compares the certificate itself
    _, writer = await asyncio.open_connection(LOOPBACK, port, ssl=client)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return bytes(der)


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


async def test_a_renewed_certificate_is_served_to_new_connections(tmp_path: Path) -> None:
    old_cert, old_key = tls.self_signed_pem("smtp.example.com", days=5)
    new_cert, new_key = tls.self_signed_pem("smtp.example.com", days=90)
    _mount(tmp_path, "1", old_cert, old_key)
    context, _ = tls.server_context(tmp_path / "tls.crt", tmp_path / "tls.key", "smtp")
    server = await asyncio.start_server(lambda r, w: w.close(), LOOPBACK, 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await _served_certificate(port) == _der(old_cert)
        assert tls.reload_changed() == 0  # nothing changed
        # A renewal whose key has not arrived yet: refused, the old pair stays.
        _mount(tmp_path, "2", new_cert, old_key)
        assert tls.reload_changed() == 0
        assert await _served_certificate(port) == _der(old_cert)
        assert REGISTRY.get_sample_value(GAUGE) == tls.not_after(old_cert)
        _mount(tmp_path, "3", new_cert, new_key)
        assert tls.reload_changed() == 1
        assert await _served_certificate(port) == _der(new_cert)
        assert REGISTRY.get_sample_value(GAUGE) == tls.not_after(new_cert)
    finally:
        server.close()
        await server.wait_closed()


async def test_keep_reloaded_stops_with_the_service() -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(tls.keep_reloaded(stop, interval=0.01))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 1)
