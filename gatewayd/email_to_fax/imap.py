"""Email to fax from an IMAP mailbox (SPEC sections 3 ``[imap]`` and 4).

Service ``imap``: keeps one connection to ``[imap].host``, waits for mail
with IDLE (or polls), and hands every message in ``imap.mailbox`` to the same
``Intake`` the SMTP listener uses. Never lose, never duplicate:

* Messages are fetched with ``BODY.PEEK[]`` and stay in the mailbox until
  their fate is durable: accepted -> jobs committed -> moved to
  ``processed_mailbox``; refused for good -> reply queued (authorised senders
  only) -> moved to ``failed_mailbox``; a temporary failure (451, 450) ->
  left where it is and tried again later.
* The intake key is the Message-ID plus the SHA-256 of the raw message. If
  the daemon dies after the jobs are committed but before the move, the
  message is seen again after the restart, ``Intake.accept`` returns the
  stored job ids, and only the move is done: one fax.
* The reply to a refused message is queued at most once per intake key (a
  marker in the same commit as the outbox row), so a failing move does not
  mail the sender again on every round.

Who is believed is in ``authresults.py``: the ``From:`` must match a
``[[senders]]`` rule AND the trusted MTA's Authentication-Results must vouch
for its domain. Anyone else is a stranger: moved to ``failed_mailbox``,
never answered (a reply would be backscatter to a forged address).

Transport: implicit TLS (certificate and host name verified against
``imap.tls_ca_file`` or the system CAs). The one exception is port 143 on a
loopback address -- an IMAP server on the same machine -- which is spoken in
plain text; nothing else ever is (``connection_security``).

aioimaplib leaves a command pending forever when the server goes away
without closing the socket cleanly, so every call here runs under a timeout
and also races the connection-lost callback; after any timeout or loss the
connection is thrown away, never reused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.policy
import hashlib
import ipaddress
import logging
import random
import re
import ssl
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from typing import Any, Literal, TypeVar

import aioimaplib

from gatewayd.config import ImapConfig
from gatewayd.email_to_fax.authresults import AuthVerdict, verify_sender
from gatewayd.email_to_fax.errors import IntakeRefused, MessageTooBig
from gatewayd.email_to_fax.parse import ParsedMessage, parse_message
from gatewayd.email_to_fax.policy import Authorisation, Destination, NumberPolicy, SenderPolicy
from gatewayd.logs import bind_context, get_logger
from gatewayd.memory import TRIM_AFTER_BYTES, release_free_memory
from gatewayd.mail.compose import bare_address, new_message, to_bytes
from gatewayd.runtime import Runtime

log = get_logger(__name__)

T = TypeVar("T")

__all__ = [
    "ImapError",
    "ImapIntake",
    "ImapTuning",
    "NoFaxRecipient",
    "connection_security",
    "fax_recipients",
    "intake_key",
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


class NoFaxRecipient(IntakeRefused):
    """No ``fax+<number>@`` address of ours among the recipients."""

    code, status = 553, "5.1.3"

    def __init__(self, example: str) -> None:
        super().__init__(f"no fax number among the recipients (write to {example})")


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


def intake_key(message_id: str | None, raw: bytes) -> str:
    """Same message, same key, across fetches and restarts."""
    return f"imap:{(message_id or '').strip()}:{hashlib.sha256(raw).hexdigest()}"


@dataclass(frozen=True)
class RecipientPlan:
    destinations: tuple[Destination, ...]
    refused: tuple[IntakeRefused, ...]
    addresses: tuple[str, ...]  # the fax+<number>@ addresses that were found


def fax_recipients(
    header_addresses: Any, our_addresses: Sequence[str], numbers: NumberPolicy
) -> RecipientPlan:
    """Numbers from ``fax+<number>@domain`` among To/Cc/Delivered-To/X-Original-To.

    An address counts when its base (the local part without ``+tag``,
    case-insensitive) with its domain is one of ``imap.addresses``. The same
    number reached through several headers is faxed once.
    """
    ours = {a.lower() for a in our_addresses}
    seen_addr: set[str] = set()
    seen_numbers: set[str] = set()
    destinations: list[Destination] = []
    refused: list[IntakeRefused] = []
    found: list[str] = []
    for header in ("To", "Cc", "Delivered-To", "X-Original-To"):
        for address in header_addresses.get(header, ()):
            address = address.strip().lower()
            local, at, domain = address.rpartition("@")
            if not at:
                continue
            base, plus, tag = local.partition("+")
            if not plus or f"{base}@{domain}" not in ours or address in seen_addr:
                continue
            seen_addr.add(address)
            found.append(address)
            try:
                dest = numbers.check(tag, address)
            except IntakeRefused as exc:
                refused.append(exc)
                continue
            if dest.number not in seen_numbers:
                seen_numbers.add(dest.number)
                destinations.append(dest)
    return RecipientPlan(tuple(destinations), tuple(refused), tuple(found))


@dataclass(frozen=True)
class _Identity:
    """What decides who sent a message: read from the parsed message or, when
    it cannot be parsed (or is too big to fetch), from its header alone."""

    from_addr: str | None
    message_id: str | None
    subject: str
    authentication_results: tuple[str, ...]

    @classmethod
    def of(cls, parsed: ParsedMessage) -> "_Identity":
        return cls(parsed.from_addr, parsed.message_id, parsed.subject, tuple(parsed.authentication_results))

    @classmethod
    def from_header(cls, header: bytes) -> "_Identity":
        """Lenient, but never guesses a sender: two From: fields or two
        addresses in one give no sender (a stranger)."""
        try:
            msg = BytesHeaderParser(policy=email.policy.default).parsebytes(header)
            froms = msg.get_all("from") or []
            from_addr = None
            if len(froms) == 1:
                addrs = getattr(froms[0], "addresses", ())
                if len(addrs) == 1 and addrs[0].username and addrs[0].domain:
                    from_addr = addrs[0].addr_spec
            ids = msg.get_all("message-id") or []
            subjects = msg.get_all("subject") or []
            results = tuple(" ".join(str(v).split()) for v in (msg.get_all("authentication-results") or ()))
            return cls(
                from_addr,
                str(ids[0]).strip() if len(ids) == 1 else None,
                " ".join(str(subjects[0]).split()) if len(subjects) == 1 else "",
                results,
            )
        except Exception:  # noqa: BLE001 - hostile header: nobody we know sent it
            return cls(None, None, "", ())


_HEADER_END = re.compile(rb"\r?\n\r?\n")


def _header_block(raw: bytes) -> bytes:
    m = _HEADER_END.search(raw)
    return raw[: m.end()] if m else raw


# ------------------------------------------------------------------ outcome


@dataclass(frozen=True)
class _Outcome:
    folder: Literal["processed", "failed"] | None  # None: leave it for a later round


@dataclass
class _Retry:
    attempts: int = 0
    not_before: float = 0.0


# ------------------------------------------------------------------ session


@dataclass(frozen=True)
class _MessageInfo:
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


class _SecretFilter(logging.Filter):
    """aioimaplib logs every line it sends at DEBUG. It masks the password
    only as given, not as quoted on the wire (a ``"`` or ``\\`` in it is
    escaped), so LOGIN lines are dropped here whatever the log level."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001
            return True
        return not (text.startswith("Sending") and " LOGIN " in text)


