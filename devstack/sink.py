"""The sink MX of the local stack: stands in for every mailbox provider of the Internet.

The local Postfix relays everything here (outbound port 25 is blocked on most machines). It
stores what it receives, checks each message's DKIM signature against the stack's keys, and
answers by recipient local part so that every outcome can be triggered by hand:

=====================  =====================================================================
``hard-bounce@``       550 5.1.1 at RCPT (a synchronous hard bounce in Postfix's log)
``soft-bounce@``       450 4.2.1 (retried until Postfix's queue lifetime expires: soft)
``unroutable@``        550 5.1.2 (no such destination: unroutable)
``async-bounce@``      250, then an RFC 3464 DSN to the return path, as a remote MTA would
``autoreply@``         250, then an out-of-office reply to the return path
``complain@``          250, then an ARF spam report to the return path domain's abuse address
``unsubscribe@``       250, then mail to the List-Unsubscribe mailto and a POST to its https URL
anything else          250
=====================  =====================================================================

The follow-up messages go to our MxServer over SMTP and the one-click POST to HttpReceiver
over HTTP, exactly as the Internet would send them. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import logging
import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import dkim
from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger("devstack.sink")

LOOPBACK = "127.0.0.1"


@dataclass
class Received:
    mail_from: str
    rcpt: str
    dkim_ok: bool
    path: str
    at: float


@dataclass
class Sink:
    """State and behaviour of the sink; ``handler`` is its aiosmtpd handler."""

    directory: Path
    mx_port: int
    http_port: int | None
    dkim_records: dict[str, str]
    hostname: str = "sink.test"
    received: list[Received] = field(default_factory=list)
    follow_ups: set[asyncio.Task[None]] = field(default_factory=set)

    def verify(self, data: bytes) -> bool:
        def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes | None:
            key = (name.decode() if isinstance(name, bytes) else name).rstrip(".")
            record = self.dkim_records.get(key)
            return record.encode() if record else None

        try:
            return bool(dkim.verify(data, dnsfunc=dnsfunc))
        except Exception:  # noqa: BLE001 - any failure to verify is "not verified"
            return False

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        local = address.rpartition("@")[0].lower()
        if local == "hard-bounce":
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if local == "soft-bounce":
            return f"450 4.2.1 <{address}>: Mailbox busy, try again later"
        if local == "unroutable":
            return f"550 5.1.2 <{address}>: Bad destination system address"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        ok = self.verify(data)
        self.directory.mkdir(parents=True, exist_ok=True)
        for rcpt in envelope.rcpt_tos:
            path = self.directory / f"{time.time():.6f}-{rcpt}.eml"
            path.write_bytes(data)
            record = Received(envelope.mail_from or "", rcpt, ok, str(path), time.time())
            self.received.append(record)
            with (self.directory / "received.jsonl").open("a") as out:
                out.write(json.dumps(record.__dict__) + "\n")
            self._follow_up(rcpt, envelope.mail_from or "", data)
        log.info(
            "received",
            extra={"rcpts": len(envelope.rcpt_tos), "dkim": "pass" if ok else "fail"},
        )
        return "250 2.0.0 Stored"

    def _follow_up(self, rcpt: str, return_path: str, data: bytes) -> None:
        local = rcpt.rpartition("@")[0].lower()
        action: Callable[[], Any] | None = {
            "async-bounce": lambda: self._send(
                "", return_path, dsn(rcpt, return_path, data, self.hostname)
            ),
            "autoreply": lambda: self._send(rcpt, return_path, autoreply(rcpt, return_path, data)),
            "complain": lambda: self._send(
                f"fbl@{self.hostname}",
                f"abuse@{return_path.rpartition('@')[2]}",
                arf(rcpt, return_path, data, self.hostname),
            ),
            "unsubscribe": lambda: self._unsubscribe(rcpt, data),
        }.get(local)
        if action is not None:
            task = asyncio.get_running_loop().create_task(self._later(action))
            self.follow_ups.add(task)
            task.add_done_callback(self.follow_ups.discard)

    async def _later(self, action: Callable[[], Any]) -> None:
        await asyncio.sleep(0.2)  # after our 250, like a real provider
        try:
            await asyncio.to_thread(action)
        except Exception as exc:  # noqa: BLE001 - the sink logs and carries on
            log.warning("follow-up failed", extra={"error": str(exc)})

    def _send(self, sender: str, rcpt: str, message: bytes) -> None:
        import smtplib

        with smtplib.SMTP(LOOPBACK, self.mx_port, local_hostname=self.hostname, timeout=30) as s:
            s.sendmail(sender, [rcpt], message)

    def _unsubscribe(self, rcpt: str, data: bytes) -> None:
        msg = email.message_from_bytes(data, policy=email.policy.compat32)
        header = str(msg.get("List-Unsubscribe", ""))
        for target in re.findall(r"<([^>]+)>", header):
            if target.startswith("mailto:"):
                address = target.removeprefix("mailto:").split("?")[0]
                body = (
                    f"From: {rcpt}\r\nTo: {address}\r\nSubject: unsubscribe\r\n"
                    f"Date: {formatdate()}\r\nMessage-ID: {make_msgid(domain=self.hostname)}"
                    "\r\n\r\nunsubscribe\r\n"
                ).encode()
                self._send(rcpt, address, body)
            elif target.startswith(("https://", "http://")) and self.http_port:
                # The URL names the public host; locally HttpReceiver is on loopback.
                path = "/" + target.split("://", 1)[1].split("/", 1)[1]
                request = urllib.request.Request(
                    f"http://{LOOPBACK}:{self.http_port}{path}",
                    data=b"List-Unsubscribe=One-Click",
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    response.read()


def _headers_of(data: bytes) -> str:
    return data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")


def dsn(rcpt: str, return_path: str, original: bytes, host: str) -> bytes:
    """An RFC 3464 report that ``rcpt`` does not exist, as a provider sends after accepting."""
    boundary = "sink-dsn-boundary"
    return (
        f"From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n"
        f"To: {return_path}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Date: {formatdate()}\r\nMessage-ID: {make_msgid(domain=host)}\r\n"
        "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n"
        f"Your message could not be delivered to {rcpt}: the mailbox does not exist.\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; {host}\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        f"Remote-MTA: dns; {host}\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: mailbox does not exist\r\n"
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"{_headers_of(original)}\r\n"
        f"--{boundary}--\r\n"
    ).encode()


def autoreply(rcpt: str, return_path: str, original: bytes) -> bytes:
    msg = email.message_from_bytes(original, policy=email.policy.compat32)
    return (
        f"From: {rcpt}\r\nTo: {return_path}\r\n"
        f"Subject: Out of Office: {msg.get('Subject', '')}\r\n"
        f"Date: {formatdate()}\r\nMessage-ID: {make_msgid()}\r\n"
        "Auto-Submitted: auto-replied\r\n\r\n"
        "I am out of the office until Monday.\r\n"
    ).encode()


def arf(rcpt: str, return_path: str, original: bytes, host: str) -> bytes:
    """An RFC 5965 abuse report quoting the original's headers."""
    boundary = "sink-arf-boundary"
    return (
        f"From: Feedback Loop <fbl@{host}>\r\n"
        f"To: abuse@{return_path.rpartition('@')[2]}\r\n"
        "Subject: Abuse report\r\n"
        f"Date: {formatdate()}\r\nMessage-ID: {make_msgid(domain=host)}\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=feedback-report; boundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n"
        "A recipient marked this message as spam.\r\n"
        f"--{boundary}\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\nVersion: 1\r\nUser-Agent: manycore-sink/1\r\n"
        f"Original-Mail-From: <{return_path}>\r\nOriginal-Rcpt-To: <{rcpt}>\r\n"
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Return-Path: <{return_path}>\r\n{_headers_of(original)}\r\n"
        f"--{boundary}--\r\n"
    ).encode()


async def serve(sink: Sink, port: int, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(sink, hostname=sink.hostname, decode_data=False, enable_SMTPUTF8=True),
        LOOPBACK,
        port,
    )
    log.info("sink MX listening", extra={"port": port})
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
        for task in list(sink.follow_ups):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
