"""What an incoming message means: a pure function of (envelope, message bytes, settings).

Classification is tag-agnostic: it says *what* a message reports (which addresses failed, how,
why); which of our messages and recipients it is about is MxServer's business, read from the
verified feedback tags (manycore_common.feedbacktag), never from here.

Order of the rules, and why:

1. ARF abuse reports (RFC 5965) before DSNs: both are multipart/report.
2. Delivery status notifications (RFC 3464, RFC 6533); DSNs our own Postfix wrote are
   "own-dsn", since PostfixLog already reported those bounces from its log.
3. Auto-replies (RFC 3834 headers, the usual X- headers, vacation subjects) that show no sign
   of a bounce. Bounces often carry ``Auto-Submitted`` too (Exim's do), and auto-replies often
   come from the null sender (RFC 3834 §3.3), so neither alone decides.
4. Text bounces (a sign of a bounce, or the null sender and a failure phrase): flufl.bounce,
   then our own rules (textbounce), then the returned original's one recipient. A text whose
   failures are all temporary and that speaks of a delay is a delay notice; a final report
   that the MTA gave up retrying (no 5.x.x status) is "expired" and never permanent. Neither
   the original's sender nor the bounce's addressees are ever a failed recipient.
5. Auto-replies with a bounce sign but no failed address (a daemon's vacation answer).
6. Anything else is unclassified: kept for an operator, never an event.

The work is bounded (issue #16 item 3): see :mod:`bounded` for the parse, and every pattern
here and in the modules it uses is linear and compiled once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from email.errors import MessageError
from email.message import Message
from email.utils import getaddresses
from typing import Literal

from manycore_common.bounce_rules import (
    GAVE_UP,
    basic_status,
    category,
    enhanced_status,
    is_permanent,
)
from manycore_common.feedbacktag import TAGGED_ADDRESS_RE

from . import bounded, textbounce
from .autoreply import autoreply_rule, bounce_signs, from_address, subject_of
from .reports import (
    AbuseReport,
    DeliveryReport,
    Failure,
    Group,
    abuse_report,
    delivery_report,
    original_message,
)

Kind = Literal["bounce", "delayed", "autoreply", "spam-report", "own-dsn", "unclassified"]

#: The report comes first; the returned original after it may be cut (RFC 3464 §2).
DEFAULT_SCAN_BYTES = 512 * 1024
DEFAULT_MAX_FAILURES = 100
_GAVE_UP = re.compile(GAVE_UP, re.IGNORECASE)
#: A mailer daemon is never a recipient (postmaster@ may be: RFC 5321 §4.5.1).
_MAILER_DAEMON = re.compile(r"^mail(?:er)?[-_]?daemon@", re.IGNORECASE)


@dataclass(frozen=True)
class Envelope:
    mail_from: str  # "" for the null sender
    rcpts: tuple[str, ...]


@dataclass(frozen=True)
class Settings:
    #: Host names our own Postfix reports as (its myhostname): its DSNs are duplicates.
    own_mtas: frozenset[str] = frozenset()
    #: Abuse addresses registered with feedback loops (e.g. Yahoo's).
    abuse_addresses: frozenset[str] = frozenset()
    #: At most this many bytes of a message are parsed and scanned.
    scan_bytes: int = DEFAULT_SCAN_BYTES
    #: At most this many failures are returned for one message.
    max_failures: int = DEFAULT_MAX_FAILURES


@dataclass(frozen=True)
class Classification:
    kind: Kind
    failures: tuple[Failure, ...] = ()
    #: The complainer of a spam report, or the address that auto-replied.
    email: str | None = None
    note: str = ""
    rules: tuple[str, ...] = field(default=())


def is_ours(address: str, envelope: Envelope) -> bool:
    """Our own addresses, never a failed recipient: a feedback address (tagged), the
    envelope's sender and recipients, a mailer daemon."""
    address = address.strip().strip("<>").lower()
    if TAGGED_ADDRESS_RE.fullmatch(address) or _MAILER_DAEMON.match(address):
        return True
    return address == envelope.mail_from.lower() or address in {r.lower() for r in envelope.rcpts}


def classify(envelope: Envelope, data: bytes, settings: Settings) -> Classification:
    try:
        return _classify(envelope, data, settings)
    except RecursionError:
        # The standard library's parser recurses per MIME level; bounded.parse cuts the
        # nesting, this is the last line of defence. Kept for an operator, never lost.
        return Classification("unclassified", note="MIME nested too deeply to parse")
    except (ValueError, LookupError, MessageError) as exc:
        # A message malformed in a way the standard library's email package trips over
        # (found by fuzzing): kept for an operator with what went wrong.
        return Classification("unclassified", note=f"malformed message: {type(exc).__name__}")


