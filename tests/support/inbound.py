"""Helpers for the fax-to-email tests: real faxes made by ghostscript, a
configuration that points at the provider simulator and the mail sink, a
harness that wires the real poller and outbox, and independent checks of
what arrived (pdfinfo, the email package)."""

from __future__ import annotations

import asyncio
import mailbox
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, syntax
from tomli_w import dumps as to_toml  # noqa: F401 (also a public name here)

from gatewayd.config import Config, load_config_data
from gatewayd.fax_to_email.poller import InboundPoller
from gatewayd.mail.outbox import OutboxWorker
from gatewayd.mailsink import MailSink, SunkMail
from gatewayd.provider.client import ProviderClient
from support.clock import OffsetClock  # noqa: F401 (also a public name here)
from support.gateway import build_gateway

REPO = Path(__file__).resolve().parents[2]
A4 = (595.28, 841.89)


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        # Never a skip: a missing tool must make the run fail loudly.
        pytest.fail(f"{name} is not installed (make test-deps installs it)", pytrace=False)
    return path


# ------------------------------------------------------------------ faxes


@dataclass(frozen=True)
class FaxSample:
    name: str
    data: bytes = field(repr=False)
    pages: int
    kind: str  # "tiff" | "pdf"


def _postscript(pages: int, label: str) -> str:
    lines = ["%!PS", "/Helvetica findfont 40 scalefont setfont"]
    for n in range(1, pages + 1):
        lines += [
            f"72 720 moveto ({label} page {n} of {pages}) show",
            "72 72 moveto 450 0 rlineto 0 600 rlineto -450 0 rlineto closepath stroke",
            "showpage",
        ]
    return "\n".join(lines) + "\n"


def _gs(out: Path, source: Path, *args: str) -> bytes:
    gs = need_tool("gs")
    proc = subprocess.run(
        [gs, "-q", "-dNOPAUSE", "-dBATCH", "-dSAFER", "-sPAPERSIZE=a4", *args, f"-sOutputFile={out}", str(source)],
        capture_output=True, timeout=60,
    )
    if proc.returncode != 0:
        pytest.fail(f"ghostscript failed: {proc.stderr.decode(errors='replace')}", pytrace=False)
    return out.read_bytes()


def make_faxes(workdir: Path) -> dict[str, FaxSample]:
    """Multi-page G3 (fine) and G4 (standard) TIFFs at fax resolution, a TIFF
    with a resolution no fax machine writes, and a PDF fax."""
    specs = {
        # -dAdjustWidth=0: the A4 width in pixels, not the 1728-pixel fax line.
        "g3": (3, "tiff", ("-sDEVICE=tiffg3", "-r204x196", "-dAdjustWidth=0")),
        "g4": (2, "tiff", ("-sDEVICE=tiffg4", "-r204x98", "-dAdjustWidth=0")),
        "bogus": (2, "tiff", ("-sDEVICE=tiffg4", "-r150x150")),
        "pdf": (2, "pdf", ("-sDEVICE=pdfwrite",)),
    }
    out: dict[str, FaxSample] = {}
    for name, (pages, kind, args) in specs.items():
        source = workdir / f"{name}.ps"
        source.write_text(_postscript(pages, name))
        data = _gs(workdir / f"{name}.{'pdf' if kind == 'pdf' else 'tif'}", source, *args)
        out[name] = FaxSample(name, data, pages, kind)
    return out


