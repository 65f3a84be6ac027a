"""A small SMTP server that keeps what it receives: the demo's mail sink and
the tests' relay. Loopback only. It writes each message to a Maildir (one
file per message, ``new/``) when given one, and can be told to answer with a
fault (``451``/``550``) to exercise the outbox.
"""

from __future__ import annotations

import asyncio
import mailbox
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass(frozen=True)
class SunkMail:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    path: Path | None

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)


@dataclass
class MailSink:
    maildir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    # Fault injection: a reply such as "451 4.3.0 try later" for DATA, or
    # per-recipient refusals {"bad@x.test": "550 5.1.1 no such user"}.
    fail_data_with: str | None = None
    refuse_rcpt: dict[str, str] = field(default_factory=dict)
    messages: list[SunkMail] = field(default_factory=list)
    attempts: int = 0
    _server: asyncio.base_events.Server | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> MailSink:
        if self.maildir is not None:
            mailbox.Maildir(self.maildir, create=True)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: SMTP(self, hostname="sink.localhost", ident="gatewayd mail sink"), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> MailSink:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def relay(self) -> str:
        return f"{self.host}:{self.port}"

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[SunkMail]:
        """Wait until at least ``count`` messages arrived; returns them all."""
        async def _wait() -> None:
            while len(self.messages) < count:
                self._arrived.clear()
                await self._arrived.wait()
        await asyncio.wait_for(_wait(), timeout)
        return list(self.messages)

    # aiosmtpd handler hooks
    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]) -> str:
        refusal = self.refuse_rcpt.get(address.lower())
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.attempts += 1
        if self.fail_data_with:
            return self.fail_data_with
        data = envelope.original_content or b""
        path = None
        if self.maildir is not None:
            key = mailbox.Maildir(self.maildir, create=True).add(data)
            path = Path(self.maildir) / "new" / key
        self.messages.append(SunkMail(envelope.mail_from or "", tuple(envelope.rcpt_tos), data, path))
        self._arrived.set()
        return "250 2.0.0 OK: kept"
