"""The two configuration files, validated into frozen typed objects.

The key layout is the one of ``inboxbooster-mailer-global.yaml.example`` and
``inboxbooster-mailer-customer.yaml.example`` at the repository root (so users of the older
Inboxbooster-Mailer can bring their files). Keys are kebab-case in YAML and snake_case here.

Rules:

* Unknown keys are errors (a typo must not silently fall back to a default).
* Every problem is reported, one line each, naming the key path:
  ``transformer.domain-settings[1].selector: field required``.
* A secret ``X`` may be given inline or as ``X-file`` (a path, relative to the directory of the
  config file), so it can live in a Kubernetes Secret. Secrets are ``SecretStr``: they never
  appear in ``repr``, ``str`` or logs.
* Sections are optional at load time: each service asks for its own with ``require``, which
  reports a missing section the same way as any other error.
* A service loads only its own section and what it borrows (``configscope``): it reads
  no other service's secret files, so it neither holds them nor needs them to start.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, NoReturn, overload
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from . import configscope, keyspace

DEFAULT_GLOBAL_CONFIG = Path("/configs/inboxbooster-mailer-global.yaml")
DEFAULT_CUSTOMER_CONFIG = Path("/configs/inboxbooster-mailer-customer.yaml")

#: Exit code of a service whose configuration is invalid (docs/ARCHITECTURE.md#runtime-contract).
CONFIG_ERROR_EXIT_CODE = 2


class ConfigError(Exception):
    """One or more configuration problems; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class Section(BaseModel):
    """Base of every config object: frozen, kebab-case keys, unknown keys rejected."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=_kebab,
        validate_by_alias=True,
        validate_by_name=False,
        hide_input_in_errors=True,
    )

    #: Names (kebab-case) of secret fields that may also be given as ``<name>-file``.
    secret_keys: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any, info: ValidationInfo) -> Any:
        if data is None:
            # A section that holds only comments ("common-config:") is an empty section.
            return {}
        if not cls.secret_keys or not isinstance(data, Mapping):
            return data
        context = info.context or {}
        base = Path(context.get("base_dir", "."))
        # A section a service only borrows plain values from (configscope): its secrets
        # belong to another service, whose files this one need not, and should not, see.
        skip = context.get("secret_files") == "skip"
        data = dict(data)
        for key in cls.secret_keys:
            file_key = f"{key}-file"
            if file_key not in data:
                continue
            if skip:
                data.pop(file_key)
                continue
            if key in data:
                raise ValueError(f"give either {key} or {file_key}, not both")
            data[key] = read_secret_file(base, data.pop(file_key), file_key)
        return data


def read_secret_file(base: Path, value: object, key: str) -> str:
    """Read a secret from a file; trailing newlines (editors add them) are not part of it."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a file path")
    path = Path(value)
    if not path.is_absolute():
        path = base / path
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ValueError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- shared pieces


class Listen(Section):
    """An address to listen on."""

    inet_interface: str = "0.0.0.0"
    inet_port: int = Field(ge=0, le=65535)


def _listen(port: int) -> Listen:
    return Listen.model_validate({"inet-interface": "0.0.0.0", "inet-port": port})


class Prometheus(Section):
    """Where the service serves /metrics, /livez and /readyz (docs/ARCHITECTURE.md#services)."""

    inet_interface: str = "0.0.0.0"
    inet_port: int = Field(default=9090, ge=0, le=65535)


class SentinelAddress(Section):
    hostname: str = Field(min_length=1)
    port: int = Field(default=26379, ge=1, le=65535)


class RedisConnection(Section):
    """How a service reaches Redis. The password may come from a file (a Kubernetes Secret).

    Two forms: one node (``hostname``/``port``), or a Redis Sentinel group (``sentinels``
    plus ``master-name``): the client asks the sentinels where the primary is at every new
    connection, so it follows a failover (see ``redisconn``). ``password``/``username`` are
    the data nodes'; ``sentinel-password`` (and ``sentinel-username``) the sentinels', if
    they require one.

    ``min-replicas-ack``: a write that acknowledges something outside Redis (a push behind
    a 250 / 200, an event, a delivery record) is followed by ``WAIT <n> <timeout>`` on the
    same connection and fails (451 / 503, or the consumer's retry) when fewer replicas have
    it. Default: 1 in the Sentinel form, 0 (no WAIT) with one node, which has no replica."""

    secret_keys = ("password", "sentinel-password")

    hostname: str = "localhost"
    port: int = Field(default=6379, ge=1, le=65535)
    sentinels: tuple[SentinelAddress, ...] = ()
    master_name: str | None = Field(default=None, min_length=1)
    sentinel_username: str | None = None
    sentinel_password: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    db: int = Field(default=0, ge=0)
    tls: bool = False
    tls_ca_file: Path | None = None
    connect_timeout_seconds: float = Field(default=2.0, gt=0)
    command_timeout_seconds: float = Field(default=5.0, gt=0)
    min_replicas_ack: int | None = Field(default=None, ge=0)
    replica_ack_timeout_ms: int = Field(default=2000, ge=1)

    @model_validator(mode="after")
    def _one_form(self) -> RedisConnection:
        if bool(self.sentinels) != (self.master_name is not None):
            raise ValueError("sentinels and master-name go together (the Sentinel form)")
        if self.sentinels and self.model_fields_set & {"hostname", "port"}:
            raise ValueError("give either hostname/port or sentinels, not both")
        if not self.sentinels and (self.sentinel_password or self.sentinel_username):
            raise ValueError("sentinel-password and sentinel-username need sentinels")
        return self

    @property
    def replicas_to_ack(self) -> int:
        """How many replicas must have a write before it is acknowledged (0: no WAIT)."""
        if self.min_replicas_ack is not None:
            return self.min_replicas_ack
        return 1 if self.sentinels else 0


class ReliableQueueClient(Section):
    redis: RedisConnection = RedisConnection()


class Login(Section):
    secret_keys = ("password",)

    username: str = Field(min_length=1)
    password: SecretStr

    @field_validator("password")
    @classmethod
    def _not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("password must not be empty")
        return value


