"""Config loading: the example files load, every problem is named by its key path, secrets
stay secret, and a service exits with code 2 on a bad file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from manycore_common.config import ConfigError, load_config
from tests.helpers import CUSTOMER_EXAMPLE, GLOBAL_EXAMPLE


def write(
    directory: Path, global_text: str | None = None, customer_text: str | None = None
) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    g = directory / "global.yaml"
    c = directory / "customer.yaml"
    g.write_text(global_text if global_text is not None else GLOBAL_EXAMPLE.read_text())
    c.write_text(customer_text if customer_text is not None else CUSTOMER_EXAMPLE.read_text())
    return g, c


def customer_with(change: object) -> str:
    data = yaml.safe_load(CUSTOMER_EXAMPLE.read_text())
    assert callable(change)
    change(data)
    return yaml.safe_dump(data)


def problems(tmp_path: Path, **texts: str) -> list[str]:
    g, c = write(tmp_path, texts.get("global_text"), texts.get("customer_text"))
    with pytest.raises(ConfigError) as failure:
        load_config(g, c)
    return failure.value.problems


def test_example_files_load_with_every_section() -> None:
    config = load_config(GLOBAL_EXAMPLE, CUSTOMER_EXAMPLE)
    names = config.global_.reliable_queue.queue_names
    assert (names.primary_queue, names.default_queue) == ("IB-MAIL-QUEUE-P0", "IB-MAIL-QUEUE-P1")
    assert config.global_.postfix.incoming_queue_name == "INCOMING-TO-POSTFIX"
    assert config.global_.backdata.queue_name == "EVENT_QUEUE"
    for section in (
        "receiver",
        "httpreceiver",
        "transformer",
        "postfixlog",
        "mxserver",
        "backdata",
        "redis",
    ):
        assert getattr(config.customer, section) is not None, section
    assert config.customer.transformer is not None
    assert [d.domain for d in config.customer.transformer.domain_settings] == [
        "example.com",
        "bexample.com",
    ]
    assert config.customer.postfixlog is not None
    assert (
        config.customer.postfixlog.string_replacer.main_cf["myhostname"] == "mxserver.example.com"
    )


def test_config_is_frozen() -> None:
    config = load_config(GLOBAL_EXAMPLE, CUSTOMER_EXAMPLE)
    with pytest.raises(ValueError):
        config.global_.transformer.x_mailer = "other"  # type: ignore[misc]


def test_missing_field_is_named_by_its_path(tmp_path: Path) -> None:
    def drop_selector(data: dict[str, Any]) -> None:
        del data["transformer"]["domain-settings"][1]["selector"]

    assert problems(tmp_path, customer_text=customer_with(drop_selector)) == [
        "customer.yaml: transformer.domain-settings[1].selector: field required"
    ]


def test_every_problem_is_reported_one_per_line(tmp_path: Path) -> None:
    def break_things(data: dict[str, Any]) -> None:
        data["receiver"]["bind"]["inet-port"] = "not-a-port"
        data["receiver"]["colour"] = "blue"
        data["backdata"]["batch-size"] = 0

    lines = problems(
        tmp_path,
        customer_text=customer_with(break_things),
        global_text="reliable-queue:\n  max-attempts: -1\n",
    )
    assert (
        "global.yaml: reliable-queue.max-attempts: input should be greater than or equal to 1"
        in lines
    )
    assert "customer.yaml: receiver.colour: unknown key" in lines
    assert any(
        line.startswith("customer.yaml: receiver.bind.inet-port: input should be a valid integer")
        for line in lines
    )
    assert "customer.yaml: backdata.batch-size: input should be greater than or equal to 1" in lines
    assert len(lines) == 4


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    lines = problems(tmp_path, global_text="reliable-queue:\n  queue-names: [unclosed\n")
    assert len(lines) == 1 and "global.yaml: invalid YAML (line" in lines[0]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as failure:
        load_config(tmp_path / "nope.yaml", CUSTOMER_EXAMPLE)
    assert failure.value.problems[0].endswith("nope.yaml: cannot read: No such file or directory")


def test_queue_names_must_differ(tmp_path: Path) -> None:
    text = "reliable-queue:\n  queue-names:\n    primary-queue: SAME\n    default-queue: SAME\n"
    assert "queue names must be distinct" in problems(tmp_path, global_text=text)[0]


def test_secrets_never_show(tmp_path: Path) -> None:
    g, c = write(tmp_path)
    config = load_config(g, c)
    text = repr(config) + str(config)
    assert "banan" not in text and "dadel" not in text
    assert config.customer.receiver is not None
    assert config.customer.receiver.auth_logins[0].password.get_secret_value() == "banan"


def test_secret_from_file_relative_to_config_dir(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pw").write_text("from-a-file\n")

    def use_file(data: dict[str, Any]) -> None:
        data["receiver"]["auth-logins"] = [{"username": "u", "password-file": "secrets/pw"}]
        data["receiver"]["reliable-queue"]["redis"]["password-file"] = str(tmp_path / "secrets/pw")

    g, c = write(tmp_path, customer_text=customer_with(use_file))
    receiver = load_config(g, c).customer.receiver
    assert receiver is not None
    assert receiver.auth_logins[0].password.get_secret_value() == "from-a-file"
    password = receiver.reliable_queue.redis.password
    assert password is not None and password.get_secret_value() == "from-a-file"


def test_secret_file_problems_are_named(tmp_path: Path) -> None:
    def both(data: dict[str, Any]) -> None:
        data["receiver"]["auth-logins"] = [
            {"username": "u", "password": "x", "password-file": "pw"},
            {"username": "v", "password-file": "missing-file"},
        ]

    lines = problems(tmp_path, customer_text=customer_with(both))
    assert (
        "customer.yaml: receiver.auth-logins[0]: give either password or password-file, not both"
        in lines
    )
    assert any(
        line.startswith("customer.yaml: receiver.auth-logins[1]: password-file: cannot read")
        for line in lines
    )


def test_duplicate_usernames_and_domains(tmp_path: Path) -> None:
    def dup(data: dict[str, Any]) -> None:
        data["receiver"]["auth-logins"].append({"username": "apa", "password": "x"})
        data["transformer"]["domain-settings"][1]["domain"] = "EXAMPLE.com"

    lines = problems(tmp_path, customer_text=customer_with(dup))
    assert "customer.yaml: receiver.auth-logins: username 'apa' appears twice" in lines
    assert "customer.yaml: transformer.domain-settings: domain 'example.com' appears twice" in lines


def test_dkim_key_needs_exactly_one_source(tmp_path: Path) -> None:
    def no_key(data: dict[str, Any]) -> None:
        del data["transformer"]["domain-settings"][0]["dkim-private-key-file"]

    assert problems(tmp_path, customer_text=customer_with(no_key)) == [
        "customer.yaml: transformer.domain-settings[0]: "
        "give exactly one of dkim-private-key-file and dkim-private-key"
    ]


def test_older_inboxbooster_layout_still_loads(tmp_path: Path) -> None:
    """The key layout of the older Inboxbooster-Mailer files (written here from its
    documented keys) loads unchanged."""
    customer = """