def _classify(envelope: Envelope, data: bytes, settings: Settings) -> Classification:
    msg = bounded.parse(data, settings.scan_bytes)
    leaves = bounded.leaves(msg)

    abuse = abuse_report(msg)
    if abuse is not None:
        return _spam_report(abuse)

    subject = subject_of(msg)
    sender = from_address(msg) or ""
    texts = [leaf.text for leaf in leaves if not leaf.embedded and _is_text(leaf.part)]
    text = textbounce.report_text(texts)

    report = delivery_report(msg)
    if report is not None and report.groups:
        # A DSN names its recipients field by field: only our own addresses are dropped.
        from_dsn = _from_dsn(report, text, lambda a: is_ours(a, envelope), settings)
        if from_dsn is not None:
            return from_dsn  # else its text may still say (a DSN without Action fields)

    senders = _senders(msg) | {sender.lower()}

    def ignore(address: str) -> bool:
        return is_ours(address, envelope) or address.lower() in senders

    auto = autoreply_rule(msg, subject)
    signs = bounce_signs(msg, subject, sender)
    if auto is not None and not signs:
        return Classification("autoreply", email=sender or None, rules=(auto,))
    if signs or (envelope.mail_from == "" and textbounce.FAILURE_PHRASE.search(text)):
        failed_header = " ".join(str(v)[:1000] for v in msg.get_all("X-Failed-Recipients", []))
        found = textbounce.in_report(textbounce.flufl_addresses(msg), text, failed_header)
        rule = "flufl.bounce"
        if not found:
            found, rule = textbounce.own_addresses(text), "text"
        failures = textbounce.failures(found, text, ignore, settings.max_failures)
        if not failures and signs:
            # A report that names nobody ("Delivery report unavailable"): the returned
            # original's one recipient, if it has exactly one (MxServer still checks it
            # against the verified tag).
            found, rule = _original_recipient(msg), "original-to"
            failures = textbounce.failures(found, text, ignore, 1)
        if failures:
            return _text_bounce(failures, text, (rule, *signs))
    # Only a subject can look like a bounce's by chance (a reply quotes the subject it answers:
    # "Automatic reply: Order rejected"); a mailer daemon's message, a report or a
    # X-Failed-Recipients header that names nobody is not an auto-reply.
    if auto is not None and set(signs) <= {"bounce-subject"}:
        return Classification("autoreply", email=sender or None, rules=(auto,))
    if report is not None:
        return Classification("unclassified", note="DSN without a failed recipient")
    return Classification("unclassified", note="no rule matched")


#: Who a bounce goes to, and who sent the original: never the failed recipient, though
#: texts often quote them ("The original message was received ... from <sender>").
_BOUNCE_TO = ("To", "Cc")
_ORIGINAL_FROM = ("From", "Sender", "Reply-To", "Return-Path")


def _senders(msg: Message) -> set[str]:
    """Those addresses, less any the original was sent to (a message to oneself)."""
    original = original_message(msg) or Message()
    senders = _addresses(msg, _BOUNCE_TO) | _addresses(original, _ORIGINAL_FROM)
    return senders - _addresses(original, ("To", "Cc"))


def _addresses(msg: Message, names: tuple[str, ...]) -> set[str]:
    values = [str(v)[:1000] for name in names for v in msg.get_all(name, [])]
    return {addr.lower() for _, addr in getaddresses(values[:50]) if "@" in addr}


def _original_recipient(msg: Message) -> list[textbounce.Found]:
    original = original_message(msg)
    if original is None:
        return []
    found = _addresses(original, ("To", "Cc"))
    return [textbounce.Found(found.pop(), None)] if len(found) == 1 else []


def _is_text(part: Message) -> bool:
    if part.get_content_maintype() == "multipart":
        return True  # a leaf only when its boundary never occurs: then it is all text
    # Any text but the returned original's headers (text/rfc822-headers); subtypes come
    # malformed in the wild ("plain\n charset=...").
    subtype = part.get_content_subtype()
    return part.get_content_maintype() == "text" and not subtype.endswith("-headers")


def _text_bounce(failures: list[Failure], text: str, rules: tuple[str, ...]) -> Classification:
    if (
        all(not f.permanent for f in failures)
        and textbounce.TEMPORARY.search(text)
        and not textbounce.FINAL.search(text)
    ):
        delayed = tuple(_as_delay(f) for f in failures)
        return Classification("delayed", failures=delayed, rules=rules)
    return Classification("bounce", failures=tuple(_gave_up(f) for f in failures), rules=rules)


