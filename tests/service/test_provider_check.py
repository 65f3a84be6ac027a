"""``gatewayd provider-check`` and ``[provider.paths]`` end to end: the real
command and a real ``gatewayd run`` against the provider simulator over HTTP
on 127.0.0.1 (docs/provider.md, Checking a new account)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from support.service import DOMAIN, NUMBER, NotifySocket, Ports, clean_env, fax_email, gateway_config, http_get, send_fax, write_config

from gatewayd.demo import sample_tiff
from gatewayd.mailsink import MailSink
from gatewayd.provider.simulator import ProviderSimulator

ALICE = "alice@allowed.test"
RECEPTION = "reception@example.com"
INCOMING = "/extension/{extension_id}/fax/incoming/"  # where this "provider" keeps fax_in


async def provider_check(config: Path) -> tuple[int, str]:
    """The real command, as a subprocess (the simulator keeps serving on this loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd", "provider-check", "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=clean_env(),
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8", "replace")


def line_of(out: str, key: str) -> str:
    found = [line for line in out.splitlines() if line.split()[:1] in (["OK"], ["FAIL"], ["SKIP"]) and line.split()[1:2] == [key]]
    assert len(found) == 1, (key, out)
    return found[0]


def config_for(tmp_path: Path, sim: ProviderSimulator, name: str, *, paths: dict[str, str] | None = None, **kw: Any) -> Path:
    data = gateway_config(tmp_path / "state", kw.pop("ports", None) or Ports(), provider_url=sim.base_url, token_url=sim.token_url, **kw)
    if paths:
        data["provider"]["paths"] = paths
    return write_config(tmp_path / name, data)


async def until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


async def test_passes_on_the_default_paths_and_only_reads(tmp_path: Path, pdf: bytes) -> None:
    async with ProviderSimulator() as sim:
        sim.add_extension(122, fax_mailto=RECEPTION)
        sim.inject_received(122, sample_tiff(1), caller_id="74951234567", destination="78123092631")
        # A sent fax, so the fax_out line compares real fields (made before the check).
        from gatewayd.provider.client import ProviderClient

        async with ProviderClient(sim.base_url, sim.token_url, "demo", "demo") as client:
            await client.send_fax(122, "74951112233", pdf)
        sent_before = sorted(sim.sent)
        received_before = sorted(sim.received)
        sim.request_log.clear()

        code, out = await provider_check(config_for(tmp_path, sim, "config.toml"))

        assert code == 0, out
        for key in ("token", "user", "extensions", "fax_mailto", "fax_out", "fax_in"):
            assert line_of(out, key).startswith("OK "), out
        assert "HTTP 200" in line_of(out, "fax_in") and "1 item " in line_of(out, "fax_in") + " "
        assert "fields as expected" in line_of(out, "fax_in")
        assert "fields as expected" in line_of(out, "fax_out")
        for key in ("fax_mailto", "fax_in"):
            assert "inferred path: confirmed" in line_of(out, key)
        assert "overridden" not in out

        # Read-only: the token POST and GETs, nothing else; nothing changed.
        methods = {(r.method, r.path if r.method != "GET" else "") for r in sim.request_log}
        assert methods == {("POST", "/oauth/token"), ("GET", "")}, sim.request_log
        assert {r.path for r in sim.request_log if r.method == "GET"} >= {
            "/user", "/client/12/extension/", "/extension/122/fax/", "/extension/122/fax/out/", "/extension/122/fax/in/",
        }
        assert sorted(sim.sent) == sent_before and all(f.attempt == 1 for f in sim.sent.values())
        assert sorted(sim.received) == received_before
        assert sim.extensions[122].fax_mailto == RECEPTION


async def test_a_new_field_and_a_missing_one_are_named(tmp_path: Path) -> None:
    async with ProviderSimulator() as sim:
        sim.add_extension(122, fax_mailto=RECEPTION)
        original = sim._received_json

        def changed(rec: Any) -> dict[str, Any]:
            row = original(rec)
            row["pages"] = 1
            del row["uuid"]
            return row

        sim._received_json = changed  # type: ignore[method-assign]
        sim.inject_received(122, sample_tiff(1))
        code, out = await provider_check(config_for(tmp_path, sim, "config.toml"))
    assert code == 1, out
    line = line_of(out, "fax_in")
    assert line.startswith("FAIL") and "missing uuid" in line and "new pages" in line, out
    assert "inferred path: NOT confirmed" in line


async def test_a_configuration_error_exits_2(tmp_path: Path) -> None:
    async with ProviderSimulator() as sim:
        config = config_for(tmp_path, sim, "config.toml", paths={"fax_in": "/extension/{extension}/fax/incoming/"})
        code, out = await provider_check(config)
    assert code == 2, out
    assert "provider.paths.fax_in: needs {extension_id}" in out, out
    assert sim.request_log == []


async def test_a_moved_path_is_named_then_the_override_relays_a_fax(
    tmp_path: Path, gateways: Any, notify_socket: NotifySocket, pdf: bytes,
) -> None:
    # This "provider" keeps received faxes somewhere else than gatewayd infers.
    sim = ProviderSimulator(paths={"fax_in": INCOMING})
    await sim.start()
    sim.add_extension(122, fax_mailto=RECEPTION)
    sink = await MailSink().start()
    try:
        inbound = {"enabled": True, "extensions": [122], "poll_interval": "1s"}
        ports = Ports()
        default = config_for(tmp_path, sim, "default.toml", ports=ports, inbound=inbound, relay=sink.relay)
        code, out = await provider_check(default)
        assert code == 1, out
        line = line_of(out, "fax_in")
        assert line.startswith("FAIL") and "/extension/{extension_id}/fax/in/" in line and "HTTP 404" in line, out
        assert "FAILED: fax_in" in out
        assert line_of(out, "fax_mailto").startswith("OK ")

        # The daemon on the default paths: the wrong path shows in /healthz
        # and the metrics, while sending faxes keeps working.
        gw = await gateways(default, NOTIFY_SOCKET=notify_socket.address)
        await notify_socket.wait_for("READY=1", timeout=30)

        async def named() -> Any:
            code, body = await http_get(ports.http, "/healthz")
            health = json.loads(body)
            return health if code == 503 and "fax_in" in health["provider"]["failing_paths"] else None

        health = await until(named, 30, "/healthz naming fax_in")
        assert any(p.startswith("provider path fax_in: HTTP 404 on ") for p in health["problems"]), health
        assert health["provider"]["failing_paths"]["fax_in"]["status"] == 404
        _, text = await http_get(ports.http, "/metrics")
        gauges = {s.labels["path"]: s.value for f in text_string_to_metric_families(text) if f.name == "gatewayd_provider_path_failing" for s in f.samples}
        assert gauges["fax_in"] == 1 and gauges["fax_out"] == 0 and gauges["fax_mailto"] == 0, gauges
        rcpt = f"{NUMBER}@{DOMAIN}"
        assert (await send_fax(ports.smtp, ALICE, rcpt, fax_email(ALICE, rcpt, pdf))).startswith("250 ")
        await until(lambda: _true(len(sim.sent) == 1), 30, "the fax sent despite the wrong fax_in path")
        await gw.stop()

        # The matching override: the check passes and names it ...
        fixed = config_for(tmp_path, sim, "fixed.toml", ports=ports, inbound=inbound, relay=sink.relay, paths={"fax_in": INCOMING})
        code, out = await provider_check(fixed)
        assert code == 0, out
        line = line_of(out, "fax_in")
        assert line.startswith("OK ") and INCOMING in line and "(overridden)" in line and "inferred path: confirmed" in line, out

        # ... and a running daemon relays a received fax through it.
        await gateways(fixed, NOTIFY_SOCKET=notify_socket.address)
        sim.inject_received(122, sample_tiff(1), caller_id="74951234567", destination="78123092631")

        async def relayed() -> Any:
            return any("Fax from" in (m.message["Subject"] or "") for m in sink.messages)

        await until(relayed, 30, "received fax relayed through the overridden path")
        assert any(r.method == "GET" and r.path == "/extension/122/fax/incoming/" and r.status == 200 for r in sim.request_log)

        async def healthy() -> Any:
            code, body = await http_get(ports.http, "/healthz")
            return code == 200 and json.loads(body)["provider"]["failing_paths"] == {}

        await until(healthy, 30, "/healthz healthy with the override")
    finally:
        await sink.stop()
        await sim.stop()


async def _true(value: bool) -> bool:
    return value
