"""The SMTP listener (docs/smtp.md): aiosmtpd served in the daemon's own loop.

Every reply of the table in docs/smtp.md, Replies, is given at the stage where the decision is
final: sender at MAIL, each recipient at RCPT (a refused recipient does not
affect the others), the message at the end of DATA, and ``250 queued as``
only after the jobs are committed. No exception ever reaches aiosmtpd (which
would answer ``500``): every decision runs under a guard that turns the
unexpected into ``451 4.3.0 temporary failure, try again``.

Stock aiosmtpd behaviour replaced here, and why:

* MAIL: the SIZE check and the null sender ``<>`` (aiosmtpd refuses it as
  a syntax error; the policy decides instead, so an authenticated account
  may send with it, without a report).
* DATA: read by ``_read_data`` with ``fastdata.read_data`` instead of
  aiosmtpd's line-by-line loop: pieces of up to 256 KiB, dot-unstuffed as a
  stream, the bytes otherwise exactly as sent. It notices bare LF, enforces
  ``max_message_size`` with its reply in docs/smtp.md (reading the rest to the end),
  restarts the idle timeout whenever data arrives, and keeps a body above
  2 MiB in an anonymous temporary file in the state directory instead of in
  memory (a spool that cannot be written answers ``451``). The message is
  then loaded and turned into jobs inside an ``IntakeGate``: at most 16 MiB
  of message is parsed and converted at once, whatever the number of
  sessions (docs/performance.md).
* Reply lines are always ASCII without CR/LF (``IntakeRefused.smtp_reply``,
  and ``push`` checks every line again): a refusal naming "счет.pdf" is
  still its ``554``, never a ``451`` from a failed encoding.
* AUTH PLAIN/LOGIN: aiosmtpd collects the credentials; scrypt runs on the
  listener's own small executor (``PasswordChecks``), never on the loop nor
  in the shared default thread pool. Offered only over TLS or to trusted
  networks; a few failures close the session, and an address with too many
  recent failures gets ``454`` without a password check (``ClientLimits``).
* Per client address: at most ``smtp.max_connections_per_client``
  connections (not for ``trusted_networks``), counted over every listener
  process by the main one (``ClientLimits``); and every session ends after
  ``SmtpTuning.max_session_time`` or ``max_commands``, however busy it
  keeps the idle timer (docs/smtp.md, "Limits per client").
* STARTTLS required: ``530 5.7.0 must issue STARTTLS first``.

This module is over 600 lines on purpose: its three parts -- the aiosmtpd
protocol subclass (``FaxSMTP``, with the private hooks it replaces), the
decisions at MAIL/RCPT/DATA (``_Decisions``) and the listener service
(``SmtpListener``) -- share the session state and the guarantee that no
exception reaches aiosmtpd, and the reply table of docs/smtp.md is easiest to
check against one file. The seam is there if it grows: the decisions can move
to their own module with ``_guarded``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import re
import secrets
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email._header_value_parser import get_addr_spec, get_angle_addr  # what aiosmtpd's _getaddr uses
from email.errors import HeaderParseError
from typing import Any, TypeVar

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword

from gatewayd.config import contact_number
from gatewayd.email_to_fax.errors import (
    BareLineFeed,
    InsufficientStorage,
    IntakeRefused,
    MessageTooBig,
    SenderNotAuthorised,
    TemporaryFailure,
    smtp_safe,
)
from gatewayd.email_to_fax.fastdata import DataBody, IntakeGate, read_data
from gatewayd.email_to_fax.intake import Intake
from gatewayd.email_to_fax.policy import (
    Authorisation,
    Destination,
    NumberPolicy,
    RateLimiter,
    SenderPolicy,
    recipient_key,
    split_recipient,
)
from gatewayd.email_to_fax.smtp_processes import LimitsUnavailable, ListenerProcesses, WorkerError
from gatewayd.email_to_fax.throttle import ClientLimits, ClientThrottle, LocalClientLimits
from gatewayd.logs import bind_context, get_logger
from gatewayd.memory import TRIM_AFTER_BYTES, release_free_memory
from gatewayd.passwords import hash_password, verify_password
from gatewayd.runtime import Runtime

log = get_logger(__name__)

TEMPORARY = TemporaryFailure().smtp_reply  # "451 4.3.0 temporary failure, try again"
TOO_MANY_CONNECTIONS = "421 4.7.0 too many connections"
TOO_MANY_FROM_CLIENT = "421 4.7.0 too many connections from your address"
# The main process did not say whether the address may have one more session (docs/smtp.md).
LIMITS_UNAVAILABLE = "421 4.3.0 service busy, try again later"
AUTH_THROTTLED = "454 4.7.0 too many failed authentications, try later"
SESSION_LIMIT = "421 4.7.0 session limit reached, closing connection"
SHUTTING_DOWN = "421 4.3.2 service shutting down, try again later"
MUST_STARTTLS = "530 5.7.0 must issue STARTTLS first"
AUTH_FAILED = "535 5.7.8 authentication credentials invalid"
MAX_RECIPIENTS = 100  # per message; more is answered 452 (RFC 5321 section 4.5.3.1.8)

_SIZE_PARAM = re.compile(r"(?:^|\s)SIZE=(\S*)", re.IGNORECASE)
_NULL_SENDER = re.compile(r"^\s*<>(\s|$)")


@dataclass(frozen=True)
class SmtpTuning:
    """Timeouts and limits not in the configuration file (docs/smtp.md lists them)."""

    command_timeout: float = 300.0  # RFC 5321 section 4.5.3.2.7: at least 5 minutes
    data_timeout: float = 180.0  # idle time allowed in DATA (restarted whenever data arrives)
    stop_grace: float = 2.5  # transactions in progress at stop may finish this long
    store_grace: float = 1.0  # then a message being stored gets this much more to answer
    max_auth_failures: int = 3  # then 421 and the connection is closed
    spool_threshold: int = 2 << 20  # a DATA body above this waits in a temporary file, not in memory
    intake_budget: int = 16 << 20  # bytes of message parsed and converted at once (IntakeGate)
    process_stall_timeout: float = 30.0  # a listener process silent this long is killed and restarted
    # However busy a client keeps the idle timer, a session ends after this
    # long or this many commands (421, after the reply to a message being stored).
    max_session_time: float = 3600.0
    max_commands: int = 10_000
    password_workers: int = 2  # threads for scrypt (16 MiB each); AUTH beyond waits its turn


@dataclass(frozen=True)
class DataResult:
    """The message as received by ``_read_data``."""

    size: int  # un-stuffed bytes, line ends included
    too_big: bool  # over max_message_size: the content was not kept
    bare_lf: bool
    body: DataBody  # the content (memory or spool); whoever decides closes it


class FaxEnvelope(Envelope):
    """aiosmtpd's envelope plus what the policy decided for this transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.authorisation: Authorisation | None = None
        self.destinations: list[Destination] = []
        self.refused: list[tuple[str, str]] = []  # (recipient, reply)
        self.logged = False