class AuthThrottle(Section):
    """Per (client address, login name): after ``max-failures`` failed logins within
    ``window-seconds`` the pair is refused for ``lockout-seconds``; every failure also delays
    the next answer. Failures with login names that are no login count per address, up to
    ``max-unknown-login-failures`` (manycore_common.loginthrottle; both front doors)."""

    max_failures: int = Field(default=5, ge=1)
    max_unknown_login_failures: int = Field(default=100, ge=1)
    window_seconds: float = Field(default=300.0, gt=0)
    lockout_seconds: float = Field(default=300.0, ge=0)
    delay_seconds: float = Field(default=0.5, ge=0)
    max_delay_seconds: float = Field(default=5.0, ge=0)


def _unique_usernames(logins: tuple[Login, ...]) -> tuple[Login, ...]:
    # Checked here rather than with min_length: pydantic would report an empty list a second
    # time whenever one login in it is invalid.
    if not logins:
        raise ValueError("at least one login is required")
    seen: set[str] = set()
    for login in logins:
        if login.username in seen:
            raise ValueError(f"username {login.username!r} appears twice")
        seen.add(login.username)
    return logins


# --------------------------------------------------------------------------- customer file

#: 25 MiB, the usual limit of the large mailbox providers.
DEFAULT_MAX_MESSAGE_SIZE = 25 * 1024 * 1024


class ReceiverTls(Section):
    """Certificate and key for STARTTLS, relative to the config directory."""

    cert_file: Path = Path("receiver_cert.pem")
    key_file: Path = Path("receiver_key.pem")


class ReceiverSection(Section):
    bind: Listen = _listen(587)
    hostname: str | None = None
    auth_logins: tuple[Login, ...]
    ignore_smtp_mail_from_rcpt_to: bool = True
    allow_plaintext_auth: bool = False
    max_message_size: int = Field(default=DEFAULT_MAX_MESSAGE_SIZE, gt=0)
    tls: ReceiverTls = ReceiverTls()
    #: Longest a client may take to send one command line, or the whole DATA phase (from
    #: the DATA command to the final dot), before the connection is closed with 421: a
    #: client dribbling bytes cannot hold a connection longer (RFC 5321 §4.5.3.2: 5 min).
    command_timeout_seconds: float = Field(default=300.0, gt=0)
    #: Processes accepting on the port: one event loop uses one core, so N workers let one
    #: pod or machine use N (see workers.py). 1 runs no separate worker process.
    workers: int = Field(default=1, ge=1, le=64)
    auth_throttle: AuthThrottle = AuthThrottle()
    reliable_queue: ReliableQueueClient = ReliableQueueClient()
    prometheus: Prometheus = Prometheus()

    _check_logins = field_validator("auth_logins")(_unique_usernames)

    @field_validator("ignore_smtp_mail_from_rcpt_to")
    @classmethod
    def _only_headers(cls, value: bool) -> bool:
        # The seed defines recipients by the To/Cc headers; envelope recipients would need a
        # different contract with every later stage, so the old switch is kept but only `true`.
        if not value:
            raise ValueError("only true is supported: recipients are taken from To and Cc")
        return value


class HttpReceiverSection(Section):
    bind: Listen = _listen(8080)
    auth_logins: tuple[Login, ...]
    max_message_size: int = Field(default=DEFAULT_MAX_MESSAGE_SIZE, gt=0)
    #: Proxies (e.g. the TLS ingress) whose X-Forwarded-For names the real client; failed
    #: logins are throttled per real client, not per proxy.
    trusted_proxies: tuple[IPvAnyNetwork, ...] = ()
    #: One-click unsubscribe links older than this get 410 with a page that points to the
    #: message's mailto unsubscribe (manycore_httpreceiver.unsubscribe).
    unsubscribe_token_max_age_days: float = Field(default=90, gt=0)
    #: Longest a client may take to send a request's header section (counted from the
    #: connection's start or its previous request), and again its body, before the
    #: connection is closed: a client dribbling bytes cannot hold a connection longer.
    request_timeout_seconds: float = Field(default=60.0, gt=0)
    #: Processes accepting on the port: one event loop uses one core, so N workers let one
    #: pod or machine use N (see workers.py). 1 runs no separate worker process.
    workers: int = Field(default=1, ge=1, le=64)
    #: Log lines below WARNING (one per request) are written together, up to this many in
    #: one write and at least every log_buffer_seconds (logs.buffer_info); 0 or 1: each at
    #: once. A killed process loses at most these, never a message (Redis holds those).
    log_buffer_lines: int = Field(default=256, ge=0, le=100_000)
    log_buffer_seconds: float = Field(default=1.0, gt=0, le=60)
    auth_throttle: AuthThrottle = AuthThrottle()
    reliable_queue: ReliableQueueClient = ReliableQueueClient()
    prometheus: Prometheus = Prometheus()

    _check_logins = field_validator("auth_logins")(_unique_usernames)


class EmailHeaders(Section):
    inject: dict[str, str] = {}


class DomainSettings(Section):
    """One sending domain. DKIM keys are files (or inline PEM) that the Transformer loads and
    checks at its start; other services do not need them, so they are not read here."""

    domain: str = Field(min_length=1)
    dkim_private_key_file: Path | None = None
    dkim_private_key: SecretStr | None = None
    dkim_ed25519_private_key_file: Path | None = None
    dkim_ed25519_private_key: SecretStr | None = None
    return_path_domain: str = Field(min_length=1)
    selector: str = Field(min_length=1)
    ed25519_selector: str | None = None
    beacon_url: str | None = None

    @field_validator("domain", "return_path_domain")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.strip().lower()

    @model_validator(mode="after")
    def _one_rsa_key(self) -> DomainSettings:
        if (self.dkim_private_key_file is None) == (self.dkim_private_key is None):
            raise ValueError("give exactly one of dkim-private-key-file and dkim-private-key")
        if self.dkim_ed25519_private_key_file and self.dkim_ed25519_private_key:
            raise ValueError(
                "give either dkim-ed25519-private-key-file or dkim-ed25519-private-key, not both"
            )
        return self


class FeedbackId(Section):
    """Feedback-ID (Gmail's ``a:b:c:SenderId``). The campaign is the message's X-Stream-Id, or
    ``campaign-id`` when it has none; never a per-message id (that defeats aggregation)."""

    campaign_id: str = "default"
    mail_type: str = "default"
    sender_id: str = Field(min_length=1)
    format: str = "{{campaign}}:{{mail-type}}:{{sender-id}}"


