"""``gatewayd run -c CONFIG`` as a real subprocess: the one helper behind
support.service.Gateway and support.reliability.start_daemon.

The daemon's stdout and stderr (JSON log lines) go to one file in the test's
directory, read back with ``log_text``/``events``. Its config loader refuses
port 0, so a port is picked before the start (support.ports.free_port);
``start_gateway`` retries on a new port when another process took it first
(support.ports.aretry_on_port_clash). Only 127.0.0.1 addresses are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tomli_w import dumps as to_toml
from support.ports import PortClash, aretry_on_port_clash, free_port

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

# Variables a test's own environment may carry that would change where the
# daemon reads its configuration and secrets, or whom it notifies.
GATEWAYD_ENV = ("GATEWAYD_CONFIG", "CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without gatewayd's variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in GATEWAYD_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def smtp_port(data: dict[str, Any]) -> int:
    return int(data["smtp"]["listen"].rsplit(":", 1)[1])


@dataclass
class GatewayProcess:
    """One ``gatewayd run`` subprocess; ``port`` is its SMTP port when known."""

    config: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=clean_env)
    port: int | None = None
    proc: asyncio.subprocess.Process | None = None

    async def start(self) -> "GatewayProcess":
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = await asyncio.create_subprocess_exec(
                PYTHON, "-m", "gatewayd", "run", "-c", str(self.config),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=self.env, cwd=str(REPO),
            )
        return self

    # ------------------------------------------------------------ process

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        assert self.proc is not None
        return self.proc.returncode

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout=timeout)

    async def stop(self, timeout: float = 12.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not go; the exit code (None: never started)."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return await asyncio.wait_for(self.proc.wait(), timeout=timeout)
            except asyncio.TimeoutError:
                self.proc.kill()
        return await self.proc.wait()

    async def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds it took). Not stopping within ``timeout`` + 5 s fails."""
        assert self.proc is not None
        started = time.monotonic()
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout + 5)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"gatewayd did not stop {timeout + 5} s after SIGTERM:\n{self.log_tail()}") from None
        return code, time.monotonic() - started

    async def wait_listening(self, timeout: float = 30.0) -> None:
        """Until the SMTP port accepts a connection; the daemon exiting first fails."""
        assert self.proc is not None and self.port is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise AssertionError(f"gatewayd exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return
        raise AssertionError(f"gatewayd not listening after {timeout} s:\n{self.log_tail()}")

    def port_taken(self) -> bool:
        """The start failed because a port was already bound by someone else."""
        return "address already in use" in self.log_text().lower()

    # ---------------------------------------------------------------- log

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        return ""

    def log_tail(self, n: int = 3000) -> str:
        return self.log_text()[-n:]

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log events written so far (optionally only one event name)."""
        out = []
        for line in self.log_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and (name is None or event.get("event") == name):
                out.append(event)
        return out

    async def wait_event(self, name: str, *, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(name)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no log event {name!r} within {timeout}s; log:\n{self.log_tail(4000)}")
            await asyncio.sleep(0.05)


async def start_gateway(workdir: Path, data: dict[str, Any], *, name: str = "gatewayd",
                        env: dict[str, str] | None = None) -> GatewayProcess:
    """Write ``data`` to WORKDIR/NAME.toml, start ``gatewayd run`` and wait until
    its SMTP port listens. A port taken by another process between
    ``free_port`` and the daemon's bind: a new SMTP port (``data`` is updated)
    and another start; the log file is NAME.log, appended to by every start."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{name}.toml"
    log_path = workdir / f"{name}.log"

    async def attempt(port: int | None) -> GatewayProcess:
        if port is not None:
            data["smtp"]["listen"] = f"127.0.0.1:{port}"
            if data.get("http", {}).get("listen"):  # it may be the one that clashed
                data["http"]["listen"] = f"127.0.0.1:{free_port()}"
        config.write_text(to_toml(data), encoding="utf-8")
        mark = log_path.stat().st_size if log_path.exists() else 0
        daemon = GatewayProcess(config, log_path, env if env is not None else clean_env(), smtp_port(data))
        await daemon.start()
        try:
            await daemon.wait_listening()
        except BaseException:
            daemon.kill()  # never left running behind a failed start
            with contextlib.suppress(Exception):
                await daemon.wait(10)
            if "address already in use" in daemon.log_text()[mark:].lower():
                raise PortClash(f"a port of {config} was taken before gatewayd bound it") from None
            raise
        return daemon

    # The first start uses the caller's port; later ones a fresh one.
    first = True

    async def start(port: int) -> GatewayProcess:
        nonlocal first
        chosen, first = (None if first else port), False
        return await attempt(chosen)

    return await aretry_on_port_clash(start)
