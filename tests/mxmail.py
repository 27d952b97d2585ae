"""Messages as the MTAs of the Internet send them to MxServer (RFC 3464 DSNs, RFC 5965 ARF
reports, RFC 3834 auto-replies, unsubscribe mail), built around our tagged feedback addresses
(manycore_common.feedbacktag, minted with the test key), and a raw SMTP client to send them."""

from __future__ import annotations

import json
import smtplib
from typing import Any

import yaml
from redis import Redis as SyncRedis

from manycore_common import feedbacktag, keyspace
from tests.helpers import CUSTOMER_EXAMPLE, FEEDBACK_SECRET, LOOPBACK, stored_item

KEY = FEEDBACK_SECRET.encode()
_EXAMPLE = yaml.safe_load(CUSTOMER_EXAMPLE.read_text())
#: The example config's first return-path domain, and its abuse (feedback loop) address.
RP: str = _EXAMPLE["transformer"]["domain-settings"][0]["return-path-domain"]
ABUSE: str = _EXAMPLE["mxserver"]["abuse"]["yahoo"]["to"]


def tag(
    uuid: str, rcpt: str, stream_id: str | None = None, kind: feedbacktag.Kind = "bounce"
) -> str:
    """The feedback address the Transformer would put on message ``uuid`` to ``rcpt``."""
    return feedbacktag.make_address(KEY, kind, uuid, rcpt, RP, stream_id)


def register_stream(client: SyncRedis, stream_id: str) -> None:
    """What the Transformer records once per stream id."""
    client.hset(
        keyspace.current().feedback_streams(), feedbacktag.stream_field(stream_id), stream_id
    )


def original_headers(return_path: str, rcpt: str, subject: str = "Deals") -> str:
    """The headers of one of our messages as a report quotes them."""
    local = return_path.rpartition("@")[0]
    return (
        f"Return-Path: <{return_path}>\r\nFrom: Shop <news@{RP}>\r\nTo: <{rcpt}>\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{local}@{RP}>\r\n"
    )


def dsn(
    to: str,
    failures: list[tuple[str, str, str]],
    original: str = "",
    reporting_mta: str = "mx.receiver.example",
) -> bytes:
    """An RFC 3464 report: ``failures`` are (recipient, status, diagnostic)."""
    per_rcpt = "".join(
        f"\r\nFinal-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {diag}\r\n"
        for rcpt, status, diag in failures
    )
    quoted = f"--b1\r\nContent-Type: text/rfc822-headers\r\n\r\n{original}\r\n" if original else ""
    return (
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>\r\nTo: <{to}>\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\r\n"
        "--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; {reporting_mta}\r\n{per_rcpt}\r\n{quoted}--b1--\r\n"
    ).encode()


def arf(to: str, original: str, original_rcpt: str | None = None) -> bytes:
    """An RFC 5965 abuse report with the complained-about message's headers."""
    rcpt_field = f"Original-Rcpt-To: <{original_rcpt}>\r\n" if original_rcpt else ""
    return (
        f"From: <fbl@isp.example>\r\nTo: <{to}>\r\nSubject: Abuse report\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="a1"\r\n\r\n'
        "--a1\r\nContent-Type: text/plain\r\n\r\nA user marked this message as spam.\r\n\r\n"
        "--a1\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: abuse\r\nVersion: 1\r\nUser-Agent: isp-fbl/1.0\r\n{rcpt_field}\r\n"
        f"--a1\r\nContent-Type: text/rfc822-headers\r\n\r\n{original}\r\n--a1--\r\n"
    ).encode()


def autoreply(sender: str, to: str) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: Out of office\r\n"
        "Auto-Submitted: auto-replied\r\n\r\nI am away until Monday.\r\n"
    ).encode()


def plain(sender: str, to: str, body: str = "Unsubscribe me.") -> bytes:
    return f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: unsubscribe\r\n\r\n{body}\r\n".encode()


def deliver(
    port: int, mail_from: str, rcpts: list[str], data: bytes, source: str | None = None
) -> tuple[int, bytes]:
    """One message over SMTP; the first refused RCPT's reply, else DATA's. ``source``: the
    local address to send from (another loopback address, such as 127.0.0.7, is another
    client to MxServer's per-client limits)."""
    bind = (source, 0) if source else None
    with smtplib.SMTP(
        LOOPBACK, port, local_hostname="sender.test", timeout=30, source_address=bind
    ) as smtp:
        smtp.ehlo()
        code, reply = smtp.mail(mail_from)
        assert code == 250, reply
        for rcpt in rcpts:
            code, reply = smtp.rcpt(rcpt)
            if code != 250:
                return code, reply
        return smtp.data(data)


def events(client: SyncRedis) -> list[dict[str, Any]]:
    """The events on the event queue, oldest first."""
    return [
        json.loads(stored_item(raw).payload)
        for raw in reversed(client.lrange("EVENT_QUEUE", 0, -1))
    ]
