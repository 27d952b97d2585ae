"""A renewed certificate reaches STARTTLS without a restart (common/manycore_common/tls.py,
``keep_reloaded``): the Receiver and MxServer run as real processes, their certificate files
are replaced as a Secret update replaces them, and the next STARTTLS of a real smtplib client
gets the new certificate (checked every 30 s, so within about half a minute). That a pair
that does not match is not taken is tests/unit/test_tls.py's."""

from __future__ import annotations

import os
import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from manycore_common.tls import RELOAD_SECONDS, self_signed_pem
from tests.helpers import LOOPBACK, RedisServer, Service, running, wait_for, write_configs
from tests.integration.conftest import set_path


def der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def served(service: Service) -> bytes:
    """The certificate of a STARTTLS on a new connection."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we compare the certificate itself
    assert service.port is not None
    with smtplib.SMTP(LOOPBACK, service.port, local_hostname="client.test", timeout=15) as smtp:
        smtp.ehlo()
        smtp.starttls(context=context)
        assert isinstance(smtp.sock, ssl.SSLSocket)
        cert = smtp.sock.getpeercert(binary_form=True)
    assert cert is not None
    return cert


def replace_files(directory: Path, prefix: str, cert: bytes, key: bytes) -> None:
    """Each file replaced in one step (the kubelet swaps a Secret's files at once)."""
    for name, data in ((f"{prefix}_key.pem", key), (f"{prefix}_cert.pem", cert)):
        temporary = directory / f".{name}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, directory / name)


def tls_service(directory: Path, redis_port: int, name: str) -> Service:
    def change(customer: dict[str, Any]) -> None:
        if name == "receiver":
            set_path(customer, "receiver.auth-throttle", {"max-failures": 1000, "delay-seconds": 0})
        else:
            set_path(customer, "mxserver.hostname", "mx.test")

    global_file, customer_file = write_configs(directory, redis_port, change)
    return Service(name, global_file, customer_file, directory / f"{name}.log")


@pytest.fixture
def services(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[tuple[Service, Path, str]]]:
    # The services look every second instead of every 30 (the same code path, sooner).
    monkeypatch.setenv("MANYCORE_TLS_RELOAD_SECONDS", "1")
    found = []
    for name, prefix in (("receiver", "receiver"), ("mxserver", "mxserver")):
        directory = tmp_path / name
        directory.mkdir()
        cert, key = self_signed_pem("old.test", days=5)
        replace_files(directory, prefix, cert, key)
        found.append((tls_service(directory, redis_server.port, name), directory, prefix))
    with running(found[0][0]), running(found[1][0]):
        yield found


def test_swapped_certificate_files_are_served_on_the_next_starttls(
    services: list[tuple[Service, Path, str]],
) -> None:
    for service, directory, prefix in services:
        assert served(service) == der((directory / f"{prefix}_cert.pem").read_bytes())
    new_cert, new_key = self_signed_pem("new.test", days=90)
    # A new pair, as a renewal writes it: the next STARTTLS gets it, without a restart.
    pids = {service.name: service.process.pid for service, _, _ in services if service.process}
    for _, directory, prefix in services:
        replace_files(directory, prefix, new_cert, new_key)
    for service, _, _ in services:
        wait_for(
            lambda s=service: served(s) == der(new_cert),  # type: ignore[misc]
            timeout=RELOAD_SECONDS + 10,
            what=f"{service.name} serving the new certificate",
        )
        assert service.process is not None and service.process.pid == pids[service.name]
        assert "TLS certificate reloaded" in service.log.read_text()