class TransformerSection(Section):
    email_headers: EmailHeaders = EmailHeaders()
    domain_settings: tuple[DomainSettings, ...] = Field(min_length=1)
    feedback_id: FeedbackId
    #: Processes that transform and sign; one per core the pod may use.
    workers: int = Field(default=1, ge=1, le=64)
    #: Messages taken from a queue at once (one Redis round trip for the whole batch).
    batch_size: int = Field(default=16, ge=1, le=1000)
    #: After this many P0 messages in a row, one waiting P1 message goes first, so a steady
    #: stream of priority mail never starves the default queue.
    primary_per_default: int = Field(default=10, ge=1)
    reliable_queue: ReliableQueueClient = ReliableQueueClient()
    prometheus: Prometheus = Prometheus()

    @field_validator("domain_settings")
    @classmethod
    def _unique_domains(cls, value: tuple[DomainSettings, ...]) -> tuple[DomainSettings, ...]:
        seen: set[str] = set()
        for item in value:
            if item.domain in seen:
                raise ValueError(f"domain {item.domain!r} appears twice")
            seen.add(item.domain)
        return value


#: A Postfix time value with an explicit unit (postconf(5) "time units": s, m, h, d, w).
POSTFIX_TIME_RE = re.compile(r"[0-9]+[smhdw]")
#: What postconf(5) calls a parameter name.
POSTFIX_PARAMETER_RE = re.compile(r"[a-z][a-z0-9_]*")
#: main.cf parameters PostfixLog owns: changing them would expose the open relay, move its
#: files away from where PostfixLog looks, or break the link between log lines and messages.
PROTECTED_MAIN_CF = {
    "inet_interfaces": "Postfix listens on loopback only",
    "mynetworks": "only loopback clients may relay",
    "mynetworks_style": "only loopback clients may relay",
    "queue_directory": "set postfixlog.postfix-directory instead",
    "data_directory": "set postfixlog.postfix-directory instead",
    "config_directory": "set postfixlog.postfix-directory instead",
    "maillog_file": "set postfixlog.logfile instead",
    "maillog_file_prefixes": "set postfixlog.logfile instead",
    "enable_long_queue_ids": "long queue ids tie log lines to messages",
    "maximal_queue_lifetime": "set postfixlog.maximal-queue-lifetime instead",
    "bounce_queue_lifetime": "set postfixlog.bounce-queue-lifetime instead",
}
#: Host names under which PostfixLog reaches its own Postfix ("localhost" is read as
#: 127.0.0.1, never looked up).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


def _postfix_time(value: str) -> str:
    if not POSTFIX_TIME_RE.fullmatch(value):
        raise ValueError("must be a number with a unit s, m, h, d or w (e.g. 5d)")
    return value


class PostfixEndpoint(Section):
    """Where the injector reaches Postfix: always its own smtpd on loopback."""

    hostname: str = "127.0.0.1"
    #: Defaults to ``string-replacer.master-cf.smtpd-port``; if given it must be the same.
    port: int | None = Field(default=None, ge=1, le=65535)

    @field_validator("hostname")
    @classmethod
    def _loopback(cls, value: str) -> str:
        if value not in LOOPBACK_HOSTS:
            raise ValueError("must be 127.0.0.1: PostfixLog only talks to its own Postfix")
        return value


class MasterCf(Section):
    smtpd_port: int = Field(default=10025, ge=1, le=65535)


MainCfValue = str | int | bool


class StringReplacer(Section):
    #: Any main.cf parameter, plus ``mailname`` (becomes ``myorigin``); ``myhostname`` and
    #: ``mailname`` fall back to the files ``myhostname`` and ``mailname`` beside the config.
    main_cf: dict[str, MainCfValue] = {}
    master_cf: MasterCf = MasterCf()

    @field_validator("main_cf")
    @classmethod
    def _parameters(cls, value: dict[str, MainCfValue]) -> dict[str, MainCfValue]:
        for name, setting in value.items():
            if not POSTFIX_PARAMETER_RE.fullmatch(name):
                raise ValueError(f"{name!r} is not a main.cf parameter name")
            if name in PROTECTED_MAIN_CF:
                raise ValueError(f"{name} cannot be set here: {PROTECTED_MAIN_CF[name]}")
            # A line break would start a new main.cf line (another parameter).
            if isinstance(setting, str) and any(c in setting for c in "\r\n\0"):
                raise ValueError(f"the value of {name} contains a line break")
        return value


class ThrottledTransport(Section):
    """Destination domains that get a slower transport of their own (postconf(5)
    ``transport_destination_concurrency_limit`` and ``transport_destination_rate_delay``)."""

    domains: tuple[str, ...] = ()
    concurrency_limit: int = Field(default=2, ge=1, le=100)
    rate_delay: str = "1s"

    _check_delay = field_validator("rate_delay")(_postfix_time)

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(d.strip().lower().rstrip(".") for d in value)
        for domain in cleaned:
            if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", domain):
                raise ValueError(f"{domain!r} is not a domain name")
        return cleaned