# ------------------------------------------------------------------ protocol


def _names_found_by_aiosmtpd(cls: type, prefixes: tuple[str, ...]) -> list[str]:
    """The attributes of ``cls`` (its own and inherited) whose names start with ``prefixes``, found once per class."""
    found: tuple[str, ...] | None = cls.__dict__.get("_aiosmtpd_names")
    if found is None:
        found = tuple(name for name in dir(cls) if name.startswith(prefixes))
        cls._aiosmtpd_names = found  # type: ignore[attr-defined]  # the class's own: a subclass finds its own
    return list(found)


class FaxSMTP(SMTP):
    """One SMTP session. Decisions are made by the listener's ``_Decisions``."""

    def __dir__(self) -> list[str]:
        # aiosmtpd's SMTP.__init__ finds a session's commands ("smtp_*") and
        # AUTH mechanisms ("auth_*") with dir() and inspect.getmembers(), which
        # reads every attribute: ~0.1 ms of every connection (docs/performance.md,
        # Issue 19). It keeps only those names, so they are all dir() lists,
        # found once per class (tests/foundation/test_private_hooks.py checks
        # that aiosmtpd still finds the same commands and mechanisms).
        return _names_found_by_aiosmtpd(type(self), ("smtp_", "auth_"))

    def __init__(self, listener: SmtpListener, **kw: Any) -> None:
        self.listener = listener
        self.phase = "idle"  # "idle" | "transaction" | "data" | "deciding"
        self.peer_ip = ""
        self.trusted = False
        self.failed_auths = 0
        self.data_reply_due = False  # 354 sent: the next reply ends the transaction
        self.commands = 0
        self.expired = False  # max_session_time or max_commands reached
        self.counted_ip: str | None = None  # the address counted in the listener's ClientLimits
        self.refused = False  # over the per-client limit: answered 421 and closed before the greeting
        self._session_timer: asyncio.TimerHandle | None = None
        super().__init__(listener.decisions, **kw)
        listener.sessions.add(self)  # counted from creation, so max_connections holds under bursts
        # Every command passes _counted first (aiosmtpd looks commands up in this table).
        self._smtp_methods = {name: self._counted(method) for name, method in self._smtp_methods.items()}

    # -- aiosmtpd plumbing

    def _create_envelope(self) -> FaxEnvelope:
        return FaxEnvelope()

    def _set_post_data_state(self) -> None:
        # Also reached by RSET, HELO/EHLO and a new connection: log a
        # transaction that ended without DATA before its envelope goes.
        old = getattr(self, "envelope", None)
        if isinstance(old, FaxEnvelope):
            self.listener.decisions.log_abandoned(self, old)
        super()._set_post_data_state()
        self.phase = "idle"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            assert self.session is not None  # aiosmtpd made it in connection_made
            peer = self.session.peer
            self.peer_ip = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
            self.trusted = self.listener.sender_policy().is_trusted(self.peer_ip)
            # AUTH (and its advertisement) only over TLS, or in clear from a trusted network.
            self._auth_require_tls = not self.trusted
            self._session_timer = asyncio.get_running_loop().call_later(self.listener.tuning.max_session_time, self._session_expired)

    # -- limits of one session (docs/smtp.md, "Limits per client")

    def _counted(self, method: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        @functools.wraps(method)  # keeps aiosmtpd's syntax attributes for HELP
        async def counted(arg: Any) -> None:
            self.commands += 1
            if self.expired or self.commands > self.listener.tuning.max_commands:
                self.expired = True
                log.warning("smtp_session_limit", peer=self.peer_ip, commands=self.commands)
                await self.goodbye(SESSION_LIMIT)
                return
            await method(arg)

        return counted

    def _session_expired(self) -> None:
        """``max_session_time`` is up: close now, unless a message is being stored (then after its reply)."""
        self.expired = True
        if self.open and self.phase != "deciding":
            log.warning("smtp_session_limit", peer=self.peer_ip, phase=self.phase)
            asyncio.ensure_future(self.goodbye(SESSION_LIMIT))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parse for MAIL and RCPT, without the ``typing.Protocol``
        class it defines on every call (~25 µs each; docs/performance.md, Issue 19)."""
        if not arg:
            return "", ""
        try:
            parsed = get_angle_addr(arg) if arg.lstrip().startswith("<") else get_addr_spec(arg)
        except HeaderParseError:
            return None, None
        addr: str = parsed[0].addr_spec
        rest: str = parsed[1]
        localpart = addr.rpartition("@")[0]
        if self.local_part_limit and len(localpart) > self.local_part_limit:
            return None, None
        return addr, rest

    async def _handle_client(self) -> None:
        # aiosmtpd's session task: the greeting comes only once the client's
        # address is admitted (maybe asked of the main process).
        if await self._admitted():
            await super()._handle_client()

    async def _admitted(self) -> bool:
        """Count the client's address; one 421 line and closed when it has too many connections.

        Only a stranger is limited: a relay in ``trusted_networks`` (Postfix in
        front) legitimately opens many (docs/smtp.md, "Limits per client")."""
        if self.trusted:
            return True
        ip = self.peer_ip
        try:
            if await self.listener.limits.open(ip):
                self.counted_ip = ip
                return True
            reply = TOO_MANY_FROM_CLIENT
            log.warning("smtp_too_many_connections_from_client", peer=ip,
                        limit=self.listener.rt.config.smtp.max_connections_per_client)
        except LimitsUnavailable as exc:  # refused for now rather than unlimited
            reply = LIMITS_UNAVAILABLE
            log.error("smtp_client_limits_unavailable", peer=ip, error=str(exc))
        self.refused = True
        self.listener.sessions.discard(self)
        self.listener.count_reply("421")
        transport = self.transport
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(reply.encode("ascii") + b"\r\n")
        transport.close()
        return False

    def connection_lost(self, error: Exception | None) -> None:
        self.listener.sessions.discard(self)
        if self.counted_ip is not None:
            self.listener.limits.close(self.counted_ip)
            self.counted_ip = None
        if self._session_timer is not None:
            self._session_timer.cancel()
        if isinstance(self.envelope, FaxEnvelope) and not self.refused:
            self.listener.decisions.log_abandoned(self, self.envelope)
        super().connection_lost(error)

    def _timeout_cb(self) -> None:
        # aiosmtpd just closes; a client deserves to know why (RFC 5321 4.5.3.2).
        if self.open and self.phase != "deciding":
            self.listener.count_reply("421")
            log.info("smtp_timeout", peer=self.peer_ip, phase=self.phase)
            assert isinstance(self.transport, asyncio.WriteTransport)
            self.transport.write(f"421 4.4.2 {self.hostname} timeout, closing connection\r\n".encode("ascii", "replace"))
        super()._timeout_cb()

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str) and not (status.isascii() and status.isprintable()):
            # The replies are made safe where they are made (IntakeRefused.smtp_reply);
            # this is the last line of defence: a UnicodeEncodeError here would
            # turn any answer into aiosmtpd's 451, and CR/LF into a forged reply.
            status = smtp_safe(status)
        line = status.decode("ascii", "replace") if isinstance(status, bytes) else status
        if len(line) >= 4 and line[:3].isdigit() and line[3] == " ":
            # gatewayd_smtp_replies_total counts the replies that end a
            # transaction: the one to the data (after 354), and every refusal
            # (4xx, 5xx); not EHLO/MAIL/RCPT's 250s (docs/operations.md, Metrics).
            code = line[:3]
            if code == "354":
                self.data_reply_due = True
            elif self.data_reply_due or code[0] in "45":
                self.data_reply_due = False
                self.listener.count_reply(code)
        # Made printable ASCII above, so encoding it here is what aiosmtpd would do.
        await super().push(status if isinstance(status, bytes) else status.encode("ascii"))

    @property
    def tls_active(self) -> bool:
        return self._tls_protocol is not None

    def needs_starttls(self) -> bool:
        return bool(self.listener.rt.config.smtp.require_tls and self.tls_context is not None and not self.tls_active)

    @property
    def user(self) -> str | None:
        session = self.session
        return session.auth_data if session is not None and session.authenticated and isinstance(session.auth_data, str) else None

    async def goodbye(self, line: str) -> None:
        """Answer ``line`` and close (shutdown, too many AUTH failures)."""
        if not self.open:
            return
        transport = self.transport
        try:
            await self.push(line)
        except Exception:  # the peer may be gone (TLS transports say so in odd ways)
            pass
        if transport is not None:
            transport.close()

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    # -- commands

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        if self.needs_starttls():
            await self.push(MUST_STARTTLS)
            return
        rest = self._strip_command_keyword("FROM:", arg or "")
        if rest is not None:
            size = _SIZE_PARAM.search(rest)
            if size and size.group(1).isdigit() and self.data_size_limit and int(size.group(1)) > self.data_size_limit:
                await self.push(MessageTooBig().smtp_reply)
                return
            if _NULL_SENDER.match(rest):
                if self.envelope is not None and self.envelope.mail_from:
                    await self.push("503 5.5.1 nested MAIL command")
                    return
                params = rest.strip()[2:].upper().split()
                await self.push(await self.listener.decisions.handle_MAIL(self, self.session, self.envelope, "<>", params))
                return
        await super().smtp_MAIL(arg)

    async def smtp_AUTH(self, arg: str) -> None:
        if self.needs_starttls():
            await self.push(MUST_STARTTLS)
            return
        cfg = self.listener.rt.config.smtp
        if cfg.auth == "off" or not cfg.users:
            await self.push("502 5.5.1 AUTH not available")
            return
        await super().smtp_AUTH(arg)

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # aiosmtpd's PLAIN/LOGIN call this synchronously: only hand the
        # credentials on here; _verified checks them off the loop.
        return AuthResult(success=True, handled=False, auth_data=auth_data)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verified(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verified(await super().auth_LOGIN(_, args))

    async def _verified(self, result: AuthResult) -> AuthResult:
        if not result.success or not isinstance(result.auth_data, LoginPassword):
            return result  # aiosmtpd already answered (bad base64, "*")
        login, password = result.auth_data
        name = login.decode("utf-8", "replace")
        limits = self.listener.limits
        try:
            blocked = await limits.auth_blocked(self.peer_ip)
        except LimitsUnavailable as exc:
            log.error("smtp_client_limits_unavailable", peer=self.peer_ip, error=str(exc))
            return AuthResult(success=False, handled=False, message=TEMPORARY)
        if blocked:
            # No scrypt run for an address that keeps failing (docs/smtp.md, "Limits per client").
            log.warning("smtp_auth_throttled", peer=self.peer_ip, user=name[:64])
            return AuthResult(success=False, handled=False, message=AUTH_THROTTLED)
        try:
            ok = await self.listener.verify(name, password)
        except Exception:  # never a 500, never a hang
            log.exception("smtp_auth_check_failed")
            return AuthResult(success=False, handled=False, message=TEMPORARY)
        if ok:
            log.info("smtp_auth_ok", peer=self.peer_ip, user=name)
            return AuthResult(success=True, auth_data=name)
        self.failed_auths += 1
        limits.auth_failed(self.peer_ip)
        log.warning("smtp_auth_failed", peer=self.peer_ip, user=name[:64], failures=self.failed_auths)
        if self.failed_auths >= self.listener.tuning.max_auth_failures:
            await self.push(AUTH_FAILED)
            await self.goodbye("421 4.7.0 too many authentication failures")
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=AUTH_FAILED)

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if self.needs_starttls():
            await self.push(MUST_STARTTLS)
            return
        envelope = self.envelope
        assert isinstance(envelope, FaxEnvelope)
        if not envelope.mail_from:
            await self.push("503 5.5.1 need MAIL command")
            return
        if not envelope.destinations:
            await self.push("554 5.5.1 no valid recipients" if envelope.refused else "503 5.5.1 need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 syntax: DATA")
            return
        await self.push("354 end data with <CR><LF>.<CR><LF>")
        self.phase = "data"
        result = await self._read_data()
        self.phase = "deciding"
        try:
            reply = await self.listener.decisions.data(self, envelope, result)
        finally:
            self._set_post_data_state()
        await self.push(reply)
        if self.listener.closing:
            await self.goodbye(SHUTTING_DOWN)
        elif self.expired:
            await self.goodbye(SESSION_LIMIT)

    async def _read_data(self) -> DataResult:
        """Read DATA up to the lone dot with ``fastdata.read_data``.

        The idle timeout is ``data_timeout``, restarted whenever data arrives.
        Past ``data_size_limit`` the content is dropped but read to the end,
        so the client gets the reply of docs/smtp.md, Replies, instead of a broken connection. A
        client that leaves raises ``ConnectionResetError`` (nothing is kept).
        """
        tuning = self.listener.tuning
        self._reset_timeout(tuning.data_timeout)
        body = await read_data(
            self._reader,
            limit=self.data_size_limit or 0,
            spool_threshold=tuning.spool_threshold,
            spool_dir=self.listener.rt.store.state_dir,
            on_activity=lambda: self._reset_timeout(tuning.data_timeout),
            normalize_bare_lf=self.listener.rt.config.smtp.bare_lf == "normalize",
        )
        self._reset_timeout()
        # Normalised, the content has CRLF line ends only: nothing to refuse.
        refuse_bare_lf = body.bare_lf and self.listener.rt.config.smtp.bare_lf != "normalize"
        return DataResult(body.size, body.too_big, refuse_bare_lf, body)


class _Refuse(asyncio.Protocol):
    """A connection over the limit (or during shutdown): one 421 line, then closed."""

    def __init__(self, line: str) -> None:
        self.line = line

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self.line.encode("ascii") + b"\r\n")
        transport.close()


T = TypeVar("T")


class PasswordChecks:
    """scrypt's own executor: a few threads, so AUTH attempts can neither fill
    the loop's shared default pool nor run more 16 MiB hashes at once than
    ``workers``; callers beyond that wait on the loop (and leave if their
    client goes)."""

    def __init__(self, workers: int) -> None:
        self.max_workers = max(1, workers)
        self._executor: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None or self._slots is None:
            self._executor = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="scrypt")
            self._slots = asyncio.Semaphore(self.max_workers)
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            self._slots = None


# ----------------------------------------------------------------- decisions


def _guarded(hook: Callable[..., Awaitable[str]]) -> Callable[..., Awaitable[str]]:
    """An unexpected exception in a hook answers 451, never aiosmtpd's 500."""

    async def wrapper(self: _Decisions, server: FaxSMTP, *args: Any) -> str:
        try:
            return await hook(self, server, *args)
        except asyncio.CancelledError:
            raise
        except IntakeRefused as exc:
            return exc.smtp_reply
        except Exception as exc:  # the edge of the listener
            log.exception("smtp_hook_failed", hook=hook.__name__, peer=server.peer_ip, error=f"{type(exc).__name__}: {exc}")
            return TEMPORARY

    wrapper.__name__ = hook.__name__
    return wrapper


class _Decisions:
    """aiosmtpd's handler: what to answer at EHLO, MAIL, RCPT, RSET and DATA."""

    def __dir__(self) -> list[str]:
        # What aiosmtpd looks for on the handler of every new session: its
        # hooks ("handle_*") and AUTH mechanisms ("auth_*"); see FaxSMTP.__dir__.
        return _names_found_by_aiosmtpd(type(self), ("handle_", "auth_"))

    def __init__(self, listener: SmtpListener) -> None:
        self.listener = listener

    @property
    def rt(self) -> Runtime:
        return self.listener.rt

    async def handle_EHLO(self, server: FaxSMTP, session: Any, envelope: FaxEnvelope, hostname: str, responses: list[str]) -> list[str]:
        try:
            session.host_name = hostname  # the 5-argument hook must set it itself
            cfg = self.rt.config.smtp
            offer_auth = cfg.auth != "off" and bool(cfg.users) and (server.tls_active or server.trusted) and not server.needs_starttls()
            return [r for r in responses if offer_auth or not r[4:].upper().startswith("AUTH")]
        except Exception:
            log.exception("smtp_hook_failed", hook="handle_EHLO")
            return responses

    @_guarded
    async def handle_MAIL(self, server: FaxSMTP, session: Any, envelope: FaxEnvelope, address: str, options: list[str]) -> str:
        try:
            auth = self._authorise(server, address)
            low = self.rt.low_storage()
            if low is not None:
                # Say it before the client sends the message (RFC 5321 allows 452 at MAIL).
                log.warning("smtp_low_storage", problem=str(low))
                raise InsufficientStorage(str(low))
        except IntakeRefused as exc:
            self._log(server, envelope, exc.smtp_reply, mail_from=address)
            return exc.smtp_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.authorisation = auth
        server.phase = "transaction"
        return "250 2.1.0 sender ok"

    @_guarded
    async def handle_RCPT(self, server: FaxSMTP, session: Any, envelope: FaxEnvelope, address: str, options: list[str]) -> str:
        try:
            reply = await self._recipient(server, envelope, address)
        except IntakeRefused as exc:
            reply = exc.smtp_reply
        if not reply.startswith("2"):
            envelope.refused.append((address, reply))
        return reply

    async def _recipient(self, server: FaxSMTP, envelope: FaxEnvelope, address: str) -> str:
        cfg = self.rt.config
        # Again at RCPT: a reload since MAIL may have revoked the account or rule.
        assert envelope.mail_from is not None  # aiosmtpd answers 503 to RCPT before MAIL
        auth = self._authorise(server, envelope.mail_from)
        local = split_recipient(address, cfg.smtp.domains)
        contact = cfg.contact(local) if cfg.contacts else None
        if contact is not None:
            # <alias>@<fax domain>: the contact's number, through the same
            # policy as any number (docs/smtp.md, Contacts).
            destination = self.listener.number_policy().check(contact_number(contact.number), address)
            destination = dataclasses.replace(destination, name=contact.name)
        else:
            destination = self.listener.number_policy().check(local, address)
        destination = dataclasses.replace(destination, address=recipient_key(address))
        if any(d.dst_num == destination.dst_num for d in envelope.destinations):
            return "250 2.1.5 recipient ok (same number as an earlier recipient: one fax)"
        if len(envelope.destinations) >= MAX_RECIPIENTS:
            return "452 4.5.3 too many recipients"
        if auth.hourly_limits:  # else nothing to count (see Intake)
            store = self.rt.store
            limiter = RateLimiter(store, self.rt.clock)
            await store.run(limiter.check_all, auth, len(envelope.destinations) + 1)
        envelope.authorisation = auth
        envelope.destinations.append(destination)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 recipient ok"

    def _authorise(self, server: FaxSMTP, address: str) -> Authorisation:
        sender = "" if address == "<>" else address
        return self.listener.sender_policy().authorise_smtp(envelope_sender=sender, user=server.user, client_ip=server.peer_ip)

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's last resort (a failure outside the hooks): still a 451.
        log.error("smtp_session_error", error=f"{type(error).__name__}: {error}")
        return TEMPORARY

    @_guarded
    async def data(self, server: FaxSMTP, envelope: FaxEnvelope, result: DataResult) -> str:
        """The reply to the end of DATA; jobs are committed before a 250.

        The body is loaded (from its spool file if it has one) and turned into
        jobs inside the listener's ``IntakeGate``, and closed in any case.
        """
        ids: list[int] = []
        body = result.body
        try:
            # Size and line ends are known without the content.
            if result.too_big:
                raise MessageTooBig()
            if result.bare_lf:
                raise BareLineFeed()
            auth = envelope.authorisation
            if auth is None:
                raise SenderNotAuthorised()
            if body.error is not None:
                # The spool could not be written (disk full): nothing was kept.
                log.error("smtp_spool_failed", peer=server.peer_ip, size=result.size, error=str(body.error))
                raise TemporaryFailure()
            async with self.listener.intake_gate.hold(result.size):
                raw = await body.aread()
                body.close()  # the spool file goes now; the bytes are in raw
                with bind_context(peer=server.peer_ip):
                    ids = await self.listener.intake.accept(
                        raw,
                        authorisation=auth,
                        destinations=list(envelope.destinations),
                        source="smtp",
                        report_to=auth.report_to,
                        crlf_checked=True,  # bare LF refused above, or normalised by read_data
                    )
                del raw
            reply = "250 2.0.0 queued as " + " ".join(str(i) for i in ids)
        except IntakeRefused as exc:
            reply = exc.smtp_reply
        except Exception as exc:  # never a 500 from DATA
            log.exception("smtp_hook_failed", hook="data", peer=server.peer_ip, error=f"{type(exc).__name__}: {exc}")
            reply = TEMPORARY
        finally:
            body.close()
        if result.size >= TRIM_AFTER_BYTES and self.listener.intake_gate.in_use == 0:
            # The last large message of a burst: its buffers (and those of the
            # ones before it) are free; give them back to the OS now, or the
            # process keeps its peak size for good (docs/performance.md, (b)).
            # A few ms on the loop, once a burst; not in a thread, where the
            # next message's buffers could be freed after it ran.
            release_free_memory()
        self._log(server, envelope, reply, size=result.size, job_ids=ids)
        return reply

    def log_abandoned(self, server: FaxSMTP, envelope: FaxEnvelope) -> None:
        if envelope.mail_from and not envelope.logged:
            self._log(server, envelope, "", outcome="no DATA")

    def _log(self, server: FaxSMTP, envelope: FaxEnvelope, reply: str, **extra: Any) -> None:
        """One event per transaction, with the reply that ended it."""
        envelope.logged = True
        fields: dict[str, Any] = {
            "peer": server.peer_ip,
            "user": server.user,
            "tls": server.tls_active,
            "mail_from": extra.pop("mail_from", envelope.mail_from),
            "recipients": [d.number for d in envelope.destinations],
            "refused": [f"{a}: {r}" for a, r in envelope.refused] or None,
            "reply": reply,
        }
        fields.update(extra)
        level = log.info if reply.startswith("2") else log.warning if reply else log.info
        level("smtp_transaction", **fields)


# ------------------------------------------------------------------ service


class SmtpListener:
    """Service "smtp": one aiosmtpd server per ``smtp.listen`` address, in this loop."""

    name = "smtp"

    def __init__(
        self,
        rt: Runtime,
        intake: Intake,
        *,
        tuning: SmtpTuning | None = None,
        tls_context: ssl.SSLContext | None = None,
        sockets: Sequence[socket.socket] | None = None,
        processes: ListenerProcesses | None = None,
        limits: ClientLimits | None = None,
    ) -> None:
        """``sockets``: serve these (an SMTP listener process, handed them by
        the main process) instead of binding ``smtp.listen``. ``processes``:
        the other listener processes (main process only, ``smtp.processes`` > 1;
        the daemon builds them), started once this listener is bound.
        ``limits``: where the per-client limits are counted (a listener
        process asks the main one); by default here, in ``throttle``."""
        self.rt = rt
        self.intake = intake
        self.tuning = tuning or SmtpTuning()
        self.decisions = _Decisions(self)
        # Bytes of message being parsed and converted at once, over all
        # sessions, and sessions at once: both are shared out between the
        # listener processes that run (a listener process is handed sockets;
        # the main one is handed the others).
        if sockets is not None:
            self.sharing = max(1, rt.config.smtp.processes)
        else:
            self.sharing = 1 + (processes.count if processes is not None else 0)
        self.intake_gate = IntakeGate(max(1, self.tuning.intake_budget // self.sharing))
        self.sessions: set[FaxSMTP] = set()
        self.servers: list[asyncio.Server] = []
        self.closing = False
        self._sockets = sockets
        self.processes = processes
        self._tls_context = tls_context
        self._dummy_hash = ""
        self._policy_for: tuple[Any, SenderPolicy, NumberPolicy] | None = None
        cfg = rt.config.smtp
        self.throttle = ClientThrottle(
            max_connections_per_client=cfg.max_connections_per_client,
            auth_failures_per_client=cfg.auth_failures_per_client,
            auth_failure_window=cfg.auth_failure_window,
        )
        self.limits: ClientLimits = limits if limits is not None else LocalClientLimits(self.client_throttle)
        if processes is not None:
            processes.throttle = self.client_throttle  # it answers the other processes' questions
        self.password_checks = PasswordChecks(self.tuning.password_workers)

    # -- policy, rebuilt when the configuration object is replaced (SIGHUP)

    def _policies(self) -> tuple[SenderPolicy, NumberPolicy]:
        config = self.rt.config
        if self._policy_for is None or self._policy_for[0] is not config:
            self._policy_for = (config, SenderPolicy(config), NumberPolicy(config.numbers))
            cfg = config.smtp
            self.throttle.configure(
                max_connections_per_client=cfg.max_connections_per_client,
                auth_failures_per_client=cfg.auth_failures_per_client,
                auth_failure_window=cfg.auth_failure_window,
            )
        return self._policy_for[1], self._policy_for[2]

    def client_throttle(self) -> ClientThrottle:
        """The per-client counts of this process, their limits those of the running configuration."""
        self._policies()
        return self.throttle

    def sender_policy(self) -> SenderPolicy:
        return self._policies()[0]

    def number_policy(self) -> NumberPolicy:
        return self._policies()[1]

    # -- helpers for sessions

    def count_reply(self, code: str) -> None:
        self.rt.metrics.smtp_replies.labels(code).inc()

    async def verify(self, name: str, password: bytes) -> bool:
        """Check an AUTH password on ``PasswordChecks`` (scrypt is deliberately slow)."""
        user = next((u for u in self.rt.config.smtp.users if u.name == name), None)
        try:
            text = password.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        # An unknown account costs the same scrypt as a known one: no user oracle.
        encoded = user.password_hash if user is not None else self._dummy_hash
        ok = await self.password_checks.run(verify_password, text or "", encoded)
        return ok and user is not None and text is not None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) actually bound, port 0 in the config resolved."""
        out = []
        for server in self.servers:
            for sock in server.sockets:
                name = sock.getsockname()
                out.append((str(name[0]), int(name[1])))
        return out

    def _make_tls_context(self) -> ssl.SSLContext | None:
        if self._tls_context is not None:
            return self._tls_context
        cfg = self.rt.config.smtp
        if not cfg.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        return context

    def _protocol(self, tls_context: ssl.SSLContext | None) -> asyncio.Protocol:
        cfg = self.rt.config.smtp
        if self.closing:
            self.count_reply("421")
            return _Refuse(SHUTTING_DOWN)
        limit = -(-cfg.max_connections // self.sharing)  # this process's part, rounded up
        if len(self.sessions) >= limit:
            self.count_reply("421")
            log.warning("smtp_too_many_connections", limit=limit, processes=self.sharing)
            return _Refuse(TOO_MANY_CONNECTIONS)
        return FaxSMTP(
            self,
            data_size_limit=cfg.max_message_size,
            hostname=cfg.hostname or None,
            ident="ESMTP gatewayd",
            tls_context=tls_context,
            require_starttls=False,  # enforced by FaxSMTP with the wording of docs/smtp.md, Replies
            timeout=self.tuning.command_timeout,
            auth_required=False,  # decided by the policy at MAIL
            auth_require_tls=True,  # relaxed per session for trusted networks
            loop=asyncio.get_running_loop(),
        )

    # -- Service

    async def start(self) -> None:
        cfg = self.rt.config.smtp
        tls_context = self._make_tls_context()
        # A real hash of a random password: verifying an unknown user costs the same.
        self._dummy_hash = await self.password_checks.run(hash_password, secrets.token_hex(16))
        loop = asyncio.get_running_loop()
        more = self.processes if self._sockets is None else None  # the other listener processes, to start here
        try:
            if self._sockets is not None:
                for sock in self._sockets:
                    self.servers.append(_server(await loop.create_server(lambda: self._protocol(tls_context), sock=sock)))
            else:
                for address in cfg.listen:
                    server = await loop.create_server(lambda: self._protocol(tls_context), address.host, address.port,
                                                      reuse_address=True, reuse_port=True if more is not None else None)
                    self.servers.append(_server(server))
            if more is not None:
                await more.start(self.addresses)
        except (OSError, WorkerError):
            for server in self.servers:
                server.close()
            self.servers.clear()
            self.processes = None
            self.rt.health.listener("smtp", False)
            raise
        self.rt.health.listener("smtp", True)
        log.info("smtp_listening", addresses=[f"{h}:{p}" for h, p in self.addresses], tls=tls_context is not None,
                 auth=cfg.auth, require_tls=cfg.require_tls, processes=cfg.processes if self._sockets is None else None)

    async def run(self) -> None:
        # The servers run on their own; the other listener processes are
        # restarted when they die.
        if self.processes is not None:
            await self.processes.supervise()
        await self.rt.stopping.wait()

    async def stop(self) -> None:
        """No new connections; transactions in progress may finish; 421 to the rest.

        The other listener processes are told at once (SIGTERM), so they
        spend their grace alongside this one, and are waited for at the end.
        """
        self.closing = True
        if self.processes is not None:
            self.processes.terminate()
        for server in self.servers:
            server.close()
        self.rt.health.listener("smtp", False)
        # Sessions between transactions are told right away.
        for session in list(self.sessions):
            if session.phase == "idle" and session.open:
                await session.goodbye(SHUTTING_DOWN)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.tuning.stop_grace
        while loop.time() < deadline and any(s.open for s in self.sessions):
            await asyncio.sleep(0.05)
        # Past the grace, a session still reading DATA gets 421 (nothing was
        # stored, the client keeps the message); one whose message is being
        # stored is left to answer for itself: cutting it could lose a 250.
        for session in list(self.sessions):
            if session.phase != "deciding" and session.open:
                await session.goodbye(SHUTTING_DOWN)
        deadline = loop.time() + self.tuning.store_grace
        while loop.time() < deadline and any(s.phase == "deciding" for s in self.sessions):
            await asyncio.sleep(0.05)
        for server in self.servers:
            try:
                await asyncio.wait_for(server.wait_closed(), timeout=0.5)
            except TimeoutError:
                pass
        if self.processes is not None:
            await self.processes.stop(grace=0.5)  # they had the same grace as this process, at the same time
        self.password_checks.close()
        log.info("smtp_stopped")


__all__ = ["DataResult", "FaxSMTP", "SmtpListener", "SmtpTuning"]


def _server(server: asyncio.AbstractServer) -> asyncio.Server:
    """``server`` as what asyncio's loop makes (typeshed types the abstract loop's answer),
    whose ``sockets`` give the addresses bound."""
    assert isinstance(server, asyncio.Server)
    return server
