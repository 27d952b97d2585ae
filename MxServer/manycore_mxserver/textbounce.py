"""Bounces that are not RFC 3464 reports: the plain-text formats MTAs still send.

Which addresses failed comes from ``flufl.bounce`` (Apache-2.0, GNU Mailman's bounce
detectors: dozens of legacy formats, temporary vs permanent), with a few formats of our own
where it finds nothing (Exim's and Gmail's texts, Exchange's "Delivery has failed to these
recipients", generic "could not be delivered to" texts). Why flufl.bounce rather than the
alternatives we looked at:

- Sisimai (BSD-2, the most thorough: ~70 MTAs and a reason for each) exists for Perl, Ruby
  and Go only, not Python; running it as a subprocess would add a runtime to the image.
- ``bounce_email`` (a Python port of a Ruby gem) and ``flanker``'s bounce helper are
  unmaintained, and flanker pulls in a large dependency tree for one function.
- flufl.bounce is maintained (6.0.0, 2026), pure Python, typed, with one small dependency
  (atpublic), and Mailman has run it on real bounces for twenty years.

flufl.bounce gives addresses but no reasons, so the reason of each address is read here from
the text around it (the paragraph after the address, a reply code in it) and categorised by
:mod:`manycore_common.bounce_rules`. Everything reads text that :mod:`bounded` flattened and
cut; every pattern is linear, compiled once, and each address is looked up once.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.errors import MessageError
from email.message import Message

from flufl.bounce import all_failures

from manycore_common.bounce_rules import (
    Category,
    basic_status,
    category,
    enhanced_status,
    is_permanent,
)

from .reports import Failure

# flufl.bounce logs every detector that trips over a malformed message, with a traceback,
# then raises; we take that as "none found" (flufl_addresses), so its log would only be noise.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

_FLAGS = re.IGNORECASE | re.MULTILINE
#: An address starting at a token boundary (so a search is linear, not one try per offset).
ADDRESS = re.compile(
    r"(?<![\w.!#$%&'*+/=?^`{|}~-])[\w.!#$%&'*+/=?^`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}"
    r"\.){1,8}[A-Za-z]{2,24}(?![\w-])"
)

#: Texts that say delivery failed; the failed addresses follow (own rules, when flufl.bounce
#: finds none).
FAILURE_PHRASE = re.compile(
    r"could not be delivered to|couldn't be delivered to|can't be delivered to|undeliverable to"
    r"|delivery (?:has )?failed|failed recipients?|following (?:address|recipient)(?:e?s|\(s\))?"
    r"|unable to deliver|delivery to the following|permanent(?:ly)? (?:error|fatal|failure)"
    r"|failed permanently|wasn't delivered to|was not delivered to|not (?:be )?delivered"
    r"|mail delivery failed|returned to sender|message not delivered|non-delivery"
    r"|did not reach|couldn't reach|could not reach|has not yet been delivered|delayed"
    r"|user unknown|unknown user|address rejected|recipient rejected|no such user"
    r"|error (?:delivering|sending|occurred|has occurred)|following list of|failure reasons"
    r"|transcript of session|host unknown|delivery problem|could not deliver|can't deliver",
    re.IGNORECASE,
)
#: Where the returned original starts in a text: nothing after it is the report.
ORIGINAL_START = re.compile(
    r"^[ \t>-]{0,20}(?:original message|(?:this|here|below) is a copy of|below this line|"
    r"(?:unsent|returned) (?:message|mail) follows|"
    r"(?:a )?copy of the (?:original )?message|message (?:headers|text) follow|"
    r"the (?:original )?message (?:headers|text)|undelivered message|returned message|"
    r"received: ?|return-path: ?|message-id: ?|start of returned message)",
    _FLAGS,
)
SUGGESTIONS = re.compile(r"possible alternatives|did you mean|suggest", re.IGNORECASE)
TEMPORARY = re.compile(
    r"will (?:be )?retr(?:y|ied)|not yet been delivered|delivery attempts will continue"
    r"|has been delayed|is delayed|delivery (?:is )?delayed|still trying|will keep trying"
    r"|temporar(?:y|ily) (?:error|failure|problem|unavailable|deferred)|no action is required"
    r"|warning: message|advisory|will continue (?:to try|trying)",
    re.IGNORECASE,
)
#: A report that says its MTA stopped trying is final whatever temporary words it quotes
#: (qmail: "I'm not going to try again; this message has been in the queue too long" after a
#: remote "421 ... temporarily deferred"): a bounce, never a delay notice.
FINAL = re.compile(
    r"not going to try again|will not (?:be )?(?:retried|tried again|try again)"
    r"|(?:i've|i have|has|have) given up|been in the queue too long|no (?:more|further) retries",
    re.IGNORECASE,
)
_CODE = re.compile(r"(?<![\d.])(?:[45]\.\d{1,3}\.\d{1,3}|[45]\d\d)(?![\d])")
_PARAGRAPH_END = re.compile(r"\n[ \t]{0,16}\n")
_LEAD = re.compile(r"^[\s>:'\"<)\],;.-]{0,40}")
_WSP = re.compile(r"\s+")
_NON_WORD = re.compile(r"[\W_]+")
#: Reply text kept as the reason: the start of the reply is what tells.
MAX_REASON = 500
#: How far after an address its reason may be.
WINDOW = 1500
#: How much of that window the category rules read when the reason alone says nothing (the
#: rules cost ~4 us per character; at most max_failures addresses are read).
CONTEXT = 600


@dataclass(frozen=True)
class Found:
    rcpt: str
    #: What the detector says when the text gives no code: permanent, temporary or unknown.
    permanent: bool | None


def report_text(texts: Sequence[str]) -> str:
    """The report part of a text bounce: up to where the returned original starts."""
    text = "\n\n".join(t for t in texts if t.strip())
    start = FAILURE_PHRASE.search(text)
    origin = ORIGINAL_START.search(text, start.end() if start else 0)
    return text[: origin.start()] if origin else text


def flufl_addresses(msg: Message) -> list[Found]:
    """The failed addresses flufl.bounce finds (temporary first), never an exception."""
    try:
        temporary, permanent = all_failures(msg)
    except (LookupError, TypeError, ValueError, AttributeError, UnicodeError, MessageError):
        # A heuristic detector tripping over a malformed part: it found nothing.
        return []
    out = [Found(a.decode("ascii", "replace"), False) for a in sorted(temporary)]
    out += [Found(a.decode("ascii", "replace"), None) for a in sorted(permanent - temporary)]
    # Its DSN detector also returns what is no address (an Exim "save to /path" recipient).
    return [f for f in out if "@" in f.rcpt]


def in_report(found: Sequence[Found], text: str, headers: str) -> list[Found]:
    """Only the addresses the report itself names (or X-Failed-Recipients): a heuristic that
    strayed into the returned original's headers finds its sender and Message-ID there."""
    lower, headers = text.lower(), headers.lower()
    return [f for f in found if f.rcpt.lower() in lower or f.rcpt.lower() in headers]