class PostfixLogSection(Section):
    #: Postfix's log (its ``maillog_file``), which PostfixLog follows.
    logfile: Path = Path("/var/log/mail.log")
    postfix: PostfixEndpoint = PostfixEndpoint()
    string_replacer: StringReplacer = StringReplacer()
    #: Home of the private Postfix instance: etc/ (rendered config), queue/, data/.
    postfix_directory: Path = Path("/var/spool/manycore-postfix")
    #: How long Postfix retries a message before it gives up (a ``soft`` bounce event).
    maximal_queue_lifetime: str = "5d"
    bounce_queue_lifetime: str = "5d"
    throttled_transport: ThrottledTransport = ThrottledTransport()
    #: Backpressure: take from the to-postfix queue only while Postfix's active + incoming
    #: queues hold fewer messages than this.
    max_active_incoming: int = Field(default=1000, ge=1)
    #: SMTP connections from PostfixLog to its Postfix (messages injected in parallel).
    smtp_connections: int = Field(default=4, ge=1, le=64)
    #: Also emit a ``deferred`` event for every temporary failure (progress, not final).
    deferred_events: bool = False
    #: On stop, how long Postfix may finish deliveries in progress before what is left in its
    #: queue goes back to the to-postfix queue.
    stop_grace_seconds: float = Field(default=20.0, ge=0)
    #: On stop, what becomes of the messages left in Postfix's queue: ``hand-back`` (to the
    #: to-postfix queue; the queue directory may die with the pod) or ``keep`` (left in the
    #: queue directory, which must then be a persistent volume of this instance: the next
    #: start of the same ``instance-name`` delivers them). docs/operations/postfix-queue.md.
    queue_on_stop: Literal["hand-back", "keep"] = "hand-back"
    #: PostfixLog rotates the log file once it is this big (0: never).
    log_rotate_bytes: int = Field(default=100 * 1024 * 1024, ge=0)
    #: What Redis keeps of a message once its last final event is out (queue id → message,
    #: the "already injected" marker) lives this long, for log lines read again after a
    #: restart: memory per message ends with the message, not with the queue lifetime.
    replay_window_seconds: int = Field(default=600, ge=60, le=7 * 86400)
    #: How long a feeder's claim on an item lasts (exactly once across instances): only a
    #: holder that stalls or dies between claim and record makes the item wait this long.
    claim_seconds: int = Field(default=120, ge=2, le=3600)
    #: Also write every line read from Postfix's log to stdout (a JSON log line with the
    #: raw Postfix line in ``postfix``), so ``kubectl logs`` shows what Postfix did.
    echo_postfix_log: bool = True
    #: Names this instance's state in Redis (log position, queue ids); default: host name.
    instance_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,100}$")
    reliable_queue: ReliableQueueClient = ReliableQueueClient()
    prometheus: Prometheus = Prometheus()

    _check_lifetimes = field_validator("maximal_queue_lifetime", "bounce_queue_lifetime")(
        _postfix_time
    )

    @model_validator(mode="after")
    def _own_smtpd(self) -> PostfixLogSection:
        port = self.postfix.port
        if port is not None and port != self.string_replacer.master_cf.smtpd_port:
            raise ValueError(
                "postfix.port must equal string-replacer.master-cf.smtpd-port "
                "(PostfixLog delivers to its own Postfix)"
            )
        return self


class YahooAbuse(Section):
    to: str


class Abuse(Section):
    """Addresses registered with providers' feedback loops; their reports come here."""

    yahoo: YahooAbuse | None = None
    #: Further abuse addresses (any provider), accepted even outside the return-path domains.
    addresses: tuple[str, ...] = ()

    def all(self) -> frozenset[str]:
        found = set(self.addresses)
        if self.yahoo is not None:
            found.add(self.yahoo.to)
        return frozenset(a.strip().lower() for a in found)


class MxServerTls(Section):
    """STARTTLS certificate and key, relative to the config directory (self-signed if absent)."""

    cert_file: Path = Path("mxserver_cert.pem")
    key_file: Path = Path("mxserver_key.pem")


class RateLimit(Section):
    """Per client address: at most ``messages`` within ``window-seconds``; more get 450."""

    messages: int = Field(default=120, ge=1)
    window_seconds: float = Field(default=60.0, gt=0)


class Unclassified(Section):
    """Messages no rule understood are kept in Redis for an operator, in two lists, each
    bounded to its newest messages: those a verified feedback tag ties to mail we sent
    (``MXSERVER-UNCLASSIFIED``) and the rest (``MXSERVER-UNCLASSIFIED-UNTAGGED``: postmaster@
    and abuse mail, which anyone may send). The untagged list has its own share of the
    budget, so strangers cannot push the tagged messages out."""

    #: Messages kept in both lists together; the oldest of a full list are dropped.
    max_count: int = Field(default=1000, ge=0)
    #: Octets kept of one message; the rest is cut (the item says so).
    max_bytes: int = Field(default=256 * 1024, ge=1024)
    #: Octets kept in both lists together (each list keeps fewer messages to stay within).
    max_total_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    #: Envelope recipients kept with a stored message (the rest are counted, not stored).
    max_rcpts: int = Field(default=10, ge=1)
    #: Part of max-count and max-total-bytes given to the untagged list; the tagged list
    #: has the rest, and untagged messages never take from it.
    untagged_share: float = Field(default=0.25, ge=0, le=1)
    #: Untagged messages kept per client address (an IPv4 address, an IPv6 /64) within
    #: window-seconds; more are accepted (250) but not kept, and counted in
    #: ``mxserver_unclassified_not_kept_total{reason="per-client"}``: one sender cannot fill
    #: the untagged list.
    untagged_per_client: int = Field(default=10, ge=1)
    #: Tagged messages kept per message uuid within window-seconds; more are accepted but not
    #: kept (``reason="per-tag"``): a tag copied from one message we sent (anyone on a mailing
    #: list has one) cannot fill the tagged list.
    tagged_per_uuid: int = Field(default=5, ge=1)
    #: The window of untagged-per-client and tagged-per-uuid. Counted in memory by each
    #: MxServer replica, so with N replicas a sender may get N times as many kept.
    window_seconds: float = Field(default=3600.0, gt=0)


