"""Fixtures for the web console tests: the provider simulator, a mail sink and
the gateway (with its console) in-process on 127.0.0.1, and Debian's headless
Chromium driven by Playwright (never `playwright install`: the browser is the
system's /usr/bin/chromium, from TEST_DEBS)."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.web import CHROMIUM, CHROMIUM_ARGS, EXTENSION, PASSWORDS

from gatewayd.config import load_config_data
from gatewayd.daemon import Daemon
from gatewayd.mailsink import MailSink
from gatewayd.passwords import hash_password
from gatewayd.provider.simulator import run_simulator
from gatewayd.sdnotify import Notifier



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Console:
    url: str
    daemon: Daemon
    sim: Any
    sink: MailSink

    @property
    def store(self):  # type: ignore[no-untyped-def]
        assert self.daemon.rt is not None
        return self.daemon.rt.store


@pytest.fixture
def console_documents() -> dict[str, Any]:
    """The console gateway's ``[documents]``; a test parametrizes it to change them."""
    return {}


@pytest.fixture
async def console(tmp_path: Path, console_documents: dict[str, Any]) -> AsyncIterator[Console]:
    web_port = free_port()
    # Fast status clock: a fax is "sent" a fraction of a second after upload.
    async with run_simulator(send_delays=(0.5, 1.0)) as sim:
        sim.add_extension(EXTENSION, fax_mailto="reception@example.com")
        async with MailSink(maildir=tmp_path / "mail") as sink:
            config = load_config_data({
                "provider": {"base_url": sim.base_url, "token_url": sim.token_url, "client_id": "demo", "client_secret": "demo",
                             "extension": EXTENSION, "status_poll_interval": "1s", "auto_retries": 0},
                "smtp": {"listen": f"127.0.0.1:{free_port()}", "hostname": "gw.test", "domains": ["fax.example.com"],
                         "processes": 1,  # one listener process: tests read its sessions and metrics (the default, "auto": test_smtp_processes.py)
                         "users": [
                             {"name": "admin@example.com", "password_hash": hash_password(PASSWORDS["admin@example.com"]), "role": "admin"},
                             {"name": "bob@example.com", "password_hash": hash_password(PASSWORDS["bob@example.com"]), "inbound": [EXTENSION]},
                             {"name": "carol@example.com", "password_hash": hash_password(PASSWORDS["carol@example.com"])},
                         ]},
                "inbound": {"enabled": True, "extensions": [EXTENSION], "poll_interval": "1s"},
                "mail": {"relay": sink.relay, "from": "Fax Gateway <fax@gw.test>"},
                "storage": {"state_dir": str(tmp_path / "state")},
                "http": {"listen": ""},
                "web": {"listen": f"127.0.0.1:{web_port}"},
                "documents": console_documents,
                "log": {"level": "warning", "format": "console"},
            }, env={})
            daemon = Daemon(config, notifier=Notifier(None))
            task = asyncio.create_task(daemon.run())
            for _ in range(200):
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", web_port)
                    w.close()
                    break
                except OSError:
                    if task.done():
                        task.result()
                    await asyncio.sleep(0.05)
            try:
                yield Console(f"http://127.0.0.1:{web_port}", daemon, sim, sink)
            finally:
                daemon.request_stop()
                await asyncio.wait_for(task, 15)


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    """new_context() -> a fresh Chromium (own --user-data-dir, so its own cookies) for one person."""
    from playwright.async_api import async_playwright

    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: install Debian's chromium (make test-deps)"
    contexts: list[Any] = []
    async with async_playwright() as pw:
        async def new_context() -> Any:
            profile = tmp_path / f"chromium-profile-{len(contexts)}"
            # Playwright passes --user-data-dir itself from user_data_dir: a fresh profile per browser.
            ctx = await pw.chromium.launch_persistent_context(
                str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
                viewport={"width": 1100, "height": 800},
            )
            contexts.append(ctx)
            return ctx

        try:
            yield new_context
        finally:
            for ctx in contexts:
                await ctx.close()
