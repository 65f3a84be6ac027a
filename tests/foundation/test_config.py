"""The configuration contract (SPEC section 3) through the real loader and the
real ``gatewayd check-config``."""

from __future__ import annotations

import ipaddress
import math
import tomllib
from pathlib import Path

import pytest

from support.foundation import DELETE, REPO, base_config, clean_env, gatewayd, merge, to_toml
from gatewayd.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    HostPort,
    load_config,
    load_config_data,
    parse_duration,
    parse_size,
)
from gatewayd.passwords import hash_password, verify_password

EXAMPLE = REPO / "config.example.toml"


# ------------------------------------------------------------ the example


def filled_example() -> str:
    """config.example.toml with its placeholders replaced, as an administrator would."""
    text = EXAMPLE.read_text(encoding="utf-8")
    stored = tomllib.loads(text)["smtp"]["users"][0]["password_hash"]
    for old, new in (("CHANGE-ME-client-id", "fax-gateway-app"), ("CHANGE-ME-client-secret", "s3cret"),
                     (stored, hash_password("a-real-password")), ("CHANGE-ME-sales@", "sales@"), ("CHANGE-ME-office@", "office@")):
        assert old in text, old
        text = text.replace(old, new)
    return text


def test_example_config_passes_check_config_once_filled_in(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(filled_example(), encoding="utf-8")
    result = gatewayd("check-config", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert f"{config}: valid" in result.stdout
    # Only the warning that the example's allow = [] leaves every country open
    # (the administrator lists theirs; docs/operations.md, check-config).
    assert [line.split(":")[1].strip() for line in result.stderr.splitlines()] == ["numbers.allow"], result.stderr


def test_unedited_example_fails_check_config_naming_each_placeholder() -> None:
    result = gatewayd("check-config", "-c", str(EXAMPLE))
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    for key in ("provider.client_id:", "provider.client_secret:", "smtp.users[0].password_hash:",
                'inbound.routes."78123092631"[0]:', 'inbound.routes."78123092631"[1]:'):
        assert any(line.strip().startswith(key) for line in result.stderr.splitlines()), (key, result.stderr)
    assert "hash-password" in result.stderr and "placeholder" in result.stderr


def test_example_config_covers_every_key_of_the_spec() -> None:
    """Every key of SPEC section 3's block appears in the example."""
    import tomllib

    spec = (REPO.parent / "shared" / "SPEC.md")
    spec_text = spec.read_text(encoding="utf-8") if spec.exists() else None
    example = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    expected = {
        "provider": ["base_url", "token_url", "client_id", "client_secret", "extension", "timeout", "status_poll_interval", "auto_retries", "retry_delay"],
        "smtp": ["listen", "hostname", "domains", "max_message_size", "max_connections", "tls_cert", "tls_key", "require_tls", "auth", "trusted_networks", "users", "bare_lf"],
        "numbers": ["default_region", "allow", "deny", "block_premium", "dial_format", "internal"],
        "documents": ["page_size", "cover_page", "max_pages", "header"],
        "cover": ["organisation", "phone", "logo", "notice"],
        "imap": ["enabled", "host", "port", "username", "password", "tls_ca_file", "mailbox", "processed_mailbox", "failed_mailbox", "addresses", "trusted_authserv_id", "idle", "poll_interval"],
        "inbound": ["enabled", "extensions", "poll_interval", "attach", "fallback_to", "mailto_refresh", "routes"],
        "mail": ["relay", "security", "username", "password", "tls_ca_file", "from", "admin", "reports", "attach_document"],
        "storage": ["state_dir"],
        "http": ["listen"],
        "log": ["level", "format"],
    }
    for section, keys in expected.items():
        for key in keys:
            assert key in example[section], f"{section}.{key} missing from config.example.toml"
    assert set(example["smtp"]["users"][0]) == {"name", "password_hash", "extension", "max_per_hour", "role", "inbound"}
    assert set(example["senders"][0]) == {"match", "extension", "max_pages", "max_per_hour"}
    assert set(example["contacts"][0]) == {"alias", "name", "number"} and "contacts_file" in example
    assert example["inbound"]["routes"]
    if spec_text is not None:  # the spec's own block, when the shared spec is beside the repository
        spec_block = tomllib.loads(spec_text.split("```toml", 1)[1].split("```", 1)[0])

        def keys(table: dict, prefix: str = "") -> set[str]:
            out = set()
            for k, v in table.items():
                out.add(prefix + k)
                if isinstance(v, dict):
                    out |= keys(v, f"{prefix}{k}.")
                elif isinstance(v, list) and v and isinstance(v[0], dict):
                    out |= keys(v[0], f"{prefix}{k}.")
            return out

        assert keys(spec_block) <= keys(example), keys(spec_block) - keys(example)


def test_example_hash_is_of_change_me() -> None:
    import tomllib

    example = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    stored = example["smtp"]["users"][0]["password_hash"]
    assert verify_password("change-me", stored)
    assert not verify_password("change-me-not", stored)
    assert "change-me" in EXAMPLE.read_text(encoding="utf-8")


# --------------------------------------------------------------- defaults


def test_defaults_are_the_spec_defaults(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    c = load_config_data({"provider": {"client_id": "id", "client_secret": "s"}, "smtp": {"hostname": "gw.test"}}, env={})
    p = c.provider
    assert p.base_url == "https://apiproxy.telphin.ru/api/ver1.0"
    assert p.token_url == "https://apiproxy.telphin.ru/oauth/token"
    assert (p.extension, p.timeout, p.status_poll_interval, p.auto_retries, p.retry_delay) == (0, 30, 20, 2, 300)
    s = c.smtp
    assert s.listen == (HostPort("127.0.0.1", 2525),)
    assert s.domains == ("fax.example.com",)
    assert (s.max_message_size, s.max_connections) == (25_000_000, 100)
    assert (s.tls_cert, s.tls_key, s.require_tls, s.auth, s.users) == ("", "", False, "optional", ())
    assert s.trusted_networks == (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
    assert c.senders == ()
    n = c.numbers
    assert (n.default_region, n.allow, n.deny, n.block_premium, n.dial_format, n.internal) == ("RU", (), (), True, "digits", "^[0-9]{2,5}$")
    d = c.documents
    assert (d.page_size, d.cover_page, d.max_pages) == ("A4", "auto", 100)
    i = c.imap
    assert (i.enabled, i.host, i.port, i.username, i.password, i.tls_ca_file) == (False, "", 993, "", "", "")
    assert (i.mailbox, i.processed_mailbox, i.failed_mailbox, i.addresses) == ("INBOX", "Processed", "Failed", ("fax@example.com",))
    assert (i.trusted_authserv_id, i.idle, i.poll_interval) == ("", True, 60)
    b = c.inbound
    assert (b.enabled, b.extensions, b.poll_interval, b.attach, b.fallback_to, b.mailto_refresh, b.routes) == (True, (), 30, "pdf", (), 600, ())
    m = c.mail
    assert (m.relay, m.security, m.username, m.password, m.tls_ca_file) == (HostPort("127.0.0.1", 25), "none", "", "", "")
    assert (m.from_, m.admin, m.reports, m.attach_document) == ("Fax Gateway <fax-gateway@localhost>", (), "all", "failures")
    assert c.state_dir == tmp_path / "state"  # ./state without $STATE_DIRECTORY
    assert c.http.listen == HostPort("127.0.0.1", 9465)
    assert (c.log.level, c.log.format) == ("info", "auto")


def test_smtp_hostname_defaults_to_the_fqdn() -> None:
    import socket

    c = load_config_data({"provider": {"client_id": "id", "client_secret": "s"}}, env={})
    assert c.smtp.hostname == socket.getfqdn()


def test_state_dir_from_state_directory(tmp_path) -> None:
    c = load_config_data({"provider": {"client_id": "id", "client_secret": "s"}, "smtp": {"hostname": "gw.test"}},
                         env={"STATE_DIRECTORY": f"{tmp_path}/a:{tmp_path}/b"})
    assert c.state_dir == tmp_path / "a"


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400), ("250ms", 0.25), ("1h30m", 5400), ("2m 30s", 150), (45, 45), (1.5, 1.5), ("10", 10),
])
def test_durations(text, seconds) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "size"), [
    ("25MB", 25_000_000), ("1KB", 1000), ("1GB", 10**9), ("1KiB", 1024), ("10MiB", 10 * 2**20), ("1GiB", 2**30), ("512B", 512), (4096, 4096), ("1.5MB", 1_500_000),
])
def test_sizes(text, size) -> None:
    assert parse_size(text) == size


