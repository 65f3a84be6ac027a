"""sd_notify against a real bound AF_UNIX datagram socket, as systemd does it:
``gatewayd run`` as a subprocess, and the watchdog in-process with a loop or
a store that stops answering."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.service import DOMAIN, NUMBER, NotifySocket, Ports, fax_email, gateway_config, send_fax, tcp_connect_once, write_config

from gatewayd.config import load_config_data
from gatewayd.daemon import Daemon, Runtime
from gatewayd.sdnotify import Notifier

WATCHDOG_USEC = 400_000  # pings every 200 ms


# ------------------------------------------------------ gatewayd run (subprocess)


@pytest.mark.parametrize("kind", ["path", "abstract"])
async def test_lifecycle_over_notify_socket(kind: str, tmp_path: Path, request: pytest.FixtureRequest, gateways: Any, pdf: bytes) -> None:
    notify: NotifySocket = request.getfixturevalue("notify_socket" if kind == "path" else "abstract_notify_socket")
    if kind == "abstract":
        assert notify.address.startswith("@")
    ports = Ports()
    config = write_config(tmp_path / "config.toml", gateway_config(tmp_path / "state", ports))
    gw = await gateways(config, NOTIFY_SOCKET=notify.address, WATCHDOG_USEC=str(WATCHDOG_USEC))

    # READY=1 comes once the listeners are bound: connecting right away works, no retry.
    ready = (await notify.wait_for("READY=1", timeout=30))[0]
    await tcp_connect_once(ports.smtp)
    await tcp_connect_once(ports.http)
    assert ready.fields.get("STATUS") == "0 to submit, 0 at the provider, 0 emails in the outbox"
    assert len(notify.with_field("READY=1")) == 1
    assert not any(n.has("WATCHDOG=1") for n in notify.snapshot() if n.at < ready.at), "a ping before READY"

    # WATCHDOG=1 about every WATCHDOG_USEC/2, each with the current STATUS.
    pings = await notify.wait_for("WATCHDOG=1", since=ready.at, count=5, timeout=5)
    gaps = sorted(b.at - a.at for a, b in zip(pings, pings[1:]))
    period = WATCHDOG_USEC / 1e6
    assert period * 0.3 < gaps[len(gaps) // 2] < period * 0.75, gaps  # about half the period
    assert gaps[-1] < 2 * period, gaps  # slack for a loaded test machine
    assert all("to submit" in p.fields.get("STATUS", "") for p in pings)

    # STATUS follows the queues: a fax the (unreachable) provider cannot take yet.
    reply = await send_fax(ports.smtp, "alice@allowed.test", f"{NUMBER}@{DOMAIN}", fax_email("alice@allowed.test", f"{NUMBER}@{DOMAIN}", pdf))
    assert reply.startswith("250 2.0.0 queued as"), reply
    await notify.wait_until(lambda n: n.fields.get("STATUS", "").startswith("1 to submit"), timeout=10)

    # SIGHUP: RELOADING=1, then READY=1 again.
    hup = time.monotonic()
    gw.signal(signal.SIGHUP)
    reloading = (await notify.wait_for("RELOADING=1", since=hup, timeout=10))[0]
    assert reloading.fields.get("MONOTONIC_USEC", "").isdigit()
    ready_again = (await notify.wait_for("READY=1", since=reloading.at, timeout=10))[0]
    assert ready_again.at >= reloading.at
    await gw.wait_event("reload_applied")

    # SIGTERM: STOPPING=1 and exit 0 within 10 s; no ping after STOPPING.
    term = time.monotonic()
    gw.signal(signal.SIGTERM)
    stopping = (await notify.wait_for("STOPPING=1", since=term, timeout=10))[0]
    assert await gw.wait(timeout=10) == 0
    assert time.monotonic() - term < 10
    late = [n for n in notify.snapshot() if n.at > stopping.at + 0.05 and n.has("WATCHDOG=1")]
    assert not late, [n.raw for n in late]
    assert gw.events("gatewayd_stopped")


async def test_no_watchdog_pings_without_watchdog_usec_and_sigint_stops(tmp_path: Path, notify_socket: NotifySocket, gateways: Any) -> None:
    ports = Ports()
    config = write_config(tmp_path / "config.toml", gateway_config(tmp_path / "state", ports))
    gw = await gateways(config, NOTIFY_SOCKET=notify_socket.address)
    await notify_socket.wait_for("READY=1", timeout=30)
    await asyncio.sleep(1.0)
    assert not notify_socket.with_field("WATCHDOG=1")
    gw.signal(signal.SIGINT)  # Ctrl-C in a terminal: the same clean stop as SIGTERM
    await notify_socket.wait_for("STOPPING=1", timeout=10)
    assert await gw.wait(timeout=10) == 0


async def test_failed_start_never_says_ready(tmp_path: Path, notify_socket: NotifySocket, gateways: Any) -> None:
    """A listener that cannot bind: non-zero exit, a STATUS naming it, no READY=1."""
    ports = Ports()
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    taken.bind(("127.0.0.1", ports.smtp))
    taken.listen()
    try:
        config = write_config(tmp_path / "config.toml", gateway_config(tmp_path / "state", ports))
        gw = await gateways(config, NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC=str(WATCHDOG_USEC))
        code = await gw.wait(timeout=30)
    finally:
        taken.close()
    assert code != 0
    assert not notify_socket.with_field("READY=1")
    assert not notify_socket.with_field("WATCHDOG=1")
    statuses = [n.fields["STATUS"] for n in notify_socket.snapshot() if "STATUS" in n.fields]
    assert any(s.startswith("start failed: smtp") for s in statuses), statuses
    failed = gw.events("service_start_failed")
    assert failed and failed[0]["service"] == "smtp", gw.stderr()[-3000:]


# ------------------------------------------------------------ watchdog (in-process)


class Hook:
    """A service that runs a test's function once the daemon is up."""

    name = "hook"

    def __init__(self, rt: Runtime, action: Any) -> None:
        self.rt = rt
        self.action = action

    async def start(self) -> None:
        pass

    async def run(self) -> None:
        await self.action(self.rt)
        await self.rt.stopping.wait()

    async def stop(self) -> None:
        pass


