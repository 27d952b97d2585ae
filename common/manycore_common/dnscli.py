"""``manycore-dns``: the DNS records to publish for this config, as zone-file lines.

    manycore-dns [--outbound-ip IP ...] [--mx-host NAME]        print the records
    manycore-dns --check [--nameserver IP[:port]]               look each one up: ok/missing/wrong

Exit codes: 0 printed, or every record ok; 1 something missing or wrong; 2 config error.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import SecretStr

from . import dnscheck, dnsrecords
from .config import (
    DEFAULT_CUSTOMER_CONFIG,
    DEFAULT_GLOBAL_CONFIG,
    Config,
    ConfigError,
    DomainSettings,
    exit_on_config_error,
    load_config,
)

MAIN_CF = "postfixlog.string-replacer.main-cf"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="manycore-dns", description=__doc__.split("\n")[0])
    parser.add_argument("--global-config-file", default=str(DEFAULT_GLOBAL_CONFIG))
    parser.add_argument("--customer-config-file", default=str(DEFAULT_CUSTOMER_CONFIG))
    parser.add_argument(
        "--outbound-ip", action="append", default=[], metavar="IP",
        help="Postfix's sending address (repeat for more): SPF ip4/ip6, A and PTR records",
    )  # fmt: skip
    parser.add_argument("--mx-host", help="the MX's DNS name (default: mxserver.hostname)")
    parser.add_argument("--ttl", type=int, default=dnsrecords.DEFAULT_TTL)
    parser.add_argument("--check", action="store_true", help="look the records up in DNS")
    parser.add_argument("--nameserver", metavar="IP[:PORT]", help="ask this server (--check)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per lookup")
    return parser.parse_args(argv)


def _key_bytes(config: Config, where: str, path: Path | None, inline: SecretStr | None) -> bytes:
    if inline is not None:
        return inline.get_secret_value().encode()
    assert path is not None
    full = config.path(path)
    try:
        return full.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read {full}: {exc.strerror or exc}"]) from None


def _key(
    config: Config,
    where: str,
    selector: str,
    algorithm: dnsrecords.DkimAlgorithm,
    source: tuple[Path | None, SecretStr | None],
    notes: list[str],
) -> dnsrecords.DkimKey:
    """The public half of a configured private key. A key file that does not exist yet (the
    example config's) gives a placeholder and a note; an unreadable or unusable one is an
    error naming the key."""
    path, inline = source
    if inline is None and path is not None and not config.path(path).exists():
        notes.append(f"{where}: {config.path(path)} does not exist: its DKIM record is a sketch")
        return dnsrecords.DkimKey(selector, algorithm, None)
    try:
        found, public = dnsrecords.dkim_public_key(_key_bytes(config, where, path, inline))
    except (ValueError, TypeError) as exc:
        raise ConfigError([f"{where}: not a usable DKIM private key: {exc}"]) from None
    if found != algorithm:
        raise ConfigError([f"{where}: an {found} key; {algorithm} expected"])
    return dnsrecords.DkimKey(selector, found, public)


def sending_domain(
    config: Config, index: int, d: DomainSettings, notes: list[str]
) -> dnsrecords.SendingDomain:
    where = f"transformer.domain-settings[{index}]"
    keys = [
        _key(config, f"{where}.dkim-private-key-file", d.selector, "rsa",
             (d.dkim_private_key_file, d.dkim_private_key), notes)
    ]  # fmt: skip
    if d.dkim_ed25519_private_key_file or d.dkim_ed25519_private_key:
        if not d.ed25519_selector:
            raise ConfigError([f"{where}.ed25519-selector: required with an Ed25519 key"])
        keys.append(
            _key(config, f"{where}.dkim-ed25519-private-key-file", d.ed25519_selector,
                 "ed25519", (d.dkim_ed25519_private_key_file, d.dkim_ed25519_private_key), notes)
        )  # fmt: skip
    return dnsrecords.SendingDomain(d.domain, d.return_path_domain, tuple(keys))


def helo_name(config: Config) -> str:
    """Postfix's myhostname as PostfixLog reads it: main-cf, else the file ``myhostname``."""
    section = config.customer.postfixlog
    value = section.string_replacer.main_cf.get("myhostname") if section else None
    if value is None:
        try:
            value = config.path(Path("myhostname")).read_text(encoding="utf-8").strip() or None
        except OSError:
            value = None
    if not isinstance(value, str) or not value:
        raise ConfigError([f"{MAIN_CF}.myhostname: required (the HELO name the records name)"])
    return value.lower().rstrip(".")


def facts_from(config: Config, args: argparse.Namespace) -> tuple[dnsrecords.Facts, list[str]]:
    """The facts, and notes about what was assumed; ConfigError names a bad key."""
    section = config.require("transformer")
    notes: list[str] = []
    domains = tuple(
        sending_domain(config, i, d, notes) for i, d in enumerate(section.domain_settings)
    )
    mx_host = args.mx_host or (config.customer.mxserver and config.customer.mxserver.hostname)
    if not mx_host:
        mx_host = f"mx.{domains[0].domain}"
        notes.append(f"mxserver.hostname is not set: the MX records name {mx_host}; set it")
    try:
        ips = tuple(str(ipaddress.ip_address(ip)) for ip in args.outbound_ip)
    except ValueError as exc:
        raise ConfigError([f"--outbound-ip: {exc}"]) from None
    facts = dnsrecords.Facts(domains, mx_host.lower().rstrip("."), helo_name(config), ips)
    return facts, notes


def print_check(verdicts: Sequence[dnscheck.Verdict]) -> int:
    for v in verdicts:
        r = v.record
        line = f"{v.status:<8}{r.rtype:<5} {r.name}"
        print(f"{line}  {v.detail}" if v.detail else line)
    bad = [v for v in verdicts if v.status != "ok"]
    print(f"{len(verdicts) - len(bad)} ok, {len(bad)} missing or wrong")
    return 1 if bad else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(Path(args.global_config_file), Path(args.customer_config_file), "dns")
        facts, notes = facts_from(config, args)
        resolver = dnscheck.resolver_for(args.nameserver, args.timeout) if args.check else None
    except ConfigError as exc:
        exit_on_config_error(exc)
    except ValueError as exc:  # --nameserver
        exit_on_config_error(ConfigError([f"--nameserver: {exc}"]))
    warnings = notes + dnsrecords.warnings_for(facts)
    for w in warnings:
        print(f"manycore-dns: warning: {w}", file=sys.stderr)
    records = dnsrecords.build_records(facts)
    if resolver is None:
        sys.stdout.write(dnsrecords.render(records, warnings, args.ttl))
        return 0
    return print_check(dnscheck.check(records, dnscheck.lookup_with(resolver), facts.helo))


if __name__ == "__main__":
    sys.exit(main())
