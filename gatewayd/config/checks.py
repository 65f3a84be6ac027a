"""Checks of the configuration as a whole: placeholders left from the example, keys that need each other, and warnings."""

from __future__ import annotations

import re
from typing import Any

from gatewayd.config.model import INBOUND_WINDOW_SLACK, Config, InboundConfig
from gatewayd.config.section import _Reader
from gatewayd.config.values import _show
from gatewayd.dburl import url_passwords

# Placeholders of config.example.toml: refused by every load, so an unedited
# copy never runs (docs/configuration.md, Placeholders).
PLACEHOLDER_MARK = "change-me"
EXAMPLE_PASSWORD_HASH = "$scrypt$n=16384,r=8,p=1$QmRnUa3kosVsWJBl8vG1Pg$GoHfeCGWYoVdRs8HHEcziJbUlE//ovmTpsareTnxn9o"


def find_placeholders(loader: _Reader, value: Any, path: str) -> None:
    """Every CHANGE-ME value and the published example hash is a problem."""
    if isinstance(value, dict):
        for k, v in value.items():
            key = k if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", k) else f'"{k}"'
            sub = f"{path}.{key}" if path else key
            if PLACEHOLDER_MARK in k.lower():
                loader.problem(sub, "placeholder from config.example.toml: replace it")
            find_placeholders(loader, v, sub)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            find_placeholders(loader, v, f"{path}[{i}]")
    elif isinstance(value, str):
        if value == EXAMPLE_PASSWORD_HASH:
            loader.problem(path, 'the example hash of the password "change-me", published in config.example.toml: make your own with `gatewayd hash-password`')
        elif PLACEHOLDER_MARK in value.lower():
            loader.problem(path, f"placeholder from config.example.toml ({_show(value)}): replace it")


def cross_check(loader: _Reader, c: Config) -> None:
    """Keys that need each other, across sections: run once every section is read."""
    if not c.provider.extension:
        for rule in c.senders:
            if rule.extension is None and not loader.has_problem(f"senders[{rule.index}].extension"):
                loader.problem(f"senders[{rule.index}].extension", "required when provider.extension is not set")
        for i, user in enumerate(c.smtp.users):
            if user.extension is None and not loader.has_problem(f"smtp.users[{i}].extension"):
                loader.problem(f"smtp.users[{i}].extension", "required when provider.extension is not set (a sender matching no [[senders]] rule would have no extension)")
    if bool(c.smtp.tls_cert) != bool(c.smtp.tls_key):
        missing = "smtp.tls_key" if c.smtp.tls_cert else "smtp.tls_cert"
        loader.problem(missing, "tls_cert and tls_key go together")
    if c.smtp.require_tls and not c.smtp.tls_cert:
        loader.problem("smtp.require_tls", "needs smtp.tls_cert and smtp.tls_key")
    if c.smtp.auth == "required":
        if not c.smtp.users:
            loader.problem("smtp.auth", '"required" needs at least one [[smtp.users]] account')
        if not c.smtp.tls_cert and not c.smtp.trusted_networks:
            loader.problem("smtp.auth", '"required" needs TLS (smtp.tls_cert) or trusted networks, or passwords would cross the network in clear')
    if c.smtp.auth == "off" and c.smtp.users:
        loader.problem("smtp.users", 'accounts are configured but smtp.auth = "off"')
    if c.smtp.auth == "off" and not c.smtp.trusted_networks:
        loader.problem("smtp.trusted_networks", 'empty, but smtp.auth = "off" accepts only clients from trusted networks: nobody could send')
    if c.imap.enabled and not c.imap.trusted_authserv_id:
        loader.problem("imap.trusted_authserv_id", "required when imap.enabled (the id of your MTA's Authentication-Results)")
    if c.imap.enabled and not c.senders:
        loader.problem("senders", "imap.enabled needs [[senders]] rules: nobody could send otherwise")
    visible = inbound_visible_span(c.inbound)
    if c.retention.received and c.retention.received <= visible and not loader.has_problem("retention.received"):
        # A purged record of a fax the poller can still list would be mailed again.
        loader.problem(
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
    if url_passwords(c.storage.database_url):
        warnings.append(
            "storage.database_url: holds a password, readable by whoever reads this file; "
            "put it in storage.database_password_file (docs/configuration.md, Secrets)"
        )
    return warnings
