"""Delivery of every email gatewayd writes, from the stored outbox.

An email is marked sent only after the relay's 250. A 4xx or a connection
failure is retried with backoff (the schedule is in the store, so it
survives restarts); a 5xx is final, logged, and reported to ``[mail].admin``
(a failed admin notice is not reported again, so nothing loops).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiosmtplib
from aiosmtplib.response import SMTPResponse

from gatewayd.backoff import backoff_delay
from gatewayd.config import Config, MailConfig
from gatewayd.logs import bind_context, get_logger
from gatewayd.mail.compose import bare_address, new_message, to_bytes
from gatewayd.runtime import Runtime, Worker
from gatewayd.store import OutboxMail

log = get_logger(__name__)


@dataclass(frozen=True)
class DeliveryResult:
    """What the relay said: accepted recipients, and refusals by recipient."""

    accepted: tuple[str, ...]
    temporary: dict[str, str]
    permanent: dict[str, str]


class TemporaryDeliveryError(Exception):
    """Relay unreachable or answered 4xx: try again later."""


class PermanentDeliveryError(Exception):
    """The relay refused the message for good (5xx)."""


SendFunc = Callable[[OutboxMail], Awaitable[DeliveryResult]]


def retry_delay(attempts: int, *, base: float = 30.0, cap: float = 3600.0) -> float:
    """Wait after ``attempts`` failed deliveries (0 = the first failed): 30 s,
    1 min, 2 min ... up to an hour, with jitter so a queue does not stampede."""
    return backoff_delay(max(0, attempts) + 1, base=base, cap=cap, low=0.75, high=1.25)


class DeliveryFenced(Exception):
    """This node's outbox lease ran out before the message was handed over (several nodes): not sent."""


class FencedSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client, asking ``fence`` right before DATA.

    A node frozen in the middle of a relay transaction (SIGSTOP, a VM pause)
    for longer than its outbox lease finds, when it runs again, that the
    other node holding the lease now may have sent this email: it sends no
    DATA (the connection is closed; the relay has no message), and the
    email stays pending for the lease holder (docs/deployment.md, Several
    nodes). Only a freeze during DATA itself is left.
    """

    def __init__(self, *, fence: Callable[[], bool], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fence = fence

    async def data(self, message: str | bytes, /, **kwargs: Any) -> SMTPResponse:
        if not self._fence():
            raise DeliveryFenced("the outbox lease passed to another node during the relay transaction")
        return await super().data(message, **kwargs)


class SmtpRelay:
    """Sends one stored email to ``[mail].relay`` with aiosmtplib."""

    def __init__(self, config_getter: Callable[[], Config], fence: Callable[[], bool] = lambda: True) -> None:
        self._config = config_getter  # reads the current config each time (reload)
        self._fence = fence

    def _tls_context(self, mail_cfg: MailConfig) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=mail_cfg.tls_ca_file or None)
        return ctx

    async def __call__(self, mail: OutboxMail) -> DeliveryResult:
        cfg = self._config().mail
        kwargs: dict[str, Any] = {
            "hostname": cfg.relay.host,
            "port": cfg.relay.port,
            "timeout": 60,
            "use_tls": cfg.security == "tls",
            "start_tls": cfg.security == "starttls",
        }
        if cfg.security != "none":
            kwargs["tls_context"] = self._tls_context(cfg)
        if cfg.username:
            kwargs["username"] = cfg.username
            kwargs["password"] = cfg.password
        try:
            # aiosmtplib.send, with the fence before DATA.
            async with FencedSMTP(fence=self._fence, **kwargs) as client:
                errors, _response = await client.sendmail(mail.mail_from, list(mail.recipients), mail.message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            temporary = {r.recipient: f"{r.code} {r.message}" for r in exc.recipients if r.code < 500}
            permanent = {r.recipient: f"{r.code} {r.message}" for r in exc.recipients if r.code >= 500}
            return DeliveryResult((), temporary, permanent)
        except aiosmtplib.SMTPResponseException as exc:
            text = f"{exc.code} {exc.message}"
            if exc.code >= 500:
                raise PermanentDeliveryError(text) from None
            raise TemporaryDeliveryError(text) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise TemporaryDeliveryError(f"relay {cfg.relay}: {exc.__class__.__name__}: {exc}") from None
        temporary = {r: f"{c} {m}" for r, (c, m) in errors.items() if c < 500}
        permanent = {r: f"{c} {m}" for r, (c, m) in errors.items() if c >= 500}
        accepted = tuple(r for r in mail.recipients if r not in errors)
        return DeliveryResult(accepted, temporary, permanent)


class OutboxWorker(Worker):
    """Service "outbox": delivers due emails, retries, reports hard failures."""

    name = "outbox"

    def __init__(self, rt: Runtime, *, send: SendFunc | None = None, poll_interval: float = 15.0, batch: int = 20) -> None:
        self.rt = rt
        self.send = send or SmtpRelay(lambda: rt.config, fence=lambda: rt.lease_fence(self.name))
        self.poll_interval = poll_interval
        self.batch = batch

    async def run(self) -> None:
        await self.rt.repeat("outbox", self._turn, batch=self.batch, interval=self.poll_interval)

    async def _turn(self) -> int:
        delivered = await self.deliver_due()
        await self._update_gauges()
        return delivered

    async def _update_gauges(self) -> None:
        depth, oldest = await self.rt.store.run(self.rt.store.outbox_stats)
        self.rt.metrics.outbox_depth.set(depth)
        self.rt.metrics.outbox_oldest.set(oldest or 0)

    async def deliver_due(self) -> int:
        store = self.rt.store
        due = await store.run(store.due_mail, self.rt.clock(), self.batch)
        for mail in due:
            # Stopping, or (several nodes) this node's outbox lease may have
            # passed to another node during a freeze: that node sends it.
            if self.rt.stopping.is_set() or not self.rt.lease_fence(self.name):
                break
            with bind_context(outbox_id=mail.id, mail_kind=mail.kind, ref=mail.ref):
                await self.deliver(mail)
        return len(due)

    async def deliver(self, mail: OutboxMail) -> None:
        store = self.rt.store
        try:
            result = await self.send(mail)
        except DeliveryFenced as exc:
            # Not sent, not an attempt: the node now holding the outbox sends it.
            log.warning("mail_fenced", error=str(exc))
            return
        except TemporaryDeliveryError as exc:
            delay = retry_delay(mail.attempts)
            await store.run(store.mark_mail_retry, mail.id, str(exc), self.rt.clock() + delay)
            self.rt.metrics.mail_deliveries.labels("deferred").inc()
            log.warning("mail_deferred", error=str(exc), retry_in=round(delay), attempts=mail.attempts + 1)
            return
        except PermanentDeliveryError as exc:
            await store.run(self._fail, mail, str(exc))
            self.rt.metrics.mail_deliveries.labels("failed").inc()
            log.error("mail_refused", error=str(exc), recipients=list(mail.recipients))
            return
        if result.temporary or result.permanent:
            await store.run(self._partial, mail, result)
        else:
            await store.run(store.mark_mail_sent, mail.id, delete_at_provider=self._delete_at_provider())
        outcome = "sent" if result.accepted else "deferred" if result.temporary else "failed"
        self.rt.metrics.mail_deliveries.labels(outcome).inc()
        log.info("mail_delivered", accepted=list(result.accepted), deferred=sorted(result.temporary), refused=sorted(result.permanent))

    def _delete_at_provider(self) -> bool:
        # A received fax relayed now is deleted at the provider by the poller
        # later (inbound.delete_after_relay, docs/inbound.md).
        return self.rt.config.inbound.delete_after_relay

    # These run on the store thread, each as one commit.

    def _fail(self, mail: OutboxMail, error: str, recipients: Sequence[str] | None = None) -> None:
        store = self.rt.store
        with store.transaction():
            store.mark_mail_failed(mail.id, error)
            self._notify_admin(mail, error, recipients or mail.recipients)

    def _partial(self, mail: OutboxMail, result: DeliveryResult) -> None:
        store = self.rt.store
        with store.transaction():
            if result.temporary:
                # Deferred recipients wait on the usual backoff schedule with the
                # attempt count kept: a fresh row due now would be retried at
                # once, for ever, as long as the relay says 4xx.
                error = "; ".join(f"{r}: {e}" for r, e in sorted(result.temporary.items()))
                retry_at = self.rt.clock() + retry_delay(mail.attempts)
                if result.accepted:
                    store.split_mail_deferred(mail.id, sorted(result.temporary), error, retry_at)
                    store.mark_mail_sent(mail.id, delete_at_provider=self._delete_at_provider())
                else:
                    # Nobody has it yet: the row stays pending (a received fax
                    # riding on it must not count as relayed).
                    store.defer_mail_recipients(mail.id, sorted(result.temporary), error, retry_at)
            elif result.accepted:
                store.mark_mail_sent(mail.id, delete_at_provider=self._delete_at_provider())
            else:
                store.mark_mail_failed(mail.id, "; ".join(f"{r}: {e}" for r, e in result.permanent.items()))
            if result.permanent:
                error = "; ".join(f"{r}: {e}" for r, e in sorted(result.permanent.items()))
                self._notify_admin(mail, error, sorted(result.permanent))

    def _notify_admin(self, mail: OutboxMail, error: str, recipients: Sequence[str]) -> None:
        cfg = self.rt.config.mail
        if mail.kind == "admin" or not cfg.admin:
            return  # never report a failed notice: that could loop
        msg = new_message(mail_from=cfg.from_, to=list(cfg.admin), subject=f"Fax gateway: email to {', '.join(recipients)} refused")
        msg.set_content(
            "The mail relay refused an email from the fax gateway for good.\n\n"
            f"Kind:        {mail.kind}\n"
            f"Reference:   {mail.ref or '-'}\n"
            f"Recipients:  {', '.join(recipients)}\n"
            f"Relay said:  {error}\n"
            f"Outbox id:   {mail.id}\n\n"
            "It will not be retried. Check the address (for a received fax: the\n"
            "extension's fax_mailto or [inbound] routes) and the relay's logs.\n"
        )
        self.rt.store.enqueue_mail("admin", bare_address(cfg.from_), list(cfg.admin), to_bytes(msg), ref=f"outbox:{mail.id}")