class MxServerLimits(Section):
    """What one client may make MxServer do; each limit has its SMTP reply and a counter
    (``mxserver_refused_total`` by reason)."""

    #: RCPT commands accepted in one transaction; more get 452 4.5.3 (RFC 5321 §4.5.3.1.8:
    #: at least 100 must be accepted, and 452 is the reply for "too many recipients").
    max_recipients: int = Field(default=100, ge=100)
    #: Commands in one session; the one over it gets 421 4.7.0 and the connection is closed.
    max_commands_per_session: int = Field(default=1000, ge=20)
    #: Open connections from one client (an IPv4 address, an IPv6 /64); one more gets 421 4.7.0
    #: at once. 50 is Postfix's smtpd_client_connection_count_limit.
    max_connections_per_ip: int = Field(default=50, ge=1)
    #: Open connections in all; one more gets 421 4.3.2 at once. What bounds the listener
    #: against many addresses at once, each under its own limit.
    max_connections: int = Field(default=1000, ge=1)
    #: Messages being read, classified or recorded at once (from DATA to its reply); one more
    #: gets 451 4.3.2 before anything is read (RFC 3463 4.3.2: system not accepting network
    #: messages), and the sending MTA retries. Each holds up to scan-bytes in memory and waits
    #: for a classifier worker, so this bounds both.
    max_messages_in_flight: int = Field(default=64, ge=1)
    #: Longest line (octets, CRLF included) in DATA or a command line buffered before it is
    #: refused with 500 5.5.2. Postfix accepts and folds lines past 2048; real bounces from
    #: Amazon SES and GMX carry 1,030 to 1,250 octets (RFC 5321 §4.5.3.1.6 says 1000).
    max_line_length: int = Field(default=65536, ge=2048)
    #: Failed recipients read from one report; the rest are ignored (counted).
    max_failures_per_report: int = Field(default=100, ge=1)
    #: Octets at the start of a message searched for our tagged addresses and for the
    #: addresses a report names (quoted originals carry them in their headers).
    scan_bytes: int = Field(default=256 * 1024, ge=4096)


class Classifier(Section):
    """Classification runs in worker processes, off the event loop, each message within a
    time limit: one hostile message cannot stall the listener or ``/livez``."""

    #: Worker processes (each classifies one message at a time).
    workers: int = Field(default=2, ge=1, le=64)
    #: Longest one message may take; then the worker is killed and replaced and the message
    #: is kept as unclassified.
    timeout_seconds: float = Field(default=5.0, gt=0)
    #: Address space of one worker in MiB (0: unlimited); a message that needs more is kept
    #: as unclassified instead of taking the pod's memory (two workers and the listener fit
    #: in the pod's 512 MiB).
    max_memory_mb: int = Field(default=192, ge=0)


class MxServerSection(Section):
    bind: Listen = _listen(25)
    #: Name in the SMTP greeting (default: the machine's host name).
    hostname: str | None = None
    #: Kept so older files load; unclassified messages are now kept in Redis.
    eml_directory: Path = Path("tmp")
    abuse: Abuse = Abuse()
    #: Domains accepted besides the return-path domains of transformer.domain-settings.
    extra_domains: tuple[str, ...] = ()
    max_message_size: int = Field(default=10 * 1024 * 1024, gt=0)
    tls: MxServerTls = MxServerTls()
    #: Longest a client may take to send one command line, or the whole DATA phase (from
    #: the DATA command to the final dot), before the connection is closed with 421: a
    #: client dribbling bytes cannot hold a connection longer (RFC 5321 §4.5.3.2: 5 min).
    command_timeout_seconds: float = Field(default=300.0, gt=0)
    rate_limit: RateLimit = RateLimit()
    limits: MxServerLimits = MxServerLimits()
    classifier: Classifier = Classifier()
    unclassified: Unclassified = Unclassified()
    reliable_queue: ReliableQueueClient = ReliableQueueClient()
    prometheus: Prometheus = Prometheus()


class BounceManager(Section):
    """Kept so old files still load; the older implementation's deliverability endpoint."""

    secret_keys = ("secret",)

    secret: SecretStr
    cid: int | str
    url: str


class BackDataSection(Section):
    """The webhook BackData POSTs events to (docs/ARCHITECTURE.md#events). ``headers`` may come from
    a file (``headers-file``, one ``Name: value`` per line) since it usually carries a token."""

    secret_keys = ("signing-secret", "headers")
    #: RFC 9110 §5.1 token characters.
    header_name: ClassVar[re.Pattern[str]] = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
    #: Headers BackData sets on every POST; a custom header must not replace them.
    reserved_headers: ClassVar[frozenset[str]] = frozenset(
        {"content-type", "content-length", "host", "x-manycore-signature"}
    )

    post_url: str = Field(min_length=1)
    #: Most events in one POST; a POST goes out with what is waiting, it never waits to fill.
    batch_size: int = Field(default=50, ge=1, le=10_000)
    #: When fewer than batch-size events are waiting, how long a POST waits for more before
    #: it goes. Trades a little event latency for far fewer POSTs under steady load (one
    #: POST per event cost BackData more CPU per message than any other service).
    batch_wait_seconds: float = Field(default=0.05, ge=0, le=10)
    #: Events that could not be delivered for this long (since they were queued) go to the
    #: dead-letter list after their next failed attempt.
    max_event_age_seconds: float = Field(default=3 * 24 * 3600, gt=0)
    signing_secret: SecretStr | None = None
    #: Extra request headers, e.g. Authorization. Values are secrets: never logged.
    headers: dict[str, SecretStr] = {}
    #: POSTs in flight at once.
    concurrency: int = Field(default=4, ge=1, le=64)
    #: Whole request, connect to last byte of the answer.
    timeout_seconds: float = Field(default=10.0, gt=0)
    #: Exponential backoff between failed attempts of one batch: the first wait, and the cap.
    retry_initial_seconds: float = Field(default=1.0, gt=0)
    retry_max_seconds: float = Field(default=300.0, gt=0)
    #: Verify the webhook's certificate (https); ``tls-ca-file`` trusts a private CA.
    tls_verify: bool = True
    tls_ca_file: Path | None = None
    bounce_manager: BounceManager | None = None
    reliable_queue: ReliableQueueClient = ReliableQueueClient()
    prometheus: Prometheus = Prometheus()

    @field_validator("post_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("headers", mode="before")
    @classmethod
    def _header_lines(cls, value: Any) -> Any:
        # headers-file arrives here as the file's text.
        if isinstance(value, str):
            headers: dict[str, str] = {}
            for number, line in enumerate(value.splitlines(), 1):
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                name, colon, rest = line.partition(":")
                if not colon:
                    raise ValueError(f"headers-file line {number}: expected 'Name: value'")
                headers[name.strip()] = rest.strip()
            value = headers
        # Names are checked here, before pydantic validates the values: its errors name the
        # dict key, and a "name" that is no header name is often a value whose colon was
        # forgotten ("Authorization Bearer <token>"), i.e. a secret that must not be printed.
        if isinstance(value, Mapping):
            for number, (name, secret) in enumerate(value.items(), 1):
                if not isinstance(name, str) or not cls.header_name.fullmatch(name):
                    raise ValueError(
                        f"header {number} is not a valid header name (a colon missing?)"
                    )
                if not isinstance(secret, str):
                    raise ValueError(f"the value of {name} must be a string")
        return value

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, secret in value.items():
            if name.lower() in cls.reserved_headers:
                raise ValueError(f"{name} is set by BackData itself")
            # A CR or LF would let a value smuggle in headers of its own (RFC 9110 §5.5).
            if any(c in secret.get_secret_value() for c in "\r\n\0"):
                raise ValueError(f"the value of {name} contains a line break")
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> BackDataSection:
        if self.retry_max_seconds < self.retry_initial_seconds:
            raise ValueError("retry-max-seconds must be at least retry-initial-seconds")
        return self


class NodeAddress(Section):
    hostname: str = Field(min_length=1)
    port: int = Field(default=6379, ge=1, le=65535)


class RedisUser(Section):
    """One service's ACL user on the Redis pod: the service connects with the same
    username and password in its own ``reliable-queue.redis``."""

    secret_keys = ("password",)

    username: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.@-]+$")
    password: SecretStr

    @field_validator("password")
    @classmethod
    def _strong_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("use at least 16 characters")
        return value


