"""The configuration file (docs/configuration.md), loaded into frozen dataclasses.

Every value is parsed and checked at load; every problem is collected with
its key path and reason, so ``gatewayd check-config`` can show them all at
once. Unknown keys are errors: a typo must not silently fall back to a
default on a fax gateway.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
import ssl
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gatewayd.headerformat import HeaderFormatError, check_header_format
from gatewayd.passwords import is_password_hash
from gatewayd.provider.paths import PathProblem, check_path, merged_paths

# Where the systemd unit keeps the service (docs/deployment.md): its
# ConfigurationDirectory= and StateDirectory=. A configuration read from
# SYSTEM_CONFIG_DIR with an empty storage.state_dir and no $STATE_DIRECTORY
# (the CLI run by an administrator) uses SYSTEM_STATE_DIR, the service's state.
SYSTEM_CONFIG_DIR = Path("/etc/gatewayd")
SYSTEM_STATE_DIR = Path("/var/lib/gatewayd")
DEFAULT_CONFIG_PATH = str(SYSTEM_CONFIG_DIR / "config.toml")
# The credential ID prefix of the unit's LoadCredential=gatewayd:/etc/gatewayd/credentials
# (a whole directory: systemd names each file's credential gatewayd_<file name>).
CREDENTIAL_PREFIX = "gatewayd_"
# Placeholders of config.example.toml: refused by every load, so an unedited
# copy never runs (docs/configuration.md, Placeholders).
PLACEHOLDER_MARK = "change-me"
EXAMPLE_PASSWORD_HASH = "$scrypt$n=16384,r=8,p=1$QmRnUa3kosVsWJBl8vG1Pg$GoHfeCGWYoVdRs8HHEcziJbUlE//ovmTpsareTnxn9o"
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
    max_connections: int = 100  # per listener process
    processes: int = 1  # listener processes (SO_REUSEPORT); more than 1 uses more cores
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


@dataclass(frozen=True)
class StorageConfig:
    state_dir: str = ""  # resolved at load: never empty afterwards
    min_free: int = 500_000_000  # bytes; below it intake answers 452 and /healthz says so (0: no check)


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


# ------------------------------------------------------------ value parsers


class _Bad(Exception):
    """A value problem; the loader adds the key path."""


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, None: 1,
}
# Deliberately simple: a sane addr-spec, no display names, no quoted locals.
_EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+$")
_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*$")
_PREFIX_RE = re.compile(r"^\+[1-9][0-9]{0,14}$")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def parse_duration(value: Any) -> float:
    """``"30s"``, ``"5m"``, ``"2h"``, ``"1d"``, ``"250ms"`` or seconds as a number."""
    if isinstance(value, bool):
        raise _Bad(f'expected a duration such as "30s", got {_show(value)}')
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise _Bad(f"expected a duration of 0 seconds or more, got {value}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        # compound: "1h30m", "2m 30s"
        text = value.strip()
        if text and _DURATION_PART_RE.sub("", text) == "" and text[0].isdigit():
            return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART_RE.findall(text))
    raise _Bad(f'expected a duration such as "30s", "5m" or "2h", got {_show(value)}')


def parse_size(value: Any) -> int:
    """``"25MB"`` (powers of 1000), ``"10MiB"`` (powers of 1024) or bytes."""
    if isinstance(value, bool):
        raise _Bad(f'expected a size such as "25MB", got {_show(value)}')
    if isinstance(value, int):
        if value < 0:
            raise _Bad(f"expected a positive size, got {value}")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            return int(float(m.group(1)) * _SIZE_UNITS[unit])
    raise _Bad(f'expected a size such as "25MB" or "10MiB", got {_show(value)}')


def parse_host_port(value: Any) -> HostPort:
    if not isinstance(value, str):
        raise _Bad(f'expected "host:port", got {_show(value)}')
    text = value.strip()
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d+)$", text) or re.match(r"^([^:\[\]]+):(\d+)$", text)
    if not m:
        raise _Bad(f'expected "host:port", got {_show(value)}')
    host, port = m.group(1), int(m.group(2))
    if not _is_host(host):
        raise _Bad(f'expected "host:port" with a host name or IP address, got {_show(value)}')
    if not 0 < port < 65536:
        raise _Bad(f"port must be 1-65535, got {port}")
    return HostPort(host, port)


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_DOMAIN_RE.match(host.rstrip(".")))


def is_email_address(value: str) -> bool:
    return bool(_EMAIL_RE.match(value)) and len(value) <= 254


def parse_email(value: Any) -> str:
    if not isinstance(value, str) or not is_email_address(value.strip()):
        raise _Bad(f"expected an email address such as user@example.com, got {_show(value)}")
    return value.strip()


def parse_mailbox_header(value: Any) -> str:
    """One address with an optional display name: ``Fax Gateway <fax@host>``."""
    from email.headerregistry import AddressHeader, HeaderRegistry

    if not isinstance(value, str):
        raise _Bad(f"expected an address, got {_show(value)}")
    if any(c in value for c in "\r\n\0"):
        raise _Bad("line breaks are not allowed")
    bad = _Bad(f'expected one address, "Name <user@host>" or "user@host", got {_show(value)}')
    try:
        header = HeaderRegistry()("From", value.strip())
    except Exception:
        raise bad from None
    if not isinstance(header, AddressHeader) or header.defects or len(header.addresses) != 1:
        raise bad
    addr = header.addresses[0].addr_spec
    if not is_email_address(addr) and not re.match(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+$", addr):
        raise bad
    return value.strip()


def parse_network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise _Bad(f'expected a network such as "192.0.2.0/24", got {_show(value)}')
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise _Bad(f"not a network: {exc}") from None


def parse_prefix(value: Any) -> str:
    if not isinstance(value, str) or not _PREFIX_RE.match(value.strip()):
        raise _Bad(f'expected an E.164 prefix such as "+7", got {_show(value)}')
    return value.strip()


def parse_regex(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad(f"expected a regular expression string, got {_show(value)}")
    try:
        re.compile(value)
    except re.error as exc:
        raise _Bad(f"invalid regular expression: {exc}") from None
    return value


def parse_domain(value: Any) -> str:
    if not isinstance(value, str) or not _DOMAIN_RE.match(value.strip()):
        raise _Bad(f"expected a domain name, got {_show(value)}")
    return value.strip().lower().rstrip(".")


# ------------------------------------------------------------------ loader


class _Section:
    """Reads one TOML table, recording problems and the keys it consumed."""

    def __init__(self, loader: _Loader, path: str, table: Any) -> None:
        self.loader = loader
        self.path = path
        if table is None:
            table = {}
        if not isinstance(table, dict):
            loader.problem(path, f"expected a table, got {_show(table)}")
            table = {}
        self.table: dict[str, Any] = table
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, default: Any, parse: Callable[[Any], Any] | None = None, *, kind: type | tuple[type, ...] | None = None) -> Any:
        self.used.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        try:
            if kind is not None:
                ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)))
                if not ok:
                    raise _Bad(f"expected {_kind_name(kind)}, got {_show(value)}")
            return parse(value) if parse else value
        except _Bad as exc:
            self.loader.problem(self.key(name), str(exc))
            return default

    def get_list(self, name: str, default: tuple, parse: Callable[[Any], Any]) -> tuple:
        self.used.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        if not isinstance(value, list):
            self.loader.problem(self.key(name), f"expected a list, got {_show(value)}")
            return default
        out = []
        for i, item in enumerate(value):
            try:
                out.append(parse(item))
            except _Bad as exc:
                self.loader.problem(f"{self.key(name)}[{i}]", str(exc))
        return tuple(out)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        def check(v: Any) -> str:
            if v not in choices:
                raise _Bad(f"expected one of {', '.join(_show(c) for c in choices)}, got {_show(v)}")
            return v
        return self.get(name, default, check)

    def secret(self, name: str, default: str = "") -> str:
        """``name`` or its ``name_file`` twin, never both."""
        inline = self.get(name, None, kind=str)
        file_name = self.get(f"{name}_file", None, kind=str)
        if inline is not None and file_name is not None:
            self.loader.problem(self.key(name), f"set either {name} or {name}_file, not both")
            return default
        if file_name is not None:
            return self.loader.read_secret(self.key(f"{name}_file"), file_name)
        return inline if inline is not None else default

    def file(self, name: str) -> str:
        """A file name (certificate, key, CA bundle); "" when unset.

        Relative names are looked up in $CREDENTIALS_DIRECTORY first (systemd
        LoadCredential=), then next to the configuration file. The result is
        the absolute path found.
        """
        value = self.get(name, "", kind=str)
        if not value:
            return ""
        return self.loader.find_file(self.key(name), value) or ""

    def finish(self) -> None:
        for name in self.table:
            if name not in self.used:
                self.loader.problem(self.key(name), "unknown key")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a table", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _positive_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"expected an integer, got {_show(v)}")
    if v < 1:
        raise _Bad(f"expected a positive integer, got {v}")
    return v


MAX_SMTP_PROCESSES = 64


def _process_count(v: Any) -> int:
    """An integer from 1 to 64, or "auto": one per core (``os.cpu_count()``), at most 64."""
    if v == "auto":
        return max(1, min(MAX_SMTP_PROCESSES, os.cpu_count() or 1))
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f'expected an integer or "auto", got {_show(v)}')
    if not 1 <= v <= MAX_SMTP_PROCESSES:
        raise _Bad(f'expected 1 to {MAX_SMTP_PROCESSES} or "auto", got {v}')
    return v


def _non_negative_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"expected an integer, got {_show(v)}")
    if v < 0:
        raise _Bad(f"expected 0 or more, got {v}")
    return v


def _extension_id(v: Any) -> int:
    """An extension id given explicitly: a positive integer."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise _Bad(f"expected an extension id (a positive integer), got {_show(v)}")
    return v


