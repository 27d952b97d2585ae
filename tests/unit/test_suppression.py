"""The suppression list's pure parts: normalisation, packing, which events suppress, which
sending domains a report concerns, the Transformer's envelope read."""

from __future__ import annotations

import uuid as uuid_module

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manycore_common import events, keyspace
from manycore_common import suppression as s
from manycore_common.config import SuppressionSettings
from manycore_common.suppressionpolicy import ops_for_event
from manycore_common.suppressionstore import lookup_request
from manycore_mxserver.senders import Senders
from manycore_transformer.suppress import (
    Envelope,
    Verdict,
    envelope,
    scopes,
    suppressed_event,
    without_dropped,
)
from manycore_transformer.transform import Copy, Transformed
from tests.eventschema import assert_valid

NOW = 1_800_000_000


def test_addresses_are_keyed_as_the_feedback_tags_fingerprint_them() -> None:
    assert s.normalize(" <User@Bücher.DE> ") == "user@xn--bcher-kva.de"
    assert s.bucket_key("ex.com", "a@b.org") == s.bucket_key("ex.com", s.normalize("A@B.ORG"))
    for bad in ("no-at-sign", "@b.org", "a@", "a@b c.org"):
        with pytest.raises(s.BadAddress):
            s.normalize(bad)
    with pytest.raises(s.BadAddress):
        s.normalize_domain("not a domain")


@pytest.mark.parametrize("uuid", ["0b7e3c9a-6f1d-4e2b-9a55-3c1f0d2e4b6a", "abc123", ""])
def test_entries_pack_small_and_back(uuid: str) -> None:
    entry = s.new_entry("spam-report", NOW, 0, "0123456789abcdef" * 2, uuid)
    raw = s.pack(entry)
    assert len(raw) <= 21 + 16 if len(uuid) == 36 else len(raw) == 21 + len(uuid)
    back = s.unpack(raw)
    assert back == s.Entry("spam-report", NOW, NOW, s.NEVER, "0123456789abcdef", uuid)
    assert back.active(NOW + 10**8)
    assert not s.new_entry("hard-bounce", NOW, 1).active(NOW + 86401)


@pytest.mark.parametrize(
    "uuid",
    [
        "msg-0123456789ab",  # 16 characters: was read back as a packed UUID
        "ABCDEFGHIJKLMNOP",
        "0B7E3C9A-6F1D-4E2B-9A55-3C1F0D2E4B6A",  # not canonical: kept as written
        "41414141-4141-4141-4141-414141414141",  # packs to printable octets: kept as text
        "00000000-0000-0000-0000-000000000000",  # not RFC 4122, still packed
    ],
)
def test_any_id_comes_back_as_written(uuid: str) -> None:
    back = s.unpack(s.pack(s.new_entry("hard-bounce", NOW, 0, "", uuid)))
    assert back.uuid == uuid


def test_ids_are_printable_text_or_a_packed_uuid() -> None:
    raw = s.pack(s.new_entry("hard-bounce", NOW, 0, "", "id\twith\x01ctrl-16x"))
    assert len(raw) == 21 + 16 and s.unpack(raw).uuid == "id?with?ctrl-16x"
    canonical = "0b7e3c9a-6f1d-4e2b-9a55-3c1f0d2e4b6a"
    assert len(s.pack(s.new_entry("hard-bounce", NOW, 0, "", canonical))) == 21 + 16


def test_entries_stored_in_the_old_form_read_back() -> None:
    """Before: any 16 octets were read as a packed UUID, any other length as ASCII."""
    head = s.pack(s.new_entry("hard-bounce", NOW, 0, "", ""))
    rfc = "0b7e3c9a-6f1d-4e2b-9a55-3c1f0d2e4b6a"
    assert s.unpack(head + uuid_module.UUID(rfc).bytes).uuid == rfc
    assert s.unpack(head + b"msg-0123456789ab").uuid == "msg-0123456789ab"
    assert s.unpack(head + b"abc123").uuid == "abc123"


