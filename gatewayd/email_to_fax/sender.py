"""Submits queued fax jobs to the provider, at most once each (docs/provider.md, The fax POST is never repeated blindly).

The provider's fax POST has no idempotency key, so the order of events is
what keeps a fax from being sent twice:

1. ``queued -> submitting`` is committed *before* the POST (with the time the
   POST starts in ``submitted_at``);
2. the POST;
3. ``submitting -> submitted`` with the provider's id.

A job found in ``submitting`` (the answer was lost, or the daemon died between
1 and 3) is never POSTed again blindly: it is *reconciled* against the
provider's list of sent faxes (``GET .../fax/out/``). A fax to the same
number, created around the submission time and not owned by another job, is
adopted; only when the provider has no such fax, twice, a little while apart,
does the job go back to ``queued``.

One submission at a time per extension (so reconciliation of a job can never
race the POST of another job to the same number), a few extensions at once;
and no POST to a number while an earlier job to it is still unresolved, so a
reconciliation never has two of our faxes to the same number to choose from.

Several nodes on one PostgreSQL store (docs/provider.md, Several nodes): an
extension is drained only by the node holding its lease ``sender:<extension>``
(renewed while draining, released when done, so work spreads); the claim
(``queued -> submitting``, with ``claimed_by``) checks the lease in the same
transaction; a claim older than the lease can vouch for is never POSTed
(a node frozen between claim and POST); a node taking an extension over from
another holder reconciles that extension's ``submitting`` jobs first; and the
provider's 429 and credential holds are kept in the store, so every node waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gatewayd.backoff import backoff_delay
from gatewayd.config import Config
from gatewayd.documents.assemble import assemble_fax
from gatewayd.logs import bind_context, get_logger
from gatewayd.provider.client import (
    AmbiguousSubmit,
    AuthError,
    DocumentRefused,
    NotFound,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    Rejected,
    SentFax,
)
from gatewayd.runtime import Runtime
from gatewayd.store import ERROR, QUEUED, REJECTED, SUBMITTED, SUBMITTING, IdOwner, Job, StoreError, Taken

log = get_logger(__name__)


@dataclass(frozen=True)
class SenderTuning:
    """Timings of the sender; tests shorten them, production keeps the defaults."""

    idle_poll: float = 5.0  # how often the store is looked at without a wake-up (CLI jobs)
    concurrency: int = 4  # extensions submitting at the same time
    backoff_base: float = 5.0  # first wait after "provider unavailable"
    backoff_cap: float = 600.0  # ~10 minutes
    auth_backoff: float = 900.0  # credentials refused: an administrator must act
    recheck_delay: float = 5.0  # the provider's list may lag a just-created fax
    reconcile_delay: float = 2.0  # first look after a lost answer
    # A fax created by our POST carries a provider datetime between the start
    # of the POST and its end; this much clock skew is allowed either side.
    match_skew: float = 900.0
    stop_grace: float = 3.0  # a POST in flight at stop may finish this long
    # How long an extension stays with the node draining it without a
    # renewal; a node that froze loses it after this. None: storage.lease.
    lease: float | None = None


class SubmitFenced(Exception):
    """The POST was about to start when this node could no longer vouch for
    its extension lease (it was frozen, or its store link failed): not sent."""


LEASE_PREFIX = "sender:"  # + extension: the lease of the node draining it
HOLD_KEY = "sender_provider_hold"  # meta: no provider calls before this time, on any node


REQUEUE_REASON = "provider has no record of the submission"


class Sender:
    """Service "sender": queued jobs -> provider, and reconciliation of lost answers."""

    name = "sender"

    def __init__(self, rt: Runtime, tuning: SenderTuning | None = None, *, node: str = "",
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.rt = rt
        self.tuning = tuning or SenderTuning()
        self.node = node or rt.config.storage.node_name  # the lease holder and jobs.claimed_by
        self.lease = self.tuning.lease if self.tuning.lease is not None else rt.config.storage.lease
        self._monotonic = monotonic
        # extension -> monotonic time its lease surely lasts until (taken
        # before the store call that renewed it): what the fence trusts.
        self._lease_until: dict[int, float] = {}
        self._lost: set[int] = set()  # extensions whose lease went to another node mid-drain
        self._workers: dict[int, asyncio.Task[None]] = {}  # extension -> its drain task
        self._slots = asyncio.Semaphore(self.tuning.concurrency)
        self._failures = 0  # consecutive "provider unavailable", for the backoff
        self._hold_until = 0.0  # provider rate limit or auth trouble: no calls before this
        self._first_miss: dict[int, float] = {}  # job id -> when reconciliation first found nothing

    # ---------------------------------------------------------------- service

    async def start(self) -> None:
        # Jobs this node left in "submitting" in a previous run (and jobs no
        # node claimed: older ones, or restored) are reconciled first: make
        # them due now, whatever backoff they carried. Another live node's
        # are its own; a node taking over a dead one's extension reconciles
        # them then (_pass).
        store = self.rt.store
        stuck = await store.run(store.reconcile_now, self.rt.clock(), claimed_by=[self.node, ""])
        if stuck:
            log.info("sender_reconcile_pending", jobs=stuck)

    async def run(self) -> None:
        try:
            while not self.rt.stopping.is_set():
                pause = self.tuning.idle_poll
                try:
                    pause = await self._pass()
                except Exception:
                    # The store may be failing; look again later, never spin.
                    log.exception("sender_pass_failed")
                    pause = min(self.tuning.backoff_cap, max(self.tuning.backoff_base, 5.0))
                if await self.rt.nap("sender", pause):
                    break
        finally:
            await self._finish_workers()

    async def stop(self) -> None:
        # run() returns when rt.stopping is set; in-flight POSTs get a grace.
        await self._finish_workers()

    # -------------------------------------------------------------- scheduling

    async def _pass(self) -> float:
        """Start a drain task for each extension with due work; return the nap."""
        store = self.rt.store
        now = self.rt.clock()
        self._workers = {ext: t for ext, t in self._workers.items() if not t.done()}
        hold = await self._held_until()
        if now < hold:
            return hold - now
        due = await store.run(store.due_jobs, SUBMITTING, now, 200)
        due += await store.run(store.due_jobs, QUEUED, now, 200)
        by_extension: dict[int, list[int]] = {}
        for job in due:
            by_extension.setdefault(job.extension, []).append(job.id)
        for lease in await store.run(store.leases):
            # Another node stopped renewing: its extension is taken over even
            # with nothing due, as it may have left a POST unresolved.
            if lease.name.startswith(LEASE_PREFIX) and lease.holder != self.node and lease.expires_at <= now:
                with contextlib.suppress(ValueError):
                    by_extension.setdefault(int(lease.name.removeprefix(LEASE_PREFIX)), [])
        for extension, ids in by_extension.items():
            if extension in self._workers:
                continue
            if len(self._workers) >= self.tuning.concurrency:
                break  # leave the other extensions' leases to other nodes meanwhile
            taken = await self._take_lease(extension)
            if not taken.held:
                continue  # another node drains this extension
            if taken.previous:
                # Its previous holder stopped renewing (died or froze) and may
                # have left a POST unresolved: reconcile before anything else.
                stuck = await store.run(store.reconcile_now, self.rt.clock(), extension=extension)
                log.warning("sender_extension_taken_over", extension=extension, previous=taken.previous, reconcile=stuck)
                ids = [*stuck, *(i for i in ids if i not in stuck)]
            self._workers[extension] = asyncio.create_task(self._drain(extension, ids), name=f"sender-{extension}")
        next_due = await store.run(store.next_submission_due)
        if next_due is None or next_due <= self.rt.clock():
            # Nothing, or only work a running drain task already has: it wakes
            # us when it ends. No polling while a long upload runs.
            return self.tuning.idle_poll
        return max(0.05, min(self.tuning.idle_poll, next_due - self.rt.clock()))

    async def _finish_workers(self) -> None:
        tasks = [t for t in self._workers.values() if not t.done()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.tuning.stop_grace)
        for task in pending:
            # A POST cut here leaves its job in "submitting": reconciled at the next start.
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    async def _drain(self, extension: int, job_ids: Sequence[int]) -> None:
        """One extension's due jobs, one at a time, in order (submitting first),
        while this node holds the extension's lease."""
        store = self.rt.store
        self._lost.discard(extension)
        keeper = asyncio.create_task(self._keep_lease(extension), name=f"sender-lease-{extension}")
        try:
            for job_id in job_ids:
                if self.rt.stopping.is_set() or extension in self._lost or self.rt.clock() < await self._held_until():
                    return
                try:
                    async with self._slots:
                        await self._handle(job_id)
                except Exception as exc:
                    # A bug or a failing store: this job waits (a job already in
                    # "submitting" is reconciled later, never resent), the others
                    # go on after a pause, so a persistent failure cannot spin.
                    # The database away is no bug: its job is looked at again
                    # soon, not after the long cap (docs/operations.md, Database outage).
                    outage = isinstance(exc, StoreError)
                    if outage:
                        log.error("sender_store_unavailable", job_id=job_id, extension=extension, error=str(exc))
                    else:
                        log.exception("sender_job_failed", job_id=job_id, extension=extension)
                    wait = self.tuning.backoff_base if outage else self.tuning.backoff_cap
                    with contextlib.suppress(Exception):
                        await store.run(store.update_job, job_id, next_attempt_at=self.rt.clock() + wait)
                    if await self.rt.sleep(self.tuning.backoff_base):
                        return
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await keeper
            # Idle: another node may take the extension now (work spreads);
            # this one takes it again at its next pass if it is still free.
            with contextlib.suppress(Exception):
                await store.run(store.release_lease, LEASE_PREFIX + str(extension), self.node)
            self._lease_until.pop(extension, None)
            self.rt.wake("sender")  # look for more right away

    # ------------------------------------------------------------------ leases

    async def _take_lease(self, extension: int) -> Taken:
        """Take or renew the extension's lease; note until when it surely lasts."""
        store = self.rt.store
        before = self._monotonic()
        taken = await store.run(store.take_lease, LEASE_PREFIX + str(extension), self.node, self.lease)
        if taken.held:
            self._lease_until[extension] = before + self.lease
        return taken

    async def _keep_lease(self, extension: int) -> None:
        """Renew the lease every third of its period while the drain runs (a long upload included)."""
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                taken = await self._take_lease(extension)
            except Exception:
                # The fence stops a POST once the lease can no longer be vouched for.
                log.exception("sender_lease_renewal_failed", extension=extension)
                continue
            if not taken.held:
                self._lost.add(extension)
                log.warning("sender_lease_lost", extension=extension, holder=taken.lease.holder if taken.lease else "")
                return

    def _fence(self, extension: int) -> Callable[[], None]:
        """Called by the client right before the POST: refuse it unless the
        lease lasts a third of its period more by this node's monotonic clock,
        so a node frozen between its claim and its POST never sends a job
        another node may already be reconciling (docs/provider.md, Several nodes)."""
        def check() -> None:
            left = self._lease_until.get(extension, 0.0) - self._monotonic()
            if left < self.lease / 3:
                raise SubmitFenced(f"the lease of extension {extension} cannot be vouched for ({left:.1f} s left)")
        return check

    async def _still_holds(self, extension: int) -> bool:
        """Whether this node still holds the extension (checked before reconciliation changes a job)."""
        store = self.rt.store
        held = await store.run(store.holds_lease, LEASE_PREFIX + str(extension), self.node)
        if not held:
            self._lost.add(extension)
            log.warning("sender_lease_lost", extension=extension)
        return held

    async def _held_until(self) -> float:
        """No provider calls before this time: this node's hold or another node's (kept in the store)."""
        store = self.rt.store
        shared = await store.run(store.hold_until, HOLD_KEY)
        self._hold_until = max(self._hold_until, shared)
        return self._hold_until

    async def _hold(self, until: float) -> None:
        """Every node waits until ``until`` (the provider's 429, or refused credentials)."""
        store = self.rt.store
        self._hold_until = max(self._hold_until, until)
        try:
            await store.run(store.extend_hold, HOLD_KEY, until)
        except Exception:
            log.exception("sender_hold_not_shared")  # this node waits all the same

    async def _handle(self, job_id: int) -> None:
        store = self.rt.store
        job = await store.run(store.get_job, job_id)
        if job.finished_at is not None:
            return
        with bind_context(job_id=job.id, extension=job.extension):
            if job.state == QUEUED:
                await self._submit(job)
            elif job.state == SUBMITTING:
                await self._reconcile(job)

    # -------------------------------------------------------------- submitting

    async def _submit(self, job: Job) -> None:
        store, rt = self.rt.store, self.rt
        # The provider's list tells faxes apart only by number and time: while
        # an earlier upload to this number is unresolved, a second one could
        # be adopted by the wrong job (one document sent twice, one never).
        blocker = await store.run(store.unresolved_submission, job.extension, job.dst_num, exclude=job.id)
        if blocker is not None:
            wait_until = max(rt.clock() + 1.0, blocker.next_attempt_at or 0.0)
            await store.run(store.update_job, job.id, next_attempt_at=wait_until,
                            reason=f"waiting for job {blocker.id} to the same number to be reconciled")
            return
        try:
            document = await self._document(job)
        except StoreError as exc:
            log.error("sender_document_missing", error=str(exc))
            await store.run(store.transition, job.id, ERROR, "the fax document is missing from the state directory", expect=[QUEUED])
            return
        except Exception as exc:
            log.exception("sender_document_unusable")
            await store.run(store.transition, job.id, ERROR, f"the fax document cannot be prepared: {type(exc).__name__}", expect=[QUEUED])
            return
        started = rt.clock()
        # Committed before the POST: a crash from here on is reconciled, not
        # resent. Only while this node holds the extension's lease a third of
        # a period more (docs/provider.md, Several nodes).
        claim = await store.run(
            store.claim_job, job.id, self.node, LEASE_PREFIX + str(job.extension), self.lease / 3,
            reason="submitting to the provider", submitted_at=started, next_attempt_at=started + self._reconcile_after(),
        )
        if claim == "lease":
            self._lost.add(job.extension)
            log.warning("sender_lease_lost", extension=job.extension)
            return
        if claim != "claimed":
            return  # canceled or taken meanwhile
        try:
            fax = await rt.provider.send_fax(job.extension, job.dst_num, document, f"fax-{job.id}.pdf", fence=self._fence(job.extension))
        except SubmitFenced as exc:
            # Nothing was sent, but another node may hold the extension by now:
            # the job stays in "submitting" and is reconciled by the holder.
            self._lost.add(job.extension)
            log.warning("sender_post_fenced", error=str(exc))
            return
        except AmbiguousSubmit as exc:
            rt.metrics.submissions.labels("ambiguous").inc()
            log.warning("sender_answer_lost", error=str(exc))
            await store.run(store.update_job, job.id, reason="the provider's answer was lost; checking its list before any resend",
                            next_attempt_at=rt.clock() + self.tuning.reconcile_delay)
            rt.wake("sender")
            return
        except ProviderUnavailable as exc:  # nothing was sent
            self._failures += 1
            delay = self._backoff()
            rt.metrics.submissions.labels("unavailable").inc()
            log.warning("sender_provider_unavailable", error=str(exc), retry_in=round(delay, 1))
            await self._requeue(job, f"provider unavailable: {exc}", delay)
            return
        except RateLimited as exc:  # refused before anything was created
            rt.metrics.rate_limit_waits.labels("provider").inc()
            wait = max(1.0, float(exc.retry_after))
            await self._hold(rt.clock() + wait)
            log.warning("sender_rate_limited", retry_after=round(wait, 1))
            await self._requeue(job, f"provider rate limit, waiting {int(wait)} s", wait)
            return
        except AuthError as exc:
            # Credentials or rights: no fax was created; nothing a retry soon fixes.
            wait = self.tuning.auth_backoff
            await self._hold(rt.clock() + wait)
            rt.metrics.submissions.labels("auth_error").inc()
            log.error("sender_provider_auth_refused", error=str(exc), retry_in=int(wait),
                      hint="check provider.client_id/client_secret and the application's rights")
            await self._requeue(job, f"provider refused our credentials: {exc}", wait)
            return
        except (Rejected, NotFound, DocumentRefused) as exc:
            rt.metrics.submissions.labels("rejected").inc()
            words = _provider_words(exc)
            log.warning("sender_rejected", reason=words)
            await store.run(store.transition, job.id, REJECTED, f"refused by the provider: {words}", expect=[SUBMITTING])
            return
        except ValueError as exc:  # e.g. an empty dst_num: refused locally, nothing sent
            rt.metrics.submissions.labels("rejected").inc()
            await store.run(store.transition, job.id, REJECTED, f"cannot be submitted: {exc}", expect=[SUBMITTING])
            return
        except ProviderError as exc:  # any other client error: may or may not have been sent
            log.error("sender_submit_unclear", error=str(exc))
            await store.run(store.update_job, job.id, reason=f"unclear provider error, reconciling: {exc}",
                            next_attempt_at=rt.clock() + self.tuning.reconcile_delay)
            return
        self._failures = 0
        await self._mark_submitted(job, fax, "accepted by the provider", started)
        rt.metrics.submissions.labels("ok").inc()
        log.info("sender_submitted", provider_id=fax.id, number=job.number, pages=job.pages)

    async def _document(self, job: Job) -> bytes:
        """The PDF to POST: the recipient's cover, then the shared attachments, with the page header line.

        Joined here, not at intake, so the attachments are stored once for
        every recipient (docs/architecture.md, Storage layout); the header is
        stamped at submission, as a fax machine stamps its TSI line.
        """
        store, config = self.rt.store, self.rt.config
        parts = [await store.run(store.read_document, job.document)]
        if job.cover:
            parts.insert(0, await store.run(store.read_document, job.cover))
        header = config.documents.header
        if len(parts) == 1 and not header:
            return parts[0]
        values = header_values(config, job.number, self.rt.clock())
        return await asyncio.to_thread(assemble_fax, parts, header=header, values=values)

    async def _mark_submitted(self, job: Job, fax: SentFax, why: str, started: float | None) -> None:
        store = self.rt.store
        # An id an old job still holds was handed out again by the provider
        # (docs/architecture.md, "Provider ids handed out again"): the old job
        # lets go of it in the same commit, so this live job is never stranded.
        _, released = await store.run(
            store.take_provider_id, job.id, SUBMITTED, f"{why} as fax {fax.id}", expect=[SUBMITTING],
            provider_id=fax.id, provider_status=fax.status, submitted_at=started or self.rt.clock(),
            attempts=job.attempts + 1, next_attempt_at=None, reconcile_until=None,
        )
        for old in released:
            if old.was_finished:
                log.warning("sender_provider_id_reused", provider_id=fax.id, old_job_id=old.job_id, old_state=old.state,
                            hint="the provider handed out an id a finished job had; the old job keeps it in its history only")
            else:
                log.error("sender_provider_id_taken_from_live_job", provider_id=fax.id, old_job_id=old.job_id, old_state=old.state,
                          hint="the provider reused the id of a fax it had accepted for another job (an account reset or switch?); "
                               "that job can no longer be followed and is now 'unknown'")
        self._first_miss.pop(job.id, None)

    async def _requeue(self, job: Job, reason: str, delay: float) -> None:
        store = self.rt.store
        await store.run(store.transition, job.id, QUEUED, reason, expect=[SUBMITTING],
                        next_attempt_at=self.rt.clock() + delay, submitted_at=None)

    def _backoff(self) -> float:
        return backoff_delay(self._failures, base=self.tuning.backoff_base, cap=self.tuning.backoff_cap, low=0.8, high=1.2)

    def _reconcile_after(self) -> float:
        # If this process loses track of a POST (it never does short of a
        # crash), the job is looked at again only after the POST's timeout.
        timeout = float(self.rt.config.provider.timeout)
        return timeout * 2 + 30.0

    # ----------------------------------------------------------- reconciling

    async def _reconcile(self, job: Job) -> None:
        """A job whose POST may or may not have created a fax: look before resending."""
        store, rt = self.rt.store, self.rt
        started = job.submitted_at if job.submitted_at is not None else job.updated_at
        window = self._window(started, job.reconcile_until)
        try:
            faxes = await rt.provider.list_sent_faxes(job.extension, since=window[0])
        except RateLimited as exc:
            rt.metrics.rate_limit_waits.labels("provider").inc()
            await self._hold(rt.clock() + max(1.0, exc.retry_after))
            await self._reconcile_later(job, f"provider rate limit while reconciling: {exc}", max(1.0, exc.retry_after))
            return
        except (ProviderError, ValueError) as exc:
            # Never resend on an unknown: the job stays in "submitting".
            self._failures += 1
            await self._reconcile_later(job, f"cannot reconcile yet: {exc}", self._backoff())
            return
        self._failures = 0
        owners = await store.run(store.provider_id_owners, job.extension)
        owned = {fax_id for fax_id, owner in owners.items() if owner.job_id != job.id}
        # An id a finished job holds is that job's fax only if it matches its
        # number and its own submission time; otherwise the provider reused it.
        owned -= {f.id for f in faxes if f.id in owned and self._reused(f, owners[f.id])}
        candidates = sorted(
            (f for f in faxes if _same_number(f.dst_num, job.dst_num) and f.id not in owned
             and f.datetime is not None and window[0] <= f.datetime <= window[1]),
            key=lambda f: (f.datetime, f.id),
        )
        if not await self._still_holds(job.extension):
            return  # another node has the extension now: it reconciles
        if candidates:
            chosen = candidates[0]
            if len(candidates) > 1:
                log.warning("sender_reconcile_several", candidates=[f.id for f in candidates], adopted=chosen.id)
            await self._mark_submitted(job, chosen, "found at the provider after a lost answer", job.submitted_at)
            rt.metrics.submissions.labels("adopted").inc()
            log.info("sender_reconciled", provider_id=chosen.id, status=chosen.status)
            return
        first = self._first_miss.get(job.id)
        if first is None:
            # The list may lag the POST: look once more before concluding.
            self._first_miss[job.id] = rt.clock()
            await self._reconcile_later(job, "no matching fax at the provider yet; checking again", self.tuning.recheck_delay)
            return
        self._first_miss.pop(job.id, None)
        near = [f for f in faxes if _same_number(f.dst_num, job.dst_num) and f.id not in owned]
        if near:
            # Same number, unowned, outside the window: a clock or time-zone
            # problem would look like this. Logged for the administrator.
            log.warning("sender_reconcile_outside_window", faxes=[(f.id, f.datetime.isoformat() if f.datetime else None) for f in near[:5]],
                        window=[w.isoformat() for w in window])
        moved = await store.run(store.transition, job.id, QUEUED, REQUEUE_REASON, expect=[SUBMITTING],
                                next_attempt_at=rt.clock(), submitted_at=None, reconcile_until=None)
        if moved:
            rt.metrics.submissions.labels("requeued").inc()
            log.info("sender_requeued_after_reconcile")

    def _reused(self, fax: SentFax, owner: IdOwner) -> bool:
        """True when a finished job holds this id but the listed fax cannot be
        the one it sent (another number, or created outside its submission's
        window): the provider handed the id out again."""
        if not owner.finished:
            return False
        if not _same_number(fax.dst_num, owner.dst_num):
            return True
        if owner.submitted_at is None or fax.datetime is None:
            return False
        lo, hi = self._window(owner.submitted_at)
        return not (lo <= fax.datetime <= hi)

    async def _reconcile_later(self, job: Job, reason: str, delay: float) -> None:
        store = self.rt.store
        log.info("sender_reconcile_deferred", reason=reason, retry_in=round(delay, 1))
        await store.run(store.update_job, job.id, reason=reason, next_attempt_at=self.rt.clock() + delay)

    def _window(self, started: float, until: float | None = None) -> tuple[dt.datetime, dt.datetime]:
        """Provider datetimes a fax created by the POST started at ``started`` may carry.

        ``until``: after a restore the upload may have been made by the old
        daemon any time up to the restore (docs/operations.md, Backup and restore).
        """
        skew = self.tuning.match_skew
        timeout = float(self.rt.config.provider.timeout)
        lo = dt.datetime.fromtimestamp(started - skew, dt.UTC)
        hi = dt.datetime.fromtimestamp(max(started, until or started) + timeout + skew, dt.UTC)
        # The provider gives whole seconds: widen by one so truncation never excludes.
        return lo - dt.timedelta(seconds=1), hi + dt.timedelta(seconds=1)


def header_values(config: Config, number: str, now: float) -> dict[str, str]:
    """The page header line's placeholders other than {page} and {pages} (docs/documents.md, Page header line)."""
    return {
        "organisation": config.cover.organisation,
        "phone": config.cover.phone,
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(now)),
        "to": number,
    }


def _same_number(a: str, b: str) -> bool:
    # The provider may echo the number with or without a leading "+".
    return a.lstrip("+") == b.lstrip("+")


def _provider_words(exc: ProviderError) -> str:
    if isinstance(exc, DocumentRefused):
        return str(exc)
    return exc.message or str(exc)


__all__ = ["HOLD_KEY", "LEASE_PREFIX", "REQUEUE_REASON", "Sender", "SenderTuning", "SubmitFenced", "header_values"]
