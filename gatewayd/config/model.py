"""The configuration's data: frozen dataclasses, one per section, and ConfigError.

Loaded by gatewayd/config/loader.py (docs/configuration.md).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path

PROVIDER_MAX_BYTES = 10_000_000


class ConfigError(Exception):
    """One or more problems in the configuration, each ``key.path: reason``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# ---------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ProviderConfig:
    base_url: str = "https://apiproxy.telphin.ru/api/ver1.0"
    token_url: str = ""  # resolved at load: never empty afterwards
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    extension: int = 0
    timeout: float = 30.0
    status_poll_interval: float = 20.0
    auto_retries: int = 2
    retry_delay: float = 300.0
    # [provider.paths]: (key, template) overrides of the client's path table
    # (gatewayd/provider/paths.py), checked at load; docs/provider.md.
    paths: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SmtpUser:
    name: str
    password_hash: str = field(repr=False)
    extension: int | None = None
    max_per_hour: int | None = None  # jobs per sliding hour from this account, whatever the envelope sender

    # The web console (docs/web.md): "admin" sees and acts on everything;
    # "user" sees its own jobs and the received faxes of ``inbound``.
    role: str = "user"
    inbound: tuple[str, ...] = ()  # destination numbers or extension ids

    @property
    def key(self) -> str:
        """The account's hourly counter (``sender_usage.rule_key``), by name: stable across reorderings."""
        return f"smtp.users:{self.name}"


@dataclass(frozen=True)
class SmtpConfig:
    listen: tuple[HostPort, ...] = (HostPort("127.0.0.1", 2525),)
    hostname: str = ""  # resolved at load to the FQDN when empty
    domains: tuple[str, ...] = ("fax.example.com",)
    max_message_size: int = 25_000_000
    max_connections: int = 100  # sessions at once, shared out between the listener processes
    # Listener processes (SO_REUSEPORT). A file without the key gets "auto"
    # (one per core, at most 4) from the loader; a Config built in code, 1.
    processes: int = 1
    tls_cert: str = ""
    tls_key: str = ""
    require_tls: bool = False
    auth: str = "optional"
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    users: tuple[SmtpUser, ...] = ()
    # Per client address (docs/smtp.md, "Limits per client"); trusted_networks
    # are exempt from the connection limit (a relay in front opens many).
    max_connections_per_client: int = 10
    auth_failures_per_client: int = 10  # within auth_failure_window, then 454 to AUTH
    auth_failure_window: float = 900.0
    # A bare LF inside DATA: refused, or read as CRLF (docs/smtp.md, Line endings).
    bare_lf: str = "reject"

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert)


@dataclass(frozen=True)
class SenderRule:
    match: tuple[str, ...]
    extension: int | None = None
    max_pages: int | None = None
    max_per_hour: int | None = None
    index: int = 0  # position in the file: the stable key of its hourly counter

    @property
    def key(self) -> str:
        return f"senders[{self.index}]"


@dataclass(frozen=True)
class NumbersConfig:
    default_region: str = "RU"
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    block_premium: bool = True
    dial_format: str = "digits"
    internal: str = "^[0-9]{2,5}$"


@dataclass(frozen=True)
class DocumentsConfig:
    page_size: str = "A4"
    cover_page: str = "auto"
    max_pages: int = 100
    header: str = ""  # the page header line's format, "" for none (docs/documents.md, Page header line)
    # Office and text documents through LibreOffice (docs/documents.md, Office documents).
    office: bool = True
    convert_timeout: float = 60.0
    office_concurrency: int = 2
    convert_memory: int = 2 * 1024 * 1024 * 1024


@dataclass(frozen=True)
class CoverConfig:
    """The office's own cover page (docs/documents.md, Cover page)."""

    organisation: str = ""
    phone: str = ""
    notice: str = ""
    logo: str = ""  # absolute path of a PNG, checked at load


@dataclass(frozen=True)
class Contact:
    """``<alias>@<fax domain>`` faxes ``number``, with ``name`` on the cover (docs/smtp.md, Contacts)."""

    alias: str  # lowercased
    name: str
    number: str  # as written; the number policy reads it at RCPT like any other
    # Where it was written ("contacts[0]", "contacts_file[line 3]"), to name it
    # in a problem the number policy finds (email_to_fax/policy.py, contact_problems)
    where: str = field(default="", compare=False)


@dataclass(frozen=True)
class ImapConfig:
    enabled: bool = False
    host: str = ""
    port: int = 993
    username: str = ""
    password: str = field(default="", repr=False)
    tls_ca_file: str = ""
    mailbox: str = "INBOX"
    processed_mailbox: str = "Processed"
    failed_mailbox: str = "Failed"
    addresses: tuple[str, ...] = ("fax@example.com",)
    trusted_authserv_id: str = ""
    idle: bool = True
    poll_interval: float = 60.0