def own_addresses(text: str) -> list[Found]:
    """Addresses after the first failure phrase of a report text (our own generic rule), up
    to a list of suggestions ("Possible alternatives:", GroupWise). Only called for a message
    that shows a sign of a bounce; the returned original is already cut off."""
    start = FAILURE_PHRASE.search(text)
    # From the paragraph of the phrase (the reply may follow the address: "<a@b> ... User
    # unknown"); with no phrase we know, the whole report (Japanese texts).
    begin = text.rfind("\n\n", 0, start.start()) + 1 if start else 0
    stop = SUGGESTIONS.search(text, begin)
    end = stop.start() if stop else len(text)
    return [Found(m.group(0), None) for m in ADDRESS.finditer(text, begin, end)]


def failures(
    found: Sequence[Found],
    text: str,
    ignore: Callable[[str], bool],
    limit: int,
) -> list[Failure]:
    """One Failure per distinct address not ignored, at most ``limit``, each with the reason
    read from the text after it."""
    seen: set[str] = set()
    picked: list[Found] = []
    for item in found:
        rcpt = item.rcpt.strip().strip("<>.").strip()
        if "@" not in rcpt or ignore(rcpt) or rcpt.lower() in seen:
            continue
        seen.add(rcpt.lower())
        picked.append(Found(rcpt, item.permanent))
        if len(picked) >= limit:
            break
    lower = text.lower()
    positions = [lower.find(item.rcpt.lower()) for item in picked]
    starts = sorted({p for p in positions if p >= 0})
    delay = TEMPORARY.search(text) is not None
    overall = category(None, text)  # once: the fallback of every address without a reason
    return [
        _failure(item, text, pos, starts, delay, overall)
        for item, pos in zip(picked, positions, strict=True)
    ]