class _NoProvider:
    last_success_at = last_error_at = last_error = None
    failing_paths: dict[str, tuple[int, int]] = {}

    async def aclose(self) -> None:
        pass


def _config(tmp_path: Path) -> Any:
    return load_config_data(
        {
            "provider": {"base_url": "http://127.0.0.1:9/api/ver1.0", "client_id": "x", "client_secret": "y", "extension": 1},
            "smtp": {"hostname": "gw.test"},
            "storage": {"state_dir": str(tmp_path / "state")},
            "inbound": {"enabled": False},
            "http": {"listen": ""},
        }
    )


async def _run_daemon_with(tmp_path: Path, notify: NotifySocket, action: Any) -> None:
    """Run a Daemon (watchdog on) whose only service calls ``action(rt)``, then stop it."""
    done = asyncio.Event()

    async def wrapped(rt: Runtime) -> None:
        try:
            await action(rt)
        finally:
            done.set()

    daemon = Daemon(
        _config(tmp_path),
        notifier=Notifier(notify.address, watchdog_usec=WATCHDOG_USEC, watchdog_pid=os.getpid()),
        services_factory=lambda rt: [Hook(rt, wrapped)],
        provider_factory=lambda config, metrics: _NoProvider(),
    )
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(done.wait(), timeout=30)
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, timeout=10) == 0


def _pings(notify: NotifySocket, start: float, end: float) -> list[float]:
    return [n.at for n in notify.with_field("WATCHDOG=1") if start <= n.at <= end]


async def test_start_up_objects_are_frozen_once_ready(tmp_path: Path, notify_socket: NotifySocket) -> None:
    # gatewayd/memory.py: once ready, what start-up made is out of the collector's runs.
    import gc

    seen: dict[str, int] = {}

    async def look(rt: Runtime) -> None:
        await notify_socket.wait_for("READY=1", timeout=10)
        await asyncio.sleep(0.1)
        seen["frozen"] = gc.get_freeze_count()

    gc.unfreeze()
    try:
        await _run_daemon_with(tmp_path, notify_socket, look)
    finally:
        gc.unfreeze()  # this test process must not keep pytest's objects frozen
    assert seen["frozen"] > 10_000