#: ACL users ``manycore-redis`` itself writes (server.ADMIN_USER and roles'): no service's.
RESERVED_REDIS_USERS = ("default", "replication", "sentinel")


class RedisUsers(Section):
    """``redis.server.users``: one ACL user per service, each allowed only the keys and
    commands that service's code uses (``manycore_redis.acl``). A service left out has no
    user (it cannot connect). ``exporter`` is the Redis pod's own read-only user
    (``redis.reliable-queue.redis``: queue gauges, ``manycore-queues`` stats and trace).
    ``operator`` (optional, no service's): the operator tools' user (``manycore-queues``
    drop/requeue, ``manycore-suppressions``), which logs in from the ``operator`` section."""

    receiver: RedisUser | None = None
    httpreceiver: RedisUser | None = None
    transformer: RedisUser | None = None
    postfixlog: RedisUser | None = None
    backdata: RedisUser | None = None
    mxserver: RedisUser | None = None
    exporter: RedisUser | None = None
    operator: RedisUser | None = None

    @model_validator(mode="after")
    def _distinct_names(self) -> RedisUsers:
        names = [u.username for u in self.given().values()]
        reserved = sorted(set(names) & set(RESERVED_REDIS_USERS))
        if reserved:
            raise ValueError(f"username {reserved[0]!r} is manycore-redis' own")
        if len(set(names)) != len(names):
            raise ValueError("every service needs a username of its own")
        return self

    def given(self) -> dict[str, RedisUser]:
        """Service name → its user, for the services that have one."""
        found = {name: getattr(self, name) for name in type(self).model_fields}
        return {name: user for name, user in found.items() if user is not None}


class RedisServer(Section):
    """The redis-server that ``manycore-redis`` runs (the Redis pod). Without this section
    ``manycore-redis`` only exports queue metrics of a Redis run elsewhere."""

    secret_keys = ("password", "sentinel-password")

    bind: str = "127.0.0.1"
    port: int = Field(default=6379, ge=1, le=65535)
    data_dir: Path = Path("/data")
    redis_server_binary: str = "redis-server"
    #: Without ``users``: the one ACL user every service connects as (their
    #: reliable-queue.redis username/password); an older form, warned about at start.
    username: str = Field(default="manycore", min_length=1)
    #: The shared user's password (without ``users``), and the replication and sentinel
    #: users' (``roles``) in every form.
    password: SecretStr
    #: One ACL user per service (``RedisUsers``); replaces the shared ``username``.
    users: RedisUsers | None = None
    #: everysec: a crash of the machine loses at most ~1 s of acknowledged writes; always: none.
    appendfsync: Literal["everysec", "always"] = "everysec"
    #: Redis' memory ceiling (e.g. "3gb"): above it writes are refused (noeviction), so the
    #: receivers answer 451/503 instead of the pod being killed for memory. Set it well
    #: below the container's memory limit (an AOF rewrite forks). "0": no ceiling.
    maxmemory: str = Field(default="0", pattern=r"^\d+(?:[kmg]b?)?$")
    #: Periodic S3 backups (object storage configured), so an unclean stop loses at most this.
    backup_interval_seconds: float = Field(default=3600, ge=0)
    backups_kept: int = Field(default=24, ge=1)
    #: How long a stop may take to save and upload before giving up on the upload.
    stop_timeout_seconds: float = Field(default=120, gt=0)
    #: primary: serve as the primary, unless the sentinels (``redis.reliable-queue.redis``
    #: in the Sentinel form) name another node, which it then replicates; replica: replicate
    #: the node the sentinels name, else ``primary``; sentinel: run redis-sentinel watching
    #: the primary the other sentinels name, else ``primary``.
    role: Literal["primary", "replica", "sentinel"] = "primary"
    #: The first primary (replica and sentinel roles), e.g. manycore-redis-0.manycore-redis.
    primary: NodeAddress | None = None
    #: The name other nodes reach this one by (replica-announce-ip / sentinel announce-ip);
    #: ``{hostname}`` is replaced by the host's name (a StatefulSet pod's name).
    announce_hostname: str | None = None
    master_name: str = Field(default="manycore", min_length=1)
    #: A primary with fewer replicas in sync refuses writes (1 in a Sentinel set: what it
    #: acknowledges must survive its loss). 0: off (one node).
    min_replicas_to_write: int = Field(default=0, ge=0)
    #: Sentinel role: how many sentinels must agree the primary is down, and how fast.
    quorum: int = Field(default=2, ge=1)
    down_after_milliseconds: int = Field(default=5000, ge=100)
    failover_timeout_milliseconds: int = Field(default=30000, ge=1000)
    redis_sentinel_binary: str = "redis-sentinel"
    #: Sentinel role: the password clients (and the other sentinels) give the sentinels.
    sentinel_password: SecretStr | None = None

    @model_validator(mode="after")
    def _primary_known(self) -> RedisServer:
        if self.role != "primary" and self.primary is None:
            raise ValueError(f"role {self.role} needs primary (hostname and port)")
        return self

    @field_validator("password")
    @classmethod
    def _strong_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("use at least 16 characters")
        return value