def _window(text: str, pos: int, starts: list[int]) -> str:
    """The text after an address, up to the next failed address's paragraph or WINDOW."""
    if pos < 0:
        return text[:WINDOW]
    begin = pos
    end = min(len(text), pos + WINDOW)
    index = bisect.bisect_right(starts, pos)
    if index < len(starts) and starts[index] < end:
        # The next address's own reason follows it; ours lies in between (Exim, qmail,
        # Postfix, Zoho), unless nothing is in between (a list of addresses, then one reason).
        between = text[pos : starts[index]].split(None, 1)[1:]
        rest = between[0] if between else ""
        if _CODE.search(rest) or len(_NON_WORD.sub("", rest)) >= 8:
            end = starts[index]
    return text[begin:end]


def reason_of(window: str, rcpt: str) -> str:
    """The reply text in a window that starts with the address: from the first reply code,
    else the rest of the address's paragraph and the next one."""
    body = window[len(rcpt) :] if window.lower().startswith(rcpt.lower()) else window
    code = _CODE.search(body)
    if code is not None:
        start = body.rfind("\n", 0, code.start()) + 1
        body = body[start:]
        end = _PARAGRAPH_END.search(body)
        body = body[: end.start()] if end else body
    else:
        # The rest of the address's paragraph, and more paragraphs while they are short
        # ("because:" and the reason after a blank line, Lotus Domino).
        ends = [m.start() for m in _PARAGRAPH_END.finditer(body, 0, MAX_REASON * 2)][:4]
        cut = next((e for e in ends if len(_WSP.sub(" ", body[:e]).strip()) > 40), None)
        body = body[:cut] if cut is not None else body
    return _WSP.sub(" ", _LEAD.sub("", body)).strip()[:MAX_REASON]


def line_prefix(text: str, pos: int) -> str:
    """What precedes an address on its line ("Invalid final delivery userid: <addr>")."""
    if pos <= 0:
        return ""
    return text[text.rfind("\n", 0, pos) + 1 : pos].strip()[-200:]


def _failure(
    item: Found, text: str, pos: int, starts: list[int], delay: bool, overall: Category
) -> Failure:
    window = _window(text, pos, starts)
    reason = reason_of(window, item.rcpt)
    prefix = line_prefix(text, pos)
    if not _CODE.search(reason) and len(prefix) > 8:
        reason = f"{prefix} {reason}".strip()
    status = enhanced_status(reason)
    verdict = is_permanent(status, reason)
    if verdict is None:
        verdict = item.permanent if item.permanent is not None else not delay
    cat = category(status, reason)
    if cat == "other":
        cat = category(status, window[:CONTEXT])
    if cat == "other" and not (status or basic_status(reason)):
        cat = overall
    return Failure(
        rcpt=item.rcpt,
        permanent=verdict,
        status=status,
        reason=reason or "delivery failed",
        category=cat,
    )
