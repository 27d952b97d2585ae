"""Is a message an automatic reply (vacation, out of office) or a bounce? Both are written by
machines, both often carry ``Auto-Submitted`` and a null envelope sender (RFC 3834 §3.3), so
the decision reads several signals, each a rule kept as data. Pure functions over headers."""

from __future__ import annotations

import re
from email.errors import MessageError
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses

_I = re.IGNORECASE

#: RFC 3834 §5 and the headers responders set in practice: (header, value pattern, rule).
AUTOREPLY_HEADERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("Auto-Submitted", re.compile(r"^\s{0,8}auto-replied", _I)),
    ("X-Autoreply", re.compile(r"\S")),
    ("X-Autorespond", re.compile(r"\S")),
    ("X-Autoresponder", re.compile(r"\S")),
    ("X-Autoreply-From", re.compile(r"\S")),
    ("X-Mail-Autoreply", re.compile(r"\S")),
    ("X-Vacation", re.compile(r"\S")),
    ("X-Apple-Action", re.compile(r"vacation|auto", _I)),
    ("Precedence", re.compile(r"^\s{0,8}auto_reply", _I)),
    ("X-Precedence", re.compile(r"^\s{0,8}auto_reply", _I)),
    ("X-POST-MessageClass", re.compile(r"^\s{0,8}9;\s{0,8}autoresponder", _I)),
    # Exchange's OOF: "X-MS-Exchange-Inbox-Rules-Loop" only on rule replies; the subject
    # below catches the rest. Exchange sets X-Auto-Response-Suppress on NDRs too, so it
    # counts only without any sign of a bounce (see classify).
    ("X-Auto-Response-Suppress", re.compile(r"\b(?:all|oof|autoreply)\b", _I)),
)

#: Vacation and out-of-office subjects of the big providers, in the languages they ship
#: (Gmail, Outlook/Exchange OOF, Yahoo, Apple iCloud, GMX/Web.de, Orange, Japanese carriers).
VACATION_SUBJECT = re.compile(
    r"out of (?:the )?office|\booo\b|auto(?:matic|matisk|matische)?[- ]?(?:reply|response"
    r"|antwort|svar|respons)|autoreply|auto-?respon|\bauto:|on vacation|vacation (?:reply|notice)"
    r"|\bvacation\b|away from (?:the )?office|\baway\b|abwesenheit|automatische antwort"
    r"|außer haus|ausser haus|nicht im büro|r[ée]ponse automatique|absence|absent"
    r"|respuesta autom[aá]tica|fuera de (?:la )?oficina|risposta automatica|fuori (?:sede|ufficio)"
    r"|resposta autom[aá]tica|automatisch antwoord|afwezig|autosvar|automaattinen vastaus"
    r"|automatyczna odpowied|автоответ|自動応答|自動返信|不在|自动回复|자동 응답|留守",
    _I,
)

#: Senders of bounces: the local parts MTAs use for delivery reports.
DAEMON = re.compile(
    r"^(?:mailer-daemon|postmaster|mail-daemon|mailer|mdaemon|maildelivery|mail-delivery"
    r"|mail\.delivery|mailerdaemon|mail-notify|mailer_daemon|mmdf)@",
    _I,
)
DAEMON_NAME = re.compile(r"mail delivery (?:sub)?system|mailer.daemon|postmaster", _I)

BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status notification|failure|has failed|failed|report"
    r"|problem|notification|incomplete)|mail delivery (?:failed|failure|system|subsystem|problem)"
    r"|failure notice|returned mail|non[- ]?delivery|could not be delivered|not delivered"
    r"|nondeliverable|unzustellbar|nicht zustellbar|non remis|non recapitabile|no entregado"
    r"|delivery delayed|warning: (?:could not|message)|mail system error|returned to sender"
    r"|rejected|unable to deliver|delayed mail|delivery notification|fehlgeschlagen"
    r"|échec de (?:la )?(?:remise|distribution)|error sending|message blocked"
    r"|配信(?:不能|エラー)|送信エラー|退信|未送达|failed delivery|delivery error",
    _I,
)


def subject_of(msg: Message) -> str:
    """The Subject, RFC 2047 words decoded (Japanese, German ... auto-replies)."""
    raw = str(msg.get("Subject", ""))[:1000]
    try:
        return str(make_header(decode_header(raw)))
    except (UnicodeError, LookupError, ValueError, TypeError, MessageError):
        return raw


def from_address(msg: Message) -> str | None:
    values = [str(v)[:1000] for v in msg.get_all("From", [])]
    found = [addr for _, addr in getaddresses(values) if "@" in addr]
    return found[0] if found else None


def autoreply_rule(msg: Message, subject: str) -> str | None:
    """The name of the first auto-reply rule the message meets, if any."""
    for header, pattern in AUTOREPLY_HEADERS:
        value = msg.get(header)
        if value is not None and pattern.search(str(value)):
            return header
    if VACATION_SUBJECT.search(subject):
        return "subject"
    return None


def bounce_signs(msg: Message, subject: str, sender: str) -> tuple[str, ...]:
    """Why a message looks like a delivery report (empty when it does not)."""
    signs = []
    if DAEMON.match(sender) or DAEMON_NAME.search(str(msg.get("From", ""))[:1000]):
        signs.append("daemon-sender")
    if msg.get("X-Failed-Recipients") is not None:
        signs.append("x-failed-recipients")
    if BOUNCE_SUBJECT.search(subject):
        signs.append("bounce-subject")
    if msg.get_content_type() == "multipart/report":
        signs.append("multipart-report")
    return tuple(signs)
