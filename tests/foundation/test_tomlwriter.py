"""The TOML writer behind the demo's config file (and the tests' configs)
round-trips through tomllib and gatewayd's own loader."""

from __future__ import annotations

import tomllib

import pytest

from gatewayd.config import load_config_data
from gatewayd.tomlwriter import dumps


def test_a_full_configuration_round_trips(tmp_path) -> None:
    data = {
        "provider": {"base_url": "http://127.0.0.1:9/api/ver1.0", "client_id": "c", "client_secret": "s\"\\ é", "extension": 122, "timeout": 2.5},
        "smtp": {"listen": ["127.0.0.1:2525", "[::1]:2525"], "require_tls": False, "users": [{"name": "scanner", "password_hash": "$scrypt$x", "extension": 7}]},
        "senders": [{"match": ["*@example.com"], "max_per_hour": 3}, {"match": ["boss@example.org"]}],
        "inbound": {"routes": {"78123092631": ["a@example.com"], "+7 495": ["b@example.com"]}},
        "storage": {"state_dir": str(tmp_path)},
    }
    assert tomllib.loads(dumps(data)) == data


def test_what_it_writes_loads_as_a_gatewayd_configuration(tmp_path) -> None:
    data = {
        "provider": {"client_id": "c", "client_secret": "s", "extension": 122},
        "senders": [{"match": ["*@example.com"]}],
        "inbound": {"routes": {"78123092631": ["a@example.com"]}},
        "storage": {"state_dir": str(tmp_path)},
    }
    config = load_config_data(tomllib.loads(dumps(data)))
    assert config.inbound.route_for("78123092631") == ("a@example.com",)
    assert config.senders[0].match == ("*@example.com",)


def test_values_it_cannot_write_are_refused() -> None:
    with pytest.raises(TypeError):
        dumps({"a": object()})