async def test_no_ping_while_the_event_loop_is_blocked(tmp_path: Path, notify_socket: NotifySocket) -> None:
    window: dict[str, float] = {}

    async def block(rt: Runtime) -> None:
        await notify_socket.wait_for("WATCHDOG=1", count=3, timeout=10)  # pinging normally first
        window["start"] = time.monotonic()
        time.sleep(1.5)  # a bug: blocking call in a coroutine, ~4 watchdog periods
        window["end"] = time.monotonic()
        # Answering again: pings resume.
        await notify_socket.wait_for("WATCHDOG=1", since=window["end"], count=2, timeout=5)

    await _run_daemon_with(tmp_path, notify_socket, block)
    assert len(_pings(notify_socket, 0, window["start"])) >= 3
    # Nothing from shortly after the block began until it ended (a ping
    # already in flight when it began may land within a few ms).
    assert _pings(notify_socket, window["start"] + 0.05, window["end"]) == []
    assert len(_pings(notify_socket, window["end"], float("inf"))) >= 2


@pytest.mark.parametrize("failure", ["raises", "hangs"])
async def test_no_ping_while_the_store_does_not_answer(failure: str, tmp_path: Path, notify_socket: NotifySocket) -> None:
    window: dict[str, float] = {}
    release = threading.Event()

    async def break_store(rt: Runtime) -> None:
        await notify_socket.wait_for("WATCHDOG=1", count=3, timeout=10)
        store = rt.store

        def broken_ping() -> bool:
            if failure == "raises":
                raise RuntimeError("database disk image is malformed")
            release.wait(10)  # a store thread stuck (e.g. I/O on a dead disk)
            return True

        store.ping = broken_ping  # type: ignore[method-assign]
        window["start"] = time.monotonic()
        await asyncio.sleep(1.5)  # the loop keeps turning meanwhile
        window["end"] = time.monotonic()
        del store.ping  # the real method again
        release.set()
        await notify_socket.wait_for("WATCHDOG=1", since=window["end"], count=2, timeout=5)

    await _run_daemon_with(tmp_path, notify_socket, break_store)
    # A probe that had already passed ping() when it broke may still ping once, at once.
    assert _pings(notify_socket, window["start"] + 0.1, window["end"]) == []
    assert len(_pings(notify_socket, window["end"], float("inf"))) >= 2


# ------------------------------------------------------------------- Notifier


def test_notifier_reads_and_unsets_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "@gw-test")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier.from_environment()
    assert n.address == "@gw-test" and n.enabled
    assert n.watchdog_interval() == 15.0
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        assert name not in os.environ  # helper programs do not inherit them


def test_watchdog_off_when_meant_for_another_process_or_unset() -> None:
    assert Notifier.from_environment({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval() is None
    assert Notifier.from_environment({"NOTIFY_SOCKET": "/run/x"}).watchdog_interval() is None
    assert Notifier.from_environment({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "0"}).watchdog_interval() is None
    assert Notifier.from_environment({"WATCHDOG_USEC": "1000000"}).watchdog_interval() is None  # no socket
    assert Notifier.from_environment({}).notify("READY=1") is False
    assert Notifier("relative/path").enabled is False


def test_notify_never_raises_or_blocks(tmp_path: Path) -> None:
    gone = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert gone.notify("READY=1") is False and gone.failed == 1
    # A manager that does not read: the queue fills, sends fail fast instead of blocking.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "full.sock"))
    try:
        full = Notifier(str(tmp_path / "full.sock"))
        began = time.monotonic()
        results = [full.status("x" * 2000) for _ in range(2000)]
        assert time.monotonic() - began < 5
        assert results[0] is True and results[-1] is False
    finally:
        sock.close()


def test_status_lines_are_one_line(tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path)
    try:
        Notifier(notify.address).status("two\nlines")
        deadline = time.monotonic() + 5
        while not notify.snapshot() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert notify.snapshot()[0].raw == "STATUS=two lines"
    finally:
        notify.close()


def test_status_line_wording() -> None:
    from gatewayd.daemon import format_status

    counts = {"queued": 2, "submitting": 1, "submitted": 3, "sending": 1, "failed": 40, "sent": 900}
    # Failed jobs count only while they await an automatic retry (passed in separately).
    assert format_status(counts, 0, None, retrying=1) == "3 to submit, 5 at the provider, 0 emails in the outbox"
    assert format_status({}, 2, 185.0) == "0 to submit, 0 at the provider, 2 emails in the outbox (oldest 3m)"
    assert format_status({}, 1, 7300.0).endswith("(oldest 2h)")
