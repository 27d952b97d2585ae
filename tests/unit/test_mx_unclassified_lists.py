"""MxServer's two unclassified lists: each one's share of ``mxserver.unclassified``, and the
verified tag (envelope or quoted) that sends an unclassified message to the tagged list."""

from __future__ import annotations

from manycore_common.config import Unclassified
from manycore_mxserver.authenticate import analyse
from manycore_mxserver.classify import Classification
from manycore_mxserver.record import unclassified_keep, unclassified_keeps
from tests.unit.test_mx_authenticate import ALICE, SCOPE, tag

KIB = 1024
MIB = 1024 * KIB


def bounds(**values: object) -> Unclassified:
    return Unclassified.model_validate(values)


def test_defaults_split_the_old_budget_without_passing_it() -> None:
    tagged, untagged = unclassified_keeps(Unclassified())
    # 48 MiB and 16 MiB of 256 KiB items (plus their header allowance).
    assert (tagged, untagged) == (186, 62)
    assert tagged + untagged <= unclassified_keep(1000, 256 * KIB, 64 * MIB)


def test_count_bounds_when_octets_allow_more() -> None:
    small = {"max-bytes": 1024, "max-total-bytes": 10 * MIB}
    assert unclassified_keeps(bounds(**small, **{"max-count": 20})) == (15, 5)
    assert unclassified_keeps(bounds(**small, **{"max-count": 20, "untagged-share": 0})) == (
        20,
        0,
    )
    assert unclassified_keeps(bounds(**small, **{"max-count": 20, "untagged-share": 1})) == (
        0,
        20,
    )


def test_nothing_kept_when_the_budget_is_zero() -> None:
    assert unclassified_keeps(bounds(**{"max-count": 0})) == (0, 0)
    assert unclassified_keeps(bounds(**{"max-total-bytes": 0})) == (0, 0)


def test_unclassified_mail_carries_the_uuid_of_the_tag_it_quotes() -> None:
    t, address = tag("q1", ALICE)
    c = Classification("unclassified", note="no rule matched")
    quoted = f"Subject: re: Deals\r\n\r\n> Return-Path: <{address}>\r\n".encode()
    assert analyse(c, "x@y.example", (), quoted, SCOPE).tag_uuid == "q1"
    envelope = analyse(c, "x@y.example", (t,), b"Subject: hi\r\n\r\nhi\r\n", SCOPE)
    assert (envelope.tag_uuid, envelope.findings) == ("q1", ())
    assert analyse(c, "x@y.example", (), b"Subject: junk\r\n\r\njunk\r\n", SCOPE).tag_uuid is None
