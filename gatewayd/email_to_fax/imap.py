"""Email to fax from an IMAP mailbox: the ``imap`` service (docs/imap.md).

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

The connection itself (TLS, login, IDLE, fetch, move over aioimaplib) is
``imap_session.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.policy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aioimaplib

from gatewayd.backoff import backoff_delay
from gatewayd.config import ImapConfig
from gatewayd.email_to_fax import rawheaders
from gatewayd.email_to_fax.authresults import AuthVerdict, verify_sender
from gatewayd.email_to_fax.errors import IntakeRefused, MessageTooBig
from gatewayd.email_to_fax.imap_session import (
    ImapCommandFailed,
    ImapError,
    ImapSession,
    ImapTuning,
    MessageInfo,
    connection_security,
)
from gatewayd.email_to_fax.limits import check_field, check_header_block
from gatewayd.email_to_fax.parse import parse_message
from gatewayd.email_to_fax.policy import Authorisation, Destination, NumberPolicy, SenderPolicy
from gatewayd.logs import bind_context, get_logger
from gatewayd.mail.compose import bare_address, new_message, to_bytes
from gatewayd.memory import TRIM_AFTER_BYTES, release_free_memory
from gatewayd.runtime import Runtime

log = get_logger(__name__)

__all__ = [
    "ImapIntake",
    "NoFaxRecipient",
    "RecipientPlan",
    "fax_recipients",
    "intake_key",
]


# ------------------------------------------------------------------ refusals


class NoFaxRecipient(IntakeRefused):
    """No ``fax+<number>@`` address of ours among the recipients."""

    code, status = 553, "5.1.3"

    def __init__(self, example: str) -> None:
        super().__init__(f"no fax number among the recipients (write to {example})")


# ------------------------------------------------------------ pure helpers


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
                dest = dataclasses.replace(numbers.check(tag, address), address=address)
            except IntakeRefused as exc:
                refused.append(exc)
                continue
            if dest.number not in seen_numbers:
                seen_numbers.add(dest.number)
                destinations.append(dest)
    return RecipientPlan(tuple(destinations), tuple(refused), tuple(found))


@dataclass(frozen=True)
class _Identity:
    """What decides who sent a message, read from its raw header block
    before anything else of it is parsed (docs/imap.md, Who is believed):
    a stranger's message is never parsed in full (docs/security.md)."""

    from_addr: str | None
    message_id: str | None
    subject: str
    authentication_results: tuple[str, ...]

    @classmethod
    def from_header(cls, header: bytes) -> _Identity:
        """Strict, never guesses a sender: two From: fields, two addresses in
        one, or one read with defects give no sender (a stranger). The
        Authentication-Results values are kept as the MTA wrote them: no
        RFC 2047 decoding (``rawheaders.py`` says why)."""
        try:
            check_header_block(header)
            fields = rawheaders.fields(header)
        except Exception:  # hostile header: nobody we know sent it
            return cls(None, None, "", ())
        froms = [v for n, v in fields if n.lower() == "from"]
        ids = [v for n, v in fields if n.lower() == "message-id"]
        subjects = [v for n, v in fields if n.lower() == "subject"]
        results = tuple(" ".join(v.split()) for n, v in fields if n.lower() == "authentication-results")
        return cls(
            rawheaders.single_from(froms[0]) if len(froms) == 1 else None,
            (" ".join(ids[0].split()) or None) if len(ids) == 1 else None,
            _decoded_subject(subjects[0]) if len(subjects) == 1 else "",
            results,
        )


def _decoded_subject(value: str) -> str:
    """The Subject for a reply, RFC 2047 decoded; empty when over a cap or unreadable."""
    try:
        check_field("Subject", value)
        return " ".join(str(email.policy.default.header_factory("subject", value)).split())
    except Exception:
        return ""


_header_block = rawheaders.header_block


# ------------------------------------------------------------------ outcome


@dataclass(frozen=True)
class _Outcome:
    folder: Literal["processed", "failed"] | None  # None: leave it for a later round


