"""One IMAP connection: connect (TLS or loopback plain), log in, SELECT, then
list / fetch / move messages and IDLE, over aioimaplib (docs/imap.md).

Transport: implicit TLS (certificate and host name verified against
``imap.tls_ca_file`` or the system CAs). The one exception is port 143 on a
loopback address -- an IMAP server on the same machine -- which is spoken in
plain text; nothing else ever is (``connection_security``).

aioimaplib leaves a command pending forever when the server goes away
without closing the socket cleanly, so every call here runs under a timeout
and also races the connection-lost callback; after any timeout or loss the
connection is thrown away, never reused.

The password never reaches a log: ``SecretFilter`` sits on aioimaplib's
loggers and fails closed (see its docstring).

aioimaplib internals relied on (guarded by tests/foundation/test_private_hooks.py):
``IMAP4.protocol`` and ``IMAP4._client_task``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import re
import ssl
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import aioimaplib

from gatewayd.config import ImapConfig
from gatewayd.logs import get_logger

log = get_logger(__name__)

T = TypeVar("T")

__all__ = [
    "ImapCommandFailed",
    "ImapConnectionLost",
    "ImapError",
    "ImapSession",
    "ImapTimeout",
    "ImapTuning",
    "MessageInfo",
    "SecretFilter",
    "connection_security",
    "install_secret_filter",
    "mailbox_name",
    "uid_set",
]


# ------------------------------------------------------------------ errors


class ImapError(Exception):
    """The IMAP conversation cannot go on; the connection is dropped and re-made."""


class ImapTimeout(ImapError):
    pass


class ImapConnectionLost(ImapError):
    pass


class ImapCommandFailed(ImapError):
    """The server answered NO or BAD."""

    def __init__(self, what: str, result: str, text: str) -> None:
        super().__init__(f"{what}: {result} {text}")
        self.result = result
        self.text = text



# ------------------------------------------------------------------ tuning


@dataclass(frozen=True)
class ImapTuning:
    """Timings; tests shorten some, production keeps the defaults."""

    connect_timeout: float = 30.0  # TCP + TLS + greeting
    command_timeout: float = 60.0  # any one command
    fetch_timeout: float = 300.0  # one message of up to smtp.max_message_size
    idle_renew: float = 300.0  # IDLE is re-issued this often (RFC 2177: < 29 min)
    min_backoff: float = 1.0  # reconnect delays, doubled up to max_backoff, with jitter
    max_backoff: float = 300.0
    retry_base: float = 30.0  # a message that failed temporarily, first retry
    retry_cap: float = 900.0
    logout_timeout: float = 5.0
    batch: int = 200  # messages looked at per round; the rest wait for the next one


# ------------------------------------------------------------ pure helpers


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def connection_security(host: str, port: int) -> Literal["tls", "plain"]:
    """Implicit TLS, except port 143 on a loopback address (a server on this machine).

    Plain text never crosses a network: a non-loopback host is always TLS,
    whatever the port.
    """
    return "plain" if port == 143 and _is_loopback(host) else "tls"


def mailbox_name(name: str) -> str:
    """A mailbox name as an IMAP quoted string, non-ASCII in modified UTF-7 (RFC 3501 5.1.3)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return aioimaplib.quoted("".join(out))



# ------------------------------------------------------------ listing


@dataclass(frozen=True)
class MessageInfo:
    uid: int
    size: int


