"""Fax to email: the "inbound" service that polls the provider for received faxes (docs/inbound.md).

Every ``[inbound].poll_interval`` the poller lists the faxes received on each
fax extension in a moving time window, and relays each fax it has not seen
before exactly once:

* **Window.** ``[hwm - overlap, now + skew]`` in the provider's time zone
  (the client formats it). ``hwm`` (high-water mark) is the time of the last
  poll of that extension that handled every fax it listed; it is kept in the
  store's meta table (``inbound.hwm.<extension>``), so a restart continues
  where it stopped however long it was down. ``overlap`` is two poll
  intervals plus 10 minutes: a fax whose listing shows up late (its time is
  when the call started) or a skewed provider clock is still inside the
  next window. An extension polled for the first time looks back
  ``inbound.first_lookback`` (24 h by default), so a new installation does
  not mail out an old archive. Faxes seen twice (the overlap) are recognised by uuid
  in the received ledger.
* **Exactly once.** The ledger row and the outbox email are written in one
  commit (``Store.queue_received``). A crash before that commit leaves no
  trace and the fax is listed again (the high-water mark only moves after
  every fax of the window was handled); a crash after it finds the uuid in
  the ledger. The ledger says "relayed" only after the relay's 250
  (``Store.mark_mail_sent``).
* **Recipients.** ``[inbound.routes]`` by destination number, else the
  extension's ``fax_mailto`` (cached, re-read every ``mailto_refresh``),
  else ``[inbound].fallback_to``. A fax with no valid recipient is held in
  the ledger (not downloaded) and re-checked on every poll, so it goes out
  after the next ``fax_mailto`` refresh or configuration reload that gives
  it a recipient; it is downloaded then.
* **Deleting at the provider.** Only with ``inbound.delete_after_relay``:
  a fax the relay accepted (its ledger row ``relayed``, deletion
  ``pending``, one commit) is deleted at the provider by the next poll
  (``_delete_relayed``). A failing DELETE is logged and tried again with
  backoff; delivery never waits for it, and the ledger still knows the fax.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from gatewayd.backoff import backoff_delay
from gatewayd.config import Config, is_email_address
from gatewayd.fax_to_email.convert import PreparedFax, prepare_fax
from gatewayd.fax_to_email.message import FaxFacts, build_admin_notice, build_received_email, received_preview
from gatewayd.logs import bind_context, get_logger
from gatewayd.mail.compose import bare_address, to_bytes
from gatewayd.provider.client import (
    AuthError,
    FaxFile,
    NotFound,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
)
from gatewayd.runtime import Runtime
from gatewayd.store import ReceivedFax as LedgerFax
from gatewayd.store import StoreError

log = get_logger(__name__)

OVERLAP_EXTRA = 600.0  # added to two poll intervals: late listings, clock skew
FUTURE_SKEW = 600.0  # window end beyond our clock: a provider clock ahead of ours
HWM_KEY = "inbound.hwm.{}"
FLOOR_KEY = "inbound.floor.{}"  # the first window's start: no window reaches further back
HELD = "no_recipient"
HELD_BATCH = 500  # held faxes re-checked per poll


def _float_or_none(raw: str | None) -> float | None:
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class InboundFax:
    """One received fax, from the provider's list or from the ledger."""

    uuid: str
    extension_id: int
    caller_id: str
    destination: str
    received_at: datetime | None  # aware; None when the provider gave no time
    file_size: int | None
    first_seen: float = 0.0

    def ledger(self, recipients: Sequence[str] = (), note: str = "") -> LedgerFax:
        return LedgerFax(
            uuid=self.uuid,
            extension_id=self.extension_id,
            caller_id=self.caller_id,
            destination=self.destination,
            fax_time=self.received_at.isoformat(sep=" ") if self.received_at else "",
            file_size=self.file_size or 0,
            first_seen=self.first_seen,
            state="queued",
            recipients=tuple(recipients),
            outbox_id=None,
            relayed_at=None,
            note=note,
        )

    @classmethod
    def from_ledger(cls, row: LedgerFax) -> InboundFax:
        try:
            when = datetime.fromisoformat(row.fax_time) if row.fax_time else None
        except ValueError:
            when = None
        return cls(row.uuid, row.extension_id, row.caller_id, row.destination, when, row.file_size or None, row.first_seen)


