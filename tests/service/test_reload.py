"""SIGHUP: a valid configuration applies live, an invalid one is rejected with
its errors logged while the running configuration keeps serving."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from support.service import DOMAIN, NUMBER, NotifySocket, Ports, fax_email, gateway_config, http_get, send_fax, to_toml, write_config

from gatewayd.config import load_config
from gatewayd.daemon import Daemon, Runtime, restart_only_changes
from gatewayd.sdnotify import Notifier

ALICE = "alice@allowed.test"
BOB = "bob@other.test"
RCPT = f"{NUMBER}@{DOMAIN}"


async def _hup(gw: Any, notify: NotifySocket) -> str:
    """SIGHUP and wait for the READY=1 that ends the reload; returns its STATUS."""
    since = time.monotonic()
    gw.signal(signal.SIGHUP)
    reloading = (await notify.wait_for("RELOADING=1", since=since, timeout=10))[0]
    ready = (await notify.wait_for("READY=1", since=reloading.at, timeout=10))[0]
    return ready.fields.get("STATUS", "")


async def test_new_sender_rule_applies_without_restart(tmp_path: Path, notify_socket: NotifySocket, gateways: Any, pdf: bytes) -> None:
    ports = Ports()
    path = tmp_path / "config.toml"
    write_config(path, gateway_config(tmp_path / "state", ports, senders=[{"match": ["*@allowed.test"]}]))
    gw = await gateways(path, NOTIFY_SOCKET=notify_socket.address)
    await notify_socket.wait_for("READY=1", timeout=30)

    assert (await send_fax(ports.smtp, BOB, RCPT, fax_email(BOB, RCPT, pdf))) == "550 5.7.1 sender not authorised"
    assert (await send_fax(ports.smtp, ALICE, RCPT, fax_email(ALICE, RCPT, pdf))).startswith("250 2.0.0 queued as")

    write_config(path, gateway_config(tmp_path / "state", ports, senders=[{"match": ["*@allowed.test"]}, {"match": ["*@other.test"]}]))
    status = await _hup(gw, notify_socket)
    assert "reload rejected" not in status
    applied = await gw.wait_event("reload_applied")
    assert applied[-1]["changed"] == ["senders"] and applied[-1]["needs_restart"] == []

    reply = await send_fax(ports.smtp, BOB, RCPT, fax_email(BOB, RCPT, pdf))
    assert reply.startswith("250 2.0.0 queued as"), reply
    # Same process, same listener: nothing restarted.
    assert gw.proc.returncode is None
    assert len(gw.events("gatewayd_ready")) == 1
    assert len(gw.events("smtp_listening")) == 1

    # And back: removing the rule refuses the sender again.
    write_config(path, gateway_config(tmp_path / "state", ports, senders=[{"match": ["*@allowed.test"]}]))
    await _hup(gw, notify_socket)
    assert (await send_fax(ports.smtp, BOB, RCPT, fax_email(BOB, RCPT, pdf))) == "550 5.7.1 sender not authorised"


def _break(path: Path, how: str, good: dict[str, Any]) -> list[str]:
    """Write a bad file; returns fragments its logged problems must contain."""
    if how == "invalid values":
        bad = json.loads(json.dumps(good))
        bad["senders"] = [{"match": ["*@other.test"]}]  # would let BOB in, if it were applied
        bad["smtp"]["colour"] = "blue"
        bad["smtp"]["max_connections"] = -3
        path.write_text(to_toml(bad), encoding="utf-8")
        return ["smtp.colour: unknown key", "smtp.max_connections"]
    if how == "not TOML":
        path.write_text('[smtp\nlisten = "127.0.0.1:25', encoding="utf-8")
        return ["TOML syntax error"]
    if how == "missing":
        path.unlink()
        return ["cannot read"]
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["invalid values", "not TOML", "missing"])
async def test_invalid_file_is_rejected_and_the_running_config_kept(how: str, tmp_path: Path, notify_socket: NotifySocket, gateways: Any, pdf: bytes) -> None:
    ports = Ports()
    path = tmp_path / "config.toml"
    good = gateway_config(tmp_path / "state", ports, senders=[{"match": ["*@allowed.test"]}])
    write_config(path, good)
    gw = await gateways(path, NOTIFY_SOCKET=notify_socket.address)
    await notify_socket.wait_for("READY=1", timeout=30)

    fragments = _break(path, how, good)
    status = await _hup(gw, notify_socket)
    assert status.startswith("reload rejected"), status

    rejected = await gw.wait_event("reload_rejected")
    assert rejected[-1]["level"] == "error"
    problems = "\n".join(rejected[-1]["problems"])
    for fragment in fragments:
        assert fragment in problems, problems
    assert not gw.events("reload_applied")

    # Still serving, with the old rules.
    assert gw.proc.returncode is None
    assert (await send_fax(ports.smtp, ALICE, RCPT, fax_email(ALICE, RCPT, pdf))).startswith("250 2.0.0 queued as")
    assert (await send_fax(ports.smtp, BOB, RCPT, fax_email(BOB, RCPT, pdf))) == "550 5.7.1 sender not authorised"
    code, body = await http_get(ports.http, "/healthz")
    assert json.loads(body)["store"] == "ok", (code, body)

    # Fixing the file and reloading again works.
    write_config(path, gateway_config(tmp_path / "state", ports, senders=[{"match": ["*@other.test"]}]))
    assert not (await _hup(gw, notify_socket)).startswith("reload rejected")
    assert (await send_fax(ports.smtp, BOB, RCPT, fax_email(BOB, RCPT, pdf))).startswith("250 2.0.0 queued as")


# ---------------------------------------------------------------- in-process


class Idle:
    name = "idle"

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def start(self) -> None:
        pass

    async def run(self) -> None:
        await self.rt.stopping.wait()

    async def stop(self) -> None:
        pass


class FakeProvider:
    last_success_at = last_error_at = last_error = None
    failing_paths: dict[str, tuple[int, int]] = {}

    def __init__(self, config: Any) -> None:
        self.config = config
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


async def test_restart_only_keys_keep_running_values_and_provider_is_rebuilt(tmp_path: Path, notify_socket: NotifySocket) -> None:
    ports = Ports()
    path = tmp_path / "config.toml"
    data = gateway_config(tmp_path / "state", ports)
    write_config(path, data)
    built: list[FakeProvider] = []

    def factory(config: Any, metrics: Any) -> FakeProvider:
        built.append(FakeProvider(config))
        return built[-1]

    daemon = Daemon(
        load_config(path), config_path=str(path),
        notifier=Notifier(notify_socket.address),
        services_factory=lambda rt: [Idle(rt)], provider_factory=factory,
    )
    task = asyncio.create_task(daemon.run())
    try:
        await notify_socket.wait_for("READY=1", timeout=10)
        rt = daemon.rt
        assert rt is not None and rt.provider is built[0]

        new_ports = Ports()
        changed = json.loads(json.dumps(data))
        changed["smtp"]["listen"] = f"127.0.0.1:{new_ports.smtp}"  # needs a restart
        changed["http"]["listen"] = f"127.0.0.1:{new_ports.http}"  # needs a restart
        changed["inbound"]["enabled"] = True  # needs a restart
        changed["mail"]["relay"] = "127.0.0.1:2500"  # live
        changed["provider"]["client_secret"] = "rotated"  # live: a new client
        write_config(path, changed)
        since = time.monotonic()
        os.kill(os.getpid(), signal.SIGHUP)  # the daemon's own handler, as systemctl reload does
        reloading = (await notify_socket.wait_for("RELOADING=1", since=since, timeout=10))[0]
        await notify_socket.wait_for("READY=1", since=reloading.at, timeout=10)

        assert str(rt.config.smtp.listen[0]) == f"127.0.0.1:{ports.smtp}"
        assert str(rt.config.http.listen) == f"127.0.0.1:{ports.http}"
        assert rt.config.inbound.enabled is False
        assert str(rt.config.mail.relay) == "127.0.0.1:2500"
        assert rt.config.provider.client_secret == "rotated"
        assert len(built) == 2 and rt.provider is built[1] and built[1].config.provider.client_secret == "rotated"
        assert not built[0].closed  # calls may still be running on it
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, timeout=10) == 0
    assert built[0].closed and built[1].closed


def test_restart_only_changes_names_the_keys(tmp_path: Path) -> None:
    ports = Ports()
    path = write_config(tmp_path / "a.toml", gateway_config(tmp_path / "state", ports))
    old = load_config(path)
    data = gateway_config(tmp_path / "state2", Ports(), senders=[{"match": ["*@x.test"]}])
    new = load_config(write_config(tmp_path / "b.toml", data))
    assert sorted(restart_only_changes(old, new)) == ["http.listen", "smtp.listen", "storage.state_dir"]
    assert restart_only_changes(old, old) == []


async def test_freed_memory_is_handed_back_every_interval(tmp_path: Path, notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon calls malloc_trim periodically (gatewayd/memory.py): memory
    freed by uploads, downloads and large emails does not stay with it."""
    import gatewayd.memory as memory_module

    calls: list[float] = []
    monkeypatch.setattr(memory_module, "RELEASE_EVERY", 0.05)
    monkeypatch.setattr(memory_module, "release_free_memory", lambda: calls.append(time.monotonic()) or True)
    path = write_config(tmp_path / "config.toml", gateway_config(tmp_path / "state", Ports()))
    daemon = Daemon(load_config(path), config_path=str(path), notifier=Notifier(notify_socket.address),
                    services_factory=lambda rt: [Idle(rt)], provider_factory=lambda config, metrics: FakeProvider(config))
    task = asyncio.create_task(daemon.run())
    try:
        await notify_socket.wait_for("READY=1", timeout=10)
        deadline = time.monotonic() + 5
        while len(calls) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert len(calls) >= 3, calls
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, timeout=10) == 0
