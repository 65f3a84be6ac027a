"""Configuration checks of issue 14 (items 8, 9, 10; docs/security.md,
"Hardening"): the provider only over https (loopback aside), relay
credentials never in clear off loopback, and check-config's warnings about
open defaults (printed, exit still 0), with each account's own max_per_hour."""

from __future__ import annotations

import pytest

from support.foundation import gatewayd
from gatewayd.config import ConfigError, config_warnings, load_config

FAKE_HASH = "$scrypt$n=16384,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


# ------------------------------------------------------ item 8: https only


@pytest.mark.parametrize("key, url", [
    ("base_url", "http://api.example.com/api/ver1.0"),
    ("base_url", "http://10.0.0.5/api"),
    ("base_url", "http://127.0.0.1.evil.example/api"),
    ("token_url", "http://auth.example.com/oauth/token"),
])
def test_the_provider_is_refused_over_plain_http(write_config, key: str, url: str) -> None:
    override = {"provider": {"base_url": "https://api.example.com/api", key: url}}
    path = write_config(override)
    result = gatewayd("check-config", "-c", str(path))
    assert result.returncode == 2
    assert f"provider.{key}: must be https" in result.stderr, result.stderr


def test_a_token_url_derived_from_an_http_base_url_is_refused_once(write_config) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_config({"provider": {"base_url": "http://api.example.com/api"}}), env={})
    assert [p for p in info.value.problems if p.startswith("provider.")] == [
        'provider.base_url: must be https (the client secret and faxes cross the network), got "http://api.example.com/api"; plain http only to a loopback host']


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/api", "http://[::1]:8080/api", "http://localhost:8080/api", "http://127.5.6.7/api", "https://api.example.com/api"])
def test_https_or_loopback_is_fine(write_config, url: str) -> None:
    config = load_config(write_config({"provider": {"base_url": url}}), env={})
    assert config.provider.base_url == url


# ------------------------------------ item 10: relay password not in clear


def test_relay_credentials_in_clear_off_loopback_are_refused(write_config) -> None:
    path = write_config({"mail": {"relay": "smtp.example.com:587", "security": "none", "username": "fax", "password": "pw"}})
    result = gatewayd("check-config", "-c", str(path))
    assert result.returncode == 2
    assert 'mail.security: "none" would send mail.username\'s password in clear to smtp.example.com:587' in result.stderr, result.stderr


@pytest.mark.parametrize("mail", [
    {"relay": "127.0.0.1:25", "security": "none", "username": "fax", "password": "pw"},
    {"relay": "[::1]:25", "security": "none", "username": "fax", "password": "pw"},
    {"relay": "localhost:25", "security": "none", "username": "fax", "password": "pw"},
    {"relay": "smtp.example.com:587", "security": "starttls", "username": "fax", "password": "pw"},
    {"relay": "smtp.example.com:25", "security": "none"},  # no credentials to leak
])
def test_relay_settings_that_leak_nothing(write_config, mail: dict) -> None:
    load_config(write_config({"mail": mail}), env={})


# ---------------------------------------------- item 9: warnings, accounts


def test_check_config_warns_about_open_defaults_but_exits_0(write_config) -> None:
    path = write_config({"smtp": {"users": [{"name": "scanner", "password_hash": FAKE_HASH}]}})
    result = gatewayd("check-config", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "warning: numbers.allow: empty, so every country can be dialled" in result.stderr
    assert "+881" in result.stderr
    assert "warning: smtp.users[0].max_per_hour: not set" in result.stderr


def test_no_warnings_when_closed(write_config) -> None:
    path = write_config({
        "numbers": {"allow": ["+7"]},
        "smtp": {"users": [{"name": "scanner", "password_hash": FAKE_HASH, "max_per_hour": 30}]},
    })
    result = gatewayd("check-config", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    config = load_config(path, env={})
    assert config.smtp.users[0].max_per_hour == 30
    assert config_warnings(config) == []


@pytest.mark.parametrize("bad", [0, -1, "many", True])
def test_account_max_per_hour_must_be_positive(write_config, bad) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_config({"smtp": {"users": [{"name": "s", "password_hash": FAKE_HASH, "max_per_hour": bad}]}}), env={})
    assert any(p.startswith("smtp.users[0].max_per_hour:") for p in info.value.problems), info.value.problems
