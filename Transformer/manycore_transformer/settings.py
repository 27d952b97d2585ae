"""Transformer settings from the config: DKIM keys read and checked at start.

Keys are read once in the main process (so a bad file stops the service before it takes any
message, naming the file) and handed to worker processes as PEM bytes, since key objects do not
cross process boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from manycore_common.config import Config, ConfigError, TransformerSection

from . import dkim
from .transform import DomainSigner, Settings, check_templates


@dataclass(frozen=True)
class DomainSpec:
    domain: str
    return_path_domain: str
    selector: str
    rsa_pem: bytes
    ed25519_selector: str | None
    ed25519_pem: bytes | None
    beacon_url: str | None


@dataclass(frozen=True)
class SettingsSpec:
    """Everything a worker needs, picklable."""

    domains: tuple[DomainSpec, ...]
    x_mailer: str
    inject: tuple[tuple[str, str], ...]
    feedback_format: str
    campaign_id: str
    mail_type: str
    sender_id: str
    unsubscribe_secret: bytes | None = None


def _read(config: Config, path_key: str, path: object, inline: object) -> bytes:
    if isinstance(inline, SecretStr):
        return inline.get_secret_value().encode()
    assert isinstance(path, Path)
    full = config.path(path)
    try:
        return full.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path_key}: cannot read {full}: {exc.strerror or exc}"]) from None


def read_spec(config: Config) -> tuple[SettingsSpec, list[str]]:
    """The settings spec and warnings (e.g. 1024-bit keys); ConfigError names bad keys."""
    section: TransformerSection = config.require("transformer")
    problems: list[str] = []
    warnings: list[str] = []
    domains = []
    for index, d in enumerate(section.domain_settings):
        where = f"transformer.domain-settings[{index}]"
        try:
            rsa_pem = _read(
                config,
                f"{where}.dkim-private-key-file",
                d.dkim_private_key_file,
                d.dkim_private_key,
            )
            key = dkim.load_key(rsa_pem)
            if key.algorithm != "rsa-sha256":
                raise dkim.KeyError_("dkim-private-key must be an RSA key")
            if key.bits < dkim.RECOMMENDED_RSA_BITS:
                warnings.append(
                    f"{where}: the DKIM key of {d.domain} has {key.bits} bits; "
                    f"use {dkim.RECOMMENDED_RSA_BITS} or more"
                )
            ed_pem = None
            if d.dkim_ed25519_private_key_file or d.dkim_ed25519_private_key:
                ed_pem = _read(
                    config,
                    f"{where}.dkim-ed25519-private-key-file",
                    d.dkim_ed25519_private_key_file,
                    d.dkim_ed25519_private_key,
                )
                if dkim.load_key(ed_pem).algorithm != "ed25519-sha256":
                    raise dkim.KeyError_("dkim-ed25519-private-key must be an Ed25519 key")
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        except dkim.KeyError_ as exc:
            origin = d.dkim_private_key_file or "dkim-private-key"
            problems.append(f"{where}: {origin}: {exc}")
            continue
        domains.append(
            DomainSpec(
                domain=d.domain,
                return_path_domain=d.return_path_domain,
                selector=d.selector,
                rsa_pem=rsa_pem,
                ed25519_selector=d.ed25519_selector,
                ed25519_pem=ed_pem,
                beacon_url=d.beacon_url,
            )
        )
    spec = SettingsSpec(
        domains=tuple(domains),
        x_mailer=config.global_.transformer.x_mailer,
        inject=tuple(section.email_headers.inject.items()),
        feedback_format=section.feedback_id.format,
        campaign_id=section.feedback_id.campaign_id,
        mail_type=section.feedback_id.mail_type,
        sender_id=section.feedback_id.sender_id,
        unsubscribe_secret=(
            secret.get_secret_value().encode()
            if (secret := config.customer.common_config.unsubscribe_secret)
            else None
        ),
    )
    if not problems:
        problems.extend(check_templates(build(spec)))
    if problems:
        raise ConfigError(problems)
    return spec, warnings


def build(spec: SettingsSpec) -> Settings:
    return Settings(
        domains={
            d.domain: DomainSigner(
                domain=d.domain,
                return_path_domain=d.return_path_domain,
                selector=d.selector,
                rsa=dkim.load_key(d.rsa_pem),
                ed25519_selector=d.ed25519_selector,
                ed25519=dkim.load_key(d.ed25519_pem) if d.ed25519_pem else None,
                beacon_url=d.beacon_url,
            )
            for d in spec.domains
        },
        x_mailer=spec.x_mailer,
        inject=spec.inject,
        feedback_format=spec.feedback_format,
        campaign_id=spec.campaign_id,
        mail_type=spec.mail_type,
        sender_id=spec.sender_id,
        unsubscribe_secret=spec.unsubscribe_secret,
    )
