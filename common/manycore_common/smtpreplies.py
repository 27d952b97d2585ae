"""aiosmtpd's fixed reply texts that lack an RFC 3463 enhanced status code, mapped to ours.

RFC 2034 asks for an enhanced code on every reply once ENHANCEDSTATUSCODES is advertised;
aiosmtpd writes a few replies itself (size limit, long lines, missing STARTTLS). Both SMTP
services (Receiver, MxServer) pass every reply through ``rewrite``."""

from __future__ import annotations

from .message import too_large

_LINE_TOO_LONG = "500 5.5.2 Line too long: at most 998 characters per line (RFC 5322 2.1.1)"


def rewrite(status: str, size_limit: int) -> tuple[str, str | None]:
    """(reply to send, reason code of a refused message or None)."""
    if status in (
        "552 Error: Too much mail data",
        "552 Error: message size exceeds fixed maximum message size",
    ):
        return too_large(size_limit).smtp_reply, "too-large"
    if status == "500 Line too long (see RFC5321 4.5.3.1.6)":
        return _LINE_TOO_LONG, "line-too-long"
    if status == "530 Must issue a STARTTLS command first":
        return "530 5.7.0 Must issue a STARTTLS command first", None
    return status, None
