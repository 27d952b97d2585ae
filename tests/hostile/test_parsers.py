"""The parsers as pure functions under hostile input. Extends (does not repeat) the
arbitrary-bytes tests of tests/unit: here the input is *almost* valid, which reaches the
deep branches — mutated DSNs and ARF reports, mutated Postfix log lines, random YAML in
both config files, and headers crafted to break out of the Transformer's templates."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from manycore_common.bounce_rules import CATEGORIES
from manycore_common.config import ConfigError, load_config
from manycore_common.message import STREAM_ID_RE, UUID_RE, MessageRejected, validate
from manycore_mxserver.authenticate import Scope, analyse
from manycore_mxserver.classify import Envelope, classify
from manycore_mxserver.classify import Settings as MxSettings
from manycore_mxserver.record import events_for
from manycore_postfixlog.logparse import Delivery, Expired, parse_line
from manycore_transformer import dkim
from manycore_transformer.headers import split_message
from manycore_transformer.identity import TransformError
from manycore_transformer.transform import DomainSigner, Settings, transform
from tests.helpers import CUSTOMER_EXAMPLE, GLOBAL_EXAMPLE, rsa_pem

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
BOUNCES = sorted((FIXTURES / "bounces").glob("*.eml"))
LOG_LINES = [
    line
    for name in ("outcomes.log", "stop-and-restart.log")
    for line in (FIXTURES / "postfix" / name).read_text().splitlines()
    if "status=" in line
]
NOW = datetime(2026, 12, 1, tzinfo=UTC)
LIMIT = 1_000_000
PURE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Values crafted to break out of a header or into a template.
CRAFTED = st.sampled_from(
    [
        "abc\rBcc: victim@example.org",
        "abc\nBcc: victim@example.org",
        "abc\r\nBcc: victim@example.org",
        "abc\r\n Bcc: victim@example.org",
        "abc\r\n\r\nbody",
        "{{uuid}}",
        "abc}}{{return-path-domain",
        "a:b",
        "abc:",
        "ünïcödé",
        "abc\x00",
        "abc\x0b",
        "abc\t",
        " abc ",
        "abc" + "\u2028" + "def",
        "x" * 300,
    ]
) | st.text(max_size=60)


# --- message.validate (Receiver, HttpReceiver) vs transform (Transformer) ----------------


def _message(uuid: str, stream_id: str | None, extra: bytes = b"") -> bytes:
    lines = [
        b"From: Shop <news@example.com>",
        b"To: alice@example.net",
        b"Subject: hi",
        b"X-Uuid: " + uuid.encode("utf-8", "surrogatepass"),
    ]
    if stream_id is not None:
        lines.append(b"X-Stream-Id: " + stream_id.encode("utf-8", "surrogatepass"))
    return b"\r\n".join(lines) + b"\r\n" + extra + b"MIME-Version: 1.0\r\n\r\nHello\r\n"


RSA = dkim.load_key(rsa_pem(label="hostile"))
SIGNER = DomainSigner(
    domain="example.com", return_path_domain="rp.example.com", selector="mailer", rsa=RSA
)
TEMPLATE = "<mailto:unsub-{{uuid}}@{{return-path-domain}}?subject={{stream-id}}>"
TRANSFORM = Settings(
    domains={"example.com": SIGNER},
    x_mailer="Manycore-Mail",
    feedback_key=b"test-feedback-secret-0123456789abcdef",
    inject=(("List-Unsubscribe", TEMPLATE),),
)


@PURE
@given(uuid=st.one_of(st.just("good1"), CRAFTED), stream_id=st.one_of(st.none(), CRAFTED))
def test_validate_accepts_only_clean_uuid_and_stream_id(uuid: str, stream_id: str | None) -> None:
    data = _message(uuid, stream_id)
    try:
        accepted = validate(data, LIMIT)
    except MessageRejected as exc:
        assert exc.smtp_code in (550, 552) and exc.text and exc.reason
        return
    assert UUID_RE.fullmatch(accepted.uuid)
    assert accepted.stream_id is None or STREAM_ID_RE.fullmatch(accepted.stream_id)


@PURE
@given(uuid=st.one_of(st.just("good1"), CRAFTED), stream_id=st.one_of(st.none(), CRAFTED))
@example(uuid="good1", stream_id="{{uuid}}")
@example(uuid="abc\rX-Stream-Id: evil", stream_id=None)
def test_transform_never_renders_crafted_values_into_headers(
    uuid: str, stream_id: str | None
) -> None:
    data = _message(uuid, stream_id)
    try:
        out = transform(data, TRANSFORM, now=1_764_290_000.0)
    except TransformError as exc:
        assert exc.reason and str(exc)
        return
    assert UUID_RE.fullmatch(out.uuid)
    assert out.stream_id is None or STREAM_ID_RE.fullmatch(out.stream_id)
    (copy,) = out.copies
    fields, _ = split_message(copy.data)
    unsub = [f.value for f in fields if f.key == "list-unsubscribe"]
    assert unsub == [f"<mailto:unsub-{out.uuid}@rp.example.com?subject={out.stream_id or ''}>"], (
        unsub
    )
    for f in fields:
        assert "{{" not in f.value or "{{" in data.decode("utf-8", "replace")
        assert "\r" not in f.value.replace("\r\n", "") and "\n" not in f.value.replace("\r\n", "")


@PURE
@given(uuid=st.one_of(st.just("good1"), CRAFTED), stream_id=st.one_of(st.none(), CRAFTED))
@example(uuid="abc\rX-Uuid: other", stream_id=None)
@example(uuid="abc\nBcc: victim@example.org", stream_id=None)
def test_receiver_and_transformer_agree_on_uuid_and_stream_id(
    uuid: str, stream_id: str | None
) -> None:
    """What the Receiver queued under a uuid, the Transformer must send under the same uuid
    (else events are reported against the wrong message or the message is parked)."""
    data = _message(uuid, stream_id)
    try:
        accepted = validate(data, LIMIT)
    except MessageRejected:
        return
    out = transform(data, TRANSFORM, now=1_764_290_000.0)
    assert (out.uuid, out.stream_id) == (accepted.uuid, accepted.stream_id)


HEADER_LINES = st.sampled_from(
    [
        b"X-Uuid: abc",
        b"x-uuid: def",
        b"X-Uuid : ghi",
        b"X-Uuid:jkl",
        b"X-UUID:\t mno ",
        b" X-Uuid: pqr",
        b"\tcontinued",
        b"X-Stream-Id: s1",
        b"x-stream-id : s2",
        b"X-Stream-Id: s3 ",
        b"X-Priority: 0",
        b"From: a@other.example",
        b"junk without colon",
        b"",
        b"Subject: =?utf-8?b?w7w=?=",
        b"X-Uuid: \xc3\xbc",
        b"\xff\xfe: \x80",
    ]
)


@PURE
@given(
    lines=st.lists(HEADER_LINES, min_size=1, max_size=8),
    sep=st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\r\n"]),
)
def test_receiver_and_transformer_agree_whatever_the_line_endings(
    lines: list[bytes], sep: bytes
) -> None:
    """Duplicates, odd spacing, bare CR or LF line ends: whatever the Receiver accepts, the
    Transformer sends (no dead letter), under the same uuid and stream id."""
    head = [b"From: news@example.com", b"To: alice@example.net"]
    data = sep.join(head + lines) + sep + sep + b"body"
    try:
        accepted = validate(data, LIMIT)
    except MessageRejected:
        return
    out = transform(data, TRANSFORM, now=1_764_290_000.0)
    assert (out.uuid, out.stream_id) == (accepted.uuid, accepted.stream_id)


# --- MxServer classify --------------------------------------------------------------------


@st.composite
def mutated_report(draw: st.DrawFn) -> bytes:
    """A corpus DSN/ARF/auto-reply with a few bytes changed, cut, or a part duplicated."""
    data = draw(st.sampled_from(BOUNCES)).read_bytes()
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup", "boundary"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data = data[:pos] + bytes([draw(st.integers(0, 255))]) + data[pos + 1 :]
        elif op == "cut":
            data = data[:pos]
        elif op == "insert":
            data = data[:pos] + draw(st.binary(max_size=40)) + data[pos:]
        elif op == "dup":
            data = data[:pos] + data[pos : pos + 2000] + data[pos:]
        else:
            data = re.sub(rb'boundary="?[^";\r\n]*"?', b'boundary="', data, count=1)
    return data


RCPTS = st.lists(
    st.sampled_from(
        [
            "bounce-abc@rp.example.com",
            "BOUNCE-ABC@RP.EXAMPLE.COM",
            "unsub-abc@rp.example.com",
            "bounce-@rp.example.com",
            "bounce-ABC-1@rp.example.com",
            "bounce-{{uuid}}@rp.example.com",
            "abuse@example.com",
            "unsub-abc\r\n@rp.example.com",
            "bounce-" + "a" * 500 + "@rp.example.com",
            "ünï@rp.example.com",
        ]
    ),
    min_size=1,
    max_size=3,
)


@PURE
@given(data=mutated_report(), rcpts=RCPTS, sender=st.sampled_from(["", "a@b.example", "<>"]))
def test_classify_mutated_reports(data: bytes, rcpts: list[str], sender: str) -> None:
    settings_ = MxSettings(
        own_mtas=frozenset({"mxserver.example.com"}),
        abuse_addresses=frozenset({"abuse@example.com"}),
    )
    started = time.monotonic()
    result = classify(Envelope(sender, tuple(rcpts)), data, settings_)
    assert time.monotonic() - started < 2.0, "classify is too slow on a hostile message"
    assert len(result.failures) <= settings_.max_failures
    for failure in result.failures:
        assert failure.category in CATEGORIES and "@" in failure.rcpt
        json.dumps(failure.__dict__)  # what MxServer puts in an event is JSON-safe
        assert not (result.kind == "delayed" and failure.permanent)

    scope = Scope((b"k" * 32,), frozenset({"rp.example.com"}), 64 * 1024, 100)
    analysis = analyse(result, sender, (), data, scope)
    for key, event in events_for(analysis.findings, {}, now=1.0):
        assert key
        json.dumps(event)  # events go to the webhook as JSON
        assert event.get("uuid") is None or UUID_RE.fullmatch(event["uuid"])


# --- classify: bounded work (issue 16, item 3) --------------------------------------------

DAEMON_HEAD = b"From: MAILER-DAEMON@mx.example\nSubject: Undelivered Mail Returned to Sender\n"


def _seconds(data: bytes) -> float:
    started = time.perf_counter()
    classify(Envelope("", ("b@rp.example.com",)), data, MxSettings())
    return time.perf_counter() - started


def _grows_linearly(make: Any, n: int = 32_000) -> None:
    """classify(make(4n)) costs at most ~4x classify(make(n)) (x2 slack for noise), and
    the larger one stays far below a second: the issue's culprits were quadratic."""
    small = min(_seconds(make(n)) for _ in range(2))
    large = min(_seconds(make(4 * n)) for _ in range(2))
    assert large < max(8 * small, 0.05), (small, large)
    assert large < 5.0, large


