"""The configuration file (docs/configuration.md): the names the rest of gatewayd imports, from the modules below.

model.py      the frozen dataclasses, one per section, and ConfigError
values.py     value parsers: durations, sizes, host:port, networks, prefixes, addresses
database.py   storage.database_url (checked, shown without its password) and storage.lease's bounds
secrets.py    the files ``*_file`` keys and certificates name ($CREDENTIALS_DIRECTORY first)
section.py    one TOML table read key by key, and the problem list of a load
loader.py     the per-section readers, load_config and load_config_data
contacts.py   [[contacts]] and contacts_file
checks.py     placeholders, keys that need each other, warnings
paths.py      config_path and the state directory's default
"""

from gatewayd.config.checks import (
    EXAMPLE_PASSWORD_HASH,
    PLACEHOLDER_MARK,
    config_warnings,
    inbound_visible_span,
)
from gatewayd.config.database import redact_url
from gatewayd.config.loader import load_config, load_config_data
from gatewayd.config.model import (
    INBOUND_WINDOW_SLACK,
    PROVIDER_MAX_BYTES,
    Config,
    ConfigError,
    Contact,
    CoverConfig,
    DocumentsConfig,
    HostPort,
    HttpConfig,
    ImapConfig,
    InboundConfig,
    LogConfig,
    MailConfig,
    NumbersConfig,
    ProviderConfig,
    RetentionConfig,
    SenderRule,
    SmtpConfig,
    SmtpUser,
    StorageConfig,
    WebConfig,
)
from gatewayd.config.paths import DEFAULT_CONFIG_PATH, SYSTEM_CONFIG_DIR, SYSTEM_STATE_DIR, config_path
from gatewayd.config.secrets import CREDENTIAL_PREFIX
from gatewayd.config.values import (
    MAX_AUTO_PROCESSES,
    MAX_SMTP_PROCESSES,
    auto_processes,
    contact_number,
    is_email_address,
    is_loopback_host,
    parse_domain,
    parse_duration,
    parse_email,
    parse_host_port,
    parse_mailbox_header,
    parse_network,
    parse_prefix,
    parse_regex,
    parse_size,
)

__all__ = [
    "CREDENTIAL_PREFIX",
    "DEFAULT_CONFIG_PATH",
    "EXAMPLE_PASSWORD_HASH",
    "INBOUND_WINDOW_SLACK",
    "MAX_AUTO_PROCESSES",
    "MAX_SMTP_PROCESSES",
    "auto_processes",
    "PLACEHOLDER_MARK",
    "PROVIDER_MAX_BYTES",
    "SYSTEM_CONFIG_DIR",
    "SYSTEM_STATE_DIR",
    "Config",
    "ConfigError",
    "Contact",
    "CoverConfig",
    "DocumentsConfig",
    "HostPort",
    "HttpConfig",
    "ImapConfig",
    "InboundConfig",
    "LogConfig",
    "MailConfig",
    "NumbersConfig",
    "ProviderConfig",
    "RetentionConfig",
    "SenderRule",
    "SmtpConfig",
    "SmtpUser",
    "StorageConfig",
    "WebConfig",
    "config_path",
    "config_warnings",
    "contact_number",
    "inbound_visible_span",
    "is_email_address",
    "is_loopback_host",
    "load_config",
    "load_config_data",
    "parse_domain",
    "parse_duration",
    "parse_email",
    "parse_host_port",
    "parse_mailbox_header",
    "parse_network",
    "parse_prefix",
    "parse_regex",
    "parse_size",
    "redact_url",
]
