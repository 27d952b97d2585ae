"""The relayhost option (deploy/components/relayhost, docs/operations/egress.md): PostfixLog's
real Postfix hands its mail to a smarthost that demands STARTTLS and SASL, with the password
in a root-only texthash file, as the Secret manycore-postfix-relay is mounted (mode 0400)."""

from __future__ import annotations

import shutil
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from manycore_common import tls
from tests.helpers import LOOPBACK, RedisServer, wait_for
from tests.integration.postfix_env import Sink, postfixlog_env

USER, PASSWORD = "relay-user", "s3cret relay password"
#: The main-cf settings of the relayhost option, as docs/operations/egress.md and
#: deploy/components/relayhost list them (tests/deploy/test_egress.py holds them together).
RELAY_MAIN_CF = {
    "smtp_sasl_auth_enable": "yes",
    "smtp_sasl_password_maps": "texthash:/secrets/postfix-relay/sasl_passwd",
    "smtp_sasl_security_options": "noanonymous",
    "smtp_sasl_tls_security_options": "noanonymous",
    "smtp_tls_security_level": "encrypt",
}


class RelaySink(Sink):
    """A smarthost: STARTTLS first, then AUTH (PLAIN or LOGIN), then mail."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.logins: list[tuple[bytes, bool]] = []
        cert, key = tls.self_signed_pem("relay.test")
        (directory / "relay.crt").write_bytes(cert)
        (directory / "relay.key").write_bytes(key)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(directory / "relay.crt", directory / "relay.key")
        self.controller = Controller(
            self.handler,
            hostname=LOOPBACK,
            port=self.port,
            server_hostname="relay.test",
            tls_context=context,
            require_starttls=True,
            auth_required=True,
            auth_require_tls=True,
            authenticator=self.authenticate,
        )

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == USER.encode()
            and auth_data.password == PASSWORD.encode()
        )
        self.logins.append((getattr(auth_data, "login", b""), ok))
        return AuthResult(success=ok)


@pytest.fixture
def secrets() -> Iterator[Path]:
    """The mounted Secret's directory: root-owned, the file mode 0400."""
    directory = Path(tempfile.mkdtemp(prefix="manycore-relay-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_mail_goes_through_a_smarthost_with_starttls_and_sasl(
    tmp_path: Path, redis_server: RedisServer, secrets: Path
) -> None:
    from redis import Redis

    Redis(host=LOOPBACK, port=redis_server.port).flushall()
    sink = RelaySink(tmp_path).start()
    relayhost = f"[{LOOPBACK}]:{sink.port}"
    password_file = secrets / "sasl_passwd"
    password_file.write_text(f"{relayhost} {USER}:{PASSWORD}\n")
    password_file.chmod(0o400)
    # What docs/operations/egress.md tells an operator to set (relayhost: the sink).
    main_cf = {
        **RELAY_MAIN_CF,
        "smtp_sasl_password_maps": f"texthash:{password_file}",
    }
    try:
        with postfixlog_env(tmp_path, redis_server.port, sink, main_cf=main_cf) as env:
            env.start()
            env.push("relay1", ["ok-relayed@sink.test"])
            wait_for(lambda: len(env.events()) >= 1, timeout=40, what="the delivered event")
            (event,) = env.events()
            assert event["event"] == "delivered" and event["rcpt"] == "ok-relayed@sink.test"
            assert sink.deliveries("ok-relayed@sink.test") == 1
            assert sink.logins and all(ok for _, ok in sink.logins), sink.logins
            assert any("TLS connection established" in line for line in env.log_lines())
    finally:
        sink.stop()
