"""Helpers for the service tests: a bound sd_notify socket that records what
the daemon says, ``gatewayd run`` as a real subprocess, configs written as
TOML files, and a raw SMTP client that reports every reply.

Everything listens on 127.0.0.1 (TCP) or on an AF_UNIX socket in the test's
temporary directory / the abstract namespace.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Callable

from tomli_w import dumps as to_toml
from support.ports import free_port  # noqa: F401 (also a public name here)
from support.process import GatewayProcess, clean_env  # noqa: F401 (clean_env: also a public name here)

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
DOMAIN = "fax.example.com"
NUMBER = "+78123092631"
DISCARD_PROVIDER = "http://127.0.0.1:9/api/ver1.0"  # nothing answers: calls fail fast

# ------------------------------------------------------------------ config


@dataclass
class Ports:
    smtp: int = field(default_factory=free_port)
    http: int = field(default_factory=free_port)


def gateway_config(state_dir: Path, ports: Ports, *, provider_url: str = DISCARD_PROVIDER, token_url: str | None = None,
                   senders: list[dict[str, Any]] | None = None, inbound: dict[str, Any] | None = None,
                   relay: str = "127.0.0.1:9", **sections: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "provider": {
            "base_url": provider_url,
            "client_id": "demo",
            "client_secret": "demo",
            "extension": 122,
            "status_poll_interval": "1s",
            "retry_delay": "2s",
            "timeout": "5s",
        },
        "smtp": {"listen": f"127.0.0.1:{ports.smtp}", "hostname": "gw.test", "domains": [DOMAIN],
                 "processes": 1},  # one listener process: tests read its sessions and metrics (the default, "auto": test_smtp_processes.py)
        "senders": senders if senders is not None else [{"match": ["*@allowed.test"]}],
        "inbound": inbound if inbound is not None else {"enabled": False},
        "mail": {"relay": relay, "from": "Fax Gateway <fax@gw.test>"},
        "storage": {"state_dir": str(state_dir)},
        "http": {"listen": f"127.0.0.1:{ports.http}"},
        "log": {"level": "info", "format": "json"},
    }
    if token_url:
        data["provider"]["token_url"] = token_url
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(to_toml(data), encoding="utf-8")
    return path


# ---------------------------------------------------------------- sd_notify


@dataclass(frozen=True)
class Notice:
    at: float  # time.monotonic() when received
    fields: dict[str, str]
    raw: str

    def has(self, assignment: str) -> bool:
        key, _, value = assignment.partition("=")
        return self.fields.get(key) == value


class NotifySocket:
    """A bound AF_UNIX datagram socket, like systemd's, read by a thread.

    ``address`` is what goes into ``NOTIFY_SOCKET``: a path, or ``@name`` for
    the abstract namespace. Each datagram is kept with its arrival time.
    """

    def __init__(self, where: Path | None = None, *, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"gatewayd-test-{os.getpid()}-{secrets.token_hex(6)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            assert where is not None
            path = where / "notify.sock"
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.1)
        self.notices: list[Notice] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            at = time.monotonic()
            text = data.decode("utf-8", "replace")
            fields = {}
            for line in text.split("\n"):
                key, sep, value = line.partition("=")
                if sep:
                    fields[key] = value
            with self._lock:
                self.notices.append(Notice(at, fields, text))

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self.sock.close()

    def snapshot(self) -> list[Notice]:
        with self._lock:
            return list(self.notices)

    def with_field(self, assignment: str, since: float = 0.0) -> list[Notice]:
        return [n for n in self.snapshot() if n.at >= since and n.has(assignment)]

    async def wait_for(self, assignment: str, *, since: float = 0.0, count: int = 1, timeout: float = 20.0) -> list[Notice]:
        """Wait (without blocking the loop) until ``count`` messages carry ``assignment``."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.with_field(assignment, since)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count} x {assignment!r} within {timeout}s; got: {[n.raw for n in self.snapshot()]}")
            await asyncio.sleep(0.02)

    async def wait_until(self, predicate: Callable[[Notice], bool], *, since: float = 0.0, timeout: float = 20.0) -> Notice:
        deadline = time.monotonic() + timeout
        while True:
            for notice in self.snapshot():
                if notice.at >= since and predicate(notice):
                    return notice
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching notification within {timeout}s; got: {[n.raw for n in self.snapshot()][-10:]}")
            await asyncio.sleep(0.02)


# ------------------------------------------------------------ the process


class Gateway(GatewayProcess):
    """``python -m gatewayd run -c CONFIG`` as a subprocess (support/process.py);
    its output (JSON log lines) kept in a file in ``workdir``."""

    def __init__(self, config: Path, workdir: Path, env: dict[str, str]) -> None:
        super().__init__(config, workdir / f"gatewayd-{secrets.token_hex(3)}.stderr", env)

    @property
    def stderr_path(self) -> Path:
        return self.log_path

    def stderr(self) -> str:
        return self.log_text()


# -------------------------------------------------------------------- SMTP


def fax_email(sender: str, to: str, pdf: bytes, subject: str = "test fax") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{secrets.token_hex(8)}@test>"
    msg.set_content("Please fax this.\n")
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="doc.pdf")
    return msg.as_bytes(policy=policy.SMTP)


_REPLY = re.compile(rb"^(\d{3})([ -])(.*)$")


class RawSmtp:
    """A minimal SMTP client that returns every reply instead of raising."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, timeout: float = 10.0) -> tuple["RawSmtp", str]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        client = cls(reader, writer)
        return client, await client.reply()

    async def reply(self, timeout: float = 30.0) -> str:
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
            if not line:
                raise ConnectionError("connection closed: " + b"".join(lines).decode(errors="replace"))
            m = _REPLY.match(line.rstrip(b"\r\n"))
            assert m, f"not an SMTP reply: {line!r}"
            lines.append(line)
            if m.group(2) == b" ":
                return line.rstrip(b"\r\n").decode("utf-8", "replace")

    async def command(self, line: str) -> str:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def close(self) -> None:
        try:
            await self.command("QUIT")
        except (ConnectionError, asyncio.TimeoutError, OSError):
            pass
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


async def send_fax(port: int, sender: str, rcpt: str, data: bytes) -> str:
    """One transaction; returns the reply that decided it (MAIL, RCPT or end of DATA)."""
    client, banner = await RawSmtp.connect(port)
    try:
        assert banner.startswith("220"), banner
        assert (await client.command("EHLO client.test")).startswith("250")
        reply = await client.command(f"MAIL FROM:<{sender}>")
        if not reply.startswith("250"):
            return reply
        reply = await client.command(f"RCPT TO:<{rcpt}>")
        if not reply.startswith("250"):
            return reply
        reply = await client.command("DATA")
        assert reply.startswith("354"), reply
        body = data.replace(b"\r\n.", b"\r\n..")
        if body.startswith(b"."):
            body = b"." + body
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        client.writer.write(body + b".\r\n")
        await client.writer.drain()
        return await client.reply()
    finally:
        await client.close()


async def http_get(port: int, path: str) -> tuple[int, str]:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
            return resp.status, await resp.text()


async def tcp_connect_once(port: int) -> None:
    """Connect once, no retry: raises if nothing listens."""
    _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
