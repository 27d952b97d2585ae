"""Verifying DKIM signatures with two implementations that are not ours: dkimpy (Python,
Ed25519 through libsodium) and OpenDKIM (C, Debian's package), both fed the public keys
directly so that no DNS lookup ever happens (OpenDKIM also runs without any network)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import dkim

from tests.helpers import require_binary


def dkimpy_results(message: bytes, records: dict[str, str]) -> list[bool]:
    """One result per DKIM-Signature, top first. ``records`` maps
    ``selector._domainkey.domain`` to the TXT record."""

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes | None:
        key = (name.decode() if isinstance(name, bytes) else name).rstrip(".")
        record = records.get(key)
        return record.encode() if record else None

    count = len(re.findall(rb"^DKIM-Signature:", message, re.MULTILINE | re.IGNORECASE))
    results = []
    for index in range(count):
        try:
            results.append(bool(dkim.DKIM(message).verify(idx=index, dnsfunc=dnsfunc)))
        except dkim.ValidationError:
            results.append(False)
    return results


def opendkim_results(message: bytes, records: dict[str, str], workdir: Path) -> dict[str, str]:
    """Algorithm (``rsa-sha256``, ``ed25519-sha256``) → OpenDKIM's verdict (pass, fail…)."""
    opendkim = require_binary("opendkim")
    unshare = require_binary("unshare")
    workdir.mkdir(parents=True, exist_ok=True)
    keys = workdir / "keys.txt"
    keys.write_text("".join(f"{name} {record}\n" for name, record in records.items()))
    conf = workdir / "opendkim.conf"
    conf.write_text(
        f"Mode v\nTestPublicKeys {keys}\nSyslog no\nAlwaysAddARHeader yes\nAuthservID test\n"
    )
    eml = workdir / "message.eml"
    eml.write_bytes(message)
    run = subprocess.run(
        [unshare, "-n", opendkim, "-x", str(conf), "-t", str(eml), "-vv"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = run.stdout + run.stderr
    verdicts = dict(
        (algorithm, verdict)
        for verdict, algorithm in re.findall(r"dkim=(\w+)[^;]*?header\.a=([\w-]+)", output)
    )
    assert verdicts, output
    return verdicts
