"""Helpers for the fault-injection suite: gatewayd as a real subprocess
(``gatewayd run``), the whole daemon in-process with short timings and a
clock the test can move, SMTP load, and independent checks of what reached
the provider (the simulator's own records) and the store (SQLite
``integrity_check`` or PostgreSQL's rows, no half-written documents:
support.backends)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any


from gatewayd.config import Config, load_config_data
from gatewayd.daemon import build_smtp_listener
from gatewayd.email_to_fax.intake import Intake
from gatewayd.email_to_fax.sender import Sender, SenderTuning
from gatewayd.email_to_fax.smtp import SmtpTuning
from gatewayd.email_to_fax.tracker import Tracker
from gatewayd.mail.outbox import OutboxWorker
from gatewayd.email_to_fax.report import Reporter
from gatewayd.runtime import Runtime
from gatewayd.store import Store
from support.clock import OffsetClock  # noqa: F401 (also a public name here)
from support.backends import Backend
from support.e2f import wait_for
from support.gateway import InProcessGateway
from support.gateway import in_process as gateway_in_process
from support.ports import free_port  # noqa: F401 (also a public name here)
from support.process import GatewayProcess, start_gateway

REPO = Path(__file__).resolve().parents[2]
DOMAIN = "fax.example.com"
SENDER = "alice@example.com"
NUMBERS = ["+78123092631", "+74951234567", "+78123092632", "+74951234568"]
QUEUED_RE = re.compile(r"^250 2\.0\.0 queued as ([0-9 ]+)$")
SPEC_451 = "451 4.3.0 temporary failure, try again"
FAST_SENDER = SenderTuning(idle_poll=0.2, backoff_base=0.2, backoff_cap=1.0, auth_backoff=1.0, recheck_delay=0.3,
                           reconcile_delay=0.1, stop_grace=2.0)




def config_data(state_dir: Path, *, sim: Any, smtp_port: int, relay: str = "127.0.0.1:9", **sections: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "provider": {"base_url": sim.base_url, "token_url": sim.token_url, "client_id": "demo", "client_secret": "demo",
                     "extension": 122, "timeout": "5s", "status_poll_interval": "1s", "retry_delay": "1s"},
        "smtp": {"listen": f"127.0.0.1:{smtp_port}", "hostname": "gw.test", "domains": [DOMAIN], "max_message_size": "5MB",
                 "trusted_networks": ["127.0.0.1/32"], "processes": 1},  # one listener process: tests read its sessions and metrics (the default, "auto": test_smtp_processes.py)
        "senders": [{"match": ["*@example.com"]}],
        "documents": {"cover_page": "never"},
        "inbound": {"enabled": False},
        "mail": {"relay": relay, "from": "Fax Gateway <fax-gateway@gw.test>", "admin": ["admin@gw.test"]},
        "storage": {"state_dir": str(state_dir)},
        "http": {"listen": ""},
        "log": {"level": "info", "format": "json"},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(data.get(name), dict):
            data[name].update(values)
        else:
            data[name] = values
    return data


def load(data: dict[str, Any]) -> Config:
    return load_config_data(data, env={})


# ------------------------------------------------------------------ messages


def pdf_bytes(pages: int = 1, padding: int = 0, seed: int = 0) -> bytes:
    """A valid PDF; ``padding`` random bytes in an unused stream make it bigger."""
    import io

    import pikepdf

    pdf = pikepdf.new()
    for _ in range(pages):
        pdf.add_blank_page(page_size=(595.28, 841.89))
    if padding:
        pdf.Root.Filler = pdf.make_stream(random.Random(seed).randbytes(padding))
    buf = io.BytesIO()
    pdf.save(buf, compress_streams=False)
    return buf.getvalue()


def message(pdf: bytes, *, subject: str, to: str = f"{NUMBERS[0]}@{DOMAIN}", sender: str = SENDER) -> bytes:
    from email.message import EmailMessage
    from email.policy import SMTP

    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '.')}.{time.time_ns()}@client.test>"
    msg.set_content("")
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="doc.pdf")
    return msg.as_bytes()


def stuffed(raw: bytes) -> bytes:
    data = (b"\r\n" + raw).replace(b"\r\n.", b"\r\n..")[2:]
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


async def read_reply(reader: asyncio.StreamReader, timeout: float = 30.0) -> str:
    while True:
        raw = await asyncio.wait_for(reader.readline(), timeout)
        if not raw:
            raise ConnectionError("server closed the connection")
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if len(line) < 4 or line[3] != "-":
            return line


async def smtp_send(port: int, raw: bytes, *, rcpt: Sequence[str] = (f"{NUMBERS[0]}@{DOMAIN}",), timeout: float = 30.0,
                    transcript: list[str] | None = None) -> str:
    """One transaction; the final reply, or "conn: ..." when the connection broke.

    ``transcript``: every reply the server gave (its last line) is appended to it.
    """
    seen: list[str] = [] if transcript is None else transcript
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except OSError as exc:
        return f"conn: {exc}"
    try:
        greeting = await read_reply(reader, timeout)
        seen.append(greeting)
        if not greeting.startswith("220"):
            return greeting
        for line in ["EHLO client.test", f"MAIL FROM:<{SENDER}>", *[f"RCPT TO:<{r}>" for r in rcpt], "DATA"]:
            writer.write(line.encode() + b"\r\n")
            reply = await read_reply(reader, timeout)
            seen.append(reply)
            if not reply.startswith(("250", "354")):
                return reply
        writer.write(stuffed(raw))
        await writer.drain()
        reply = await read_reply(reader, timeout)
        seen.append(reply)
        return reply
    except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
        return f"conn: {type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            writer.write(b"QUIT\r\n")
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2)


def job_ids(reply: str) -> list[int]:
    m = QUEUED_RE.match(reply)
    return [int(x) for x in m.group(1).split()] if m else []


# ------------------------------------------------------------------ provider


def faxes_by_job(sim: Any) -> dict[int, list[Any]]:
    """The simulator's sent faxes by gatewayd job id (the sender names uploads fax-<job id>.pdf)."""
    out: dict[int, list[Any]] = {}
    for fax in sim.sent.values():
        m = re.fullmatch(r"fax-(\d+)\.pdf", fax.filename or "")
        assert m, f"upload with an unexpected name {fax.filename!r}"
        out.setdefault(int(m.group(1)), []).append(fax)
    return out


