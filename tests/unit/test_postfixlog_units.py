"""PostfixLog's pure pieces: header edits, main.cf/master.cf rendering, settings from the
config (with the legacy name files), the queue-file envelope, and records → events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from manycore_common import feedbacktag
from manycore_common import item as item_format
from manycore_common.config import ConfigError, PostfixLogSection, load_config
from manycore_postfixlog import headers, outcomes, postconf, settings
from manycore_postfixlog.injector import queued_as
from manycore_postfixlog.logparse import Delivery, Expired
from manycore_postfixlog.requeue import handback_item, hands_back, parse_envelope
from manycore_postfixlog.state import Deferral, Message
from tests.helpers import CUSTOMER_EXAMPLE, GLOBAL_EXAMPLE

SIGNED = (
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com;\r\n\tb=abc\r\n"
    b"X-ReturnPathIb: bounce-u1@bounces.example.com\r\n"
    b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n.\r\n"
)


# ---------------------------------------------------------------- headers


def test_return_path_is_taken_out_and_nothing_else_changes() -> None:
    sender, data = headers.take_return_path(SIGNED)
    assert sender == "bounce-u1@bounces.example.com"
    assert data == SIGNED.replace(b"X-ReturnPathIb: bounce-u1@bounces.example.com\r\n", b"")
    assert headers.add_return_path(data, sender) == SIGNED


def test_return_path_only_in_the_header_section() -> None:
    data = b"From: a@x\r\n\r\nX-ReturnPathIb: not-a-header@x\r\n"
    assert headers.take_return_path(data) == (None, data)


def test_own_received_line_is_dropped_only_when_it_names_the_queue_id() -> None:
    stored = (
        b"Received: from localhost (localhost [127.0.0.1])\n"
        b"\tby mx.example.com (Postfix) with ESMTP id 4jbsS65ZY9zJLxR;\n"
        b"\tSat, 28 Nov 2026 01:01:42 +0000 (UTC)\n"
        b"Received: from elsewhere by other id 4jbsS65ZY9zJLxR\n"
        b"From: a@x\n\nbody\n"
    )
    out = headers.drop_own_received(stored, "4jbsS65ZY9zJLxR")
    assert out.startswith(b"Received: from elsewhere")
    assert headers.drop_own_received(stored, "OTHERID1234") == stored
    assert headers.to_crlf(b"a\nb\r\nc\n") == b"a\r\nb\r\nc\r\n"


def test_mail_options() -> None:
    assert headers.mail_options("a@x", ["b@y"], b"From: a@x\r\n\r\nhi\r\n") == []
    assert headers.mail_options("a@x", ["b@y"], "From: a@x\r\n\r\nhé\r\n".encode()) == [
        "BODY=8BITMIME"
    ]
    assert headers.mail_options("a@x", ["bé@y"], b"From: a@x\r\n\r\nhi\r\n") == ["SMTPUTF8"]


def test_queued_as() -> None:
    assert queued_as("2.0.0 Ok: queued as 4jbsRc32PYzJM8y") == "4jbsRc32PYzJM8y"
    assert queued_as("2.0.0 Ok") is None


# ---------------------------------------------------------------- settings and rendering


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


# ---------------------------------------------------------------- stop: the envelope


ENVELOPE = """\
*** ENVELOPE RECORDS deferred/B/4jbsS65ZY9zJLxR ***
message_size:             277             943               4               2             277
named_attribute: log_ident=4jbsS65ZY9zJLxR
sender: bounce-u1@rp.example
named_attribute: notify_flags=1
original_recipient: ok3@sink.test
done_recipient: ok3@sink.test
original_recipient: later2@sink.test
recipient: later2@sink.test
original_recipient: x@refused.test
recipient: x@refused.test
*** MESSAGE CONTENTS deferred/B/4jbsS65ZY9zJLxR ***
"""


def test_envelope_gives_sender_and_only_recipients_not_done() -> None:
    assert parse_envelope(ENVELOPE) == (
        "bounce-u1@rp.example",
        ["later2@sink.test", "x@refused.test"],
    )


def test_handback_item_looks_like_the_transformers() -> None:
    stored = (
        b"Received: from localhost (localhost [127.0.0.1])\n"
        b"\tby mx (Postfix) with ESMTP id 4jbsS65ZY9zJLxR;\n\tSat, 28 Nov 2026 01:01:42 +0000\n"
        b"DKIM-Signature: v=1; b=abc\nFrom: a@example.com\n\nbody\n"
    )
    msg = Message("u1", "s1", "example.com", "bounce-u1@rp.example", ("a@x", "b@y"))
    raw = handback_item("4jbsS65ZY9zJLxR", stored, "bounce-u1@rp.example", ["b@y"], msg)
    item = item_format.decode(raw)
    assert (item.uuid, item.stream_id, item.header["rcpts"]) == ("u1", "s1", ["b@y"])
    assert item.header["return_path"] == "bounce-u1@rp.example"
    assert item.header["from_domain"] == "example.com"
    assert item.payload == (
        b"DKIM-Signature: v=1; b=abc\r\nX-ReturnPathIb: bounce-u1@rp.example\r\n"
        b"From: a@example.com\r\n\r\nbody\r\n"
    )
    # Without state (it expired), the uuid still comes from the return path.
    item = item_format.decode(handback_item("Q", stored, "bounce-zz9@rp.example", ["b@y"], None))
    assert item.uuid == "zz9" and "stream_id" not in item.header
    uuid = "9f1c2e4a-0b7d-4c3e-8a1f-2d3e4f5a6b7c"
    tagged = feedbacktag.make_address(b"k" * 32, "bounce", uuid, "b@y", "rp.example", "s1")
    item = item_format.decode(handback_item("Q", stored, tagged, ["b@y"], None))
    assert item.uuid == uuid and item.header["return_path"] == tagged


# ---------------------------------------------------------------- records → events

MSG = Message(
    "u1",
    "s1",
    "example.com",
    "bounce-u1@rp.example",
    ("Ok@Example.org", "later@example.org", "gone@example.org"),
    finals=frozenset({"gone@example.org"}),
    deferrals={"later@example.org": Deferral("450 4.2.1 busy", "4.2.1", "192.0.2.7")},
)


def delivery(rcpt: str, status: str, dsn: str = "2.0.0", text: str = "250 ok") -> Delivery:
    return Delivery(1000.0, "Q1", rcpt, None, status, "mx[192.0.2.7]:25", "192.0.2.7", dsn, text)


def test_sent_gives_delivered_with_our_spelling_of_the_recipient() -> None:
    (action,) = outcomes.actions(delivery("ok@example.org", "sent"), MSG)
    assert isinstance(action, outcomes.Final)
    event = action.event
    assert {k: event[k] for k in ("event", "uuid", "streamid", "timestamp", "ip", "rcpt")} == {
        "event": "delivered",
        "uuid": "u1",
        "streamid": "s1",
        "timestamp": 1000,
        "ip": "192.0.2.7",
        "rcpt": "Ok@Example.org",
    }


def test_expiry_soft_bounces_every_recipient_without_a_final_event() -> None:
    actions = outcomes.actions(Expired(2000.0, "Q1", "bounce-u1@rp.example"), MSG)
    assert [a.rcpt for a in actions] == ["Ok@Example.org", "later@example.org"]
    later = actions[1]
    assert isinstance(later, outcomes.Final)
    assert later.event["type"] == "soft" and later.event["reason"] == "450 4.2.1 busy"
    assert later.event["category"] == "mailbox-unavailable" and later.event["ip"] == "192.0.2.7"
    first = actions[0]
    assert isinstance(first, outcomes.Final)
    assert first.event["reason"] == outcomes.EXPIRED_REASON and "ip" not in first.event


def test_deferral_is_remembered_and_an_event_only_when_asked() -> None:
    record = delivery("later@example.org", "deferred", "4.2.1", "host x said: 450 4.2.1 busy")
    (quiet,) = outcomes.actions(record, MSG, once="7:42")
    assert isinstance(quiet, outcomes.Deferred)
    assert quiet.event is None and quiet.once == "7:42"
    assert quiet.deferral == Deferral("450 4.2.1 busy", "4.2.1", "192.0.2.7")
    (loud,) = outcomes.actions(record, MSG, deferred_events=True)
    assert isinstance(loud, outcomes.Deferred) and loud.event is not None
    assert loud.event["event"] == "deferred" and loud.event["category"] == "mailbox-unavailable"


def test_refusal_at_rcpt_is_a_final_bounce() -> None:
    event = outcomes.refusal_event(
        MSG, "x@nowhere.test", 550, "5.1.2 <x@nowhere.test>: Host or domain name not found", 5.0
    )
    assert (event["type"], event["category"], event["timestamp"]) == ("unroutable", "dns", 5)
    assert event["reason"] == "550 5.1.2 <x@nowhere.test>: Host or domain name not found"


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


def test_a_stop_hands_back_unless_keep_without_the_marker() -> None:
    assert hands_back("hand-back", False) and hands_back("hand-back", True)
    assert hands_back("keep", True)
    assert not hands_back("keep", False)
