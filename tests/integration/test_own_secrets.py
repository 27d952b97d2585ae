"""Least privilege, end to end: every service, started through its real console script with a
config directory that holds only its own secret files (as its pod holds only its own Secret),
starts and becomes ready against a Redis that requires the password (manycore-redis, itself
started with only its own files). A service missing one of its own files exits 2 naming it.

The file names are the keys of the per-service Secrets of deploy/README.md."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import LOOPBACK, Service, free_port, running, write_configs, write_dkim_keys
from tests.integration.postfix_env import PostfixLogEnv, Sink

REDIS_PASSWORD = "test-only-redis-password-0123456789"
#: Every secret file of the config, and a TEST value for each (never used in production).
SECRETS = {
    "redis-password": REDIS_PASSWORD,
    "receiver-app-password": "test-receiver-password",
    "httpreceiver-app-password": "test-httpreceiver-password",
    "backdata-signing-secret": "test-signing-secret",
    "unsubscribe-secret": "test-unsubscribe-secret-0123456789abcdef",
    "feedback-secret": "test-feedback-secret-0123456789abcdef",
}
#: What each service's own Secret holds (deploy/README.md).
OWN_FILES = {
    "redis": {"redis-password"},
    "receiver": {"redis-password", "receiver-app-password"},
    "httpreceiver": {"redis-password", "httpreceiver-app-password", "unsubscribe-secret"},
    "transformer": {"redis-password", "unsubscribe-secret", "feedback-secret"},
    "mxserver": {"redis-password", "feedback-secret"},
    "backdata": {"redis-password", "backdata-signing-secret"},
    "postfixlog": {"redis-password"},
}


def secrets_as_files(customer: dict[str, Any], redis_port: int, data_dir: Path) -> None:
    """Every secret of every section as a ``secrets/<name>`` file, every service logged in to
    Redis as the user of manycore-redis."""
    login = {
        "hostname": LOOPBACK,
        "port": redis_port,
        "username": "manycore",
        "password-file": "secrets/redis-password",
    }
    customer["redis"]["server"] = {
        "bind": LOOPBACK,
        "port": redis_port,
        "data-dir": str(data_dir),
        "password-file": "secrets/redis-password",
        "backup-interval-seconds": 0,
    }
    for section in customer.values():
        if isinstance(section, dict) and "reliable-queue" in section:
            section["reliable-queue"]["redis"] = dict(login)
    for name in ("receiver", "httpreceiver"):
        customer[name]["auth-logins"] = [
            {"username": "app", "password-file": f"secrets/{name}-app-password"}
        ]
    customer["backdata"]["signing-secret-file"] = "secrets/backdata-signing-secret"
    customer["common-config"] = {
        "unsubscribe-secret-file": "secrets/unsubscribe-secret",
        "feedback-secret-file": "secrets/feedback-secret",
    }


def config_dir(base: Path, source: Path, files: set[str]) -> tuple[Path, Path]:
    """A copy of the config files in ``base`` with only ``files`` in secrets/."""
    base.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file():
            shutil.copy(path, base / path.name)
    write_dkim_keys(base)
    (base / "secrets").mkdir()
    for name in files:
        (base / "secrets" / name).write_text(SECRETS[name] + "\n")
    return base / "inboxbooster-mailer-global.yaml", base / "inboxbooster-mailer-customer.yaml"


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(the full config's directory, a temporary root); manycore-redis runs with only its
    own secret file."""
    root = tmp_path_factory.mktemp("own-secrets")
    redis_port = free_port()

    def change(customer: dict[str, Any]) -> None:
        secrets_as_files(customer, redis_port, root / "redis-data")
        customer["backdata"]["post-url"] = f"http://{LOOPBACK}:{free_port()}/hook"

    write_configs(root / "full", redis_port, change)
    g, c = config_dir(root / "redis", root / "full", OWN_FILES["redis"])
    with running(Service("redis", g, c, root / "redis.log")):
        yield root / "full", root


@pytest.mark.parametrize("service", ["receiver", "httpreceiver", "transformer", "mxserver"])
def test_service_starts_with_only_its_own_secrets(
    suite: tuple[Path, Path], tls_files: tuple[Path, Path], service: str
) -> None:
    full, root = suite
    g, c = config_dir(root / service, full, OWN_FILES[service])
    shutil.copy(tls_files[0], c.parent / "receiver_cert.pem")
    shutil.copy(tls_files[1], c.parent / "receiver_key.pem")
    others = set(SECRETS) - OWN_FILES[service]
    assert others, "the test must leave other services' secrets out"
    with running(Service(service, g, c, root / f"{service}.log")) as started:
        assert started.ready()  # /readyz pings Redis: the password file was read


def test_backdata_starts_with_only_its_own_secrets(suite: tuple[Path, Path]) -> None:
    full, root = suite
    g, c = config_dir(root / "backdata", full, OWN_FILES["backdata"])
    # Ready needs only Redis; the webhook it would POST to is not there, and need not be.
    with running(Service("backdata", g, c, root / "backdata.log")) as started:
        assert started.ready()


def test_postfixlog_starts_with_only_its_own_secrets(
    suite: tuple[Path, Path], tmp_path: Path
) -> None:
    full, _ = suite
    full_customer = yaml.safe_load((full / "inboxbooster-mailer-customer.yaml").read_text())
    redis_port = full_customer["redis"]["server"]["port"]
    sink = Sink().start()
    env = PostfixLogEnv(tmp_path, redis_port, sink)
    try:
        data = yaml.safe_load(env.customer_file.read_text())
        own = data["postfixlog"]
        data = {**full_customer, "postfixlog": own}
        own["reliable-queue"] = full_customer["postfixlog"]["reliable-queue"]
        env.customer_file.write_text(yaml.safe_dump(data))
        (env.customer_file.parent / "secrets").mkdir()
        (env.customer_file.parent / "secrets" / "redis-password").write_text(REDIS_PASSWORD)
        assert env.start().ready()
    finally:
        env.close()
        sink.stop()


def test_missing_own_secret_exits_2_naming_the_key(suite: tuple[Path, Path]) -> None:
    full, root = suite
    g, c = config_dir(root / "mx-missing", full, {"redis-password"})
    result = Service("mxserver", g, c, root / "mx-missing.log").run_to_exit()
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(
        "config error: inboxbooster-mailer-customer.yaml: common-config: feedback-secret-file: "
        "cannot read"
    ), line