def test_values_are_parsed_through_the_file(write_config) -> None:
    path = write_config({
        "provider": {"retry_delay": "1h30m", "timeout": 12},
        "smtp": {"listen": ["127.0.0.1:2525", "[::1]:2526"], "max_message_size": "10MiB", "domains": ["Fax.Example.COM"],
                 "trusted_networks": ["10.0.0.0/8", "2001:db8::/32"]},
        "numbers": {"allow": ["+7", "+375"], "deny": ["+7809"], "default_region": "de"},
        "inbound": {"routes": {"+78123092631": ["sales@example.com"]}},
        "mail": {"relay": "smtp.example.com:465", "security": "tls", "admin": ["ops@example.com"]},
        "http": {"listen": "[::1]:9465"},
    })
    c = load_config(path, env={})
    assert c.provider.retry_delay == 5400 and c.provider.timeout == 12
    assert c.smtp.listen == (HostPort("127.0.0.1", 2525), HostPort("::1", 2526))
    assert str(c.smtp.listen[1]) == "[::1]:2526"
    assert c.smtp.max_message_size == 10 * 2**20
    assert c.smtp.domains == ("fax.example.com",)
    assert ipaddress.ip_address("10.1.2.3") in c.smtp.trusted_networks[0]
    assert c.numbers.allow == ("+7", "+375") and c.numbers.default_region == "DE"
    assert c.inbound.route_for("78123092631") == ("sales@example.com",)
    assert c.mail.relay == HostPort("smtp.example.com", 465)
    assert c.http.listen == HostPort("::1", 9465)