def _install_secret_filter() -> None:
    logger = logging.getLogger("aioimaplib.aioimaplib")
    if not any(isinstance(f, _SecretFilter) for f in logger.filters):
        logger.addFilter(_SecretFilter())


class _Session:
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
            except Exception as exc:  # noqa: BLE001 - aioimaplib raises all sorts (OSError, IndexError on odd replies ...)
                raise ImapError(f"{what}: {type(exc).__name__}: {exc}") from exc
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
        _install_secret_filter()
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

    async def list_messages(self, limit: int) -> list[_MessageInfo]:
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
        return [_MessageInfo(u, sizes[u]) for u in wanted if u in sizes]

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


# How long "a reply was already queued for this message" is remembered.
_REPLY_MARKER_AGE = 180 * 86400.0


def _connection_key(cfg: ImapConfig) -> tuple[Any, ...]:
    """The settings a live connection was made with; a reload changing one reconnects."""
    return (cfg.host, cfg.port, cfg.username, cfg.password, cfg.tls_ca_file, cfg.mailbox,
            cfg.processed_mailbox, cfg.failed_mailbox)


# ------------------------------------------------------------------ service


class ImapIntake:
    """Service "imap": the mailbox poller of the email-to-fax path."""

    name = "imap"

    def __init__(self, rt: Runtime, intake: Any, *, tuning: ImapTuning | None = None) -> None:
        self.rt = rt
        self.intake = intake
        self.tuning = tuning or ImapTuning()
        self._retries: dict[tuple[int, int], _Retry] = {}

    async def start(self) -> None:
        # Nothing to bind; until the first login the mailbox counts as down.
        self.rt.health.listener(self.name, False)
        store = self.rt.store
        try:
            pruned = await store.run(store.imap_prune_reply_markers, self.rt.clock() - _REPLY_MARKER_AGE)
        except Exception as exc:  # noqa: BLE001 - housekeeping only; never blocks the start
            log.warning("imap_prune_failed", error=f"{type(exc).__name__}: {exc}")
        else:
            if pruned:
                log.info("imap_reply_markers_pruned", removed=pruned)

    async def stop(self) -> None:
        # run() watches rt.stopping (IDLE and the poll wait race it) and logs
        # out; a message being handled finishes, or is seen again next start.
        return None

    async def run(self) -> None:
        backoff = self.tuning.min_backoff
        while not self.rt.stopping.is_set():
            cfg = self.rt.config.imap
            session = _Session(cfg, self.tuning)
            selected = False
            try:
                await session.open()
                selected = True
                self.rt.health.listener(self.name, True)
                log.info("imap_connected", host=cfg.host, port=cfg.port, mailbox=cfg.mailbox,
                         security=connection_security(cfg.host, cfg.port),
                         idle=cfg.idle and "IDLE" in session.capabilities, move="MOVE" in session.capabilities)
                backoff = self.tuning.min_backoff
                await self._serve(session)
            except (ImapError, OSError, asyncio.TimeoutError, aioimaplib.AioImapException) as exc:
                if not self.rt.stopping.is_set():
                    log.warning("imap_connection_failed", host=cfg.host, port=cfg.port,
                                error=f"{type(exc).__name__}: {exc}", was_connected=selected)
            finally:
                self.rt.health.listener(self.name, False)
                with contextlib.suppress(Exception):
                    await session.close(polite=self.rt.stopping.is_set() or not selected)
            if self.rt.stopping.is_set():
                return
            if selected and _connection_key(self.rt.config.imap) != _connection_key(cfg):
                continue  # reconfigured: reconnect at once
            delay = backoff * (0.5 + random.random() / 2)
            backoff = min(self.tuning.max_backoff, backoff * 2)
            log.info("imap_reconnect_scheduled", delay=round(delay, 2))
            if await self.rt.sleep(delay):
                return

    async def _serve(self, session: _Session) -> None:
        loop = asyncio.get_running_loop()
        while not self.rt.stopping.is_set():
            if _connection_key(self.rt.config.imap) != _connection_key(session.cfg):
                log.info("imap_reconfigured")
                return
            worked = await self._scan(session)
            self.rt.health.polled(self.name)
            if worked:
                # Something was handled: look again before waiting, so mail
                # announced during our own commands is not missed.
                continue
            cfg = self.rt.config.imap
            due = [r.not_before - loop.time() for r in self._retries.values()]
            use_idle = cfg.idle and "IDLE" in session.capabilities
            wait = self.tuning.idle_renew if use_idle else cfg.poll_interval
            if due:
                wait = max(0.5, min(wait, min(due)))
            if use_idle:
                await session.idle(wait, self.rt.stopping)
            elif await self.rt.nap(self.name, wait):
                return

    async def _scan(self, session: _Session) -> bool:
        """Handle every message that is due; True when any was handled."""
        loop = asyncio.get_running_loop()
        messages = await session.list_messages(self.tuning.batch)
        present = {(session.uidvalidity, m.uid) for m in messages}
        for key in list(self._retries):
            if key not in present:
                del self._retries[key]  # gone: moved or deleted by someone else
        worked = False
        for info in messages:
            if self.rt.stopping.is_set():
                break
            key = (session.uidvalidity, info.uid)
            retry = self._retries.get(key)
            if retry is not None and retry.not_before > loop.time():
                continue
            worked = True
            with bind_context(imap_uid=info.uid):
                outcome = await self._handle(session, info)
                if info.size >= TRIM_AFTER_BYTES:
                    release_free_memory()  # its buffers are free by now (see gatewayd/memory.py)
                if outcome.folder is None:
                    attempts = (retry.attempts if retry else 0) + 1
                    delay = min(self.tuning.retry_cap, self.tuning.retry_base * 2 ** (attempts - 1))
                    self._retries[key] = _Retry(attempts, loop.time() + delay * (0.75 + random.random() / 2))
                    continue
                cfg = self.rt.config.imap
                folder = cfg.processed_mailbox if outcome.folder == "processed" else cfg.failed_mailbox
                try:
                    await session.move(info.uid, folder)
                except ImapCommandFailed as exc:
                    # The message stays; its outcome is durable (jobs or
                    # reply marker), so the next round only moves it.
                    log.error("imap_move_failed", folder=folder, error=str(exc))
                    attempts = (retry.attempts if retry else 0) + 1
                    delay = min(self.tuning.retry_cap, self.tuning.retry_base * 2 ** (attempts - 1))
                    self._retries[key] = _Retry(attempts, loop.time() + delay)
                    continue
                self._retries.pop(key, None)
                log.info("imap_message_moved", folder=folder)
        return worked

    # ------------------------------------------------------------ decision

    async def _handle(self, session: _Session, info: _MessageInfo) -> _Outcome:
        max_size = self.rt.config.smtp.max_message_size
        if max_size and info.size > max_size:
            header = await session.fetch(info.uid, "BODY.PEEK[HEADER]")
            if header is None:
                return _Outcome(None)
            return await self._decide(header, parsed=None, refusal=MessageTooBig(), size=info.size)
        raw = await session.fetch(info.uid)
        if raw is None:
            return _Outcome(None)  # expunged meanwhile; the next listing will not show it
        try:
            parsed = await asyncio.to_thread(parse_message, raw)
        except IntakeRefused as exc:
            return await self._decide(raw, parsed=None, refusal=exc, size=info.size)
        except MemoryError:
            return _Outcome(None)
        return await self._decide(raw, parsed=parsed, refusal=None, size=info.size)

    async def _decide(self, raw: bytes, *, parsed: ParsedMessage | None, refusal: IntakeRefused | None, size: int) -> _Outcome:
        config = self.rt.config
        ident = _Identity.of(parsed) if parsed is not None else _Identity.from_header(_header_block(raw))
        key = intake_key(ident.message_id, raw)
        with bind_context(message_id=ident.message_id):
            authorisation, verdict = self._authorise(ident)
            if authorisation is None:
                log.warning("imap_sender_not_authorised", from_addr=ident.from_addr, why=verdict.why, size=size)
                return _Outcome("failed")
            if refusal is not None:
                return await self._refuse(ident, authorisation, key, [refusal])
            assert parsed is not None
            plan = fax_recipients(parsed.header_addresses, config.imap.addresses, NumberPolicy(config.numbers))
            if not plan.destinations:
                refusals = list(plan.refused) or [NoFaxRecipient(_example_address(config.imap.addresses))]
                return await self._refuse(ident, authorisation, key, refusals)
            try:
                ids = await self.intake.accept(
                    raw,
                    authorisation=authorisation,
                    destinations=plan.destinations,
                    source="imap",
                    report_to=authorisation.report_to,
                    intake_key=key,
                    parsed=parsed,
                )
            except IntakeRefused as exc:
                if not exc.permanent:
                    log.warning("imap_intake_deferred", reply=exc.reply)
                    return _Outcome(None)
                return await self._refuse(ident, authorisation, key, [exc])
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - Intake promises IntakeRefused only; keep the message if not
                log.exception("imap_intake_crashed")
                return _Outcome(None)
            log.info("imap_message_accepted", job_ids=ids, numbers=[d.number for d in plan.destinations],
                     refused=[r.text for r in plan.refused], via=verdict.method)
            if plan.refused:
                # Some recipients were faxed, some not: the sender hears about
                # the others; the message itself was handled.
                if not await self._reply(ident, authorisation, key, plan.refused, queued=ids, numbers=[d.number for d in plan.destinations]):
                    return _Outcome(None)
            return _Outcome("processed")

    def _authorise(self, ident: _Identity) -> tuple[Authorisation | None, AuthVerdict]:
        config = self.rt.config
        verdict = verify_sender(ident.authentication_results, config.imap.trusted_authserv_id, ident.from_addr)
        if verdict.trusted_headers > 1:
            # Only the topmost was read, so this message is judged right;
            # but the MTA lets incoming headers with its id through, which
            # is unsafe whenever it adds none of its own (docs/imap.md).
            log.warning("imap_authres_trusted_id_repeated", count=verdict.trusted_headers,
                        trusted_authserv_id=config.imap.trusted_authserv_id)
        if not ident.from_addr:
            return None, verdict
        authorisation = SenderPolicy(config).authorise_mailbox(ident.from_addr)
        if authorisation is None:
            return None, AuthVerdict(False, None, "From: matches no [[senders]] rule")
        if not verdict.passed:
            # A rule match without the MTA's word is a stranger (SPEC 4).
            return None, verdict
        return authorisation, verdict

    async def _refuse(self, ident: _Identity, authorisation: Authorisation, key: str, refusals: Sequence[IntakeRefused]) -> _Outcome:
        log.info("imap_message_refused", replies=[r.reply for r in refusals])
        if not await self._reply(ident, authorisation, key, refusals, queued=(), numbers=()):
            return _Outcome(None)
        return _Outcome("failed")

    async def _reply(
        self, ident: _Identity, authorisation: Authorisation, key: str, refusals: Sequence[IntakeRefused],
        *, queued: Sequence[int], numbers: Sequence[str],
    ) -> bool:
        """Queue the reply once per message; False when it could not be stored (try later)."""
        if not authorisation.report_to:
            return True  # a bounce address: never answered
        config = self.rt.config
        store = self.rt.store
        message = to_bytes(_reply_message(config, ident, authorisation.report_to, refusals, queued, numbers))
        try:
            fresh = await store.run(
                store.imap_queue_reply_once, key, bare_address(config.mail.from_), [authorisation.report_to], message,
                ref=ident.message_id or "",
            )
        except Exception as exc:  # noqa: BLE001 - the store failing is "try again", never "drop"
            log.error("imap_reply_not_stored", error=f"{type(exc).__name__}: {exc}")
            return False
        if fresh:
            self.rt.wake("outbox")
            log.info("imap_reply_queued", to=authorisation.report_to)
        return True


