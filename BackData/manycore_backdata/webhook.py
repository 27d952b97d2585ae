"""The HTTP edge: one POST of a body to the webhook, turned into an ``Outcome``.

Everything that can go wrong on the wire (refused, reset, TLS, timeout, any status) comes back
as an Outcome rather than an exception, so the poster has one place to decide what to do.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from manycore_common.config import BackDataSection, Config, ConfigError

from . import policy, signature
from .metrics import POST_SECONDS, POSTING

USER_AGENT = "Manycore-Mail-BackData/0.1"
#: Bytes of an answer read: enough for an excerpt; the rest is never buffered.
MAX_ANSWER = 4096


@dataclass(frozen=True)
class WebhookSettings:
    #: May hold a token (user part or query): log ``redacted(url)`` only.
    url: str = field(repr=False)
    timeout: float
    connections: int
    #: True: the system's trust store; False: no verification; or a context with our CA.
    tls: ssl.SSLContext | bool = True
    #: Custom headers and the signing secret are secrets: kept out of repr (and so of logs).
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    secret: bytes | None = field(default=None, repr=False)

    def secret_values(self) -> tuple[bytes, ...]:
        """What must never be repeated from an answer: header values (and their words, so a
        bare token is caught without its "Bearer"), the signing secret, the URL's password
        and query values. Longest first, so a value is scrubbed before its parts."""
        found: set[str] = set()
        for _, value in self.headers:
            found.add(value)
            found.update(value.split())
        parts = urlsplit(self.url)
        found.add(parts.password or "")
        found.update(v for _, _, v in (p.partition("=") for p in parts.query.split("&")))
        values = {v.encode() for v in found if len(v) >= MIN_SECRET}
        if self.secret:
            values.add(self.secret)
        return tuple(sorted(values, key=len, reverse=True))


#: Shorter header words ("Bearer", "Basic") are not secrets, and scrubbing them would only
#: garble the webhook's answer.
MIN_SECRET = 8


def scrub(answer: bytes, secrets: tuple[bytes, ...]) -> bytes:
    """The webhook's answer without our secrets: it goes into logs and dead-letter reasons,
    and an endpoint that echoes the request (a debugging proxy, a careless 401 page) would
    otherwise put our credentials there."""
    for secret in secrets:
        answer = answer.replace(secret, b"[redacted]")
    return answer


def redacted(url: str) -> str:
    """The URL for logs: webhooks often carry a token in the user part or the query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def tls_setting(section: BackDataSection, config: Config) -> ssl.SSLContext | bool:
    if not section.tls_verify:
        return False
    if section.tls_ca_file is None:
        return True
    path = config.path(section.tls_ca_file)
    try:
        return ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"backdata.tls-ca-file: cannot load {path}: {exc}"]) from None


def settings_from(section: BackDataSection, config: Config) -> WebhookSettings:
    secret = section.signing_secret
    return WebhookSettings(
        url=section.post_url,
        timeout=section.timeout_seconds,
        connections=section.concurrency,
        tls=tls_setting(section, config),
        headers=tuple((k, v.get_secret_value()) for k, v in section.headers.items()),
        secret=secret.get_secret_value().encode("utf-8") if secret else None,
    )


class Webhook:
    """A connection pool to the webhook (``connections`` keep-alive connections)."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        #: Parsed from the settings once, not at every POST.
        self._secrets = settings.secret_values()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Webhook:
        connector = aiohttp.TCPConnector(limit=self.settings.connections, ssl=self.settings.tls)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            headers={"User-Agent": USER_AGENT, **dict(self.settings.headers)},
        )
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def request_headers(self, body: bytes, now: float) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.settings.secret is not None:
            headers[signature.HEADER] = signature.sign(self.settings.secret, int(now), body)
        return headers

    async def post(self, body: bytes, events: int) -> policy.Outcome:
        """POST ``body`` (``events`` events) once."""
        assert self._session is not None, "use as an async context manager"
        headers = self.request_headers(body, time.time())
        started = time.perf_counter()
        POSTING.inc(events)
        try:
            # No redirects: a 301/302 would turn the POST into a GET and lose the body.
            async with self._session.post(
                self.settings.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                answer = scrub(await response.content.read(MAX_ANSWER), self._secrets)
                return policy.from_status(
                    response.status, answer, response.headers.get("Retry-After"), time.time()
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return policy.from_error(exc)
        finally:
            POSTING.dec(events)
            POST_SECONDS.observe(time.perf_counter() - started)
