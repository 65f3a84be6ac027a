"""Helpers for the email-to-fax tests: real configs (TOML through the real
loader), a gateway (store, intake, SMTP listener, sender) running in the
test's event loop, a raw SMTP client that sends bytes exactly as given, and
a certificate made at test time."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import ipaddress
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tomli_w import dumps as to_toml

from gatewayd.config import Config, load_config
from gatewayd.daemon import build_smtp_listener
from gatewayd.email_to_fax.intake import Intake
from gatewayd.email_to_fax.sender import Sender, SenderTuning
from gatewayd.email_to_fax.smtp import SmtpListener, SmtpTuning
from gatewayd.provider.client import ProviderClient
from gatewayd.runtime import Runtime
from gatewayd.store import NewJob, Store
from support.gateway import InProcessGateway, in_process, with_port_zero  # noqa: F401 (with_port_zero: public name)
from support.ports import free_port  # noqa: F401 (also a public name here)

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
DOMAIN = "fax.example.com"
NUMBER_1 = "+78123092631"  # St Petersburg
NUMBER_2 = "+74951234567"  # Moscow
SENDER = "alice@example.com"

_GATEWAYD_ENV = ("GATEWAYD_CONFIG", "CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed; this test needs it (see TEST_DEBS in the Makefile)"
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GATEWAYD_ENV}
    env.update(extra)
    return env




# ------------------------------------------------------------------ config


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def config_data(state_dir: Path, *, base_url: str = "http://127.0.0.1:9/api/ver1.0", token_url: str = "", smtp_port: int = 2525) -> dict[str, Any]:
    provider: dict[str, Any] = {"base_url": base_url, "client_id": "demo", "client_secret": "demo", "extension": 122, "timeout": "5s"}
    if token_url:
        provider["token_url"] = token_url
    return {
        "provider": provider,
        "smtp": {
            "listen": f"127.0.0.1:{smtp_port}",
            "processes": 1,  # one listener process: tests read its sessions and metrics (the default, "auto": test_smtp_processes.py)
            "hostname": "gw.test",
            "domains": [DOMAIN],
            "max_message_size": "5MB",
            "trusted_networks": ["127.0.0.1/32", "::1/128"],
        },
        "senders": [{"match": ["*@example.com"]}],
        "documents": {"cover_page": "auto"},
        "inbound": {"enabled": False},
        "storage": {"state_dir": str(state_dir)},
        "http": {"listen": ""},
        "log": {"level": "warning", "format": "json"},
    }


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(to_toml(data), encoding="utf-8")
    return path


def load(tmp_path: Path, data: dict[str, Any], name: str = "config.toml") -> Config:
    return load_config(write_config(tmp_path / name, data), env={})




# ----------------------------------------------------------------- gateway


class Gateway:
    """The email-to-fax parts of a gateway run by support.gateway (store, intake,
    SMTP listener, and the sender when asked for)."""

    def __init__(self, gw: InProcessGateway) -> None:
        self.gw = gw
        self.rt: Runtime = gw.rt
        self.listener: SmtpListener = gw.service("smtp")
        self.intake: Intake = self.listener.intake
        self.sender: Sender | None = gw.service("sender") if gw.has("sender") else None
        self.tasks = gw.tasks

    @property
    def store(self) -> Store:
        return self.rt.store

    @property
    def port(self) -> int:
        return self.gw.port

    def jobs(self) -> list[Any]:
        return sorted(self.store.list_jobs(limit=10_000), key=lambda j: j.id)

    def replies(self, code: str) -> float:
        return self.rt.metrics.registry.get_sample_value("gatewayd_smtp_replies_total", {"code": code}) or 0.0


FAST_SENDER = SenderTuning(idle_poll=0.2, backoff_base=0.2, backoff_cap=1.0, auth_backoff=1.0, recheck_delay=0.3, reconcile_delay=0.1, stop_grace=2.0)


@contextlib.asynccontextmanager
async def run_gateway(config: Config, *, sim: Any = None, sender: bool = False, smtp_tuning: SmtpTuning | None = None,
                      sender_tuning: SenderTuning | None = None, tls_context: Any = None) -> AsyncIterator[Gateway]:
    """Store, intake and SMTP listener (and the sender, with a simulator) in this
    loop: support.gateway.in_process with only those services."""
    only = {"smtp", "sender"} if sender else {"smtp"}
    replace = {
        "smtp": lambda rt: build_smtp_listener(rt, Intake(rt), tuning=smtp_tuning or SmtpTuning(stop_grace=1.0), tls_context=tls_context),
        "sender": lambda rt: Sender(rt, sender_tuning or FAST_SENDER),
    }
    provider = None
    if sim is not None:
        def provider(config: Config, metrics: Any) -> ProviderClient:
            return ProviderClient(sim.base_url, sim.token_url, "demo", "demo", timeout=5.0, on_request=metrics.observe_provider_request)
    async with in_process(config, only=only, replace=replace, provider=provider, check=False) as gw:
        yield Gateway(gw)


async def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


def enqueue(store: Store, numbers: tuple[str, ...] = (NUMBER_1,), pages: int = 1) -> list[int]:
    """Jobs queued directly in the store, as `gatewayd send` leaves them."""
    from support.corpus import make_pdf

    pdf = make_pdf(pages)
    sha = store.save_document(pdf)
    jobs = [NewJob(number=n, dst_num=n.lstrip("+"), extension=122, report_to=SENDER, source="cli") for n in numbers]
    return store.enqueue_jobs(sha, pages, len(pdf), jobs)



# ------------------------------------------------------------- raw client


class RawSMTP:
    """A minimal SMTP client that never rewrites what it sends (bare LFs stay bare)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.greeting = ""

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1", *, ehlo: bool = True) -> RawSMTP:
        reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer)
        try:
            client.greeting = await client.reply()
            if ehlo:
                reply = await client.cmd("EHLO client.test")
                assert reply.startswith("250"), reply
        except BaseException:
            await client.close()
            raise
        return client

    async def reply(self, timeout: float = 30.0) -> str:
        """The last line of the next reply ("250 2.0.0 ..."); all lines in self.lines."""
        self.lines = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), timeout)
            if not raw:
                raise ConnectionError("server closed the connection")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return line

    async def cmd(self, line: str) -> str:
        self.writer.write(line.encode("utf-8") + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def data(self, raw: bytes) -> str:
        reply = await self.cmd("DATA")
        if not reply.startswith("354"):
            return reply
        stuffed = re.sub(rb"(^|\r\n)\.", rb"\1..", raw)
        if not stuffed.endswith(b"\r\n"):
            stuffed += b"\r\n"
        self.writer.write(stuffed + b".\r\n")
        await self.writer.drain()
        return await self.reply()

    async def send(self, raw: bytes, sender: str = SENDER, recipients: tuple[str, ...] = (f"{NUMBER_1}@{DOMAIN}",)) -> tuple[str, list[str], str]:
        """One transaction: (MAIL reply, RCPT replies, DATA reply or "")."""
        mail = await self.cmd(f"MAIL FROM:<{sender}>")
        rcpts = [await self.cmd(f"RCPT TO:<{r}>") for r in recipients]
        if not mail.startswith("250") or not any(r.startswith("250") for r in rcpts):
            await self.cmd("RSET")
            return mail, rcpts, ""
        return mail, rcpts, await self.data(raw)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(b"QUIT\r\n")
            await self.writer.drain()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


# ------------------------------------------------------------- documents


def pdfinfo(data: bytes, tmp_path: Path, name: str = "doc.pdf") -> dict[str, str]:
    """Poppler's own reading of a PDF (independent of the code under test)."""
    require_tool("pdfinfo")
    path = tmp_path / name
    path.write_bytes(data)
    out = subprocess.run(["pdfinfo", "-f", "1", "-l", "9999", str(path)], capture_output=True, text=True, check=True, timeout=30).stdout
    info: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def page_sizes_pt(info: dict[str, str]) -> list[tuple[float, float]]:
    sizes = []
    for key, value in info.items():
        if re.fullmatch(r"Page\s+\d+ size", key):
            m = re.match(r"([\d.]+) x ([\d.]+) pts", value)
            assert m, value
            sizes.append((float(m.group(1)), float(m.group(2))))
    return sizes


# ------------------------------------------------------------ certificates


def cert_pair(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost, made now."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw.test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path