def test_whitespace_and_backtracking_bait_is_linear() -> None:
    # ^\s+ with MULTILINE over whitespace (GroupWise), \S+@\S+ over long runs, .*< over
    # lines of "<" (flufl.bounce's Netscape detector), ",a@" runs (its LLNL detector).
    baits = [
        lambda n: DAEMON_HEAD + b"\nundeliverable to the following\n" + b" \t\n" * (n // 3),
        lambda n: DAEMON_HEAD + b"\nYour message to:\n" + b"a" * n + b"\n",
        lambda n: (
            DAEMON_HEAD
            + b"Content-Type: multipart/mixed; boundary=B\n\n--B\nContent-Type: text/plain\n\n"
            + b"This Message was undeliverable due to the following reason:\n"
            + (b"<" * 999 + b"\n") * (n // 1000)
            + b"--B\nContent-Type: text/plain\n\nx\n--B--\n"
        ),
        lambda n: DAEMON_HEAD + b"\n" + (b",a@" * 300 + b"\n") * (n // 900),
        lambda n: DAEMON_HEAD + b"\nRemote Server returned '" + b"a@b.example " * (n // 12),
    ]
    for bait in baits:
        _grows_linearly(bait)


def test_130kb_bait_and_10mb_message_are_classified_quickly() -> None:
    bait = DAEMON_HEAD + b"\nThe message that you sent was undeliverable to the following:\n"
    assert _seconds(bait + b" " * 130_000 + b"x") < 1.0
    big = DAEMON_HEAD + b"\ncould not be delivered to a@b.example\n" + b"x" * 10_000_000
    assert _seconds(big) < 1.0


def _dsn_with(n: int) -> bytes:
    groups = b"".join(
        b"Final-Recipient: rfc822; u%d@x.example\nAction: failed\nStatus: 5.1.1\n\n" % i
        for i in range(n)
    )
    return (
        DAEMON_HEAD + b"Content-Type: multipart/report; report-type=delivery-status; "
        b"boundary=B\n\n--B\nContent-Type: message/delivery-status\n\n"
        b"Reporting-MTA: dns; mx.example\n\n" + groups + b"--B--\n"
    )


def test_40000_final_recipients_give_at_most_the_capped_failures() -> None:
    data = _dsn_with(40_000)
    started = time.perf_counter()
    result = classify(Envelope("", ("b@rp.example.com",)), data, MxSettings(max_failures=100))
    assert time.perf_counter() - started < 5.0
    assert result.kind == "bounce" and len(result.failures) == 100
    _grows_linearly(lambda n: _dsn_with(n // 64), n=64_000)


def test_deep_mime_nesting_is_cut_not_recursed() -> None:
    def nested(n: int) -> bytes:
        levels = n // 60
        return DAEMON_HEAD + b"".join(
            b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i)
            for i in range(levels)
        )

    def embedded(n: int) -> bytes:
        return DAEMON_HEAD + b"Content-Type: message/rfc822\n\n" * (n // 30)

    for make in (nested, embedded):
        result = classify(Envelope("", ("b@rp.example.com",)), make(600_000), MxSettings())
        assert result.kind == "unclassified"
        _grows_linearly(make)


# --- PostfixLog parse_line ----------------------------------------------------------------


@st.composite
def mutated_log_line(draw: st.DrawFn) -> str:
    line = draw(st.sampled_from(LOG_LINES))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(line)))
        op = draw(st.sampled_from(["insert", "cut", "repeat", "replace"]))
        if op == "insert":
            line = line[:pos] + draw(st.text(max_size=20)) + line[pos:]
        elif op == "cut":
            line = line[:pos] + line[pos + draw(st.integers(1, 10)) :]
        elif op == "repeat":
            line = line[:pos] + line[pos:] * draw(st.integers(2, 30))
        else:
            old = draw(st.sampled_from([">, ", "=<", "status=", "dsn=", "(", ")", "["]))
            line = line.replace(old, draw(st.sampled_from(["", old * 50, "\x00", "\r\n"])))
    return line


@PURE
@given(line=mutated_log_line())
@example(line="Nov 28 01:01:16 mx postfix/smtp[1]: ABCDEF1: to=<" + ">, " * 5000)
@example(
    line="Nov 28 01:01:16 mx postfix/smtp[1]: ABCDEF1: to=<a>, relay="
    + "x" * 20000
    + ", delay=1, delays=1, dsn=5.0.0, status=bounced"
)
@example(
    line="Feb 30 01:01:16 mx postfix/smtp[1]: ABCDEF1: from=<a>, status=expired, returned to sender"
)
@example(
    line="Nov 28 99:99:99 mx postfix/smtp[1]: ABCDEF1: from=<a>, status=expired, returned to sender"
)
@example(
    line="2026-13-45T01:01:16+99:99 mx postfix/smtp[1]: ABCDEF1: from=<a>, status=expired, "
    "returned to sender"
)
def test_log_parser_mutated_lines(line: str) -> None:
    started = time.monotonic()
    record = parse_line(line, NOW)
    assert time.monotonic() - started < 1.0, "regex backtracking on a hostile line"
    assert record is None or isinstance(record, Delivery | Expired)
    if isinstance(record, Delivery):
        assert record.status in ("sent", "bounced", "deferred", "expired")
        assert isinstance(record.reason, str)
        assert record.timestamp > 0


# --- config loader ------------------------------------------------------------------------

YAML_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(["127.0.0.1", "0.0.0.0", "::", "/etc/passwd", "../../x", "1s", "-1"]),
)
YAML_VALUE = st.recursive(
    YAML_LEAF,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=15) | st.integers(), inner, max_size=4)
    ),
    max_leaves=12,
)
GLOBAL = yaml.safe_load(GLOBAL_EXAMPLE.read_text())
CUSTOMER = yaml.safe_load(CUSTOMER_EXAMPLE.read_text())


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, (*prefix, key))
    return found


