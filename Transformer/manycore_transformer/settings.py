"""Transformer settings from the config: DKIM keys read and checked at start.

Keys are read once in the main process (so a bad file stops the service before it takes any
message, naming the file) and handed to worker processes as PEM bytes, since key objects do not
cross process boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from manycore_common.config import Config, ConfigError, DomainSettings, TransformerSection

from . import dkim
from .templates import (
    BEACON_PLACEHOLDERS,
    FEEDBACK_PLACEHOLDERS,
    INJECT_PLACEHOLDERS,
    untagged_unsubscribe,
    upgrade_legacy,
)
from .templates import problems as template_problems
from .transform import DomainSigner, Settings

#: (metric reason, text) of a condition worth a look that does not stop the service.
Notice = tuple[str, str]


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
    feedback_key: bytes
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


def _read_domain(
    config: Config, where: str, d: DomainSettings, warnings: list[Notice]
) -> DomainSpec:
    """One domain's keys, read and checked; ConfigError or dkim.KeyError_ when unusable."""
    rsa_pem = _read(
        config, f"{where}.dkim-private-key-file", d.dkim_private_key_file, d.dkim_private_key
    )
    key = dkim.load_key(rsa_pem)
    if key.algorithm != "rsa-sha256":
        raise dkim.KeyError_("dkim-private-key must be an RSA key")
    if key.bits < dkim.RECOMMENDED_RSA_BITS:
        warnings.append(
            (
                "weak-key",
                f"{where}: the DKIM key of {d.domain} has {key.bits} bits; "
                f"use {dkim.RECOMMENDED_RSA_BITS} or more",
            )
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
    return DomainSpec(
        domain=d.domain,
        return_path_domain=d.return_path_domain,
        selector=d.selector,
        rsa_pem=rsa_pem,
        ed25519_selector=d.ed25519_selector,
        ed25519_pem=ed_pem,
        beacon_url=d.beacon_url,
    )


def upgrade_inject(
    inject: dict[str, str],
) -> tuple[tuple[tuple[str, str], ...], list[Notice]]:
    """The injected headers, with the untagged ``unsub-{{uuid}}@{{return-path-domain}}`` of
    older configs read as ``{{unsubscribe-address}}`` (MxServer believes only tagged
    addresses, so the old form would turn every unsubscribe into nothing), and a warning for
    each header so read. Pure."""
    out: list[tuple[str, str]] = []
    warnings: list[Notice] = []
    for name, template in inject.items():
        upgraded = upgrade_legacy(template)
        if upgraded != template:
            warnings.append(
                (
                    "legacy-unsubscribe-address",
                    f"transformer.email-headers.inject.{name}: "
                    "unsub-{{uuid}}@{{return-path-domain}} is read as {{unsubscribe-address}} "
                    "(a tagged address per recipient); write that in the config",
                )
            )
        elif untagged_unsubscribe(template):
            # Another domain than the return path's: maybe the customer's own MX, so it is
            # left as written; if it is ours, MxServer refuses it at RCPT.
            warnings.append(
                (
                    "untagged-unsubscribe-address",
                    f"transformer.email-headers.inject.{name}: unsub-{{{{uuid}}}}@… is not a "
                    "tagged address and MxServer refuses it; for mail to a return-path domain "
                    "write {{unsubscribe-address}}",
                )
            )
        out.append((name, upgraded))
    return tuple(out), warnings


def _secret(config: Config, problems: list[str]) -> bytes:
    try:
        return config.customer.common_config.feedback_keys("transformer")[0]
    except ConfigError as exc:
        problems.extend(exc.problems)
        return b""


def read_spec(config: Config) -> tuple[SettingsSpec, list[Notice]]:
    """The settings spec and (reason, text) warnings (1024-bit keys, old templates);
    ConfigError names bad keys, all of them at once."""
    section: TransformerSection = config.require("transformer")
    problems: list[str] = []
    warnings: list[Notice] = []
    domains = []
    for index, d in enumerate(section.domain_settings):
        where = f"transformer.domain-settings[{index}]"
        try:
            domains.append(_read_domain(config, where, d, warnings))
        except ConfigError as exc:
            problems.extend(exc.problems)
        except dkim.KeyError_ as exc:
            problems.append(f"{where}: {d.dkim_private_key_file or 'dkim-private-key'}: {exc}")
    inject, inject_warnings = upgrade_inject(section.email_headers.inject)
    warnings += inject_warnings
    unsubscribe = config.customer.common_config.unsubscribe_secret
    spec = SettingsSpec(
        domains=tuple(domains),
        x_mailer=config.global_.transformer.x_mailer,
        feedback_key=_secret(config, problems),
        inject=inject,
        feedback_format=section.feedback_id.format,
        campaign_id=section.feedback_id.campaign_id,
        mail_type=section.feedback_id.mail_type,
        sender_id=section.feedback_id.sender_id,
        unsubscribe_secret=unsubscribe.get_secret_value().encode() if unsubscribe else None,
    )
    if not problems:
        problems.extend(check_templates(build(spec)))
    if problems:
        raise ConfigError(problems)
    return spec, warnings


def check_templates(settings: Settings) -> list[str]:
    """Problems with the configured templates, found at start rather than per message."""
    checks: list[tuple[str, str, tuple[str, ...]]] = [
        (f"email-headers.inject.{n}", t, INJECT_PLACEHOLDERS) for n, t in settings.inject
    ]
    checks.append(("feedback-id.format", settings.feedback_format, FEEDBACK_PLACEHOLDERS))
    for signer in settings.domains.values():
        if signer.beacon_url:
            where = f"domain-settings[{signer.domain}].beacon-url"
            checks.append((where, signer.beacon_url, BEACON_PLACEHOLDERS))
    return template_problems(checks, settings.unsubscribe_secret is not None)


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
        feedback_key=spec.feedback_key,
        inject=spec.inject,
        feedback_format=spec.feedback_format,
        campaign_id=spec.campaign_id,
        mail_type=spec.mail_type,
        sender_id=spec.sender_id,
        unsubscribe_secret=spec.unsubscribe_secret,
    )