@dataclass
class _Retry:
    attempts: int = 0
    not_before: float = 0.0


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
        except Exception as exc:  # housekeeping only; never blocks the start
            log.warning("imap_prune_failed", error=f"{type(exc).__name__}: {exc}")
        else:
            if pruned:
                log.info("imap_reply_markers_pruned", removed=pruned)

    async def stop(self) -> None:
        # run() watches rt.stopping (IDLE and the poll wait race it) and logs
        # out; a message being handled finishes, or is seen again next start.
        return None

    async def run(self) -> None:
        failures = 0  # reconnect attempts since the last good connection
        while not self.rt.stopping.is_set():
            cfg = self.rt.config.imap
            session = ImapSession(cfg, self.tuning)
            selected = False
            try:
                await session.open()
                selected = True
                self.rt.health.listener(self.name, True)
                log.info("imap_connected", host=cfg.host, port=cfg.port, mailbox=cfg.mailbox,
                         security=connection_security(cfg.host, cfg.port),
                         idle=cfg.idle and "IDLE" in session.capabilities, move="MOVE" in session.capabilities)
                failures = 0
                await self._serve(session)
            except (TimeoutError, ImapError, OSError, aioimaplib.AioImapException) as exc:
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
            failures += 1
            delay = backoff_delay(failures, base=self.tuning.min_backoff, cap=self.tuning.max_backoff, low=0.5, high=1.0)
            log.info("imap_reconnect_scheduled", delay=round(delay, 2))
            if await self.rt.sleep(delay):
                return

    async def _serve(self, session: ImapSession) -> None:
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

    async def _scan(self, session: ImapSession) -> bool:
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
                    delay = backoff_delay(attempts, base=self.tuning.retry_base, cap=self.tuning.retry_cap, low=0.75, high=1.25)
                    self._retries[key] = _Retry(attempts, loop.time() + delay)
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
                    # No jitter: the outcome is durable, only the move is retried.
                    delay = backoff_delay(attempts, base=self.tuning.retry_base, cap=self.tuning.retry_cap, low=1.0, high=1.0)
                    self._retries[key] = _Retry(attempts, loop.time() + delay)
                    continue
                self._retries.pop(key, None)
                log.info("imap_message_moved", folder=folder)
        return worked

    # ------------------------------------------------------------ decision

    async def _handle(self, session: ImapSession, info: MessageInfo) -> _Outcome:
        max_size = self.rt.config.smtp.max_message_size
        if max_size and info.size > max_size:
            header = await session.fetch(info.uid, "BODY.PEEK[HEADER]")
            if header is None:
                return _Outcome(None)
            return await self._decide(header, refusal=MessageTooBig(), size=info.size)
        raw = await session.fetch(info.uid)
        if raw is None:
            return _Outcome(None)  # expunged meanwhile; the next listing will not show it
        return await self._decide(raw, refusal=None, size=info.size)

    async def _decide(self, raw: bytes, *, refusal: IntakeRefused | None, size: int) -> _Outcome:
        config = self.rt.config
        # Who sent it is decided from the raw header block alone, before the
        # full parse: a stranger's message is never parsed (docs/security.md).
        ident = _Identity.from_header(_header_block(raw))
        key = intake_key(ident.message_id, raw)
        with bind_context(message_id=ident.message_id):
            authorisation, verdict = self._authorise(ident)
            if authorisation is None:
                log.warning("imap_sender_not_authorised", from_addr=ident.from_addr, why=verdict.why, size=size)
                return _Outcome("failed")
            if refusal is not None:
                return await self._refuse(ident, authorisation, key, [refusal])
            try:
                parsed = await asyncio.to_thread(parse_message, raw)
            except IntakeRefused as exc:
                return await self._refuse(ident, authorisation, key, [exc])
            except MemoryError:
                return _Outcome(None)
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
            except Exception:  # Intake promises IntakeRefused only; keep the message if not
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
            # A rule match without the MTA's word is a stranger (docs/imap.md).
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
        message = to_bytes(_reply_message(config, ident, authorisation.report_to, refusals, queued, numbers,
                                          kinds=self.intake.kinds_taken))
        try:
            fresh = await store.run(
                store.imap_queue_reply_once, key, bare_address(config.mail.from_), [authorisation.report_to], message,
                ref=ident.message_id or "",
            )
        except Exception as exc:  # the store failing is "try again", never "drop"
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
    config: Any, ident: _Identity, to: str, refusals: Sequence[IntakeRefused], queued: Sequence[int], numbers: Sequence[str],
    *, kinds: str,
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
        f"{kinds} files.\n\n"
        f"{closing}"
    )
    msg = new_message(mail_from=config.mail.from_, to=[to], subject=title, in_reply_to=ident.message_id)
    msg.set_content(body)
    return msg