CUSTOMER_PATHS = _paths(CUSTOMER)


def _replace(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    copy = json.loads(json.dumps(data))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return copy


def _load(tmp_path: Path, global_text: str, customer_text: str) -> None:
    global_file, customer_file = tmp_path / "g.yaml", tmp_path / "c.yaml"
    global_file.write_text(global_text, encoding="utf-8", errors="surrogatepass")
    customer_file.write_text(customer_text, encoding="utf-8", errors="surrogatepass")
    # Everything, and as MxServer loads it (its own section, borrowed ones, common subset).
    for service in (None, "mxserver"):
        try:
            load_config(global_file, customer_file, service)
        except ConfigError as exc:
            assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(CUSTOMER_PATHS), value=YAML_VALUE)
def test_config_one_value_replaced(tmp_path: Path, path: tuple[Any, ...], value: Any) -> None:
    """Any value at any place of a valid customer config: a config error, never a crash."""
    try:
        text = yaml.safe_dump(_replace(CUSTOMER, path, value), allow_unicode=True)
    except (ValueError, yaml.YAMLError):
        assume(False)
    _load(tmp_path, GLOBAL_EXAMPLE.read_text(), text)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    text=st.one_of(
        st.text(max_size=300),
        st.sampled_from(
            [
                "a: &a [*a]",
                "!!python/object/apply:os.system ['true']",
                "a: !!binary AAAA",
                "- 1\n- 2",
                "? [1]\n: 2",
                "a: b\na: c",
                "<<: {x: 1}",
                "\ufeffreceiver: {}",
                "receiver: {bind: {inet-port: 99999999999999999999}}",
                "receiver: !!float nan",
            ]
        ),
    ),
    which=st.booleans(),
)
def test_config_random_yaml_text(tmp_path: Path, text: str, which: bool) -> None:
    good_global, good_customer = GLOBAL_EXAMPLE.read_text(), CUSTOMER_EXAMPLE.read_text()
    if which:
        _load(tmp_path, text, good_customer)
    else:
        _load(tmp_path, good_global, text)
