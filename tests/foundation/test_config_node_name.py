"""``storage.node_name``: this node's name in leases, jobs and metrics (docs/configuration.md)."""

from __future__ import annotations

import socket

import pytest

from gatewayd.config import ConfigError, load_config_data

BASE = {"provider": {"client_id": "id", "client_secret": "s"}, "smtp": {"hostname": "gw.test"}}


def with_node(value: object) -> dict[str, object]:
    return {**BASE, "storage": {"node_name": value}}


def test_the_host_name_by_default() -> None:
    assert load_config_data(BASE, env={}).storage.node_name == socket.gethostname()
    assert load_config_data(with_node(""), env={}).storage.node_name == socket.gethostname()


@pytest.mark.parametrize("name", ["gw1", "gw-b.example.com", "node_2", "a" * 64])
def test_a_usable_name_is_kept(name: str) -> None:
    assert load_config_data(with_node(name), env={}).storage.node_name == name


@pytest.mark.parametrize("name", ["a" * 65, "gw 1", "gw/1", "gw\n1", "gw:1", "ноды", 7])
def test_anything_else_is_refused_with_the_key(name: object) -> None:
    with pytest.raises(ConfigError) as err:
        load_config_data(with_node(name), env={})
    assert "storage.node_name: expected" in str(err.value), str(err.value)
