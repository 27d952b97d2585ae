"""``manycore-dns`` as an operator runs it: the console script on a config with real key files,
printing the records, then ``--check`` against a small authoritative DNS server started here on
127.0.0.1 (dnspython's message API, answering from a dict). No other DNS traffic.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.zone
import pytest

from tests.helpers import LOOPBACK, ed25519_pem, write_configs, write_dkim_keys

OUTBOUND = "203.0.113.25"
Zone = dict[tuple[str, str], list[str]]  # (name without final dot, type) -> rdata texts


class StubDns:
    """An authoritative server for whatever is in ``zone``: NOERROR with the records,
    NOERROR without any when the name exists with other types, else NXDOMAIN."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.queries: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True).lower()
        rtype = dns.rdatatype.to_text(q.rdtype)
        self.queries.append((name, rtype))
        values = self.zone.get((name, rtype))
        if values:
            response.answer.append(dns.rrset.from_text_list(q.name, 300, "IN", rtype, values))
        elif not any(n == name for n, _ in self.zone):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.sock.sendto(self._answer(dns.message.from_wire(data)).to_wire(), peer)

    def __enter__(self) -> StubDns:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()
        self.sock.close()


def run(global_file: Path, customer_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("manycore-dns")
    return subprocess.run(
        [str(script), "--global-config-file", str(global_file),
         "--customer-config-file", str(customer_file), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def with_mx_and_ed25519(customer: dict[str, Any]) -> None:
    customer["mxserver"]["hostname"] = "mx.example.com"
    first = customer["transformer"]["domain-settings"][0]
    first["dkim-ed25519-private-key-file"] = "dkim/ed.pem"
    first["ed25519-selector"] = "mailer-ed"


@pytest.fixture
def configs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    global_file, customer_file = write_configs(tmp_path / "c", 6379, with_mx_and_ed25519)
    write_dkim_keys(customer_file.parent)
    (customer_file.parent / "dkim" / "ed.pem").write_bytes(ed25519_pem(label="dns"))
    yield global_file, customer_file


def published(zone_text: str) -> Zone:
    """What an operator publishes from the printed zone (the commented lines are not theirs),
    plus the A and PTR records their cloud and load balancer provide."""
    zone = dns.zone.from_text(zone_text, origin=".", relativize=False, check_origin=False)
    out: Zone = {}
    for name, rds in zone.iterate_rdatasets():
        key = (name.to_text(omit_final_dot=True), dns.rdatatype.to_text(rds.rdtype))
        out[key] = [r.to_text() for r in rds]
    out[("mx.example.com", "A")] = ["198.51.100.7"]
    out[("25.113.0.203.in-addr.arpa", "PTR")] = ["mxserver.example.com."]
    return out


def test_prints_records_then_check_finds_them_all(configs: tuple[Path, Path]) -> None:
    printed = run(*configs, "--outbound-ip", OUTBOUND)
    assert printed.returncode == 0, printed.stderr
    zone = published(printed.stdout)
    assert zone[("bounce.example.com", "MX")] == ["10 mx.example.com."]
    assert zone[("bounce.example.com", "TXT")] == [f'"v=spf1 ip4:{OUTBOUND} -all"']
    assert zone[("mxserver.example.com", "A")] == [OUTBOUND]
    assert ("mailer-ed._domainkey.example.com", "TXT") in zone
    assert "WARNING" not in printed.stdout  # the example's return paths are aligned now
    with StubDns(zone) as server:
        checked = run(*configs, "--outbound-ip", OUTBOUND, "--check",
                      "--nameserver", f"{LOOPBACK}:{server.port}")  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    assert lines[-1] == f"{len(lines) - 1} ok, 0 missing or wrong"
    assert all(line.startswith("ok ") for line in lines[:-1])
    assert len(lines) - 1 == 17  # 2x(MX, SPF, MTA-STS, TLS-RPT), MX A, 3 DKIM, 2 DMARC, HELO 3
    assert ("25.113.0.203.in-addr.arpa", "PTR") in server.queries


def test_check_names_what_is_missing_and_what_is_wrong(configs: tuple[Path, Path]) -> None:
    zone = published(run(*configs).stdout)
    # Without --outbound-ip: the HELO name's A record comes from the zone, then its PTR.
    zone[("mxserver.example.com", "A")] = [OUTBOUND]
    zone[("25.113.0.203.in-addr.arpa", "PTR")] = ["ec2-203-0-113-25.compute.example."]
    del zone[("_dmarc.bexample.com", "TXT")]
    zone[("bounce.bexample.com", "MX")] = ["10 aspmx.l.google.com."]
    zone[("bounce.example.com", "TXT")].append('"v=spf1 -all"')
    zone[("mailer._domainkey.example.com", "TXT")] = ['"v=DKIM1; k=rsa; p=QUJD"']
    with StubDns(zone) as server:
        checked = run(*configs, "--check", "--nameserver", f"{LOOPBACK}:{server.port}")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    bad = {tuple(line.split()[:3]): line for line in checked.stdout.splitlines()
           if not line.startswith("ok ")}  # fmt: skip
    assert set(bad) == {
        ("missing", "TXT", "_dmarc.bexample.com"),
        ("wrong", "MX", "bounce.bexample.com"),
        ("wrong", "TXT", "bounce.example.com"),
        ("wrong", "TXT", "mailer._domainkey.example.com"),
        ("wrong", "PTR", "25.113.0.203.in-addr.arpa"),
        ("12", "ok,", "5"),  # the summary line
    }
    assert "MX is aspmx.l.google.com" in bad[("wrong", "MX", "bounce.bexample.com")]
    assert "permerror" in bad[("wrong", "TXT", "bounce.example.com")]
    assert (
        "PTR is ec2-203-0-113-25.compute.example"
        in bad[("wrong", "PTR", "25.113.0.203.in-addr.arpa")]
    )


def test_config_errors_exit_2(tmp_path: Path) -> None:
    def bad_key(customer: dict[str, Any]) -> None:
        customer["transformer"]["domain-settings"][0]["dkim-private-key"] = "not a key"
        del customer["transformer"]["domain-settings"][0]["dkim-private-key-file"]

    configs = write_configs(tmp_path / "c", 6379, bad_key)
    result = run(*configs)
    assert result.returncode == 2
    assert "transformer.domain-settings[0].dkim-private-key-file: not a usable DKIM" in (
        result.stderr
    )
    result = run(*write_configs(tmp_path / "d", 6379), "--check", "--nameserver", "localhost")
    assert (result.returncode, result.stderr.strip()) == (
        2,
        "config error: --nameserver: 'localhost' does not appear to be an IPv4 or IPv6 address",
    )


def test_unaligned_return_path_domain_is_warned(tmp_path: Path) -> None:
    def unaligned(customer: dict[str, Any]) -> None:
        customer["transformer"]["domain-settings"][1]["return-path-domain"] = "bounce.example.com"

    configs = write_configs(tmp_path / "c", 6379, unaligned)
    write_dkim_keys(configs[1].parent)
    result = run(*configs)
    assert result.returncode == 0
    warning = "bexample.com: return-path-domain bounce.example.com is not aligned with it"
    assert f"; WARNING: {warning}" in result.stdout
    assert f"manycore-dns: warning: {warning}" in result.stderr