def uid_set(uids: Sequence[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` -> ``"1:3,7,9:10"`` (an IMAP sequence set)."""
    out: list[str] = []
    ordered = sorted(set(uids))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ",".join(out)


_FETCH_UID = re.compile(rb"\bUID (\d+)")
_FETCH_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_EXISTS = re.compile(rb"^\d+ (EXISTS|RECENT)\b")


# ------------------------------------------------------------ secrets


_COMMAND_WITH_SECRET = re.compile(r"\b(LOGIN|AUTHENTICATE)\b", re.IGNORECASE)
REDACTED = "<redacted>"


def _renderings(secret: str) -> set[str]:
    """The ways a secret can show up in a log line: as given, IMAP-quoted
    (``"`` and ``\\`` escaped), and as the repr of either in bytes or str."""
    out: set[str] = set()
    for form in {secret, aioimaplib.quoted(secret)}:
        out.add(form)
        out.add(repr(form)[1:-1])
        with contextlib.suppress(UnicodeEncodeError):
            out.add(repr(form.encode())[2:-1])
    return {r for r in out if r}


class SecretFilter(logging.Filter):
    """Keeps IMAP credentials out of aioimaplib's log records, failing closed.

    aioimaplib logs every line it sends at DEBUG and masks the password only
    as given, not as quoted on the wire (a ``"`` or ``\\`` in it is escaped).
    So this does not rely on its wording: a record is dropped when its text
    names a LOGIN or AUTHENTICATE command (any case, anywhere), when it
    contains a registered secret in any rendering (``remember``), or when its
    text cannot even be formatted. Everything else passes.
    """

    def __init__(self) -> None:
        super().__init__()
        self._needles: set[str] = set()

    def remember(self, secret: str) -> None:
        """Add a password to look for (kept for the life of the process)."""
        if secret:
            self._needles |= _renderings(secret)

    def redact(self, text: str) -> str:
        """``text`` with every registered secret replaced."""
        for needle in sorted(self._needles, key=len, reverse=True):
            text = text.replace(needle, REDACTED)
        return text

    def _unsafe(self, text: str) -> bool:
        return bool(_COMMAND_WITH_SECRET.search(text)) or any(n in text for n in self._needles)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += "\n" + repr(record.exc_info[1]) + str(record.exc_info[1])
        except Exception:  # unreadable: it might hold anything
            return False
        return not self._unsafe(text)


_SECRET_FILTER = SecretFilter()


def _aioimaplib_loggers() -> Iterable[logging.Logger]:
    """Every logger of the aioimaplib package that exists now (it makes them at import)."""
    names = {"aioimaplib", "aioimaplib.aioimaplib"}
    names.update(n for n in logging.Logger.manager.loggerDict if n.startswith("aioimaplib."))
    return [logging.getLogger(n) for n in sorted(names)]


def install_secret_filter(*secrets: str) -> SecretFilter:
    """Put the one ``SecretFilter`` on aioimaplib's loggers and teach it ``secrets``."""
    for secret in secrets:
        _SECRET_FILTER.remember(secret)
    for logger in _aioimaplib_loggers():
        if _SECRET_FILTER not in logger.filters:
            logger.addFilter(_SECRET_FILTER)
    return _SECRET_FILTER


# ------------------------------------------------------------------ session


class ImapSession:
    """One logged-in connection with a selected mailbox."""

    def __init__(self, cfg: ImapConfig, tuning: ImapTuning) -> None:
        self.cfg = cfg
        self.tuning = tuning
        self.lost = asyncio.Event()
        self.client: aioimaplib.IMAP4 | None = None
        self.uidvalidity = 0
        self.capabilities: frozenset[str] = frozenset()

    # ---------------------------------------------------------- plumbing

    def _on_lost(self, exc: Exception | None) -> None:
        self.lost.set()

    async def call(self, what: str, aw: Awaitable[T], timeout: float | None = None) -> T:
        """``aw`` under a timeout, abandoned as soon as the connection is lost."""
        task = asyncio.ensure_future(aw)
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            done, _ = await asyncio.wait(
                {task, lost}, timeout=timeout or self.tuning.command_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            lost.cancel()
        if task in done:
            try:
                return task.result()
            except ImapError:
                raise
            except Exception as exc:  # aioimaplib raises all sorts (OSError, IndexError on odd replies ...)
                # Redacted: a CommandTimeout's text is the command line, LOGIN included.
                raise ImapError(_SECRET_FILTER.redact(f"{what}: {type(exc).__name__}: {exc}")) from exc
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        if self.lost.is_set():
            raise ImapConnectionLost(f"{what}: connection lost")
        raise ImapTimeout(f"{what}: no answer in {timeout or self.tuning.command_timeout:.0f}s")

    @staticmethod
    def _ok(what: str, response: Any) -> Any:
        if response.result != "OK":
            text = b" ".join(bytes(x) for x in response.lines[-1:]).decode("utf-8", "replace")
            raise ImapCommandFailed(what, response.result, text)
        return response

    @property
    def protocol(self) -> Any:
        assert self.client is not None
        return self.client.protocol

    # ---------------------------------------------------------- commands

    async def open(self) -> None:
        cfg = self.cfg
        security = connection_security(cfg.host, cfg.port)
        context: ssl.SSLContext | None = None
        if security == "tls":
            context = ssl.create_default_context(cafile=cfg.tls_ca_file or None)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
        install_secret_filter(cfg.password)
        self.client = aioimaplib.IMAP4(
            host=cfg.host, port=cfg.port, timeout=self.tuning.command_timeout,
            conn_lost_cb=self._on_lost, ssl_context=context,
        )
        await self.call("connect", self.client.wait_hello_from_server(), self.tuning.connect_timeout)
        if self.client.get_state() != "NONAUTH":
            raise ImapError(f"unexpected greeting state {self.client.get_state()}")
        # aioimaplib quotes the password but sends the user name as an atom.
        response = await self.call("login", self.protocol.login(aioimaplib.quoted(cfg.username), cfg.password))
        if response.result != "OK":
            # The server's words only: never the credentials.
            raise ImapCommandFailed("login", response.result, bytes(response.lines[-1]).decode("utf-8", "replace"))
        # The capabilities change after login (MOVE, UIDPLUS...): ask again.
        await self.call("capability", self.protocol.capability())
        self.capabilities = frozenset(c.upper() for c in self.protocol.capabilities)
        for folder in (cfg.processed_mailbox, cfg.failed_mailbox):
            await self.create(folder)
        response = self._ok("select", await self.call("select", self.protocol.select(mailbox_name(cfg.mailbox))))
        for line in response.lines:
            if isinstance(line, (bytes, bytearray)):
                m = _UIDVALIDITY.search(bytes(line))
                if m:
                    self.uidvalidity = int(m.group(1))
                if b"[READ-ONLY]" in bytes(line).upper():
                    raise ImapError(f"mailbox {cfg.mailbox!r} is read-only: messages could not be moved")

    async def create(self, folder: str) -> None:
        """CREATE, where "already exists" is fine (there is no portable way to ask first)."""
        response = await self.call("create", self.protocol.simple_command("CREATE", mailbox_name(folder)))
        if response.result != "OK":
            log.debug("imap_create_answered", folder=folder, result=response.result)

    async def noop(self) -> None:
        self._ok("noop", await self.call("noop", self.protocol.simple_command("NOOP")))

    async def list_messages(self, limit: int) -> list[MessageInfo]:
        """The first ``limit`` messages not marked \\Deleted, oldest first, with their sizes."""
        # A NOOP first makes the server look at the mailbox again, so the
        # SEARCH below sees a message delivered a moment ago.
        await self.noop()
        response = self._ok("search", await self.call("search", self.protocol.search("UNDELETED", charset=None, by_uid=True)))
        uids: set[int] = set()
        for line in response.lines[:-1]:  # the last one is the tagged status text
            if isinstance(line, (bytes, bytearray)):
                uids.update(int(tok) for tok in bytes(line).split() if tok.isdigit())
        wanted = sorted(uids)[:limit]
        if not wanted:
            return []
        response = self._ok(
            "sizes", await self.call("sizes", self.protocol.fetch(uid_set(wanted), "(UID RFC822.SIZE)", by_uid=True))
        )
        sizes: dict[int, int] = {}
        for line in response.lines:
            if isinstance(line, (bytes, bytearray)):
                uid, size = _FETCH_UID.search(bytes(line)), _FETCH_SIZE.search(bytes(line))
                if uid is not None and size is not None:
                    sizes[int(uid.group(1))] = int(size.group(1))
        # A UID without a size was expunged in between: the next round will not list it.
        return [MessageInfo(u, sizes[u]) for u in wanted if u in sizes]

    async def fetch(self, uid: int, part: str = "BODY.PEEK[]") -> bytes | None:
        """The message (or a part) without setting \\Seen; None when it is gone."""
        response = self._ok(
            "fetch", await self.call("fetch", self.protocol.fetch(str(uid), f"(UID {part})", by_uid=True), self.tuning.fetch_timeout)
        )
        lines = response.lines
        for i, line in enumerate(lines):
            if not isinstance(line, bytearray):
                continue
            # The literal is ours when its FETCH names our UID (before the
            # literal, or after it: servers order the items as they like).
            around = [bytes(x) for x in (lines[i - 1] if i else b"", lines[i + 1] if i + 1 < len(lines) else b"")
                      if isinstance(x, (bytes, bytearray))]
            if any(m is not None and int(m.group(1)) == uid for m in (_FETCH_UID.search(x) for x in around)):
                return bytes(line)
        return None

    async def move(self, uid: int, folder: str) -> None:
        try:
            await self._move(uid, folder)
        except ImapCommandFailed as exc:
            if "TRYCREATE" not in exc.text.upper():
                raise
            await self.create(folder)
            await self._move(uid, folder)

    async def _move(self, uid: int, folder: str) -> None:
        target = mailbox_name(folder)
        if "MOVE" in self.capabilities:
            self._ok("move", await self.call("move", self.protocol.move(str(uid), target, by_uid=True)))
            return
        # RFC 6851 fallback. A crash in between leaves a copy in ``folder``
        # and the original in the mailbox: seen again, a duplicate intake key,
        # copied again -- never a second fax.
        self._ok("copy", await self.call("copy", self.protocol.copy(str(uid), target, by_uid=True)))
        self._ok("store", await self.call("store", self.protocol.store(str(uid), "+FLAGS.SILENT", "(\\Deleted)", by_uid=True)))
        if "UIDPLUS" in self.capabilities:
            self._ok("expunge", await self.call("expunge", self.protocol.expunge(str(uid), by_uid=True)))
        else:
            # Without UIDPLUS only a plain EXPUNGE exists; it also removes
            # whatever else is marked \Deleted in this mailbox.
            self._ok("expunge", await self.call("expunge", self.protocol.expunge()))

    async def idle(self, seconds: float, stopping: asyncio.Event) -> bool:
        """IDLE until new mail, ``seconds``, or stop; True when new mail was announced."""
        protocol = self.protocol
        while not protocol.idle_queue.empty():  # left over from the previous IDLE
            protocol.idle_queue.get_nowait()
        idle_task = asyncio.ensure_future(protocol.idle())
        try:
            return await self._idle(idle_task, seconds, stopping)
        finally:
            # On any way out but a clean DONE the command would stay pending
            # forever inside aioimaplib; the connection is dropped anyway.
            if not idle_task.done():
                idle_task.cancel()

    async def _idle(self, idle_task: asyncio.Future[Any], seconds: float, stopping: asyncio.Event) -> bool:
        protocol = self.protocol
        ack = asyncio.ensure_future(protocol.wait_for_idle_response())
        try:
            await self.call("idle", asyncio.wait({idle_task, ack}, return_when=asyncio.FIRST_COMPLETED))
        finally:
            ack.cancel()
        if idle_task.done() or not protocol.has_pending_idle_command():
            response = idle_task.result() if idle_task.done() and not idle_task.cancelled() else None
            raise ImapCommandFailed("idle", getattr(response, "result", "NO"), "server refused IDLE")
        news = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        stop = asyncio.ensure_future(stopping.wait())
        try:
            while not news and not stopping.is_set():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                getter = asyncio.ensure_future(protocol.idle_queue.get())
                lost = asyncio.ensure_future(self.lost.wait())
                try:
                    done, _ = await asyncio.wait({getter, lost, stop, idle_task}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    lost.cancel()
                    if not getter.done():
                        getter.cancel()
                if self.lost.is_set():
                    raise ImapConnectionLost("idle: connection lost")
                if idle_task.done():
                    raise ImapError("idle: the server ended IDLE")
                if getter in done:
                    lines = getter.result()
                    if lines == aioimaplib.STOP_WAIT_SERVER_PUSH:
                        continue
                    for line in lines:
                        if isinstance(line, (bytes, bytearray)):
                            if _EXISTS.match(bytes(line)):
                                news = True  # new mail; expunges and flag changes are not
                            elif bytes(line).upper().startswith(b"BYE"):
                                raise ImapConnectionLost("idle: server said BYE")
        finally:
            stop.cancel()
            if protocol.has_pending_idle_command() and not self.lost.is_set():
                protocol.idle_done()
        self._ok("idle", await self.call("idle done", idle_task))
        return news

    async def close(self, *, polite: bool) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        if polite and not self.lost.is_set() and client.get_state() in ("AUTH", "SELECTED"):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.protocol.logout(), self.tuning.logout_timeout)
        transport = getattr(client.protocol, "transport", None)
        if transport is not None:
            transport.close()
        # The connect task of a connection that never came up.
        task = getattr(client, "_client_task", None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