def pdf_info(data: bytes) -> tuple[int, list[tuple[float, float]]]:
    """(pages, size of each page in points) as poppler's pdfinfo sees them."""
    pdfinfo = need_tool("pdfinfo")
    with tempfile.NamedTemporaryFile(suffix=".pdf") as f:
        f.write(data)
        f.flush()
        proc = subprocess.run([pdfinfo, f.name], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        pages = int(next(line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("Pages:")))
        proc = subprocess.run([pdfinfo, "-f", "1", "-l", str(pages), f.name], capture_output=True, text=True, timeout=30)
    sizes = []
    for line in proc.stdout.splitlines():
        if line.startswith("Page") and "size:" in line:
            parts = line.split("size:")[1].split()
            sizes.append((float(parts[0]), float(parts[2])))
    return pages, sizes


def is_a4(size: tuple[float, float], tolerance: float = 1.5) -> bool:
    return abs(size[0] - A4[0]) <= tolerance and abs(size[1] - A4[1]) <= tolerance


# ------------------------------------------------------------------ mail


class _TrackingSMTP(SMTP):
    """aiosmtpd's SMTP session, telling the sink while a DATA phase is open."""

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        sink = self.event_handler
        sink.data_open += 1
        try:
            await super().smtp_DATA(arg)
        finally:
            sink.data_open -= 1
            sink.last_data_end = time.monotonic()


class RecordingSink(MailSink):
    """The mail sink, also knowing when a DATA phase is open or just ended.

    The SIGKILL test keeps its kills out of that moment: a sender killed
    after its message's final dot and before it reads the 250 cannot know
    the relay took it, and sends it again after the restart. That is SMTP's
    own limit (RFC 1047), not the gateway's; every other moment is fair game.
    """

    data_open: int = 0
    last_data_end: float = 0.0

    async def start(self) -> "RecordingSink":
        if self.maildir is not None:
            mailbox.Maildir(self.maildir, create=True)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _TrackingSMTP(self, hostname="sink.localhost", ident="gatewayd test sink"), self.host, self.port
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def quiet_for(self, seconds: float) -> bool:
        """No DATA phase open, and none ended in the last ``seconds``."""
        return self.data_open == 0 and time.monotonic() - self.last_data_end >= seconds


def attachments(msg: EmailMessage) -> list[tuple[str, str, bytes]]:
    """(file name, content type, bytes) of every attachment."""
    out = []
    for part in msg.iter_attachments():
        out.append((part.get_filename() or "", part.get_content_type(), part.get_payload(decode=True) or b""))
    return out


def body_text(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content()


def by_uuid(mails: list[SunkMail]) -> dict[str, list[SunkMail]]:
    out: dict[str, list[SunkMail]] = {}
    for m in mails:
        uuid = m.message["X-Fax-UUID"]
        if uuid:
            out.setdefault(str(uuid), []).append(m)
    return out


# --------------------------------------------------------------- config


def config_data(sim: Any, sink: MailSink, state_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "provider": {
            "base_url": sim.base_url, "token_url": sim.token_url,
            "client_id": sim.client_id, "client_secret": sim.client_secret,
            "extension": 122, "timeout": "5s",
        },
        "inbound": {"enabled": True, "poll_interval": "1s", "mailto_refresh": "1s"},
        "mail": {"relay": sink.relay, "from": "Fax Gateway <fax-gateway@gw.test>", "admin": ["admin@gw.test"]},
        "storage": {"state_dir": str(state_dir)},
        "http": {"listen": ""},
        "log": {"level": "info", "format": "json"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


class Monotonic:
    """Monotonic clock for the poller's caches; advance() expires them."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class Harness:
    """The real poller and outbox on one Runtime, driven step by step."""

    def __init__(self, config: Config, *, first_lookback: float | None = None) -> None:
        self.clock = OffsetClock()
        self.monotonic = Monotonic()

        def provider(config: Config, metrics: Any) -> ProviderClient:
            return ProviderClient.from_config(config.provider, on_request=metrics.observe_provider_request, backoff_base=0.01, backoff_cap=0.05)

        # The one in-process gateway (support.gateway): the poller and the outbox, driven step by step.
        self.gw = build_gateway(
            config, only={"inbound", "outbox"}, clock=self.clock, provider=provider, port_zero=False,
            replace={"inbound": lambda rt: InboundPoller(rt, first_lookback=first_lookback, monotonic=self.monotonic),
                     "outbox": lambda rt: OutboxWorker(rt, poll_interval=0.2)},
        )
        self.rt = self.gw.rt
        self.store = self.rt.store
        self.poller: InboundPoller = self.gw.service("inbound")
        self.outbox: OutboxWorker = self.gw.service("outbox")

    @property
    def provider(self) -> Any:
        return self.rt.provider

    async def start(self) -> "Harness":
        await self.poller.start()
        return self

    async def poll(self) -> float:
        return await self.poller.poll_once()

    async def deliver(self) -> int:
        return await self.outbox.deliver_due()

    async def cycle(self) -> None:
        """One poll, then everything due in the outbox."""
        await self.poll()
        while await self.deliver():
            pass

    def reload(self, config: Config) -> None:
        """A SIGHUP with a valid file: the daemon's own Daemon._apply."""
        assert self.gw.reload(config), "reload rejected"

    def ledger(self) -> dict[str, Any]:
        return {r.uuid: r for r in self.store.list_received(limit=10_000)}

    async def close(self) -> None:
        await self.gw.stop()


async def wait_until(predicate: Any, timeout: float = 15.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


def make_config(sim: Any, sink: MailSink, state_dir: Path, **sections: dict[str, Any]) -> Config:
    return load_config_data(config_data(sim, sink, state_dir, **sections), env={})