def assert_exactly_once(sim: Any, acknowledged: Sequence[int], stored: Sequence[int]) -> None:
    """Every acknowledged job reached the provider once; no job reached it twice."""
    sent = faxes_by_job(sim)
    duplicates = {j: [f.id for f in fs] for j, fs in sent.items() if len(fs) > 1}
    assert not duplicates, f"jobs sent more than once: {duplicates}"
    missing = sorted(set(acknowledged) - set(sent))
    assert not missing, f"jobs answered 250 that never reached the provider: {missing}"
    unknown = sorted(set(sent) - set(stored))
    assert not unknown, f"faxes at the provider for jobs the store does not have: {unknown}"


# --------------------------------------------------------------- state checks


# The SQLite state directory's forms (the tests that are about that directory:
# disk full, low storage, backup); the tests that run on either store use a
# support.backends.Backend, which has the same three.


def integrity(state_dir: Path) -> str:
    """SQLite's ``PRAGMA integrity_check`` of the state directory's database."""
    return Backend("sqlite", state_dir).integrity()


def stored_jobs(state_dir: Path) -> list[tuple[int, str, str, int]]:
    """(id, state, document sha, doc_bytes) of every job, read with plain sqlite3."""
    return Backend("sqlite", state_dir).stored_jobs()


def assert_documents_whole(state_dir: Path) -> None:
    """Every job's document exists with the recorded size; no referenced partial file."""
    Backend("sqlite", state_dir).assert_documents_whole()


# ------------------------------------------------------------- as subprocess


# One subprocess helper for every suite (support/process.py); these names stay
# for the reliability tests.
DaemonProcess = GatewayProcess


async def start_daemon(workdir: Path, data: dict[str, Any], *, name: str = "gatewayd") -> DaemonProcess:
    """``gatewayd run -c WORKDIR/NAME.toml`` as a subprocess, listening; its
    SMTP port was picked by support.ports.free_port (the loader refuses port
    0); when another process took it first, the start is retried on a new
    port (``data`` is updated). Output in WORKDIR/NAME.log."""
    return await start_gateway(workdir, data, name=name)


# --------------------------------------------------------------- in-process


class InProcess:
    """The daemon's components on one Runtime in the test's loop, with short
    timings: support.gateway.in_process with the test tunings below."""

    def __init__(self, gw: InProcessGateway, clock: OffsetClock) -> None:
        self.gw = gw
        self.rt = gw.rt
        self.clock = clock
        self.services: list[Any] = gw.services
        self.tasks = gw.tasks

    @property
    def store(self) -> Store:
        return self.rt.store

    @property
    def port(self) -> int:
        return self.gw.port

    def wake_all(self) -> None:
        self.gw.wake_all()


@contextlib.asynccontextmanager
async def in_process(config: Config, *, extra: Callable[[Runtime], list[Any]] | None = None, store: Store | None = None,
                     smtp_tuning: SmtpTuning | None = None) -> AsyncIterator[InProcess]:
    """Sender, tracker, reports, outbox, SMTP listener (and ``extra``); a crashed
    run() is restarted like the daemon's supervisor does (the crash kept in ``gw.crashes``)."""
    clock = OffsetClock()
    replace = {
        "sender": lambda rt: Sender(rt, FAST_SENDER),
        "tracker": lambda rt: Tracker(rt, max_backoff=1.0),
        "reports": lambda rt: Reporter(rt, poll_interval=0.2),
        "outbox": lambda rt: OutboxWorker(rt, poll_interval=0.2),
        "smtp": lambda rt: build_smtp_listener(rt, Intake(rt), tuning=smtp_tuning or SmtpTuning(stop_grace=1.0)),
    }
    if store is None:
        # The store the configuration names (SQLite, or PostgreSQL at
        # storage.database_url), on the clock the test moves.
        store = Store(config.state_dir, database_url=config.storage.database_url,
                      database_password=config.storage.database_password or None, clock=clock)
    async with gateway_in_process(config, only=set(replace), replace=replace, extra=extra, store=store, clock=clock,
                                  restart=True, check=False) as gw:
        yield InProcess(gw, clock)


async def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> None:
    """``support.e2f.wait_for`` with the timeout required."""
    await wait_for(predicate, timeout=timeout, interval=interval, what=what)
