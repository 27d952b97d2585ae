"""Least privilege in config loading: a service reads the secret files of its own section and
of the common-config keys it uses, no others; borrowed sections load without their secrets;
the scope table matches what each service's code reads."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml

import manycore_common.config as config_model
from manycore_common.config import ConfigError, load_config
from manycore_common.configscope import SCOPES, SECTIONS, Scope, scoped_customer
from tests.helpers import CUSTOMER_EXAMPLE, GLOBAL_EXAMPLE

ROOT = Path(__file__).resolve().parents[2]
#: Service name → the folder of its package.
PACKAGES = {
    "receiver": "Receiver",
    "httpreceiver": "HttpReceiver",
    "transformer": "Transformer",
    "postfixlog": "PostfixLog",
    "mxserver": "MxServer",
    "backdata": "BackData",
    "redis": "Redis",
}
#: Methods of CommonConfig that read secrets, and the keys they read.
COMMON_METHODS = {"feedback_keys": ("feedback-secret", "feedback-secret-previous")}


def every_secret_as_a_file(directory: Path) -> tuple[Path, Path]:
    """The example config with every secret of every section and of common-config given as
    a file in ``secrets/``; no file is written (tests write the ones a service may read)."""
    data: dict[str, Any] = yaml.safe_load(CUSTOMER_EXAMPLE.read_text())
    for name in ("receiver", "httpreceiver"):
        data[name]["auth-logins"] = [{"username": "u", "password-file": f"secrets/{name}-pw"}]
    data.setdefault("operator", {"reliable-queue": {"redis": {"username": "mc-operator"}}})
    for name in SECTIONS:
        data[name]["reliable-queue"]["redis"]["password-file"] = "secrets/redis-password"
    data["backdata"]["signing-secret-file"] = "secrets/signing"
    data["common-config"] = {
        "unsubscribe-secret-file": "secrets/unsubscribe",
        "feedback-secret-file": "secrets/feedback",
        "object-storage": {"bucket": "b", "secret-access-key-file": "secrets/s3"},
    }
    directory.mkdir(parents=True, exist_ok=True)
    customer = directory / "customer.yaml"
    customer.write_text(yaml.safe_dump(data))
    return GLOBAL_EXAMPLE, customer


def write_secrets(directory: Path, *names: str) -> None:
    (directory / "secrets").mkdir(exist_ok=True)
    for name in names:
        (directory / "secrets" / name).write_text(f"{name}-value-{'x' * 40}\n")


def test_mxserver_starts_without_other_services_secrets(tmp_path: Path) -> None:
    g, c = every_secret_as_a_file(tmp_path)
    write_secrets(tmp_path, "redis-password", "feedback")
    config = load_config(g, c, "mxserver")
    customer = config.customer
    assert customer.mxserver is not None and customer.transformer is not None
    assert customer.mxserver.reliable_queue.redis.password is not None
    assert customer.common_config.feedback_secret is not None
    # Not loaded: other services' sections and secrets.
    assert customer.receiver is None and customer.backdata is None
    assert customer.httpreceiver is None and customer.redis is None
    assert customer.common_config.unsubscribe_secret is None
    assert customer.common_config.object_storage is None
    # Borrowed: plain values only; the Transformer's Redis password stays unread.
    assert customer.transformer.domain_settings[0].return_path_domain
    assert customer.transformer.reliable_queue.redis.password is None
    assert customer.postfixlog is not None


@pytest.mark.parametrize(
    ("service", "files"),
    [
        ("receiver", {"receiver-pw", "redis-password"}),
        ("httpreceiver", {"httpreceiver-pw", "redis-password", "unsubscribe"}),
        ("transformer", {"redis-password", "unsubscribe", "feedback"}),
        ("postfixlog", {"redis-password"}),
        ("mxserver", {"redis-password", "feedback"}),
        ("backdata", {"redis-password", "signing"}),
        ("redis", {"redis-password", "s3"}),
        # The operator tools' own login: its password file only, no S3 key, no admin's.
        ("operator", {"redis-password"}),
        ("dns", set()),
    ],
)
def test_each_service_reads_exactly_its_own_secret_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, service: str, files: set[str]
) -> None:
    g, c = every_secret_as_a_file(tmp_path)
    read: list[str] = []

    def record(base: Path, value: object, key: str) -> str:
        read.append(Path(str(value)).name)
        return "s" * 40

    monkeypatch.setattr(config_model, "read_secret_file", record)
    load_config(g, c, service)
    assert set(read) == files


def test_own_missing_secret_is_an_error_naming_the_key(tmp_path: Path) -> None:
    g, c = every_secret_as_a_file(tmp_path)
    write_secrets(tmp_path, "redis-password")  # receiver-pw missing
    with pytest.raises(ConfigError) as failure:
        load_config(g, c, "receiver")
    [problem] = failure.value.problems
    assert problem.startswith("customer.yaml: receiver.auth-logins[0]: password-file: cannot read")


def test_used_common_secret_missing_is_an_error(tmp_path: Path) -> None:
    g, c = every_secret_as_a_file(tmp_path)
    write_secrets(tmp_path, "redis-password")  # feedback missing
    with pytest.raises(ConfigError) as failure:
        load_config(g, c, "mxserver")
    [problem] = failure.value.problems
    assert problem.startswith("customer.yaml: common-config: feedback-secret-file: cannot read")


def test_a_borrowed_section_is_still_validated(tmp_path: Path) -> None:
    g, c = every_secret_as_a_file(tmp_path)
    data = yaml.safe_load(c.read_text())
    del data["transformer"]["domain-settings"][1]["selector"]
    data["backdata"]["no-such-key"] = 1  # not loaded by MxServer: not its problem
    c.write_text(yaml.safe_dump(data))
    write_secrets(tmp_path, "redis-password", "feedback")
    with pytest.raises(ConfigError) as failure:
        load_config(g, c, "mxserver")
    assert failure.value.problems == [
        "customer.yaml: transformer.domain-settings[1].selector: field required"
    ]


def test_unknown_top_level_keys_are_still_errors(tmp_path: Path) -> None:
    g, c = every_secret_as_a_file(tmp_path)
    data = yaml.safe_load(c.read_text())
    data["mxservre"] = {}
    c.write_text(yaml.safe_dump(data))
    write_secrets(tmp_path, "redis-password", "signing")
    with pytest.raises(ConfigError) as failure:
        load_config(g, c, "backdata")
    assert failure.value.problems == ["customer.yaml: mxservre: unknown key"]


def test_without_a_service_everything_loads(tmp_path: Path) -> None:
    g, c = every_secret_as_a_file(tmp_path)
    write_secrets(
        tmp_path, "receiver-pw", "httpreceiver-pw", "redis-password", "signing", "unsubscribe", "s3"
    )
    with pytest.raises(ConfigError) as failure:
        load_config(g, c)
    [problem] = failure.value.problems
    assert problem.startswith("customer.yaml: common-config: feedback-secret-file: cannot read")
    write_secrets(tmp_path, "feedback")
    assert load_config(g, c).customer.receiver is not None


def test_scoped_customer_is_pure_and_keeps_plain_common_keys() -> None:
    data: dict[str, dict[str, Any]] = {
        "receiver": {"a": 1},
        "backdata": {"b": 2},
        "common-config": {"feedback-secret": "f", "unsubscribe-secret-file": "u", "plain": 3},
    }
    kept, borrowed = scoped_customer(data, Scope("receiver", ("backdata",), ()))
    assert kept == {"receiver": {"a": 1}, "backdata": {"b": 2}, "common-config": {"plain": 3}}
    assert borrowed == {"backdata"}
    assert data["common-config"]["feedback-secret"] == "f"  # the input is untouched


# ------------------------------------------------------------ the table matches the code


def reads_of(folder: str) -> tuple[set[str], set[str]]:
    """(customer sections, common-config keys) the package's code reads, by attribute
    name: ``config.customer.<section>``, ``common_config.<key>``, ``require("<section>")``."""
    sections: set[str] = set()
    common: set[str] = set()
    for path in sorted((ROOT / folder).glob("manycore_*/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
                if node.value.attr == "customer" and node.attr != "common_config":
                    sections.add(node.attr)
                if node.value.attr == "common_config":
                    common.update(COMMON_METHODS.get(node.attr, (node.attr.replace("_", "-"),)))
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "require"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                sections.add(str(node.args[0].value))
    return sections, common


@pytest.mark.parametrize("service", sorted(PACKAGES))
def test_the_scope_covers_everything_the_code_reads(service: str) -> None:
    sections, common = reads_of(PACKAGES[service])
    scope = SCOPES[service]
    assert sections <= {scope.own, *scope.borrowed}, f"{service} reads {sections}"
    assert common <= set(scope.common), f"{service} reads common-config {common}"


def test_the_code_reader_sees_known_reads() -> None:
    """The reader above is not blind: it finds the reads we know of."""
    assert reads_of("MxServer")[0] == {"mxserver", "transformer", "postfixlog"}
    assert reads_of("HttpReceiver")[1] == {"unsubscribe-secret", "suppression"}
    assert reads_of("Redis")[1] == {"object-storage"}
