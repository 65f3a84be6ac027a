"""The configuration files gatewayd and its tests write (with tomli-w) round-trip
through tomllib and load with gatewayd's own loader: the demo's file, and a
configuration using every TOML shape the tests write."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from types import SimpleNamespace

from tomli_w import dumps as to_toml

from gatewayd.config import HostPort, load_config, load_config_data
from gatewayd.demo import EXTENSION, FAX_DOMAIN, demo_config, demo_settings, write_demo_config


def test_the_demo_config_file_round_trips_and_loads(tmp_path: Path) -> None:
    sim = SimpleNamespace(base_url="http://127.0.0.1:9/api/ver1.0", token_url="http://127.0.0.1:9/oauth/token")
    args = dict(state_dir=tmp_path / "state", smtp_port=2525, http_port=8080, sim=sim, relay="127.0.0.1:2526")
    data = demo_settings(**args)
    path = tmp_path / "config.toml"
    config = write_demo_config(path, data)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Written by `gatewayd demo`") and f"gatewayd jobs -c {path}" in text
    assert tomllib.loads(text) == data
    # The file says what the settings say: loading it gives the demo's own
    # configuration (the same settings: each call makes a new console password).
    assert dataclasses.replace(config, source="(demo)") == load_config_data(data, source="(demo)")
    assert demo_config(**args).smtp.users[0].name == config.smtp.users[0].name
    assert config.source == str(path)
    assert config.provider.base_url == sim.base_url and config.provider.extension == EXTENSION
    assert config.smtp.listen == (HostPort("127.0.0.1", 2525),) and config.smtp.domains == (FAX_DOMAIN,)
    assert config.mail.relay == HostPort("127.0.0.1", 2526)
    assert config.state_dir == tmp_path / "state"


def test_every_shape_the_tests_write_round_trips(tmp_path: Path) -> None:
    data = {
        "provider": {"base_url": "http://127.0.0.1:9/api/ver1.0", "client_id": "c", "client_secret": "s\"\\ é", "extension": 122, "timeout": 2.5},
        "smtp": {"listen": ["127.0.0.1:2525", "[::1]:2525"], "require_tls": False, "users": [{"name": "scanner", "password_hash": "$scrypt$x", "extension": 7}]},
        "senders": [{"match": ["*@example.com"], "max_per_hour": 3}, {"match": ["boss@example.org"]}],
        "inbound": {"routes": {"78123092631": ["a@example.com"], "+7 495": ["b@example.com"]}},
        "storage": {"state_dir": str(tmp_path)},
    }
    assert tomllib.loads(to_toml(data)) == data


def test_what_the_tests_write_loads_as_a_gatewayd_configuration(tmp_path: Path) -> None:
    data = {
        "provider": {"client_id": "c", "client_secret": "s\"\\ é", "extension": 122, "timeout": 2.5},
        "senders": [{"match": ["*@example.com"], "max_per_hour": 3}, {"match": ["boss@example.org"]}],
        "inbound": {"routes": {"78123092631": ["a@example.com"]}},
        "storage": {"state_dir": str(tmp_path / "state")},
    }
    path = tmp_path / "gatewayd.toml"
    path.write_text(to_toml(data), encoding="utf-8")
    config = load_config(path)
    assert config.provider.client_secret == "s\"\\ é" and config.provider.timeout == 2.5
    assert config.inbound.route_for("78123092631") == ("a@example.com",)
    assert config.senders[0].match == ("*@example.com",) and config.senders[1].match == ("boss@example.org",)
    assert config.state_dir == tmp_path / "state"