@dataclass(frozen=True)
class InboundConfig:
    enabled: bool = True
    extensions: tuple[int, ...] = ()
    poll_interval: float = 30.0
    attach: str = "pdf"
    fallback_to: tuple[str, ...] = ()
    mailto_refresh: float = 600.0
    first_lookback: float = 86400.0  # first poll of an extension: how far back
    delete_after_relay: bool = False  # DELETE the fax at the provider once the relay accepted its email
    routes: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def route_for(self, destination: str) -> tuple[str, ...] | None:
        for number, addresses in self.routes:
            if number == destination:
                return addresses
        return None


@dataclass(frozen=True)
class MailConfig:
    relay: HostPort = HostPort("127.0.0.1", 25)
    security: str = "none"
    username: str = ""
    password: str = field(default="", repr=False)
    tls_ca_file: str = ""
    from_: str = "Fax Gateway <fax-gateway@localhost>"
    admin: tuple[str, ...] = ()
    reports: str = "all"
    attach_document: str = "failures"
    preview: bool = True  # a picture of the first page inline in reports and received-fax emails


@dataclass(frozen=True)
class StorageConfig:
    state_dir: str = ""  # resolved at load: never empty afterwards
    min_free: int = 500_000_000  # bytes; below it intake answers 452 and /healthz says so (0: no check)
    # "" = SQLite in state_dir; else a PostgreSQL URL (gatewayd/config/database.py).
    # Shown only through redact_url: a password may be written in it.
    database_url: str = field(default="", repr=False)
    database_password: str = field(default="", repr=False)  # never in the URL we build or print
    lease: float = 30.0  # a dead node's work and leader leases pass to another node after this (docs/deployment.md)
    # This node's name in leases, jobs.node and metrics; unique among the nodes
    # sharing one database (docs/deployment.md, Several nodes). The loader checks it.
    node_name: str = field(default_factory=socket.gethostname)

    @property
    def postgres(self) -> bool:
        return bool(self.database_url)


# What the inbound poller can still list at the provider beyond inbound.first_lookback
# and two poll intervals: gatewayd/fax_to_email/poller.py's OVERLAP_EXTRA plus
# FUTURE_SKEW (tests/foundation/test_retention_config.py keeps them equal).
INBOUND_WINDOW_SLACK = 1200.0


@dataclass(frozen=True)
class RetentionConfig:
    """How long finished things are kept (docs/operations.md, Retention); 0 = for ever."""

    interval: float = 3600.0  # between purge rounds of the daemon; 0 = only `gatewayd purge`
    documents: float = 30 * 86400.0  # fax documents of finished jobs
    mail: float = 7 * 86400.0  # bodies of emails the relay accepted or refused for good
    jobs: float = 400 * 86400.0  # finished jobs, their history, and the records of sent emails
    received: float = 400 * 86400.0  # received-fax ledger records of relayed faxes


@dataclass(frozen=True)
class HttpConfig:
    listen: HostPort | None = HostPort("127.0.0.1", 9465)


@dataclass(frozen=True)
class WebConfig:
    listen: HostPort | None = None  # None: the console is off
    tls_cert: str = ""
    tls_key: str = ""
    session_lifetime: float = 12 * 3600.0


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True)
class Config:
    provider: ProviderConfig = field(default_factory=ProviderConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    senders: tuple[SenderRule, ...] = ()
    numbers: NumbersConfig = field(default_factory=NumbersConfig)
    documents: DocumentsConfig = field(default_factory=DocumentsConfig)
    imap: ImapConfig = field(default_factory=ImapConfig)
    inbound: InboundConfig = field(default_factory=InboundConfig)
    mail: MailConfig = field(default_factory=MailConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    log: LogConfig = field(default_factory=LogConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    source: str = ""  # the file it was read from, for messages
    cover: CoverConfig = field(default_factory=CoverConfig)
    contacts: tuple[Contact, ...] = ()  # [[contacts]] then contacts_file's rows
    contacts_file: str = ""  # absolute path, "" when unset

    web: WebConfig = field(default_factory=WebConfig)

    def contact(self, alias: str) -> Contact | None:
        """The contact for ``alias`` (any case), or None."""
        wanted = alias.lower()
        return next((c for c in self.contacts if c.alias == wanted), None)

    @property
    def state_dir(self) -> Path:
        return Path(self.storage.state_dir)
