"""Key names (common/manycore_common/keyspace.py): hash tags as the Redis Cluster
specification reads them, the prefix rule, and the ACL patterns for the ACL users."""

from __future__ import annotations

import pytest

from manycore_common import keyspace
from manycore_common.keyspace import Keyspace


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        ("Q", None),
        ("{Q}:dead", "Q"),
        ("{mc}Q:dead", "mc"),
        ("{}Q", None),  # empty braces: the whole key is hashed
        ("a{b}c{d}", "b"),  # the first tag only
        ("a{b", None),
        ("{a{b}:x", "a{b"),
    ],
)
def test_hash_tag(key: str, tag: str | None) -> None:
    assert keyspace.hash_tag(key) == tag


def test_a_queue_and_its_keys_hash_alike() -> None:
    plain = Keyspace()
    for name in ("IB-MAIL-QUEUE-P0", "a{b", "{mc}Q", "x{y}z"):
        q = plain.queue(name)
        keys = [plain.dead(q), plain.holders(q), plain.consumers(q), plain.doorbell(q)]
        keys.append(plain.processing(q, "transformer:host:1:ab"))
        assert {keyspace.slot_text(k) for k in keys} == {keyspace.slot_text(name)}, keys
    assert plain.dead("EVENT_QUEUE") == "{EVENT_QUEUE}:dead"
    assert plain.dead("{mc}Q") == "{mc}Q:dead"


def test_a_prefix_goes_in_front_of_every_key_once() -> None:
    ks = Keyspace("{mc}")
    q = ks.queue("P1")
    assert (q, ks.queue(q)) == ("{mc}P1", "{mc}P1")  # building a queue twice is harmless
    assert ks.processing(q, "c1") == "{mc}P1:processing:c1"
    names = [
        ks.idempotency("abc"),
        ks.trace("u1"),
        ks.suppression_bucket("ex.com", 0xAB),
        ks.suppression_size(),
        ks.suppression_soft("ex.com", 1, "a@b.c"),
        ks.once("bounce", "u1", "00ff"),
        ks.once("unsubscribe", "u1"),
        ks.feedback_streams(),
        ks.unclassified(),
        ks.unclassified_untagged(),
        ks.untimed_since(),
        ks.postfixlog("pod-0", "log-position"),
        ks.postfixlog_item("i1"),
        ks.postfixlog_claim("i1"),
    ]
    assert {keyspace.slot_text(n) for n in names} == {"mc"}
    assert Keyspace().suppression_bucket("ex.com", 0xAB) == "supp:ex.com:00ab"
    assert Keyspace().once("spam-report", "u", "ff") == "complained:u:ff"


@pytest.mark.parametrize("prefix", ["mc", "{}x", "{mc", "mc{x}"])
def test_a_prefix_must_start_with_a_tag(prefix: str) -> None:
    assert keyspace.prefix_problem(prefix)
    with pytest.raises(ValueError, match="key-prefix"):
        Keyspace(prefix)


def test_queue_names_with_a_stray_brace_are_refused() -> None:
    assert keyspace.queue_name_problem("x}y")
    assert keyspace.queue_name_problem("")
    assert keyspace.queue_name_problem("{mc}x}y") is None
    assert keyspace.queue_name_problem("IB-MAIL-QUEUE-P0") is None


def test_acl_patterns() -> None:
    plain = Keyspace().acl_patterns(["EVENT_QUEUE", "Q*"])
    assert plain["queue:EVENT_QUEUE"] == ["EVENT_QUEUE", "{EVENT_QUEUE}:*"]
    assert plain["queue:Q*"] == ["Q\\*", "{Q\\*}:*"]
    assert plain["legacy"] == ["EVENT_QUEUE:*", "Q\\*:*"]
    assert plain["trace"] == ["trace:*"]
    prefixed = Keyspace("{mc}").acl_patterns(["EVENT_QUEUE"])
    assert prefixed["queue:EVENT_QUEUE"] == ["{mc}EVENT_QUEUE", "{mc}EVENT_QUEUE:*"]
    assert prefixed["legacy"] == ["EVENT_QUEUE:*", "EVENT_QUEUE"]
    assert prefixed["postfixlog"] == ["{mc}postfixlog:*"]
    assert prefixed["once"] == [
        f"{{mc}}{k}:*" for k in ("bounced", "autoreplied", "complained", "unsubscribed")
    ]


def test_legacy_names() -> None:
    old = keyspace.legacy_queue_keys("Q")
    assert old == {
        "consumers": "Q:consumers",
        "holders": "Q:holders",
        "dead": "Q:dead",
        "doorbell": "Q:doorbell",
        "queue": "Q",
        "processing": "Q:processing:",
    }