def _bounce(kind: str, category: str) -> dict[str, object]:
    return events.new_event(
        "bounce", uuid="m1", timestamp=NOW, type=kind, rcpt="X@Y.org", reason="r",
        category=category,
    )  # fmt: skip


def test_only_dead_addresses_complaints_and_unsubscribes_suppress() -> None:
    on = SuppressionSettings()
    [hard] = ops_for_event(_bounce("hard", "invalid-recipient"), ["ex.com"], on)
    assert (hard.scope, hard.address, hard.entry.reason) == ("ex.com", "x@y.org", "hard-bounce")
    assert hard.entry.expires == NOW + 365 * 86400 and hard.threshold == 0
    [dns] = ops_for_event(_bounce("unroutable", "dns"), ["ex.com"], on)
    assert dns.entry.reason == "unroutable"
    for kind, category in [("hard", "policy"), ("hard", "spam-block"), ("soft", "mailbox-full")]:
        assert ops_for_event(_bounce(kind, category), ["ex.com"], on) == []
    spam = events.new_event("spam-report", uuid="m", timestamp=NOW, rcpt="a@b.org")
    assert [o.entry.expires for o in ops_for_event(spam, ["a.com", "b.com"], on)] == [s.NEVER] * 2
    assert ops_for_event(events.new_event("spam-report", uuid="m"), ["a.com"], on) == []
    off = SuppressionSettings(enabled=False)
    assert ops_for_event(_bounce("hard", "invalid-recipient"), ["ex.com"], off) == []


def test_soft_bounces_count_and_unsubscribes_may_be_per_stream() -> None:
    counting = SuppressionSettings.model_validate(
        {"soft-bounce-threshold": 3, "soft-bounce-window-days": 2}
    )
    [soft] = ops_for_event(_bounce("soft", "mailbox-full"), ["ex.com"], counting)
    assert (soft.threshold, soft.window, soft.entry.reason) == (
        3,
        2 * 86400,
        "soft-bounce-repeated",
    )
    unsub = events.new_event("unsubscribe", uuid="m", streamid="news", timestamp=NOW, rcpt="a@b.c")
    stream = SuppressionSettings.model_validate({"unsubscribe-scope": "stream"})
    assert [o.scope for o in ops_for_event(unsub, ["ex.com"], stream)] == ["ex.com#news"]
    assert [o.scope for o in ops_for_event(unsub, ["ex.com"], SuppressionSettings())] == ["ex.com"]
    env = Envelope("m", "news", "Ex.com", ("a@b.c",))
    assert scopes(env, stream) == ["ex.com", "ex.com#news"]


def test_reports_map_to_the_from_domains_of_their_return_path_domain() -> None:
    senders = Senders.from_pairs(
        [("example.com", "bounce.example.com"), ("b.com", "rp.shared"), ("c.com", "rp.shared")]
    )
    assert senders.for_rcpts(["b1.x@BOUNCE.example.com"]) == {"example.com"}
    assert senders.for_rcpts(["postmaster@rp.shared"]) == {"b.com", "c.com"}
    assert senders.for_rcpts(["abuse@example.com"]) == {"example.com"}
    assert senders.for_rcpts(["fbl@extra.example"]) == {"example.com", "b.com", "c.com"}