def _example_address(addresses: Sequence[str]) -> str:
    base = addresses[0] if addresses else "fax@example.com"
    local, _, domain = base.partition("@")
    return f"{local}+<number>@{domain}"


def _reply_message(
    config: Any, ident: _Identity, to: str, refusals: Sequence[IntakeRefused], queued: Sequence[int], numbers: Sequence[str]
) -> Any:
    imap = config.imap
    subject = ident.subject or "(no subject)"
    if queued:
        title = f"Fax partly not sent: {subject}"
        opening = (
            f"Your message was faxed to {', '.join(numbers)} (job {', '.join(str(i) for i in queued)}),\n"
            "but not to these recipients:\n"
        )
        closing = "You will get a separate report for each fax that was sent.\n"
    else:
        title = f"Fax not sent: {subject}"
        opening = "Your message to the fax mailbox was not faxed:\n"
        closing = f'The message was moved to the folder "{imap.failed_mailbox}" of the fax mailbox.\n'
    reasons = "".join(f"\n  {r.reply}" for r in refusals)
    body = (
        f"{opening}{reasons}\n\n"
        f"Subject:    {subject}\n"
        f"Message-ID: {ident.message_id or '-'}\n\n"
        f"Write to {_example_address(imap.addresses)} (one address per number); attach\n"
        "PDF, TIFF, JPEG, PNG, GIF, BMP or WEBP files.\n\n"
        f"{closing}"
    )
    msg = new_message(mail_from=config.mail.from_, to=[to], subject=title, in_reply_to=ident.message_id)
    msg.set_content(body)
    return msg