receiver:
  bind: {inet-interface: localhost, inet-port: 8025}
  auth-logins: [{username: apa, password: banan}]
  ignore-smtp-mail-from-rcpt-to: true
  reliable-queue: {redis: {hostname: localhost, port: 6379}}
  prometheus: {inet-interface: 0.0.0.0, inet-port: 9091}
transformer:
  email-headers: {inject: {List-Unsubscribe: "<mailto:unsub-{{uuid}}@{{from-domain}}>"}}
  reliable-queue: {redis: {hostname: localhost, port: 6379}}
  domain-settings:
   - {domain: example.com, dkim-private-key-file: k.pem, return-path-domain: example.com,
      selector: mailer, beacon-url: "http://localhost:8090/abc/{{ stream-id }}.gif"}
  feedback-id: {campaign-id: c, mail-type: m, sender-id: s}
  prometheus: {inet-interface: 0.0.0.0, inet-port: 9092}
postfixlog:
  logfile: /var/log/mail.log
  reliable-queue: {redis: {hostname: localhost, port: 6379}}
  postfix: {hostname: localhost, port: 25}
  prometheus: {inet-interface: 0.0.0.0, inet-port: 9093}
  string-replacer:
    main-cf: {myhostname: mx.example.com, mailname: example.com}
    master-cf: {smtpd-port: 25}