class RedisSection(Section):
    server: RedisServer | None = None
    reliable_queue: ReliableQueueClient = ReliableQueueClient()
    prometheus: Prometheus = Prometheus()
    #: How often the exporter reads the queue sizes.
    poll_seconds: float = Field(default=5.0, gt=0)


class OperatorSection(Section):
    """``operator``: how the operator tools (``manycore-queues``, ``manycore-suppressions``)
    log in, as ``redis.server.users.operator`` (``manycore_redis.acl``). A section of its
    own (``configscope``): a tool run with it reads this password file only, not the Redis
    pod's admin and S3 secrets. Without it the tools use the ``redis`` section's login."""

    reliable_queue: ReliableQueueClient = ReliableQueueClient()


class ObjectStorage(Section):
    secret_keys = ("access-key-id", "secret-access-key")

    type: Literal["s3"] = "s3"
    bucket: str = Field(min_length=1)
    region: str = "us-east-1"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    endpoint_url: str | None = None
    #: Key prefix under which Redis backups are stored.
    prefix: str = "manycore-redis"


class SuppressionExpiry(Section):
    """Days an entry lives, per reason; 0 is never (``manycore_common.suppression``)."""

    hard_bounce: int = Field(365, ge=0)
    #: A domain without mail servers is often fixed (a lapsed registration, a DNS mistake).
    unroutable: int = Field(30, ge=0)
    spam_report: int = Field(0, ge=0)
    unsubscribe: int = Field(0, ge=0)
    soft_bounce_repeated: int = Field(30, ge=0)
    manual: int = Field(0, ge=0)

    def days(self, reason: str) -> int:
        return int(getattr(self, reason.replace("-", "_")))


class SuppressionSettings(Section):
    """``common-config.suppression``: what fills the suppression list (plain values: every
    service that writes or reads the list loads them)."""

    enabled: bool = True
    #: ``domain``: an unsubscribe stops all mail of the sending domain to that person;
    #: ``stream``: only mail of the same X-Stream-Id (newsletters vs receipts).
    unsubscribe_scope: Literal["domain", "stream"] = "domain"
    #: Soft bounces of one address in ``soft-bounce-window-days`` that suppress it; 0 = off.
    soft_bounce_threshold: int = Field(0, ge=0)
    soft_bounce_window_days: int = Field(7, ge=1)
    expiry_days: SuppressionExpiry = SuppressionExpiry()


class CommonConfig(Section):
    secret_keys = ("unsubscribe-secret", "feedback-secret", "feedback-secret-previous")

    suppression: SuppressionSettings = SuppressionSettings()

    object_storage: ObjectStorage | None = None
    #: Signs one-click unsubscribe tokens (the Transformer makes them, HttpReceiver checks
    #: them). Needed for the {{unsubscribe-token}} placeholder.
    unsubscribe_secret: SecretStr | None = None
    #: Signs the tagged feedback addresses (return paths, Message-IDs, unsubscribe mailtos:
    #: ``manycore_common.feedbacktag``). The Transformer mints with it, MxServer verifies;
    #: both refuse to start without it.
    feedback_secret: SecretStr | None = None
    #: The secret being retired during a rotation: still accepted by MxServer, never used to
    #: mint. Keep it until every message signed with it has left Postfix's queue and its
    #: bounces have had time to come back (a week is plenty).
    feedback_secret_previous: SecretStr | None = None
    #: Idempotent submission (README): for this many seconds after a message is queued,
    #: another with the same X-Uuid (or, over HTTP, the same Idempotency-Key) is answered
    #: as the first was and not queued again. 0 turns it off: every message is queued.
    #: Each remembered message costs Redis about 120 bytes for this long.
    idempotency_window_seconds: int = Field(default=24 * 3600, ge=0, le=30 * 24 * 3600)

    @field_validator("unsubscribe_secret", "feedback_secret", "feedback_secret_previous")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("use at least 32 characters")
        return value

    def feedback_keys(self, service: str) -> tuple[bytes, ...]:
        """The feedback keys, the minting one first; ConfigError when none is set."""
        if self.feedback_secret is None:
            raise ConfigError(
                [
                    f"common-config.feedback-secret: required by the {service} (at least 32 "
                    "characters; it signs the return paths MxServer believes)"
                ]
            )
        keys = [self.feedback_secret.get_secret_value().encode()]
        if self.feedback_secret_previous is not None:
            keys.append(self.feedback_secret_previous.get_secret_value().encode())
        return tuple(keys)


SectionName = Literal[
    "receiver",
    "httpreceiver",
    "transformer",
    "postfixlog",
    "mxserver",
    "backdata",
    "redis",
    "operator",
]


class CustomerConfig(Section):
    receiver: ReceiverSection | None = None
    httpreceiver: HttpReceiverSection | None = None
    transformer: TransformerSection | None = None
    postfixlog: PostfixLogSection | None = None
    mxserver: MxServerSection | None = None
    backdata: BackDataSection | None = None
    redis: RedisSection | None = None
    operator: OperatorSection | None = None
    common_config: CommonConfig = CommonConfig()


# --------------------------------------------------------------------------- global file


def _queue_name(name: str) -> str:
    problem = keyspace.queue_name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


class QueueNames(Section):
    primary_queue: str = "IB-MAIL-QUEUE-P0"
    default_queue: str = "IB-MAIL-QUEUE-P1"

    _check_names = field_validator("primary_queue", "default_queue")(_queue_name)


class GlobalReliableQueue(Section):
    queue_names: QueueNames = QueueNames()
    #: Deliveries of one item before it goes to the dead-letter list
    #: (docs/ARCHITECTURE.md#dead-letters).
    max_attempts: int = Field(default=5, ge=1)
    #: A consumer silent this long is dead; the reaper returns its items.
    heartbeat_timeout_seconds: float = Field(default=30.0, gt=0)
    #: Receivers refuse new mail (451 / 503) while a queue holds this many items. 0 = no limit.
    high_water_mark: int = Field(default=100_000, ge=0)
    #: Put in front of every Redis key (queue names included): empty (the default), or a hash
    #: tag such as ``{mc}``, which puts all keys in one Redis Cluster slot so that every
    #: script works on a Cluster; one prefix per independent pipeline (README, "Scaling").
    #: Changing it renames every key: set it on a new Redis (docs/operations.md).
    key_prefix: str = ""

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        problem = keyspace.prefix_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class GlobalPostfix(Section):
    incoming_queue_name: str = "INCOMING-TO-POSTFIX"

    _check_name = field_validator("incoming_queue_name")(_queue_name)