@dataclass(frozen=True)
class Recipients:
    addresses: tuple[str, ...]
    source: str  # "route" | "fax_mailto" | "fallback" | "none"
    why_none: str = ""


def destination_digits(destination: str) -> str:
    """The number as [inbound.routes] keys are written: digits only."""
    return re.sub(r"\D", "", destination or "")


def parse_addresses(values: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(valid addresses without duplicates, invalid entries) from a fax_mailto list."""
    valid: list[str] = []
    invalid: list[str] = []
    seen: set[str] = set()
    for raw in values:
        for part in str(raw).split(","):
            address = part.strip()
            if not address:
                continue
            if not is_email_address(address):
                invalid.append(address)
            elif address.lower() not in seen:
                seen.add(address.lower())
                valid.append(address)
    return tuple(valid), tuple(invalid)


def _dedupe(addresses: Sequence[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    out = []
    for a in addresses:
        if a.lower() not in seen:
            seen.add(a.lower())
            out.append(a)
    return tuple(out)


class InboundPoller:
    """Service "inbound": fax to email."""

    name = "inbound"

    def __init__(
        self,
        rt: Runtime,
        *,
        first_lookback: float | None = None,
        overlap_extra: float = OVERLAP_EXTRA,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rt = rt
        self.first_lookback = first_lookback  # None: inbound.first_lookback, read at each use (reload)
        self.overlap_extra = overlap_extra
        self._monotonic = monotonic
        # ext -> (valid addresses, monotonic time read); read through, never shared
        self._mailto: dict[int, tuple[tuple[str, ...], float]] = {}
        self._discovered: tuple[tuple[int, ...], float] | None = None
        self._hooked = False

    # ------------------------------------------------------------ service

    async def start(self) -> None:
        if not self._hooked:
            self.rt.reload_hooks.append(self._on_reload)
            self._hooked = True

    async def stop(self) -> None:
        pass  # run() ends at rt.stopping; every step is one commit, nothing half done

    async def run(self) -> None:
        while not self.rt.stopping.is_set():
            delay = await self.poll_once()
            if await self.rt.nap("inbound", delay):
                return

    def _on_reload(self, config: Config) -> None:
        # Routes, fallback_to or the extension list may have changed: held
        # faxes may have a recipient now, and the extension list is re-read.
        self._discovered = None
        self.rt.wake("inbound")

    # --------------------------------------------------------------- poll

    async def poll_once(self) -> float:
        """One round over every extension and the held faxes; seconds until the next."""
        cfg = self.rt.config.inbound
        delay = cfg.poll_interval
        ok = True
        try:
            extensions = await self._extensions()
            for ext in extensions:
                if self.rt.stopping.is_set():
                    return delay
                with bind_context(extension=ext):
                    ok = await self._poll_extension(ext) and ok
            ok = await self._retry_held() and ok
            await self._delete_relayed()
        except RateLimited as exc:
            # The hourly quota is shared with sending: do not spin on it.
            log.warning("inbound_rate_limited", retry_after=round(exc.retry_after, 1))
            self.rt.metrics.rate_limit_waits.labels("inbound").inc()
            ok = False
            delay = max(delay, exc.retry_after)
        except ProviderError as exc:
            log.warning("inbound_poll_failed", error=str(exc))
            ok = False
        except StoreError as exc:
            log.error("inbound_store_failed", error=str(exc))
            ok = False
        await self._update_held_gauge()
        if ok:
            self.rt.health.polled("inbound")
        return delay

    async def _extensions(self) -> tuple[int, ...]:
        cfg = self.rt.config.inbound
        if cfg.extensions:
            return tuple(cfg.extensions)
        now = self._monotonic()
        if self._discovered is not None and now - self._discovered[1] < cfg.mailto_refresh:
            return self._discovered[0]
        try:
            found = tuple(sorted(e.id for e in await self.rt.provider.list_fax_extensions()))
        except (ProviderUnavailable, RateLimited) as exc:
            if self._discovered is None:
                raise
            log.warning("inbound_extensions_stale", error=str(exc))
            return self._discovered[0]
        if self._discovered is None or self._discovered[0] != found:
            log.info("inbound_extensions", extensions=list(found))
        self._discovered = (found, now)
        return found

    def _overlap(self) -> float:
        return 2 * self.rt.config.inbound.poll_interval + self.overlap_extra

    async def _poll_extension(self, ext: int) -> bool:
        """List the window and relay what is new; True when every fax was handled."""
        store = self.rt.store
        key = HWM_KEY.format(ext)
        now = self.rt.clock()
        hwm = _float_or_none(await store.run(store.get_meta, key))
        floor_key = FLOOR_KEY.format(ext)
        floor = _float_or_none(await store.run(store.get_meta, floor_key))
        if hwm is None:
            if floor is None:
                # The very first poll of this extension: look back
                # first_lookback, and never before that point again (the
                # overlap of later windows must not reach past it).
                # overlap_extra: the provider's clock may be behind ours; a
                # fax that arrives as we start must not fall below the floor.
                lookback = self.first_lookback if self.first_lookback is not None else self.rt.config.inbound.first_lookback
                floor = now - lookback - self.overlap_extra
                await store.run(store.set_meta, floor_key, repr(floor))
            start = floor
        else:
            # min(): a clock that jumped back must not leave a gap.
            start = min(hwm, now) - self._overlap()
            if floor is not None:
                start = max(start, floor)
        try:
            listed = await self.rt.provider.list_received_faxes(
                ext, datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(now + FUTURE_SKEW, UTC)
            )
        except (RateLimited, AuthError):
            raise
        except ProviderError as exc:
            log.warning("inbound_list_failed", error=str(exc))
            return False
        known = await store.run(store.known_received, [f.uuid for f in listed])
        complete = True
        for item in listed:
            if item.uuid in known:
                continue
            if self.rt.stopping.is_set():
                return False
            fax = InboundFax(item.uuid, ext, item.caller_id, item.destination, item.datetime, item.file_size, self.rt.clock())
            with bind_context(fax_uuid=fax.uuid):
                try:
                    await self._take(fax)
                except NotFound:
                    # Listed but gone (deleted by someone else, or a listing
                    # ahead of the file): nothing recorded, so the overlap
                    # lists it again while it is young; logged loudly.
                    log.error("inbound_fax_vanished")
                except (RateLimited, AuthError):
                    raise
                except ProviderError as exc:
                    log.warning("inbound_fax_failed", error=str(exc))
                    complete = False
                    if isinstance(exc, ProviderUnavailable):
                        break  # the provider is struggling: the rest waits for the next poll
                except StoreError:
                    raise  # the store is in trouble: nothing else can be recorded either
                except Exception:
                    # A bug triggered by one fax must not stop the others: it
                    # is retried every poll (the window stays open) and logged.
                    log.exception("inbound_fax_crashed")
                    complete = False
        if complete:
            await store.run(store.set_meta, key, repr(now))
        return complete

    # ------------------------------------------------------- one fax

    async def _take(self, fax: InboundFax) -> None:
        """Relay a new fax, or hold it when it has no recipient."""
        rcpts = await self.recipients_for(fax.extension_id, fax.destination)
        if not rcpts.addresses:
            store = self.rt.store
            await store.run(store.hold_received, fax.ledger(), f"no recipient: {rcpts.why_none}")
            log.warning("inbound_fax_held", caller=fax.caller_id, destination=fax.destination, why=rcpts.why_none)
            return
        await self._relay(fax, rcpts)

    async def _relay(self, fax: InboundFax, rcpts: Recipients) -> None:
        cfg = self.rt.config
        file = await self._download(fax)
        received_at = fax.received_at or datetime.fromtimestamp(fax.first_seen or self.rt.clock(), self._tz())
        admin = tuple(cfg.mail.admin)
        prepared: PreparedFax = await asyncio.to_thread(
            prepare_fax,
            file.data,
            attach=cfg.inbound.attach,
            page_size=cfg.documents.page_size,
            received_at=received_at,
            caller_id=fax.caller_id,
            expected_size=fax.file_size,
            admin_notified=bool(admin),
        )
        facts = FaxFacts(fax.uuid, fax.extension_id, fax.caller_id, fax.destination, received_at, prepared.pages)
        preview = None
        if cfg.mail.preview:  # drawn in a thread; None when the fax cannot be drawn (docs/inbound.md)
            preview = await asyncio.to_thread(received_preview, prepared.attachments, cfg.documents.page_size)
        message = to_bytes(build_received_email(
            mail_from=cfg.mail.from_, to=rcpts.addresses, facts=facts,
            attachments=prepared.attachments, notes=prepared.notes, preview=preview,
        ))
        notice: bytes | None = None
        if prepared.problem:
            log.error("inbound_fax_unconvertible", problem=prepared.problem, size=len(file.data), kind=prepared.kind)
            if admin:
                notice = to_bytes(build_admin_notice(
                    mail_from=cfg.mail.from_, to=admin, facts=facts, problem=prepared.problem, recipients=rcpts.addresses,
                ))
        note = f"delivered as the original file: {prepared.problem}" if prepared.problem else ""
        record = fax.ledger(rcpts.addresses, note)
        store = self.rt.store
        new = await store.run(self._queue, record, bare_address(cfg.mail.from_), message, notice, admin)
        if new:
            self.rt.metrics.inbound_relayed.inc()
            log.info("inbound_fax_queued", recipients=len(rcpts.addresses), via=rcpts.source, pages=prepared.pages, kind=prepared.kind)
        self.rt.wake("outbox")

    def _queue(self, record: LedgerFax, mail_from: str, message: bytes, notice: bytes | None, admin: tuple[str, ...]) -> bool:
        """On the store thread, one commit: the ledger row, its email, the admin notice."""
        store = self.rt.store
        with store.transaction():
            before = store.get_received(record.uuid)
            outbox_id = store.queue_received(record, mail_from, message)
            new = before is None or before.outbox_id != outbox_id
            if new and notice is not None:
                store.enqueue_mail("admin", mail_from, list(admin), notice, ref=record.uuid)
        return new

    async def _download(self, fax: InboundFax) -> FaxFile:
        file = await self.rt.provider.download_received_fax(fax.extension_id, fax.uuid)
        if fax.file_size and len(file.data) != fax.file_size:
            # A short read that still looked complete to HTTP: try once more
            # before believing it (the email then says the sizes differ).
            log.warning("inbound_size_mismatch", listed=fax.file_size, got=len(file.data))
            again = await self.rt.provider.download_received_fax(fax.extension_id, fax.uuid)
            if len(again.data) == fax.file_size or len(again.data) > len(file.data):
                file = again
        return file

    def _tz(self) -> tzinfo:
        return self.rt.provider.timezone

    # -------------------------------------------------------- recipients

    async def recipients_for(self, ext: int, destination: str) -> Recipients:
        """Route by destination, else fax_mailto, else fallback_to."""
        cfg = self.rt.config.inbound
        digits = destination_digits(destination)
        route = cfg.route_for(digits) if digits else None
        if route:
            return Recipients(_dedupe(route), "route")
        mailto = await self._mailto_for(ext)
        if mailto:
            return Recipients(mailto, "fax_mailto")
        if cfg.fallback_to:
            return Recipients(_dedupe(cfg.fallback_to), "fallback")
        why = f"no route for {digits or 'an unknown number'}, extension {ext} has no valid fax_mailto, [inbound].fallback_to is empty"
        return Recipients((), "none", why)

    async def _mailto_for(self, ext: int) -> tuple[str, ...]:
        """The extension's valid fax_mailto addresses, read at most every mailto_refresh."""
        refresh = self.rt.config.inbound.mailto_refresh
        now = self._monotonic()
        cached = self._mailto.get(ext)
        if cached is not None and now - cached[1] < refresh:
            return cached[0]
        try:
            raw = await self.rt.provider.get_fax_mailto(ext)
        except NotFound:
            raw = []  # not a fax extension (any more): no fax_mailto
        except (ProviderUnavailable, RateLimited) as exc:
            if cached is None:
                raise  # unknown recipients: the fax waits, it is not held
            log.warning("inbound_mailto_stale", extension=ext, error=str(exc))
            return cached[0]
        valid, invalid = parse_addresses(raw)
        if invalid:
            log.warning("inbound_mailto_invalid_addresses", extension=ext, dropped=list(invalid))
        if cached is None or cached[0] != valid:
            log.info("inbound_mailto", extension=ext, addresses=list(valid))
        self._mailto[ext] = (valid, now)
        return valid

    # ----------------------------------------------------- provider deletes

    async def _delete_relayed(self) -> None:
        """DELETE at the provider the faxes whose email the relay accepted
        (inbound.delete_after_relay). Never raises a provider error: a failed
        DELETE waits with backoff; the fax was delivered either way."""
        store = self.rt.store
        due = await store.run(store.due_provider_deletes, self.rt.clock())
        for item in due:
            if self.rt.stopping.is_set():
                return
            with bind_context(extension=item.extension_id, fax_uuid=item.uuid):
                try:
                    await self.rt.provider.delete_received_fax(item.extension_id, item.uuid)
                except NotFound:
                    log.info("inbound_deleted_at_provider", already_gone=True)  # deleted already (e.g. by a restored daemon's predecessor)
                except RateLimited as exc:
                    # The quota is shared with sending: the rest waits for a later poll.
                    await store.run(store.provider_delete_failed, item.uuid, self.rt.clock() + max(1.0, exc.retry_after))
                    log.warning("inbound_delete_failed", error=str(exc), attempts=item.attempts + 1)
                    return
                except ProviderError as exc:
                    delay = backoff_delay(item.attempts + 1, base=self.rt.config.inbound.poll_interval, cap=6 * 3600.0)
                    await store.run(store.provider_delete_failed, item.uuid, self.rt.clock() + delay)
                    log.warning("inbound_delete_failed", error=str(exc), attempts=item.attempts + 1, retry_in=round(delay))
                    continue
                else:
                    log.info("inbound_deleted_at_provider")
                await store.run(store.provider_delete_done, item.uuid)

    # ------------------------------------------------------------ held

    async def _retry_held(self) -> bool:
        """Relay held faxes that have a recipient now (fax_mailto or config changed)."""
        store = self.rt.store
        held = await store.run(store.list_received, state=HELD, limit=HELD_BATCH)
        ok = True
        for row in reversed(held):  # list_received is newest first
            if self.rt.stopping.is_set():
                break
            fax = InboundFax.from_ledger(row)
            with bind_context(extension=fax.extension_id, fax_uuid=fax.uuid):
                try:
                    rcpts = await self.recipients_for(fax.extension_id, fax.destination)
                    if rcpts.addresses:
                        log.info("inbound_held_fax_released", via=rcpts.source)
                        await self._relay(fax, rcpts)
                except NotFound:
                    # Kept in the ledger (never dropped); the note tells whoever looks.
                    log.error("inbound_held_fax_vanished")
                    await store.run(store.hold_received, fax.ledger(), "recipient found, but the provider no longer has the file")
                except (RateLimited, AuthError):
                    raise
                except ProviderError as exc:
                    log.warning("inbound_held_fax_failed", error=str(exc))
                    ok = False
                except StoreError:
                    raise
                except Exception:
                    log.exception("inbound_held_fax_crashed")
                    ok = False
        return ok

    async def _update_held_gauge(self) -> None:
        store = self.rt.store
        try:
            held = await store.run(store.count_received, HELD)
        except StoreError:
            return
        self.rt.metrics.inbound_held.set(held)


__all__ = ["InboundFax", "InboundPoller", "Recipients", "destination_digits", "parse_addresses"]
