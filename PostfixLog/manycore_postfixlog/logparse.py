"""Postfix log lines → records (a pure function; the rules are the patterns below).

Only two kinds of line matter for events (postfix docs, DEBUG_README / the delivery agents'
logging):

* per recipient, from a delivery agent (smtp, error, ...)::

    QUEUEID: to=<rcpt>, [orig_to=<rcpt>, ]relay=host[ip]:port, [conn_use=N, ]delay=…,
    delays=…, dsn=X.Y.Z, status=sent|bounced|deferred|expired (text)

* per message, from qmgr when the message has been queued too long (maximal_queue_lifetime)::

    QUEUEID: from=<sender>, status=expired, returned to sender

Everything else (connect/disconnect, client=, message-id=, queue active, removed, TLS,
warnings, smtpd rejects) is bookkeeping and yields nothing.

Timestamps: the classic syslog form ``Nov 28 01:01:16`` (what postlogd writes; no year, no
zone) and ISO 8601 / RFC 5424 ``2026-11-28T01:01:16.123456+00:00`` (rsyslog's high-precision
format). Classic timestamps are read in ``tz`` (PostfixLog runs Postfix with TZ=UTC), in the
year that puts them closest before ``now``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_PREFIX = re.compile(
    r"^(?:(?P<iso>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?)"
    r"|(?P<mon>[A-Z][a-z]{2}) {1,2}(?P<day>\d{1,2}) (?P<hms>\d{2}:\d{2}:\d{2})(?:\.(?P<frac>\d+))?)"
    r" (?P<host>\S+) (?P<program>[^\s\[:]+)(?:\[\d+\])?: (?P<message>.*)$"
)
#: Short ids are hex (A-F0-9), long ids base 52 with a "z" separator (enable_long_queue_ids).
_QUEUE_ID = r"(?P<qid>[0-9A-Za-z]{6,})"
_DELIVERY = re.compile(
    _QUEUE_ID + r": to=<(?P<to>.*?)>, (?:orig_to=<(?P<orig>.*?)>, )?relay=(?P<relay>[^,]*), "
    r"(?:conn_use=\d+, )?delay=[\d.]+, delays=[\d./]+, dsn=(?P<dsn>\d\.\d{1,3}\.\d{1,3}), "
    r"status=(?P<status>[a-z]+)(?: \((?P<text>.*)\))?$"
)
_EXPIRED = re.compile(_QUEUE_ID + r": from=<(?P<sender>.*?)>, status=expired, returned to sender$")
#: "name[1.2.3.4]:25" or "name[2001:db8::1]:25" in relay=, or "host name[ip] said" in text.
_IP = re.compile(r"\[([0-9A-Fa-f:.]+)\]")
#: The remote server's reply inside Postfix's explanation (smtp(8) wording).
_REMOTE_REPLY = re.compile(
    r"^host \S+ (?:said|refused to talk to me): (?P<reply>.*?)(?: \(in reply to .*\))?$"
)

#: Substrings without which ``_DELIVERY`` / ``_EXPIRED`` cannot match.
_DELIVERY_MARK = ": to=<"
_EXPIRED_MARK = "status=expired"

#: Statuses of a delivery line that this module reports.
STATUSES = ("sent", "bounced", "deferred", "expired")


@dataclass(frozen=True)
class Delivery:
    """One recipient's delivery attempt."""

    timestamp: float
    queue_id: str
    rcpt: str
    orig_rcpt: str | None
    status: str
    relay: str
    ip: str | None
    dsn: str
    #: Postfix's explanation, as logged between the parentheses.
    text: str

    @property
    def reason(self) -> str:
        """The remote server's reply when there was one, else Postfix's explanation."""
        match = _REMOTE_REPLY.match(self.text)
        return match.group("reply") if match else self.text


@dataclass(frozen=True)
class Expired:
    """A whole message gave up after maximal_queue_lifetime."""

    timestamp: float
    queue_id: str
    sender: str


Record = Delivery | Expired


def parse_timestamp(match: re.Match[str], now: datetime, tz: tzinfo) -> float | None:
    if match.group("iso"):
        try:
            stamp = datetime.fromisoformat(match.group("iso").replace(" ", "T"))
        except ValueError:  # e.g. month 13: not a timestamp after all
            return None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=tz)
        return stamp.timestamp()
    hours, minutes, seconds = (int(x) for x in match.group("hms").split(":"))
    frac = float(f"0.{match.group('frac')}") if match.group("frac") else 0.0
    month, day = _MONTHS[match.group("mon")], int(match.group("day"))
    # No year in the line: the latest year that does not put it in the future (a line of
    # December 31 read on January 1 belongs to last year). A day of slack for clock skew;
    # going back up to four years finds a February 29.
    local_now = now.astimezone(tz)
    for year in range(local_now.year, local_now.year - 5, -1):
        try:
            stamp = datetime(year, month, day, hours, minutes, seconds, tzinfo=tz)
        except ValueError:  # February 29 outside a leap year
            continue
        if stamp <= local_now + timedelta(days=1):
            return stamp.timestamp() + frac
    return None


def _ip(relay: str, text: str) -> str | None:
    for source in (relay, text):
        match = _IP.search(source)
        if match:
            return match.group(1)
    return None


def parse_line(line: str, now: datetime | None = None, tz: tzinfo = UTC) -> Record | None:
    """The record a log line carries, or None for every other line."""
    if _DELIVERY_MARK not in line and _EXPIRED_MARK not in line:
        # Most lines (smtpd, cleanup, qmgr's from=/removed) carry no record: two substring
        # tests instead of three regular expressions (issue 20: CPU per message).
        return None
    prefix = _PREFIX.match(line.rstrip("\r\n"))
    if prefix is None:
        return None
    message = prefix.group("message")
    delivery = _DELIVERY.match(message)
    expired = None if delivery else _EXPIRED.match(message)
    if delivery is None and expired is None:
        return None
    timestamp = parse_timestamp(prefix, now or datetime.now(UTC), tz)
    if timestamp is None:
        return None
    if expired is not None:
        return Expired(timestamp, expired.group("qid"), expired.group("sender"))
    assert delivery is not None
    status = delivery.group("status")
    if status not in STATUSES:
        return None  # e.g. deliverable/undeliverable of address verification probes
    relay, text = delivery.group("relay"), delivery.group("text") or ""
    return Delivery(
        timestamp=timestamp,
        queue_id=delivery.group("qid"),
        rcpt=delivery.group("to"),
        orig_rcpt=delivery.group("orig"),
        status=status,
        relay=relay,
        # The server that answered (relay=), or with relay=none the one Postfix tried to
        # reach ("connect to host[ip]:25: Connection refused").
        ip=_ip(relay, text),
        dsn=delivery.group("dsn"),
        text=text,
    )