class GlobalBackData(Section):
    queue_name: str = "EVENT_QUEUE"

    _check_name = field_validator("queue_name")(_queue_name)


class GlobalTransformer(Section):
    x_mailer: str = "Manycore-Mail"


class GlobalTrace(Section):
    """Per-message trace records ``trace:<uuid>`` (``manycore-queues trace``;
    common/manycore_common/trace.py): kept ``retention-seconds`` after the last write (at
    least as long as ``postfixlog.replay-window-seconds``), at most ``max-entries`` each."""

    enabled: bool = True
    retention_seconds: int = Field(default=86400, ge=600, le=30 * 86400)
    max_entries: int = Field(default=100, ge=10, le=10_000)


class GlobalConfig(Section):
    reliable_queue: GlobalReliableQueue = GlobalReliableQueue()
    postfix: GlobalPostfix = GlobalPostfix()
    backdata: GlobalBackData = GlobalBackData()
    transformer: GlobalTransformer = GlobalTransformer()
    trace: GlobalTrace = GlobalTrace()

    @model_validator(mode="after")
    def _distinct_queues(self) -> GlobalConfig:
        names = [
            self.reliable_queue.queue_names.primary_queue,
            self.reliable_queue.queue_names.default_queue,
            self.postfix.incoming_queue_name,
            self.backdata.queue_name,
        ]
        if len(set(names)) != len(names):
            raise ValueError(f"queue names must be distinct, got {names}")
        return self


# --------------------------------------------------------------------------- loading


class Config(BaseModel):
    """Both files, plus the directory they came from (certificates are looked up there)."""

    model_config = ConfigDict(frozen=True)

    global_: GlobalConfig
    customer: CustomerConfig
    config_dir: Path

    @overload
    def require(self, name: Literal["receiver"]) -> ReceiverSection: ...
    @overload
    def require(self, name: Literal["httpreceiver"]) -> HttpReceiverSection: ...
    @overload
    def require(self, name: Literal["transformer"]) -> TransformerSection: ...
    @overload
    def require(self, name: Literal["postfixlog"]) -> PostfixLogSection: ...
    @overload
    def require(self, name: Literal["mxserver"]) -> MxServerSection: ...
    @overload
    def require(self, name: Literal["backdata"]) -> BackDataSection: ...
    @overload
    def require(self, name: Literal["redis"]) -> RedisSection: ...
    def require(self, name: SectionName) -> Section:
        """The customer section a service needs (typed by its name), or a ConfigError naming
        it."""
        section: Section | None = getattr(self.customer, name)
        if section is None:
            raise ConfigError([f"{name}: section required by this service"])
        return section

    def path(self, relative: Path) -> Path:
        return relative if relative.is_absolute() else self.config_dir / relative


def format_location(loc: tuple[int | str, ...]) -> str:
    """``('transformer', 'domain-settings', 1, 'selector')`` becomes
    ``transformer.domain-settings[1].selector``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def format_errors(error: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    for err in error.errors():
        loc = format_location(tuple(err["loc"]))
        if prefix:
            loc = f"{prefix}: {loc}" if loc else prefix
        msg = _message(err)
        lines.append(f"{loc}: {msg}" if loc else msg)
    return lines


def _message(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "field required"
    msg = str(err["msg"])
    msg = msg.removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:]


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}: invalid YAML{where}: {problem}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections"])
    return data


def load_config(global_file: Path, customer_file: Path, service: str | None = None) -> Config:
    """Load and validate both files; raises ConfigError listing every problem.

    With ``service``, only what that service uses is loaded (``configscope``): its own
    section with its secret files, the sections it borrows plain values from without
    theirs, and the common-config secrets it uses. Without, everything (tools, tests)."""
    problems: list[str] = []
    global_: GlobalConfig | None = None
    customer: CustomerConfig | None = None
    try:
        global_ = GlobalConfig.model_validate(
            _load_yaml(global_file), context={"base_dir": global_file.parent}
        )
    except ConfigError as exc:
        problems.extend(exc.problems)
    except ValidationError as exc:
        problems.extend(f"{global_file.name}: {line}" for line in format_errors(exc))
    try:
        data = _load_yaml(customer_file)
        scope = None if service is None else configscope.scope_for(service)
        customer = _customer(data, customer_file, scope)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems or global_ is None or customer is None:
        raise ConfigError(problems)
    return Config(global_=global_, customer=customer, config_dir=customer_file.parent)


def _customer(data: dict[str, Any], path: Path, scope: configscope.Scope | None) -> CustomerConfig:
    """The customer file validated within ``scope`` (everything when None)."""
    context = {"base_dir": path.parent}
    borrowed: set[str] = set()
    if scope is not None:
        data, borrowed = configscope.scoped_customer(data, scope)
    problems: list[str] = []
    customer = None
    try:
        own = {k: v for k, v in data.items() if k not in borrowed}
        customer = CustomerConfig.model_validate(own, context=context)
    except ValidationError as exc:
        problems.extend(f"{path.name}: {line}" for line in format_errors(exc))
    lent: dict[str, Any] = {}
    for name in sorted(borrowed):
        try:
            part = CustomerConfig.model_validate(
                {name: data[name]}, context={**context, "secret_files": "skip"}
            )
            lent[name.replace("-", "_")] = getattr(part, name)
        except ValidationError as exc:
            problems.extend(f"{path.name}: {line}" for line in format_errors(exc))
    if problems or customer is None:
        raise ConfigError(problems)
    return customer.model_copy(update=lent)


def exit_on_config_error(error: ConfigError) -> NoReturn:
    """Print one line per problem to stderr and exit with code 2
    (docs/ARCHITECTURE.md#runtime-contract)."""
    for line in error.problems:
        print(f"config error: {line}", file=sys.stderr)
    sys.exit(CONFIG_ERROR_EXIT_CODE)