def _optional_extension_id(v: Any) -> int | None:
    """[[senders]] / [[smtp.users]] extension: 0 (the default) means "not set"."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _Bad(f"expected an extension id (a positive integer, or 0 for the default), got {_show(v)}")
    return v or None


def _default_extension_id(v: Any) -> int:
    """provider.extension: 0 means "none", every sender names its own."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _Bad(f"expected an extension id (a positive integer, or 0 for none), got {_show(v)}")
    return v


def _hostname(v: Any) -> str:
    if not isinstance(v, str) or (v and not _DOMAIN_RE.match(v)):
        raise _Bad(f"expected a host name such as mail.example.com, got {_show(v)}")
    return v


def _port(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 65536:
        raise _Bad(f"expected a port 1-65535, got {_show(v)}")
    return v


def _url(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad(f"expected a URL, got {_show(v)}")
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Bad(f'expected an http(s) URL such as "https://host/path", got {_show(v)}')
    return v.rstrip("/")


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): traffic that never leaves the machine."""
    text = host.strip().strip("[]").lower()
    if text == "localhost":
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def _provider_url(v: Any) -> str:
    """An https URL, or plain http to a loopback host (the simulator, a local proxy)."""
    url = _url(v)
    parts = urlsplit(url)
    if parts.scheme != "https" and not is_loopback_host(parts.hostname or ""):
        raise _Bad(f"must be https (the client secret and faxes cross the network), got {_show(v)}; plain http only to a loopback host")
    return url


def _pattern(v: Any) -> str:
    if not isinstance(v, str) or not v.strip() or any(c.isspace() for c in v.strip()):
        raise _Bad(f'expected a pattern such as "*@example.com", got {_show(v)}')
    return v.strip().lower()


def _inbound_target(v: Any) -> str:
    """An ``inbound`` entry of an account: a destination number or an extension id, as text."""
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return str(v)
    if isinstance(v, str) and v.strip() and not any(c in v for c in "\r\n\0"):
        return v.strip()
    raise _Bad(f"expected a destination number or an extension id, got {_show(v)}")


def _str_no_newline(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad(f"expected a string, got {_show(v)}")
    if any(c in v for c in "\r\n\0"):
        raise _Bad("control characters are not allowed")
    return v


_ALIAS_RE = re.compile(r"(?=[A-Za-z0-9._-]*[A-Za-z])[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?", re.ASCII)
_MAX_CONTACTS_FILE = 2_000_000  # characters: tens of thousands of contacts
_MAX_COVER_LINE = 200
_MAX_COVER_NOTICE = 1500
_MAX_LOGO_BYTES = 2_000_000
_MAX_LOGO_PIXELS = 4_000_000


def contact_number(number: str) -> str:
    """A contact's number as the number policy reads a local part: blanks and brackets dropped ("+7 812 309-00-01")."""
    return re.sub(r"[\s()]", "", number)


def _cover_line(v: Any) -> str:
    v = _str_no_newline(v)
    if len(v) > _MAX_COVER_LINE:
        raise _Bad(f"at most {_MAX_COVER_LINE} characters")
    return v.strip()


def _cover_notice(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad(f"expected a string, got {_show(v)}")
    if "\0" in v:
        raise _Bad("control characters are not allowed")
    if len(v) > _MAX_COVER_NOTICE:
        raise _Bad(f"at most {_MAX_COVER_NOTICE} characters")
    return v.strip()


def _header_format(v: Any) -> str:
    v = _str_no_newline(v)
    try:
        check_header_format(v)
    except HeaderFormatError as exc:
        raise _Bad(str(exc)) from None
    return v


def _logo_problem(path: str) -> str:
    """Why ``path`` cannot be the cover's logo, or ""."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_LOGO_BYTES + 1)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if len(data) > _MAX_LOGO_BYTES:
        return f"{path} is larger than {_MAX_LOGO_BYTES} bytes"
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return f"{path} is not a PNG file"
    try:
        from io import BytesIO

        from PIL import Image

        with Image.open(BytesIO(data)) as image:
            if image.width * image.height > _MAX_LOGO_PIXELS:
                return f"{path} has more than {_MAX_LOGO_PIXELS} pixels"
            image.load()
    except Exception as exc:
        return f"{path} is not a readable PNG: {exc}"
    return ""


def _number_key(v: str) -> str:
    if not re.fullmatch(r"\+?[0-9]{2,20}", v):
        raise _Bad(f"expected a number (digits), got {_show(v)}")
    return v.lstrip("+")


class _Loader:
    def __init__(self, env: dict[str, str], base_dir: Path) -> None:
        self.env = env
        self.base_dir = base_dir
        self.problems: list[str] = []

    def problem(self, path: str, reason: str) -> None:
        self.problems.append(f"{path}: {reason}")

    def has_problem(self, path: str) -> bool:
        return any(p.startswith(f"{path}:") for p in self.problems)

    def find_file(self, path: str, name: str) -> str | None:
        """Resolve a file name as described in ``_Section.file``; records a
        problem and returns None when it is missing or unreadable."""
        if any(c in name for c in "\r\n\0"):
            self.problem(path, "control characters are not allowed")
            return None
        p = Path(name)
        candidates: list[Path] = []
        if p.is_absolute():
            candidates.append(p)
        else:
            creds = self.env.get("CREDENTIALS_DIRECTORY")
            if creds:
                candidates.append(Path(creds) / p)
                # The unit loads /etc/gatewayd/credentials as a whole:
                # gatewayd_<name> is the same file (docs/deployment.md).
                if len(p.parts) == 1:
                    candidates.append(Path(creds) / f"{CREDENTIAL_PREFIX}{p}")
            candidates.append(self.base_dir / p)
            # Where the systemd unit's LoadCredential= sources live: lets the
            # CLI, run from a shell, find the same secrets as the service.
            candidates.append(self.base_dir / "credentials" / p)
        for candidate in candidates:
            if candidate.is_file():
                if not os.access(candidate, os.R_OK):
                    self.problem(path, f"cannot read {candidate}: permission denied")
                    return None
                return str(candidate.absolute())
        where = " or ".join(dict.fromkeys(str(c.parent) for c in candidates))
        self.problem(path, f"file not found: {name}" + ("" if p.is_absolute() else f" (looked in {where})"))
        return None

    def read_secret(self, path: str, name: str) -> str:
        found = self.find_file(path, name)
        if found is None:
            return ""
        try:
            text = Path(found).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            self.problem(path, f"{found} is not UTF-8 text")
            return ""
        except OSError as exc:
            self.problem(path, f"cannot read {found}: {exc.strerror}")
            return ""
        # One trailing newline (echo, editors) is not part of the secret.
        secret = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
        if not secret:
            self.problem(path, f"{found} is empty")
        elif any(c in secret for c in "\r\n\0"):
            self.problem(path, f"{found} holds more than one line")
            return ""
        return secret

    def load(self, data: dict[str, Any], source: str) -> Config:
        known = {"provider", "smtp", "senders", "numbers", "documents", "imap", "inbound", "mail", "storage", "http", "log",
                 "cover", "contacts", "contacts_file", "web", "retention"}
        for name in data:
            if name not in known:
                self.problem(name, "unknown key")
        self.placeholders(data, "")
        provider = self.provider(_Section(self, "provider", data.get("provider")))
        smtp = self.smtp(_Section(self, "smtp", data.get("smtp")))
        senders = self.senders(data.get("senders"))
        numbers = self.numbers(_Section(self, "numbers", data.get("numbers")))
        documents = self.documents(_Section(self, "documents", data.get("documents")))
        imap = self.imap(_Section(self, "imap", data.get("imap")))
        inbound = self.inbound(_Section(self, "inbound", data.get("inbound")))
        mail = self.mail(_Section(self, "mail", data.get("mail")))
        storage = self.storage(_Section(self, "storage", data.get("storage")))
        http = self.http(_Section(self, "http", data.get("http")))
        log = self.log(_Section(self, "log", data.get("log")))
        cover = self.cover(_Section(self, "cover", data.get("cover")))
        contacts_file = ""
        if "contacts_file" in data:
            value = data["contacts_file"]
            if not isinstance(value, str):
                self.problem("contacts_file", f"expected a file name, got {_show(value)}")
            elif value:
                contacts_file = self.find_file("contacts_file", value) or ""
        contacts = self.contacts(data.get("contacts"), contacts_file)
        retention = self.retention(_Section(self, "retention", data.get("retention")))
        web = self.web(_Section(self, "web", data.get("web")))
        config = Config(provider, smtp, senders, numbers, documents, imap, inbound, mail, storage, http, log, retention=retention,
                        source=source, cover=cover, contacts=contacts, contacts_file=contacts_file, web=web)
        self.cross_check(config)
        if self.problems:
            raise ConfigError(self.problems)
        return config

    def placeholders(self, value: Any, path: str) -> None:
        """Every CHANGE-ME value and the published example hash is a problem."""
        if isinstance(value, dict):
            for k, v in value.items():
                key = k if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", k) else f'"{k}"'
                sub = f"{path}.{key}" if path else key
                if PLACEHOLDER_MARK in k.lower():
                    self.problem(sub, "placeholder from config.example.toml: replace it")
                self.placeholders(v, sub)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.placeholders(v, f"{path}[{i}]")
        elif isinstance(value, str):
            if value == EXAMPLE_PASSWORD_HASH:
                self.problem(path, 'the example hash of the password "change-me", published in config.example.toml: make your own with `gatewayd hash-password`')
            elif PLACEHOLDER_MARK in value.lower():
                self.problem(path, f"placeholder from config.example.toml ({_show(value)}): replace it")

    def provider(self, s: _Section) -> ProviderConfig:
        d = ProviderConfig()
        # docs/security.md, "Hardening (issue 14, items 5-11)": never in clear off this machine.
        base_url = s.get("base_url", d.base_url, _provider_url)
        token_url = s.get("token_url", "", lambda v: _provider_url(v) if v != "" else "")
        if not token_url:
            parts = urlsplit(base_url)
            token_url = f"{parts.scheme}://{parts.netloc}/oauth/token"
        cfg = ProviderConfig(
            base_url=base_url,
            token_url=token_url,
            client_id=s.get("client_id", "", _str_no_newline),
            client_secret=s.secret("client_secret"),
            extension=s.get("extension", 0, _default_extension_id),
            timeout=s.get("timeout", d.timeout, parse_duration),
            status_poll_interval=s.get("status_poll_interval", d.status_poll_interval, parse_duration),
            auto_retries=s.get("auto_retries", d.auto_retries, _non_negative_int),
            retry_delay=s.get("retry_delay", d.retry_delay, parse_duration),
            paths=self.provider_paths(s.get("paths", {}, kind=dict)),
        )
        s.finish()
        if cfg.timeout <= 0:
            self.problem("provider.timeout", "must be more than 0")
        if cfg.status_poll_interval < 1:
            self.problem("provider.status_poll_interval", "must be at least 1s (the provider counts requests per hour)")
        if not cfg.client_id:
            self.problem("provider.client_id", "required")
        if not cfg.client_secret and "client_secret_file" not in s.table:
            self.problem("provider.client_secret", "required (or client_secret_file)")
        return cfg

    def provider_paths(self, table: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        """[provider.paths]: each key of the path table with the placeholders it needs."""
        out: list[tuple[str, str]] = []
        for key, template in table.items():
            path = f"provider.paths.{key}"
            if not isinstance(template, str):
                self.problem(path, f"expected a string, got {_show(template)}")
                continue
            try:
                out.append((key, check_path(key, template)))
            except PathProblem as exc:
                self.problem(path, str(exc))
        if len(out) == len(table):
            try:
                merged_paths(dict(out))
            except PathProblem as exc:
                self.problem("provider.paths", str(exc))
        return tuple(out)

    def smtp(self, s: _Section) -> SmtpConfig:
        d = SmtpConfig()
        s.used.add("listen")
        raw_listen = s.table.get("listen", None)
        listen = d.listen
        if raw_listen is not None:
            if isinstance(raw_listen, list):
                listen = s.get_list("listen", d.listen, parse_host_port)
                if not listen:
                    self.problem("smtp.listen", "needs at least one address")
                    listen = d.listen
            else:
                listen = (s.get("listen", d.listen[0], parse_host_port),)
        users = []
        s.used.add("users")
        raw_users = s.table.get("users", [])
        if not isinstance(raw_users, list):
            self.problem("smtp.users", "expected [[smtp.users]] tables")
            raw_users = []
        seen_names: set[str] = set()
        for i, raw in enumerate(raw_users):
            u = _Section(self, f"smtp.users[{i}]", raw)
            name = u.get("name", "", _str_no_newline)
            pw = u.get("password_hash", "", _str_no_newline)
            ext = u.get("extension", None, _optional_extension_id)
            per_hour = u.get("max_per_hour", None, _positive_int)
            role = u.choice("role", "user", ("admin", "user"))
            inbound = u.get_list("inbound", (), _inbound_target)
            u.finish()
            if not name:
                self.problem(f"smtp.users[{i}].name", "required")
            elif name in seen_names:
                self.problem(f"smtp.users[{i}].name", f'duplicate user "{name}"')
            seen_names.add(name)
            if not pw:
                self.problem(f"smtp.users[{i}].password_hash", "required (make one with `gatewayd hash-password`)")
            elif not is_password_hash(pw):
                self.problem(f"smtp.users[{i}].password_hash", "not a hash from `gatewayd hash-password`")
            users.append(SmtpUser(name, pw, ext, per_hour, role=role, inbound=inbound))
        hostname = s.get("hostname", "", _hostname) or socket.getfqdn()
        cfg = SmtpConfig(
            listen=listen,
            hostname=hostname,
            domains=s.get_list("domains", d.domains, parse_domain),
            max_message_size=s.get("max_message_size", d.max_message_size, parse_size),
            max_connections=s.get("max_connections", d.max_connections, _positive_int),
            processes=s.get("processes", d.processes, _process_count),
            tls_cert=s.file("tls_cert"),
            tls_key=s.file("tls_key"),
            require_tls=s.get("require_tls", False, kind=bool),
            auth=s.choice("auth", d.auth, ("required", "optional", "off")),
            trusted_networks=s.get_list("trusted_networks", d.trusted_networks, parse_network),
            users=tuple(users),
            max_connections_per_client=s.get("max_connections_per_client", d.max_connections_per_client, _positive_int),
            auth_failures_per_client=s.get("auth_failures_per_client", d.auth_failures_per_client, _positive_int),
            auth_failure_window=s.get("auth_failure_window", d.auth_failure_window, parse_duration),
            bare_lf=s.choice("bare_lf", d.bare_lf, ("reject", "normalize")),
        )
        s.finish()
        if cfg.auth_failure_window <= 0:
            self.problem("smtp.auth_failure_window", "must be more than 0 seconds")
        if not cfg.domains:
            self.problem("smtp.domains", "needs at least one fax domain")
        if cfg.tls_cert and cfg.tls_key:
            try:
                ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key, password=lambda: "")
            except (ssl.SSLError, OSError, ValueError) as exc:
                self.problem("smtp.tls_cert", f"cannot use {cfg.tls_cert} with {cfg.tls_key}: {exc} (PEM certificate chain and its unencrypted private key expected)")
        if len(set(cfg.listen)) != len(cfg.listen):
            self.problem("smtp.listen", "the same address is listed twice")
        if cfg.max_message_size < 1000:
            self.problem("smtp.max_message_size", "must be at least 1KB")
        return cfg

    def senders(self, raw: Any) -> tuple[SenderRule, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.problem("senders", "expected [[senders]] tables")
            return ()
        rules = []
        for i, table in enumerate(raw):
            s = _Section(self, f"senders[{i}]", table)
            match = s.get_list("match", (), _pattern)
            rule = SenderRule(
                match=match,
                extension=s.get("extension", None, _optional_extension_id),
                max_pages=s.get("max_pages", None, _positive_int),
                max_per_hour=s.get("max_per_hour", None, _positive_int),
                index=i,
            )
            s.finish()
            if "match" not in s.table:
                self.problem(f"senders[{i}].match", "required")
            elif not match:
                self.problem(f"senders[{i}].match", "needs at least one pattern")
            rules.append(rule)
        return tuple(rules)

    def numbers(self, s: _Section) -> NumbersConfig:
        import phonenumbers

        def region(v: Any) -> str:
            if not isinstance(v, str) or v.upper() not in phonenumbers.SUPPORTED_REGIONS:
                raise _Bad(f'expected a region code such as "RU" or "DE", got {_show(v)}')
            return v.upper()

        d = NumbersConfig()
        cfg = NumbersConfig(
            default_region=s.get("default_region", d.default_region, region),
            allow=s.get_list("allow", (), parse_prefix),
            deny=s.get_list("deny", (), parse_prefix),
            block_premium=s.get("block_premium", True, kind=bool),
            dial_format=s.choice("dial_format", d.dial_format, ("digits", "e164", "national")),
            internal=s.get("internal", d.internal, parse_regex),
        )
        s.finish()
        return cfg

    def documents(self, s: _Section) -> DocumentsConfig:
        cfg = DocumentsConfig(
            page_size=s.choice("page_size", "A4", ("A4", "Letter")),
            cover_page=s.choice("cover_page", "auto", ("auto", "always", "never")),
            max_pages=s.get("max_pages", 100, _positive_int),
            header=s.get("header", "", _header_format),
        )
        s.finish()
        return cfg

    def cover(self, s: _Section) -> CoverConfig:
        cfg = CoverConfig(
            organisation=s.get("organisation", "", _cover_line),
            phone=s.get("phone", "", _cover_line),
            notice=s.get("notice", "", _cover_notice),
            logo=s.file("logo"),
        )
        s.finish()
        if cfg.logo:
            why = _logo_problem(cfg.logo)
            if why:
                self.problem("cover.logo", why)
        return cfg

    def contacts(self, raw: Any, contacts_file: str) -> tuple[Contact, ...]:
        """[[contacts]] tables, then the rows of contacts_file; every alias once.

        Whether the number policy allows each number is checked above this
        layer (``gatewayd.email_to_fax.policy.contact_problems``, run by
        ``check-config``, at start and on reload); RCPT checks it again anyway."""
        found: list[tuple[str, Contact]] = []  # (where, contact)
        if raw is not None and not isinstance(raw, list):
            self.problem("contacts", "expected [[contacts]] tables")
            raw = []
        for i, table in enumerate(raw or ()):
            s = _Section(self, f"contacts[{i}]", table)
            alias = s.get("alias", "", kind=str)
            name = s.get("name", "", kind=str)
            number = s.get("number", "", kind=str)
            s.finish()
            contact = self.contact(f"contacts[{i}]", alias, name, number)
            if contact is not None:
                found.append((f"contacts[{i}]", contact))
        if contacts_file:
            found += self.contacts_csv(contacts_file)
        seen: dict[str, str] = {}
        contacts = []
        for where, contact in found:
            if contact.alias in seen:
                self.problem(f"{where}.alias", f'duplicate alias "{contact.alias}" (also {seen[contact.alias]})')
                continue
            seen[contact.alias] = where
            contacts.append(contact)
        return tuple(contacts)

    def contact(self, where: str, alias: str, name: str, number: str) -> Contact | None:
        ok = True
        if not _ALIAS_RE.fullmatch(alias):
            self.problem(f"{where}.alias", f"expected letters, digits, \".\", \"-\" or \"_\" with at least one letter (the local part of <alias>@<fax domain>), got {_show(alias)}")
            ok = False
        if not name.strip() or any(c in name for c in "\r\n\0") or len(name) > 200:
            self.problem(f"{where}.name", f"expected a name of one line (at most 200 characters), got {_show(name)}")
            ok = False
        compact = contact_number(number)
        if not compact or len(compact) > 64:
            self.problem(f"{where}.number", f"expected a fax number, got {_show(number)}")
            ok = False
        return Contact(alias.lower(), name.strip(), number.strip(), where) if ok else None

    def contacts_csv(self, path: str) -> list[tuple[str, Contact]]:
        import csv

        out: list[tuple[str, Contact]] = []
        try:
            with open(path, encoding="utf-8", newline="") as f:
                text = f.read(_MAX_CONTACTS_FILE + 1)
        except (OSError, UnicodeDecodeError) as exc:
            self.problem("contacts_file", f"cannot read {path}: {exc}")
            return out
        if len(text) > _MAX_CONTACTS_FILE:
            self.problem("contacts_file", f"{path} is larger than {_MAX_CONTACTS_FILE} characters")
            return out
        rows = csv.reader(text.splitlines())
        try:
            header = [h.strip().lower() for h in next(rows, [])]
            if header != ["alias", "name", "number"]:
                self.problem("contacts_file", f"{path}: the first line must be the columns alias,name,number, got {','.join(header) or 'nothing'}")
                return out
            for line, row in enumerate(rows, start=2):
                if not row or all(not cell.strip() for cell in row):
                    continue
                where = f"contacts_file[line {line}]"
                if len(row) != 3:
                    self.problem(where, f"expected 3 columns (alias,name,number), got {len(row)}")
                    continue
                contact = self.contact(where, row[0].strip(), row[1], row[2])
                if contact is not None:
                    out.append((where, contact))
        except csv.Error as exc:
            self.problem("contacts_file", f"{path}: not CSV: {exc}")
        return out

    def imap(self, s: _Section) -> ImapConfig:
        d = ImapConfig()
        cfg = ImapConfig(
            enabled=s.get("enabled", False, kind=bool),
            host=s.get("host", "", _str_no_newline),
            port=s.get("port", d.port, _port),
            username=s.get("username", "", _str_no_newline),
            password=s.secret("password"),
            tls_ca_file=self.ca_file(s),
            mailbox=s.get("mailbox", d.mailbox, _str_no_newline),
            processed_mailbox=s.get("processed_mailbox", d.processed_mailbox, _str_no_newline),
            failed_mailbox=s.get("failed_mailbox", d.failed_mailbox, _str_no_newline),
            addresses=tuple(a.lower() for a in s.get_list("addresses", d.addresses, parse_email)),
            trusted_authserv_id=s.get("trusted_authserv_id", "", _str_no_newline),
            idle=s.get("idle", True, kind=bool),
            poll_interval=s.get("poll_interval", d.poll_interval, parse_duration),
        )
        s.finish()
        if cfg.enabled:
            if not cfg.host:
                self.problem("imap.host", "required when imap.enabled")
            if not cfg.username:
                self.problem("imap.username", "required when imap.enabled")
            if not cfg.password and "password_file" not in s.table:
                self.problem("imap.password", "required when imap.enabled (or password_file)")
            if not cfg.addresses:
                self.problem("imap.addresses", "needs at least one address when imap.enabled")
            if cfg.poll_interval < 1:
                self.problem("imap.poll_interval", "must be at least 1s")
        return cfg

    def inbound(self, s: _Section) -> InboundConfig:
        d = InboundConfig()
        s.used.add("routes")
        routes: list[tuple[str, tuple[str, ...]]] = []
        raw_routes = s.table.get("routes", {})
        if not isinstance(raw_routes, dict):
            self.problem("inbound.routes", "expected a table of number = [addresses]")
            raw_routes = {}
        for number, addresses in raw_routes.items():
            path = f'inbound.routes."{number}"'
            try:
                key = _number_key(number)
            except _Bad as exc:
                self.problem(path, str(exc))
                continue
            if any(k == key for k, _ in routes):
                self.problem(path, "the same number is routed twice")
                continue
            if not isinstance(addresses, list) or not addresses:
                self.problem(path, "expected a non-empty list of email addresses")
                continue
            parsed = []
            for i, a in enumerate(addresses):
                try:
                    parsed.append(parse_email(a))
                except _Bad as exc:
                    self.problem(f"{path}[{i}]", str(exc))
            routes.append((key, tuple(parsed)))
        cfg = InboundConfig(
            enabled=s.get("enabled", True, kind=bool),
            extensions=s.get_list("extensions", (), _extension_id),
            poll_interval=s.get("poll_interval", d.poll_interval, parse_duration),
            attach=s.choice("attach", "pdf", ("pdf", "tiff", "both", "original")),
            fallback_to=s.get_list("fallback_to", (), parse_email),
            mailto_refresh=s.get("mailto_refresh", d.mailto_refresh, parse_duration),
            first_lookback=s.get("first_lookback", d.first_lookback, parse_duration),
            delete_after_relay=s.get("delete_after_relay", False, kind=bool),
            routes=tuple(routes),
        )
        s.finish()
        if cfg.poll_interval < 1:
            self.problem("inbound.poll_interval", "must be at least 1s (the provider counts requests per hour)")
        if cfg.mailto_refresh < 1:
            self.problem("inbound.mailto_refresh", "must be at least 1s (the provider counts requests per hour)")
        return cfg

    def mail(self, s: _Section) -> MailConfig:
        d = MailConfig()
        cfg = MailConfig(
            relay=s.get("relay", d.relay, parse_host_port),
            security=s.choice("security", "none", ("none", "starttls", "tls")),
            username=s.get("username", "", _str_no_newline),
            password=s.secret("password"),
            tls_ca_file=self.ca_file(s),
            from_=s.get("from", d.from_, parse_mailbox_header),
            admin=s.get_list("admin", (), parse_email),
            reports=s.choice("reports", "all", ("all", "failures", "none")),
            attach_document=s.choice("attach_document", "failures", ("always", "failures", "never")),
        )
        s.finish()
        if cfg.username and not cfg.password and "password_file" not in s.table:
            self.problem("mail.password", "required when mail.username is set (or password_file)")
        if cfg.password and not cfg.username:
            self.problem("mail.username", "required when mail.password is set")
        if cfg.username and cfg.security == "none" and not is_loopback_host(cfg.relay.host):
            self.problem("mail.security", f'"none" would send mail.username\'s password in clear to {cfg.relay}; use "starttls" or "tls", or a relay on loopback')
        return cfg

    def ca_file(self, s: _Section) -> str:
        path = s.file("tls_ca_file")
        if path:
            try:
                ssl.create_default_context().load_verify_locations(cafile=path)
            except (ssl.SSLError, OSError, ValueError) as exc:
                self.problem(s.key("tls_ca_file"), f"not a usable PEM CA bundle: {exc}")
        return path

    def storage(self, s: _Section) -> StorageConfig:
        state_dir = s.get("state_dir", "", _str_no_newline)
        min_free = s.get("min_free", StorageConfig.min_free, parse_size)
        s.finish()
        if not state_dir:
            state_dir = self.env.get("STATE_DIRECTORY", "").split(":")[0]
        if not state_dir:
            # The service's configuration read by the CLI: the service's state.
            state_dir = str(SYSTEM_STATE_DIR) if self.base_dir == SYSTEM_CONFIG_DIR.absolute() else "./state"
        return StorageConfig(state_dir=str(Path(state_dir).absolute()), min_free=min_free)

    def retention(self, s: _Section) -> RetentionConfig:
        d = RetentionConfig()
        cfg = RetentionConfig(
            interval=s.get("interval", d.interval, parse_duration),
            documents=s.get("documents", d.documents, parse_duration),
            mail=s.get("mail", d.mail, parse_duration),
            jobs=s.get("jobs", d.jobs, parse_duration),
            received=s.get("received", d.received, parse_duration),
        )
        s.finish()
        if 0 < cfg.interval < 60:
            self.problem("retention.interval", 'must be at least 1m (or "0": only `gatewayd purge` purges)')
        for name in ("documents", "mail", "jobs", "received"):
            value = getattr(cfg, name)
            if 0 < value < 3600:
                self.problem(f"retention.{name}", 'must be at least 1h (or "0": keep for ever)')
        return cfg

    def http(self, s: _Section) -> HttpConfig:
        listen = s.get("listen", "127.0.0.1:9465", kind=str)
        s.finish()
        if listen == "":
            return HttpConfig(listen=None)
        try:
            return HttpConfig(listen=parse_host_port(listen))
        except _Bad as exc:
            self.problem("http.listen", str(exc))
            return HttpConfig()

    def web(self, s: _Section) -> WebConfig:
        """[web]: the console (docs/web.md); off unless ``listen`` is set."""
        listen_text = s.get("listen", "", kind=str)
        listen = None
        if listen_text != "":
            try:
                listen = parse_host_port(listen_text)
            except _Bad as exc:
                self.problem("web.listen", str(exc))
        cfg = WebConfig(
            listen=listen,
            tls_cert=s.file("tls_cert"),
            tls_key=s.file("tls_key"),
            session_lifetime=s.get("session_lifetime", WebConfig().session_lifetime, parse_duration),
        )
        s.finish()
        if bool(cfg.tls_cert) != bool(cfg.tls_key):
            self.problem("web.tls_key" if cfg.tls_cert else "web.tls_cert", "tls_cert and tls_key go together")
        elif cfg.tls_cert:
            try:
                ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key, password=lambda: "")
            except (ssl.SSLError, OSError, ValueError) as exc:
                self.problem("web.tls_cert", f"cannot use {cfg.tls_cert} with {cfg.tls_key}: {exc} (PEM certificate chain and its unencrypted private key expected)")
        if not 60 <= cfg.session_lifetime <= 30 * 86400:
            self.problem("web.session_lifetime", "must be between 1m and 30d")
        return cfg

    def log(self, s: _Section) -> LogConfig:
        cfg = LogConfig(
            level=s.choice("level", "info", ("debug", "info", "warning", "error")),
            format=s.choice("format", "auto", ("auto", "json", "console")),
        )
        s.finish()
        return cfg

    def cross_check(self, c: Config) -> None:
        if not c.provider.extension:
            for rule in c.senders:
                if rule.extension is None and not self.has_problem(f"senders[{rule.index}].extension"):
                    self.problem(f"senders[{rule.index}].extension", "required when provider.extension is not set")
            for i, user in enumerate(c.smtp.users):
                if user.extension is None and not self.has_problem(f"smtp.users[{i}].extension"):
                    self.problem(f"smtp.users[{i}].extension", "required when provider.extension is not set (a sender matching no [[senders]] rule would have no extension)")
        if bool(c.smtp.tls_cert) != bool(c.smtp.tls_key):
            missing = "smtp.tls_key" if c.smtp.tls_cert else "smtp.tls_cert"
            self.problem(missing, "tls_cert and tls_key go together")
        if c.smtp.require_tls and not c.smtp.tls_cert:
            self.problem("smtp.require_tls", "needs smtp.tls_cert and smtp.tls_key")
        if c.smtp.auth == "required":
            if not c.smtp.users:
                self.problem("smtp.auth", '"required" needs at least one [[smtp.users]] account')
            if not c.smtp.tls_cert and not c.smtp.trusted_networks:
                self.problem("smtp.auth", '"required" needs TLS (smtp.tls_cert) or trusted networks, or passwords would cross the network in clear')
        if c.smtp.auth == "off" and c.smtp.users:
            self.problem("smtp.users", 'accounts are configured but smtp.auth = "off"')
        if c.smtp.auth == "off" and not c.smtp.trusted_networks:
            self.problem("smtp.trusted_networks", 'empty, but smtp.auth = "off" accepts only clients from trusted networks: nobody could send')
        if c.imap.enabled and not c.imap.trusted_authserv_id:
            self.problem("imap.trusted_authserv_id", "required when imap.enabled (the id of your MTA's Authentication-Results)")
        if c.imap.enabled and not c.senders:
            self.problem("senders", "imap.enabled needs [[senders]] rules: nobody could send otherwise")
        visible = inbound_visible_span(c.inbound)
        if c.retention.received and c.retention.received <= visible and not self.has_problem("retention.received"):
            # A purged record of a fax the poller can still list would be mailed again.
            self.problem(
                "retention.received",
                f"{_span(c.retention.received)} is not longer than what the inbound poller can still list at the provider "
                f"({_span(visible)}: inbound.first_lookback {_span(c.inbound.first_lookback)} + two inbound.poll_interval "
                f"+ {_span(INBOUND_WINDOW_SLACK)} of overlap and clock skew); a fax whose record was purged would be mailed again",
            )




def inbound_visible_span(inbound: InboundConfig) -> float:
    """How far back the inbound poller may list received faxes (seconds): its
    first window, or an overlap of a later one, whichever reaches further."""
    return inbound.first_lookback + 2 * inbound.poll_interval + INBOUND_WINDOW_SLACK


def _span(seconds: float) -> str:
    """A duration in the words of the configuration file: "400d", "25h", "90m", "30s"."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def load_config(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Config:
    """Read and validate the file; raises ConfigError with every problem."""
    env = dict(os.environ) if env is None else env
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{p}: TOML syntax error: {exc}"]) from None
    return load_config_data(data, env=env, source=str(p), base_dir=p.absolute().parent)


def load_config_data(data: dict[str, Any], env: dict[str, str] | None = None, source: str = "<data>", base_dir: Path | None = None) -> Config:
    env = dict(os.environ) if env is None else env
    return _Loader(env, (base_dir or Path.cwd()).absolute()).load(data, source)


def config_warnings(c: Config) -> list[str]:
    """Settings that are valid but leave a door open (``key.path: why``), for
    ``gatewayd check-config`` and the daemon's start (docs/security.md,
    "Hardening (issue 14, items 5-11)")."""
    warnings = []
    if not c.numbers.allow:
        warnings.append(
            "numbers.allow: empty, so every country can be dialled, satellite and other costly ranges "
            "(+881, +882, +883) too; list the country codes you fax to"
        )
    for i, user in enumerate(c.smtp.users):
        if not user.max_per_hour:
            warnings.append(
                f"smtp.users[{i}].max_per_hour: not set: mail from account \"{user.name}\" whose envelope sender "
                "matches no [[senders]] rule with max_per_hour has no hourly limit"
            )
    return warnings


def config_path(cli_value: str | None, env: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if env is None else env
    return cli_value or env.get("GATEWAYD_CONFIG") or str(SYSTEM_CONFIG_DIR / "config.toml")