def test_zero_extension_in_rules_means_the_default(write_config) -> None:
    c = load_config(write_config({"senders": [{"match": ["*@example.com"], "extension": 0}],
                                  "smtp": {"users": [{"name": "u", "password_hash": "$scrypt$n=16384,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "extension": 0}]}}), env={})
    assert c.senders[0].extension is None and c.smtp.users[0].extension is None


def test_http_listen_empty_disables(write_config) -> None:
    assert load_config(write_config(), env={}).http.listen is None


# ---------------------------------------------------------- broken configs

FAKE_HASH = "$scrypt$n=16384,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"

# (id, override of the base config, expected "key.path: reason" text)
BROKEN: list[tuple[str, dict, str]] = [
    ("listen-int", {"smtp": {"listen": 2525}}, 'smtp.listen: expected "host:port", got 2525'),
    ("listen-no-port", {"smtp": {"listen": "localhost"}}, 'smtp.listen: expected "host:port", got "localhost"'),
    ("listen-port-range", {"smtp": {"listen": "127.0.0.1:70000"}}, "smtp.listen: port must be 1-65535, got 70000"),
    ("listen-list-item", {"smtp": {"listen": ["127.0.0.1:2525", "nowhere"]}}, 'smtp.listen[1]: expected "host:port", got "nowhere"'),
    ("listen-empty-list", {"smtp": {"listen": []}}, "smtp.listen: needs at least one address"),
    ("duration-word", {"provider": {"timeout": "30 parsecs"}}, 'provider.timeout: expected a duration such as "30s", "5m" or "2h", got "30 parsecs"'),
    ("duration-negative", {"provider": {"retry_delay": -5}}, "provider.retry_delay: expected a duration of 0 seconds or more, got -5"),
    ("duration-infinite", {"provider": {"retry_delay": math.inf}}, "provider.retry_delay: expected a duration of 0 seconds or more, got inf"),
    ("poll-too-eager", {"provider": {"status_poll_interval": "0s"}}, "provider.status_poll_interval: must be at least 1s"),
    ("size-word", {"smtp": {"max_message_size": "25 furlongs"}}, 'smtp.max_message_size: expected a size such as "25MB" or "10MiB", got "25 furlongs"'),
    ("size-tiny", {"smtp": {"max_message_size": "100B"}}, "smtp.max_message_size: must be at least 1KB"),
    ("cidr-host-bits", {"smtp": {"trusted_networks": ["10.0.0.1/8"]}}, "smtp.trusted_networks[0]: not a network: 10.0.0.1/8 has host bits set"),
    ("cidr-garbage", {"smtp": {"trusted_networks": ["localnet"]}}, "smtp.trusted_networks[0]: not a network"),
    ("prefix-no-plus", {"numbers": {"allow": ["7"]}}, 'numbers.allow[0]: expected an E.164 prefix such as "+7", got "7"'),
    ("prefix-zero", {"numbers": {"deny": ["+0"]}}, 'numbers.deny[0]: expected an E.164 prefix such as "+7", got "+0"'),
    ("regex", {"numbers": {"internal": "([0-9]"}}, "numbers.internal: invalid regular expression"),
    ("region", {"numbers": {"default_region": "XX"}}, 'numbers.default_region: expected a region code such as "RU" or "DE", got "XX"'),
    ("email", {"mail": {"admin": ["postmaster"]}}, 'mail.admin[0]: expected an email address such as user@example.com, got "postmaster"'),
    ("from-two-addresses", {"mail": {"from": "a@example.com, b@example.com"}}, 'mail.from: expected one address'),
    ("unknown-top", {"frobnicate": 1}, "frobnicate: unknown key"),
    ("unknown-nested", {"smtp": {"listne": "127.0.0.1:25"}}, "smtp.listne: unknown key"),
    ("unknown-in-user", {"smtp": {"users": [{"name": "u", "password_hash": FAKE_HASH, "passwd": "x"}]}}, "smtp.users[0].passwd: unknown key"),
    ("unknown-in-rule", {"senders": [{"match": ["*@example.com"], "max_per_day": 5}]}, "senders[0].max_per_day: unknown key"),
    ("senders-as-table", {"senders": {"match": ["*@example.com"]}}, "senders: expected [[senders]] tables"),
    ("rule-needs-extension", {"provider": {"extension": 0}, "senders": [{"match": ["*@example.com"]}]}, "senders[0].extension: required when provider.extension is not set"),
    ("user-needs-extension", {"provider": {"extension": 0}, "smtp": {"users": [{"name": "u", "password_hash": FAKE_HASH}]}}, "smtp.users[0].extension: required when provider.extension is not set"),
    ("rule-match-required", {"senders": [{"extension": 5}]}, "senders[0].match: required"),
    ("auth-required-in-clear", {"smtp": {"auth": "required", "trusted_networks": [], "users": [{"name": "u", "password_hash": FAKE_HASH}]}},
     'smtp.auth: "required" needs TLS (smtp.tls_cert) or trusted networks'),
    ("auth-required-no-users", {"smtp": {"auth": "required"}}, 'smtp.auth: "required" needs at least one [[smtp.users]] account'),
    ("auth-off-with-users", {"smtp": {"auth": "off", "users": [{"name": "u", "password_hash": FAKE_HASH}]}}, 'smtp.users: accounts are configured but smtp.auth = "off"'),
    ("auth-off-nobody", {"smtp": {"auth": "off", "trusted_networks": []}}, 'smtp.trusted_networks: empty, but smtp.auth = "off"'),
    ("auth-choice", {"smtp": {"auth": "maybe"}}, 'smtp.auth: expected one of "required", "optional", "off", got "maybe"'),
    ("require-tls-without-cert", {"smtp": {"require_tls": True}}, "smtp.require_tls: needs smtp.tls_cert and smtp.tls_key"),
    ("bool-as-string", {"smtp": {"require_tls": "yes"}}, 'smtp.require_tls: expected true or false, got "yes"'),
    ("tls-cert-missing-file", {"smtp": {"tls_cert": "/nonexistent/cert.pem", "tls_key": "/nonexistent/key.pem"}}, "smtp.tls_cert: file not found: /nonexistent/cert.pem"),
    ("imap-needs-authserv", {"imap": {"enabled": True, "host": "imap.example.com", "username": "fax", "password": "pw"}, "senders": [{"match": ["*@example.com"]}]},
     "imap.trusted_authserv_id: required when imap.enabled"),
    ("imap-needs-password", {"imap": {"enabled": True, "host": "imap.example.com", "username": "fax", "trusted_authserv_id": "mx.example.com"}, "senders": [{"match": ["*@example.com"]}]},
     "imap.password: required when imap.enabled"),
    ("client-id-missing", {"provider": {"client_id": DELETE}}, "provider.client_id: required"),
    ("client-secret-empty", {"provider": {"client_secret": ""}}, "provider.client_secret: required (or client_secret_file)"),
    ("secret-twice", {"provider": {"client_secret_file": "secret.txt"}}, "provider.client_secret: set either client_secret or client_secret_file, not both"),
    ("secret-file-missing", {"provider": {"client_secret": DELETE, "client_secret_file": "/nonexistent/secret"}}, "provider.client_secret_file: file not found: /nonexistent/secret"),
    ("base-url-scheme", {"provider": {"base_url": "ftp://api.example.com/"}}, 'provider.base_url: expected an http(s) URL such as "https://host/path", got "ftp://api.example.com/"'),
    ("extension-bool", {"provider": {"extension": True}}, "provider.extension: expected an extension id"),
    ("inbound-extension-zero", {"inbound": {"extensions": [0]}}, "inbound.extensions[0]: expected an extension id (a positive integer), got 0"),
    ("route-key", {"inbound": {"routes": {"sales": ["a@example.com"]}}}, 'inbound.routes."sales": expected a number (digits), got "sales"'),
    ("route-address", {"inbound": {"routes": {"78123092631": ["not an address"]}}}, 'inbound.routes."78123092631"[0]: expected an email address'),
    ("log-format", {"log": {"format": "xml"}}, 'log.format: expected one of "auto", "json", "console", got "xml"'),
    ("password-hash-plaintext", {"smtp": {"users": [{"name": "u", "password_hash": "change-me"}]}}, "smtp.users[0].password_hash: not a hash from `gatewayd hash-password`"),
    ("duplicate-user", {"smtp": {"users": [{"name": "u", "password_hash": FAKE_HASH}, {"name": "u", "password_hash": FAKE_HASH}]}}, 'smtp.users[1].name: duplicate user "u"'),
    ("mail-user-no-password", {"mail": {"username": "relayuser"}}, "mail.password: required when mail.username is set"),
    ("section-not-table", {"log": "debug"}, 'log: expected a table, got "debug"'),
    ("hostname", {"smtp": {"hostname": "bad host"}}, 'smtp.hostname: expected a host name such as mail.example.com, got "bad host"'),
]


@pytest.mark.parametrize(("override", "expected"), [(o, e) for _, o, e in BROKEN], ids=[i for i, _, _ in BROKEN])
def test_broken_config_exits_2_naming_key_and_reason(write_config, tmp_path, override, expected) -> None:
    (tmp_path / "secret.txt").write_text("s3cret\n")
    path = write_config(override)
    result = gatewayd("check-config", "-c", str(path))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert expected in result.stderr, result.stderr
    # the same problem from the library, for code that loads configs itself
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert any(expected in p for p in info.value.problems), info.value.problems
    assert all(": " in p for p in info.value.problems)


def test_every_problem_is_reported_at_once(write_config) -> None:
    path = write_config({"smtp": {"listen": 2525, "auth": "maybe"}, "log": {"level": "loud"}, "oops": True})
    result = gatewayd("check-config", "-c", str(path))
    assert result.returncode == 2
    lines = [line.strip() for line in result.stderr.splitlines()]
    assert "4 problems" in lines[0] and str(path) in lines[0]
    for key in ("smtp.listen:", "smtp.auth:", "log.level:", "oops: unknown key"):
        assert any(line.startswith(key) for line in lines), (key, lines)


def test_toml_syntax_error(write_config) -> None:
    path = write_config(text="[provider\nclient_id = 1\n")
    result = gatewayd("check-config", "-c", str(path))
    assert result.returncode == 2
    assert f"{path}: TOML syntax error" in result.stderr


def test_missing_file(tmp_path) -> None:
    result = gatewayd("check-config", "-c", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory" in result.stderr


def test_tls_pair(write_config, cert_pair) -> None:
    cert, key, other = cert_pair
    c = load_config(write_config({"smtp": {"tls_cert": str(cert), "tls_key": str(key), "require_tls": True}}), env={})
    assert c.smtp.tls_enabled and c.smtp.tls_cert == str(cert)
    # half a pair
    result = gatewayd("check-config", "-c", str(write_config({"smtp": {"tls_cert": str(cert)}})))
    assert result.returncode == 2 and "smtp.tls_key: tls_cert and tls_key go together" in result.stderr
    # a key that does not belong to the certificate
    result = gatewayd("check-config", "-c", str(write_config({"smtp": {"tls_cert": str(cert), "tls_key": str(other)}})))
    assert result.returncode == 2 and f"smtp.tls_cert: cannot use {cert} with {other}" in result.stderr
    # auth = "required" is fine with TLS and no trusted networks
    c = load_config(write_config({"smtp": {"tls_cert": str(cert), "tls_key": str(key), "auth": "required", "trusted_networks": [],
                                           "users": [{"name": "u", "password_hash": FAKE_HASH}]}}), env={})
    assert c.smtp.auth == "required"


def test_tls_files_from_credentials_directory(write_config, cert_pair, tmp_path) -> None:
    cert, key, _ = cert_pair
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "smtp.key").write_bytes(key.read_bytes())
    (creds / "smtp.pem").write_bytes(cert.read_bytes())
    c = load_config(write_config({"smtp": {"tls_cert": "smtp.pem", "tls_key": "smtp.key"}}), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert (c.smtp.tls_cert, c.smtp.tls_key) == (str(creds / "smtp.pem"), str(creds / "smtp.key"))


# ------------------------------------------------------------ secret files


def test_secret_files_come_from_credentials_directory_first(write_config, tmp_path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "provider-secret").write_text("from-credentials\n")
    (tmp_path / "provider-secret").write_text("from-config-dir\n")  # next to the config: second choice
    (creds / "imap-password").write_text("imap-pw")
    (tmp_path / "imap-password").write_text("imap-pw-beside")
    (tmp_path / "relay-password").write_text("relay-pw\n")
    path = write_config({
        "provider": {"client_secret": DELETE, "client_secret_file": "provider-secret"},
        "imap": {"password_file": "imap-password"},
        "mail": {"username": "relay", "password_file": "relay-password"},
    })
    c = load_config(path, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert c.provider.client_secret == "from-credentials"
    assert c.imap.password == "imap-pw"
    assert c.mail.password == "relay-pw"  # not in $CREDENTIALS_DIRECTORY: found beside the config
    # without $CREDENTIALS_DIRECTORY the file beside the configuration is used
    c = load_config(path, env={})
    assert c.provider.client_secret == "from-config-dir"
    assert c.imap.password == "imap-pw-beside"
    # an absolute name is used as given
    (tmp_path / "abs").write_text("absolute\n")
    c = load_config(write_config({"provider": {"client_secret": DELETE, "client_secret_file": str(tmp_path / "abs")}}), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert c.provider.client_secret == "absolute"


def test_secret_file_through_the_cli(write_config, tmp_path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    path = write_config({"provider": {"client_secret": DELETE, "client_secret_file": "provider-secret"}})
    missing = gatewayd("check-config", "-c", str(path), env=clean_env(CREDENTIALS_DIRECTORY=str(creds)))
    assert missing.returncode == 2
    assert "provider.client_secret_file: file not found: provider-secret" in missing.stderr
    assert str(creds) in missing.stderr  # says where it looked
    (creds / "provider-secret").write_text("very-secret-value\n")
    ok = gatewayd("check-config", "-c", str(path), env=clean_env(CREDENTIALS_DIRECTORY=str(creds)))
    assert ok.returncode == 0, ok.stderr
    assert "very-secret-value" not in ok.stdout + ok.stderr  # never printed


@pytest.mark.parametrize(("content", "reason"), [("", "is empty"), ("\n", "is empty"), ("line1\nline2\n", "holds more than one line")])
def test_bad_secret_file(write_config, tmp_path, content, reason) -> None:
    (tmp_path / "secret").write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config(write_config({"provider": {"client_secret": DELETE, "client_secret_file": "secret"}}), env={})
    assert any(p.startswith("provider.client_secret_file:") and reason in p for p in info.value.problems), info.value.problems


# ---------------------------------------------------- where the file comes from


def test_config_option_before_and_after_the_command(write_config) -> None:
    path = write_config()
    before = gatewayd("-c", str(path), "check-config")
    after = gatewayd("check-config", "-c", str(path))
    long_form = gatewayd("check-config", "--config", str(path))
    for result in (before, after, long_form):
        assert result.returncode == 0, result.stderr
        assert f"configuration {path}: valid" in result.stdout


def test_config_from_environment(write_config, tmp_path) -> None:
    good = write_config()
    bad = write_config({"smtp": {"listen": 1}}, name="bad.toml")
    result = gatewayd("check-config", env=clean_env(GATEWAYD_CONFIG=str(good)))
    assert result.returncode == 0 and f"configuration {good}: valid" in result.stdout
    # -c wins over $GATEWAYD_CONFIG
    result = gatewayd("check-config", "-c", str(good), env=clean_env(GATEWAYD_CONFIG=str(bad)))
    assert result.returncode == 0, result.stderr
    result = gatewayd("check-config", env=clean_env(GATEWAYD_CONFIG=str(bad)))
    assert result.returncode == 2 and "smtp.listen" in result.stderr


def test_default_config_path() -> None:
    result = gatewayd("check-config")
    assert DEFAULT_CONFIG_PATH == "/etc/gatewayd/config.toml"
    assert DEFAULT_CONFIG_PATH in result.stdout + result.stderr
    if not Path(DEFAULT_CONFIG_PATH).exists():
        assert result.returncode == 2


def test_summary_shows_no_secrets(write_config) -> None:
    path = write_config({"mail": {"username": "relay", "password": "relay-password-xyz"}, "imap": {"password": "imap-password-xyz"}})
    result = gatewayd("check-config", "-c", str(path))
    assert result.returncode == 0, result.stderr
    for secret in ("test-client-secret-123", "relay-password-xyz", "imap-password-xyz"):
        assert secret not in result.stdout
    assert "relay 127.0.0.1:25" in result.stdout


def test_secrets_not_in_repr(write_config) -> None:
    c = load_config(write_config({"mail": {"username": "relay", "password": "relay-password-xyz"}}), env={})
    assert "test-client-secret-123" not in repr(c) and "relay-password-xyz" not in repr(c)


def test_base_config_is_valid(tmp_path) -> None:
    """The broken-config table is only meaningful if the base it edits loads."""
    path = tmp_path / "c.toml"
    path.write_text(to_toml(merge(base_config(tmp_path / "state"), {})))
    assert load_config(path, env={}).provider.extension == 100


def test_configuration_reference_documents_every_key() -> None:
    """docs/configuration.md names every key the loader knows, and every
    restart-only key of the daemon."""
    import dataclasses

    from gatewayd import config as cfg
    from gatewayd.daemon import restart_only_changes

    doc = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    sections = {"provider": cfg.ProviderConfig, "smtp": cfg.SmtpConfig, "senders": cfg.SenderRule, "numbers": cfg.NumbersConfig,
                "documents": cfg.DocumentsConfig, "imap": cfg.ImapConfig, "inbound": cfg.InboundConfig, "mail": cfg.MailConfig,
                "storage": cfg.StorageConfig, "http": cfg.HttpConfig, "log": cfg.LogConfig, "smtp.users": cfg.SmtpUser,
                "cover": cfg.CoverConfig, "contacts": cfg.Contact, "retention": cfg.RetentionConfig}
    for section, klass in sections.items():
        assert f"`[{section}]`" in doc or f"`[[{section}]]`" in doc, section
        for f in dataclasses.fields(klass):
            if f.name in ("index", "users", "routes", "where"):  # where: not a key, where a contact was written
                continue
            name = "from" if f.name == "from_" else f.name
            assert f"| `{name}`" in doc, f"{section}.{name} not in docs/configuration.md"
    assert "`[inbound.routes]`" in doc and "`contacts_file`" in doc
    base = load_config_data({"provider": {"client_id": "a", "client_secret": "b"}, "smtp": {"hostname": "gw.test"}}, env={})
    changed = dataclasses.replace(
        base,
        smtp=dataclasses.replace(base.smtp, listen=(), tls_cert="x", tls_key="y"),
        storage=dataclasses.replace(base.storage, state_dir="/elsewhere"),
        http=dataclasses.replace(base.http, listen=None),
        provider=dataclasses.replace(base.provider, base_url="http://x", token_url="http://x/t", client_id="c", client_secret="d"),
        imap=dataclasses.replace(base.imap, enabled=True),
        inbound=dataclasses.replace(base.inbound, enabled=False),
    )
    restart = doc.split("**Need a restart**", 1)[1]
    for key in restart_only_changes(base, changed):
        assert f"`{key}`" in restart, f"{key} missing from the restart table"


def test_web_section_and_account_roles_are_checked() -> None:
    from gatewayd.config import ConfigError, load_config_data

    good_hash = "$scrypt$n=16384,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
    cfg = load_config_data({"provider": {"extension": 1, "client_id": "c", "client_secret": "s"}}, env={})
    assert cfg.web.listen is None and cfg.web.session_lifetime == 12 * 3600
    cfg = load_config_data({"provider": {"extension": 1, "client_id": "c", "client_secret": "s"}, "web": {"listen": "127.0.0.1:8465", "session_lifetime": "1h"},
                            "smtp": {"users": [{"name": "a", "password_hash": good_hash, "role": "admin", "inbound": [122, "78123092631"]}]}}, env={})
    assert str(cfg.web.listen) == "127.0.0.1:8465" and cfg.web.session_lifetime == 3600
    assert cfg.smtp.users[0].role == "admin" and cfg.smtp.users[0].inbound == ("122", "78123092631")
    with pytest.raises(ConfigError) as info:
        load_config_data({"provider": {"extension": 1, "client_id": "c", "client_secret": "s"}, "web": {"listen": "nowhere", "session_lifetime": "1s", "tls_cert": "/nonexistent.pem"},
                          "smtp": {"users": [{"name": "a", "password_hash": good_hash, "role": "root", "inbound": [True]}]}}, env={})
    text = "\n".join(info.value.problems)
    for key in ("web.listen:", "web.session_lifetime:", "web.tls_cert:", "smtp.users[0].role:", "smtp.users[0].inbound[0]:"):
        assert key in text, text