def test_the_envelope_is_read_from_the_header_section() -> None:
    data = (
        b"From: Shop <news@Example.com>\r\nTo: a@x.org, B@x.org\r\nCc: c@x.org\r\n"
        b"X-Uuid: u1\r\nX-Stream-Id: s1\r\n\r\nTo: not-a-header@x.org\r\n"
    )
    rcpts = ("a@x.org", "B@x.org", "c@x.org")
    keys = ("a@x.org", "b@x.org", "c@x.org")
    assert envelope(data, None) == Envelope("u1", "s1", "example.com", rcpts, keys)
    # The item's recipients win over To and Cc; two spellings of one are one; folded fields.
    folded = data.replace(b"X-Stream-Id: s1", b"X-Stream-Id:\r\n s1")
    assert envelope(folded, ("Z@x.org", "z@X.org", "bad")) == Envelope(
        "u1", "s1", "example.com", ("Z@x.org", "bad"), ("z@x.org", None)
    )
    assert envelope(data + b"X-Uuid: u2\r\n", ("z@x.org",)) is not None  # in the body
    assert envelope(data.replace(b"X-Uuid: u1", b"X-Uuid: U 1"), ("z@x.org",)) is None
    assert envelope(b"From: a@b.c\r\n\r\nbody", None) is None  # no X-Uuid: the transform says so
    entry = s.new_entry("unsubscribe", NOW, 0, "ab" * 8, "old")
    assert_valid(
        [
            suppressed_event(
                envelope(data, None) or Envelope("", None, "", ()),
                "a@x.org",
                "example.com#s1",
                entry,
            )
        ]
    )


_RCPT_CHARS = "aAzZ09.-_+!~@<> \t\u00fc\u212a\u0130\u00df"


@settings(max_examples=600, deadline=None)
@given(
    st.one_of(
        st.text(alphabet=_RCPT_CHARS, max_size=30),
        st.from_regex(r"\A[a-z0-9._+-]{1,70}@[a-z0-9.-]{1,30}\.?\Z"),
        st.builds(lambda n: "a" * n + "@example.org", st.integers(60, 70)),
        st.builds(lambda n: "a@" + "b." * n + "org", st.integers(120, 130)),
    )
)
def test_the_envelope_keys_a_plain_recipient_as_normalising_it_would(rcpt: str) -> None:
    """The check's shortcut for recipients already in the list's form gives what
    normalising and checking them gives, for any input."""
    try:
        expected: str | None = s.normalize(rcpt)
    except s.BadAddress:
        expected = None
    data = b"From: news@example.com\r\nX-Uuid: u1\r\n\r\nbody\r\n"
    env = envelope(data, (rcpt,))
    assert env is not None
    assert env.addresses == (expected,)
    assert env.rcpts == (rcpt,)


@pytest.mark.parametrize("prefix", ["", "{mc}"])
def test_the_lookup_request_names_the_buckets_entries_are_written_to(prefix: str) -> None:
    queries = [
        ("shop.example", "a@x.org"),
        ("shop.example#s1", "b\u00fccher@x.org"),
        ("shop.example", "zz@y.example"),
        ("other.example", "a@x.org"),
    ]
    saved = keyspace.current()
    try:
        keyspace.use(prefix)
        keys, blob = lookup_request(queries)
        assert keys == [s.bucket_key(scope, a).encode() for scope, a in queries]
    finally:
        keyspace.use(saved.prefix)
    expected = b"".join(len(a.encode()).to_bytes(2, "big") + a.encode() for _, a in queries)
    assert blob == expected


def test_dropped_copies_are_matched_in_any_spelling_of_their_recipient() -> None:
    """The check's events name a recipient as the check spelt it, the transform's copies as
    the transform did; both mean one recipient as feedbacktag normalises it."""
    copies = tuple(
        Copy(rcpt, f"b-{n}@bounce.example", b"H\r\n\r\n", b"body\r\n")
        for n, rcpt in enumerate(["Bob@Example.ORG", "ann@example.org", "<Cid@cid.example.>"])
    )
    result = Transformed("u1", None, "example.com", copies, 0.01)
    env = Envelope("u1", None, "example.com", ("bob@example.org",))
    entry = s.new_entry("hard-bounce", 1.0e9, 0, "ab" * 8, "u-0")
    spelt = ["bob@EXAMPLE.org", "cid@cid.example"]
    gone = [suppressed_event(env, r, "example.com", entry) for r in spelt]
    kept = without_dropped(result, Verdict(("ann@example.org",), tuple(gone)))
    assert [c.rcpt for c in kept.copies] == ["ann@example.org"]
    assert kept.uuid == "u1" and kept.sign_seconds == 0.01
