"""PostfixLog's settings from the config (with the legacy name files) and its main.cf and
master.cf rendering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from manycore_common.config import ConfigError, PostfixLogSection, load_config
from manycore_postfixlog import postconf, settings
from tests.helpers import CUSTOMER_EXAMPLE, GLOBAL_EXAMPLE


def section(**changes: Any) -> PostfixLogSection:
    data = yaml.safe_load(CUSTOMER_EXAMPLE.read_text())["postfixlog"]
    data.update(changes)
    return PostfixLogSection.model_validate(data)


def test_example_renders_a_loopback_only_instance(tmp_path: Path) -> None:
    s = settings.build(section(), tmp_path)
    main_cf = postconf.render_main_cf(s)
    params = {}
    for ln in main_cf.splitlines():
        if ln and not ln.startswith("#") and "=" in ln and not ln[0].isspace():
            name, _, value = ln.partition("=")
            params[name.strip()] = value.strip()
    assert params["inet_interfaces"] == "loopback-only"
    assert params["mynetworks"] == "127.0.0.0/8"
    assert params["myhostname"] == "mxserver.example.com"
    assert params["myorigin"] == "example.com"
    assert params["relayhost"] == ""
    assert params["enable_long_queue_ids"] == "yes"
    assert params["smtp_tls_security_level"] == "may"
    assert params["maillog_file"] == "/var/log/mail.log"
    assert params["maillog_file_prefixes"] == "/var/log"
    assert params["queue_directory"] == "/var/spool/manycore-postfix/queue"
    assert params["maximal_queue_lifetime"] == "5d"
    assert "{{" not in main_cf and "mailname" not in params
    master_cf = postconf.render_master_cf(s)
    listeners = [ln for ln in master_cf.splitlines() if " inet " in ln]
    assert listeners == ["127.0.0.1:10025 inet n - n - - smtpd"]
    assert "throttled" not in master_cf
    assert s.state_ttl_seconds == 6 * 86400
    assert s.replay_window_seconds == 600


def test_replay_window_is_bounded() -> None:
    assert settings.build(section(**{"replay-window-seconds": 3600}), Path("/nonexistent"))
    for bad in (0, 59, 8 * 86400):
        with pytest.raises(ValueError, match=r"replay.window.seconds"):
            section(**{"replay-window-seconds": bad})


def test_claim_seconds_defaults_to_two_minutes_and_is_bounded() -> None:
    assert settings.build(section(), Path("/nonexistent")).claim_seconds == 120
    assert settings.build(section(**{"claim-seconds": 5}), Path("/nonexistent")).claim_seconds == 5
    for bad in (0, 1, 3601, "soon"):
        with pytest.raises(ValueError, match=r"claim.seconds"):
            section(**{"claim-seconds": bad})


def test_main_cf_keys_replace_or_extend_the_template(tmp_path: Path) -> None:
    s = settings.build(
        section(
            **{
                "string-replacer": {
                    "main-cf": {
                        "myhostname": "mx.example.net",
                        "relayhost": "[127.0.0.1]:2525",
                        "smtputf8_enable": False,
                        "default_destination_concurrency_limit": 5,
                    },
                    "master-cf": {"smtpd-port": 2526},
                },
                "postfix": {"hostname": "localhost"},
                "throttled-transport": {"domains": ["gmail.com"], "rate-delay": "3s"},
            }
        ),
        tmp_path,
    )
    text = postconf.render_main_cf(s)
    assert text.count("relayhost =") == 1 and "relayhost = [127.0.0.1]:2525" in text
    assert "smtputf8_enable = no" in text
    assert "default_destination_concurrency_limit = 5" in text
    assert f"transport_maps = texthash:{s.paths.config_dir}/throttled_domains" in text
    assert "throttled_destination_rate_delay = 3s" in text
    assert "myorigin = mx.example.net" in text  # no mailname: Postfix's default, $myhostname
    assert postconf.transport_map(s) == "gmail.com throttled:\n"
    assert "127.0.0.1:2526 inet" in postconf.render_master_cf(s)
    assert "throttled unix" in postconf.render_master_cf(s)


def test_set_parameters_replaces_continuation_lines_too() -> None:
    text = "a = 1\nb = x,\n  y\nc = 3\n"
    assert postconf.set_parameters(text, {"b": "z", "d": "4"}, "# extra") == (
        "a = 1\nb = z\nc = 3\n\n# extra\nd = 4\n"
    )


def test_legacy_name_files_are_read_when_the_keys_are_absent(tmp_path: Path) -> None:
    (tmp_path / "myhostname").write_text("mx.legacy.example\n")
    (tmp_path / "mailname").write_text("legacy.example\n")
    s = settings.build(section(**{"string-replacer": {"main-cf": {}}}), tmp_path)
    assert (s.myhostname, s.myorigin) == ("mx.legacy.example", "legacy.example")
    # The keys win over the files.
    s = settings.build(section(), tmp_path)
    assert (s.myhostname, s.myorigin) == ("mxserver.example.com", "example.com")


def test_a_host_name_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as failure:
        settings.build(section(**{"string-replacer": {"main-cf": {}}}), tmp_path)
    assert failure.value.problems == [
        "postfixlog.string-replacer.main-cf.myhostname: field required "
        f"(or a file {tmp_path / 'myhostname'} holding the name)"
    ]


def test_postfix_time_values() -> None:
    assert settings.postfix_time_seconds("5d") == 432000
    assert settings.postfix_time_seconds("90s") == 90
    with pytest.raises(ValueError):
        settings.postfix_time_seconds("5")


def problems(tmp_path: Path, change: Any) -> list[str]:
    data = yaml.safe_load(CUSTOMER_EXAMPLE.read_text())
    change(data["postfixlog"])
    customer = tmp_path / "customer.yaml"
    customer.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as failure:
        load_config(GLOBAL_EXAMPLE, customer)
    return failure.value.problems


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            lambda s: s["string-replacer"]["main-cf"].update(inet_interfaces="all"),
            "postfixlog.string-replacer.main-cf: inet_interfaces cannot be set here: "
            "Postfix listens on loopback only",
        ),
        (
            lambda s: s["string-replacer"]["main-cf"].update(mynetworks="0.0.0.0/0"),
            "postfixlog.string-replacer.main-cf: mynetworks cannot be set here: "
            "only loopback clients may relay",
        ),
        (
            lambda s: s["string-replacer"]["main-cf"].update({"bad name": "x"}),
            "postfixlog.string-replacer.main-cf: 'bad name' is not a main.cf parameter name",
        ),
        (
            lambda s: s["string-replacer"]["main-cf"].update(relayhost="x\nmynetworks = 0/0"),
            "postfixlog.string-replacer.main-cf: the value of relayhost contains a line break",
        ),
        (
            lambda s: s["postfix"].update(hostname="10.0.0.5"),
            "postfixlog.postfix.hostname: must be 127.0.0.1: PostfixLog only talks to its "
            "own Postfix",
        ),
        (
            lambda s: s["postfix"].update(port=25),
            "postfixlog: postfix.port must equal string-replacer.master-cf.smtpd-port "
            "(PostfixLog delivers to its own Postfix)",
        ),
        (
            lambda s: s.update({"maximal-queue-lifetime": "5"}),
            "postfixlog.maximal-queue-lifetime: must be a number with a unit s, m, h, d or w "
            "(e.g. 5d)",
        ),
        (
            lambda s: s.update({"throttled-transport": {"domains": ["not a domain"]}}),
            "postfixlog.throttled-transport.domains: 'not a domain' is not a domain name",
        ),
    ],
)
def test_config_problems_name_the_key(tmp_path: Path, change: Any, problem: str) -> None:
    assert problems(tmp_path, change) == [f"customer.yaml: {problem}"]


def test_queue_on_stop_the_environment_overrides_the_file() -> None:
    env = settings.QUEUE_ON_STOP_ENV
    assert settings.queue_on_stop("keep", {}) == "keep"
    assert settings.queue_on_stop("keep", {env: ""}) == "keep"
    assert settings.queue_on_stop("keep", {env: "hand-back"}) == "hand-back"
    with pytest.raises(ConfigError, match=env):
        settings.queue_on_stop("keep", {env: "drop"})
    assert section(**{"queue-on-stop": "keep"}).queue_on_stop == "keep"
    with pytest.raises(ValueError, match="queue-on-stop"):
        section(**{"queue-on-stop": "drop"})