mxserver:
  bind: {inet-interface: localhost, inet-port: 8026}
  eml-directory: tmp
  abuse: {yahoo: {to: "example@example.com"}}
  reliable-queue: {redis: {hostname: localhost, port: 6379}}
  prometheus: {inet-interface: 0.0.0.0, inet-port: 9094}
backdata:
  reliable-queue: {redis: {hostname: localhost, port: 6379}}
  post-url: "http://localhost:8090"
  bounce-manager: {secret: apa, cid: 1, url: "http://localhost:8091"}
  prometheus: {inet-interface: 0.0.0.0, inet-port: 9095}
redis:
  reliable-queue: {redis: {hostname: localhost, port: 6379}}
  prometheus: {inet-interface: 0.0.0.0, inet-port: 9096}
common-config:
  object-storage: {type: s3, bucket: b, region: us-east-1, access-key-id: k,
                   secret-access-key: s, endpoint-url: "https://s3.us-east-1.amazonaws.com"}
"""
    global_text = """
reliable-queue:
  queue-names: {primary-queue: IB-MAIL-QUEUE-P0, default-queue: IB-MAIL-QUEUE-P1}
backdata:
  queue-name: EVENT_QUEUE
transformer:
  x-mailer: Inboxbooster-Mailer
"""
    g, c = write(tmp_path, global_text, customer)
    config = load_config(g, c)
    assert config.global_.transformer.x_mailer == "Inboxbooster-Mailer"
    assert config.customer.common_config.object_storage is not None


@pytest.mark.parametrize("service", ["receiver", "httpreceiver"])
def test_service_exits_2_with_one_line_per_problem(tmp_path: Path, service: str) -> None:
    def break_it(data: dict[str, Any]) -> None:
        data[service]["auth-logins"][0]["password"] = ""
        data[service]["max-message-size"] = -5

    g, c = write(tmp_path, customer_text=customer_with(break_it))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            f"manycore_{service}",
            "--global-config-file",
            str(g),
            "--customer-config-file",
            str(c),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"config error: customer.yaml: {service}.auth-logins[0].password: "
        "password must not be empty",
        f"config error: customer.yaml: {service}.max-message-size: input should be greater than 0",
    ]


def test_service_without_its_section_exits_2(tmp_path: Path) -> None:
    def drop(data: dict[str, Any]) -> None:
        del data["httpreceiver"]

    g, c = write(tmp_path, customer_text=customer_with(drop))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "manycore_httpreceiver",
            "--global-config-file",
            str(g),
            "--customer-config-file",
            str(c),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "config error: httpreceiver: section required by this service"


def test_idempotency_window_defaults_to_a_day_and_names_its_key(tmp_path: Path) -> None:
    config = load_config(GLOBAL_EXAMPLE, CUSTOMER_EXAMPLE)
    assert config.customer.common_config.idempotency_window_seconds == 86400

    def window(value: object) -> object:
        def change(data: dict[str, object]) -> None:
            data["common-config"] = {"idempotency-window-seconds": value}

        return change

    g, c = write(tmp_path / "off", customer_text=customer_with(window(0)))
    assert load_config(g, c).customer.common_config.idempotency_window_seconds == 0
    for bad in (-1, "a day", 31 * 86400):
        found = problems(tmp_path / str(bad), customer_text=customer_with(window(bad)))
        assert len(found) == 1 and "common-config.idempotency-window-seconds" in found[0], found
