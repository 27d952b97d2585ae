"""The STARTTLS context's certificate expiry gauge (tls_certificate_expiry_timestamp_seconds)."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import REGISTRY

from manycore_common import tls

GAUGE = "tls_certificate_expiry_timestamp_seconds"


def test_not_after_reads_the_first_certificate() -> None:
    cert, _ = tls.self_signed_pem("mx.example.com", days=10)
    other, _ = tls.self_signed_pem("other.example.com", days=400)
    expires = tls.not_after(cert + other)
    assert abs(expires - (time.time() + 10 * 86400)) < 120


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
