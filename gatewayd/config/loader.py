"""The loader: reads the TOML file's sections into the dataclasses of gatewayd/config/model.py.

Every value is parsed and checked at load; every problem is collected with
its key path and reason, so ``gatewayd check-config`` can show them all at
once. Unknown keys are errors: a typo must not silently fall back to a
default on a fax gateway.
"""

from __future__ import annotations

import os
import socket
import ssl
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gatewayd.config.checks import cross_check, find_placeholders
from gatewayd.config.contacts import read_contacts
from gatewayd.config.database import MAX_LEASE, MIN_LEASE, parse_database_url
from gatewayd.config.model import (
    Config,
    ConfigError,
    CoverConfig,
    DocumentsConfig,
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
from gatewayd.config.paths import default_state_dir
from gatewayd.config.section import _Reader, _Section
from gatewayd.config.values import (
    _Bad,
    _cover_line,
    _cover_notice,
    _default_extension_id,
    _extension_id,
    _header_format,
    _hostname,
    _inbound_target,
    _logo_problem,
    _non_negative_int,
    _number_key,
    _optional_extension_id,
    _pattern,
    _port,
    _positive_int,
    _process_count,
    _provider_url,
    _show,
    _str_no_newline,
    auto_processes,
    is_loopback_host,
    is_node_name,
    parse_domain,
    parse_duration,
    parse_email,
    parse_host_port,
    parse_mailbox_header,
    parse_network,
    parse_node_name,
    parse_prefix,
    parse_regex,
    parse_size,
)
from gatewayd.dburl import url_passwords
from gatewayd.passwords import is_password_hash
from gatewayd.provider.paths import PathProblem, check_path, merged_paths


class _Loader(_Reader):
    """One load: each section's reader, then the checks across sections (gatewayd/config/checks.py)."""

    def load(self, data: dict[str, Any], source: str) -> Config:
        known = {"provider", "smtp", "senders", "numbers", "documents", "imap", "inbound", "mail", "storage", "http", "log",
                 "cover", "contacts", "contacts_file", "web", "retention"}
        for name in data:
            if name not in known:
                self.problem(name, "unknown key")
        find_placeholders(self, data, "")
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
        contacts = read_contacts(self, data.get("contacts"), contacts_file)
        retention = self.retention(_Section(self, "retention", data.get("retention")))
        web = self.web(_Section(self, "web", data.get("web")))
        config = Config(provider, smtp, senders, numbers, documents, imap, inbound, mail, storage, http, log, retention=retention,
                        source=source, cover=cover, contacts=contacts, contacts_file=contacts_file, web=web)
        cross_check(self, config)
        if self.problems:
            raise ConfigError(self.problems)
        return config

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
            processes=s.get("processes", None, _process_count) or auto_processes(),  # "auto" by default
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
            office=s.get("office", True, kind=bool),
            convert_timeout=s.get("convert_timeout", 60.0, parse_duration),
            office_concurrency=s.get("office_concurrency", 2, _positive_int),
            convert_memory=s.get("convert_memory", 2 * 1024 * 1024 * 1024, parse_size),
        )
        s.finish()
        if cfg.convert_timeout <= 0:
            self.problem("documents.convert_timeout", "must be more than 0 seconds")
        if cfg.convert_memory < 256 * 1024 * 1024:
            self.problem("documents.convert_memory", "must be at least 256MiB (LibreOffice does not start with less)")
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
            preview=s.get("preview", d.preview, kind=bool),
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
        d = StorageConfig()
        state_dir = s.get("state_dir", "", _str_no_newline)
        min_free = s.get("min_free", d.min_free, parse_size)
        database_url = s.get("database_url", d.database_url, parse_database_url)
        database_password = s.secret("database_password")
        lease = s.get("lease", d.lease, parse_duration)
        node_name = s.get("node_name", "", parse_node_name)
        s.finish()
        if not state_dir:
            state_dir = default_state_dir(self.env, self.base_dir)
        if (database_password or "database_password_file" in s.table) and not database_url and not self.has_problem("storage.database_url"):
            self.problem("storage.database_password", 'only used with a PostgreSQL storage.database_url (it is "": SQLite)')
        elif database_password and url_passwords(database_url):
            self.problem("storage.database_password", "storage.database_url holds a password too: keep it in one place (database_password_file is best)")
        if not MIN_LEASE <= lease <= MAX_LEASE:
            self.problem("storage.lease", f"must be between {MIN_LEASE:g}s and {MAX_LEASE / 60:g}m")
        if not node_name and not self.has_problem(s.key("node_name")):
            node_name = socket.gethostname()
            if not is_node_name(node_name):
                self.problem(s.key("node_name"), f"the host name {node_name!r} is not 1 to 64 of A-Z a-z 0-9 . _ -: set storage.node_name")
        return StorageConfig(state_dir=str(Path(state_dir).absolute()), min_free=min_free, database_url=database_url,
                             database_password=database_password, lease=lease, node_name=node_name)

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