def _gave_up(failure: Failure) -> Failure:
    """A final report of a failure to connect, or of an expired message, without a 5.x.x
    status: the MTA gave up retrying. That says nothing permanent about the address."""
    if _says_permanent(failure):
        return failure
    if failure.category in ("connection", "expired"):
        return replace(failure, permanent=False, category="expired")
    if _GAVE_UP.search(failure.reason):
        return replace(failure, permanent=False)  # e.g. "mailbox is full: retry timeout exceeded"
    return failure


def _says_permanent(failure: Failure) -> bool:
    return bool(failure.status and failure.status.startswith("5")) or (
        failure.status is None and (basic_status(failure.reason) or "").startswith("5")
    )


def _as_delay(failure: Failure) -> Failure:
    return replace(failure, permanent=False)


def _from_dsn(
    report: DeliveryReport, text: str, ignore: Callable[[str], bool], settings: Settings
) -> Classification | None:
    if report.reporting_mta and _host(report.reporting_mta) in settings.own_mtas:
        return Classification("own-dsn", note=report.reporting_mta, rules=("dsn",))
    failed: list[Failure] = []
    delayed: list[Failure] = []
    groups = [g for g in report.groups if g.action in ("failed", "delayed") and not ignore(g.rcpt)][
        : 2 * settings.max_failures
    ]  # delivered / relayed / expanded: nothing failed
    # The human-readable part, read once for all of them, each address's reason ending
    # where the next one's starts.
    found = [textbounce.Found(g.rcpt, None) for g in groups]
    contexts = {
        f.rcpt.lower(): f.reason
        for f in textbounce.failures(found, text, lambda _a: False, len(found))
        if f.reason != "delivery failed"
    }
    for group in groups:
        target = failed if group.action == "failed" else delayed
        if len(target) < settings.max_failures:
            target.append(_dsn_failure(group, contexts.get(group.rcpt.lower(), "")))
    if failed:
        return Classification("bounce", failures=tuple(failed), rules=("dsn",))
    if delayed:
        return Classification("delayed", failures=tuple(delayed), rules=("dsn",))
    return None


def _host(reporting_mta: str) -> str:
    return reporting_mta.strip().rstrip(".").lower()


def _dsn_failure(group: Group, context: str) -> Failure:
    """A DSN recipient group as a Failure. The Diagnostic-Code is the remote reply; without
    one the human-readable part says why, around the address (Gmail, Exchange)."""
    reason = group.diagnostic
    status = group.status
    if reason and category(status, reason) != "other":
        context = ""
    status = status or enhanced_status(context)
    if group.action == "delayed":
        permanent = False
    else:
        verdict = is_permanent(status, reason or context)
        permanent = True if verdict is None else verdict
    cat = category(status, reason)
    if cat == "other" and context:
        cat = category(status, context)
    if group.action == "failed" and cat == "expired" and not (status or "").startswith("5"):
        permanent = False  # gave up retrying: nothing permanent about the address
    if group.action == "failed" and not permanent and cat == "connection":
        # Connecting failed until the MTA gave up: the queue lifetime ran out (RFC 3464
        # §2.3.3 "failed" after temporary errors), which is what the sender needs to know.
        cat = "expired"
    if group.action == "failed" and cat == "dns" and (status or "").endswith(".0.0"):
        # "Action: failed" with a generic 4.0.0 and no such domain or a null MX (Google): the
        # domain will not come back by retrying.
        permanent = not textbounce.TEMPORARY.search(reason or context)
    return Failure(
        rcpt=group.rcpt,
        permanent=permanent,
        status=status,
        reason=reason or context or (f"status {status}" if status else group.action),
        remote_mta=group.remote_mta,
        category=cat,
        original_rcpt=group.original_rcpt,
        final_rcpt=group.final_rcpt,
    )


def _spam_report(abuse: AbuseReport) -> Classification:
    """An RFC 5965 report. The complainer is Original-Rcpt-To, else the original's To (which
    MxServer believes only when a verified tag names that recipient)."""
    original = abuse.original
    complainer = abuse.original_rcpt
    if complainer is None and original is not None:
        to = [str(v)[:1000] for v in original.get_all("To", [])]
        found = [addr for _, addr in getaddresses(to) if "@" in addr]
        complainer = found[0] if found else None
    return Classification(
        "spam-report", email=complainer, note=abuse.feedback_type or "", rules=("arf",)
    )
