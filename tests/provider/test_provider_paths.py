"""``[provider.paths]``: checked at load, used by the client and served by the
simulator; a path answering 404/405 on consecutive calls is recorded by the
client and named by the health verdict (docs/provider.md, Checking a new account)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from gatewayd.config import ConfigError, load_config_data
from gatewayd.health import PATH_ALARM_AFTER, Health
from gatewayd.provider.client import NotFound, ProviderClient
from gatewayd.provider.paths import PATHS
from gatewayd.provider.simulator import run_simulator

INCOMING = "/extension/{extension_id}/fax/incoming/"


def load(paths: Any) -> Any:
    return load_config_data({"provider": {"client_id": "a", "client_secret": "b", "paths": paths}}, env={})


def problems(paths: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(paths)
    return info.value.problems


def test_an_override_is_loaded_and_the_rest_stay_default() -> None:
    config = load({"fax_in": INCOMING})
    assert config.provider.paths == (("fax_in", INCOMING),)
    client = ProviderClient.from_config(config.provider)
    assert client.paths == {**PATHS, "fax_in": INCOMING}


@pytest.mark.parametrize(
    ("paths", "problem"),
    [
        ({"fax_inn": INCOMING}, "provider.paths.fax_inn: unknown path; the keys are extension, extensions, fax_in"),
        ({"fax_in": "/extension/{extension}/fax/in/"}, "provider.paths.fax_in: needs {extension_id} (missing {extension_id}; unknown {extension})"),
        ({"fax_in_one": "/extension/{extension_id}/fax/in/"}, "provider.paths.fax_in_one: needs {extension_id}, {uuid} (missing {uuid})"),
        ({"user": "/user/{client_id}"}, "provider.paths.user: needs no placeholders (unknown {client_id})"),
        ({"fax_in": "extension/{extension_id}/fax/in/"}, "provider.paths.fax_in: must start with one '/'"),
        ({"fax_in": "//evil.example/{extension_id}"}, "provider.paths.fax_in: must start with one '/'"),
        ({"fax_in": "/extension/{extension_id}/fax/in/?x=1"}, "provider.paths.fax_in: only path characters"),
        ({"fax_in": "/extension/{extension_id}/../in/"}, "provider.paths.fax_in: '.' and '..' segments"),
        ({"fax_in": "/extension/{extension_id!r}/in/"}, "provider.paths.fax_in: {extension_id!r}: placeholders are plain names"),
        ({"fax_in": "/extension/{extension_id/in/"}, "provider.paths.fax_in: unbalanced braces"),
        ({"fax_in": 5}, "provider.paths.fax_in: expected a string, got 5"),
        ({"fax_in": "/extension/{extension_id}/fax/out/"}, "provider.paths: fax_in and fax_out would be the same path"),
        ("/x", "provider.paths: expected a table"),
    ],
)
def test_a_path_that_cannot_work_is_refused_at_load(paths: Any, problem: str) -> None:
    found = problems(paths)
    assert any(p.startswith(problem) for p in found), found


async def test_the_simulator_serves_the_override_instead_of_the_default() -> None:
    async with run_simulator(paths={"fax_in": INCOMING}) as sim:
        sim.add_extension(122)
        uuid = sim.inject_received(122, b"II*\x00" + b"\x00" * 64)
        now = dt.datetime.now(dt.timezone.utc)
        window = (now - dt.timedelta(hours=1), now + dt.timedelta(hours=1))
        async with ProviderClient(sim.base_url, sim.token_url, "demo", "demo", paths={"fax_in": INCOMING}) as client:
            assert [f.uuid for f in await client.list_received_faxes(122, *window)] == [uuid]
            assert client.failing_paths == {}
        async with ProviderClient(sim.base_url, sim.token_url, "demo", "demo", max_attempts=1) as client:
            for n in range(1, PATH_ALARM_AFTER + 1):
                with pytest.raises(NotFound):
                    await client.list_received_faxes(122, *window)
                assert client.failing_paths == {"fax_in": (404, n)}
            # The other paths keep working and are not named.
            assert [e.id for e in await client.list_fax_extensions()] == [122, 123]
            assert set(client.failing_paths) == {"fax_in"}


async def test_a_success_clears_a_failing_path_and_health_waits_for_repeats() -> None:
    async with run_simulator() as sim:
        sim.add_extension(122)
        async with ProviderClient(sim.base_url, sim.token_url, "demo", "demo", max_attempts=1) as client:
            health = Health()
            for _ in range(PATH_ALARM_AFTER - 1):
                with pytest.raises(NotFound):
                    await client.download_received_fax(122, "gone")  # a deleted fax: one 404 is no alarm
            ok, body = health.check(store_ok=True, provider=client, poll_interval=60)
            assert ok and body["provider"]["failing_paths"] == {}, body
            with pytest.raises(NotFound):
                await client.download_received_fax(122, "gone")
            ok, body = health.check(store_ok=True, provider=client, poll_interval=60)
            assert not ok and body["provider"]["failing_paths"] == {"fax_in_one": {"status": 404, "count": PATH_ALARM_AFTER}}
            assert any(p.startswith("provider path fax_in_one: HTTP 404 on 3 calls in a row") for p in body["problems"])
            uuid = sim.inject_received(122, b"II*\x00" + b"\x00" * 64)
            await client.download_received_fax(122, uuid)
            assert client.failing_paths == {}
            assert health.check(store_ok=True, provider=client, poll_interval=60)[0]
