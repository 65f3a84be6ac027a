"""Follows every submitted fax at the provider until it ends (docs/reports.md, Job states after submission).

Service ``Tracker`` ("tracker") watches the jobs in ``AT_PROVIDER`` states
(submitted, sending, and failed awaiting an automatic retry) and moves them
along what the provider says, recording every change with its reason.

Economy (the provider counts requests per hour): one poll lists each
extension's sent faxes once (``list_sent_faxes``) and matches our jobs in it
by provider id, whatever the number of jobs. Only a job missing from the list
costs one more ``get_sent_fax``; if the provider answers 404 there too, it no
longer knows the fax and the job ends ``unknown``. The provider's list has no
server-side filter, so on an extension with a long history the list is many
pages: when fewer jobs are in flight there than the list has pages, those jobs
are fetched one by one instead. Failed jobs waiting for their automatic retry
are not polled on their own (the retry action tells whether they are still
"failed"). Per poll interval that is at most
``sum over extensions of min(moving jobs, list pages) + jobs missing from the
list`` requests, where "moving" means submitted or sending. Polls never come closer than ``status_poll_interval``; when a poll
changes nothing the interval doubles up to ``max_backoff`` times, and it is
back to the base as soon as something changes or a new job arrives. A 429
stops all polling until the provider's reset time has passed.

Automatic retries: a fax the provider reports ``failed`` is retried with
``action=retry`` after ``retry_delay``, up to ``auto_retries`` times; then it
is failed for good (``finished_at`` set, so it gets its report).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gatewayd.backoff import backoff_delay
from gatewayd.logs import bind_context, get_logger
from gatewayd.provider.client import (
    PAGE_SIZE,
    AuthError,
    NotFound,
    ProviderError,
    RateLimited,
    Rejected,
    SentFax,
)
from gatewayd.runtime import Runtime, Worker
from gatewayd.store import AT_PROVIDER, CANCELED, ERROR, FAILED, SENDING, SENT, SUBMITTED, UNKNOWN, Job

log = get_logger(__name__)

NO_LONGER_KNOWN = "the provider no longer knows this fax; its outcome is unknown"

# Provider status words (docs/provider.md).
P_READY = "ready_to_send"
P_SENDING = "sending"
P_SENT = "sent"
P_FAILED = "failed"
P_CANCELED = "canceled"
P_ERROR = "error"


def attempts_text(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


@dataclass(frozen=True)
class Change:
    """What one observation of the provider does to one job."""

    to_state: str  # may equal the job's state (only fields change, no history entry)
    reason: str  # "" = no history entry
    fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_transition(self) -> bool:
        return bool(self.reason)


def plan_change(job: Job, status: str, *, auto_retries: int, retry_delay: float, now: float) -> Change | None:
    """The change the provider's ``status`` calls for on ``job``; None when none.

    Pure, so the mapping is tested on its own. ``job`` is in an AT_PROVIDER
    state and not finished.
    """
    fields: dict[str, Any] = {"provider_status": status}
    # A job that was waiting for its automatic retry but is now anywhere other
    # than failed/canceled/error has been retried at the provider already (our
    # retry whose bookkeeping was lost in a crash, or someone else's): count
    # that attempt, so the retry budget is never exceeded.
    retried_outside = job.state == FAILED and status in (P_READY, P_SENDING, P_SENT)
    attempts = job.attempts + 1 if retried_outside else job.attempts
    if retried_outside:
        fields.update(attempts=attempts, auto_retries_used=job.auto_retries_used + 1, next_attempt_at=None)

    if status == P_READY:
        if retried_outside:
            return Change(SUBMITTED, f"the provider has the fax queued again (attempt {attempts})", fields)
        if job.state == SENDING:
            return Change(SUBMITTED, "the provider queued the fax again", fields)
        if job.provider_status != status:
            return Change(job.state, "", fields)
        return None
    if status == P_SENDING:
        if job.state == SENDING and not retried_outside:
            return None if job.provider_status == status else Change(job.state, "", fields)
        return Change(SENDING, f"the provider is sending the fax (attempt {attempts})", fields)
    if status == P_SENT:
        return Change(SENT, f"the provider reports the fax as sent, after {attempts_text(attempts)}", fields)
    if status == P_CANCELED:
        return Change(CANCELED, "canceled at the provider", fields)
    if status == P_ERROR:
        return Change(ERROR, f"the provider reports an error sending the fax (attempt {attempts})", fields)
    if status == P_FAILED:
        if job.state == FAILED:
            return None  # already waiting for its retry
        if job.auto_retries_used < auto_retries:
            n = job.auto_retries_used + 1
            fields["next_attempt_at"] = now + retry_delay
            return Change(
                FAILED,
                f"the provider could not deliver the fax (attempt {attempts}); "
                f"automatic retry {n} of {auto_retries} in {_duration(retry_delay)}",
                fields,
            )
        fields.update(finished_at=now, next_attempt_at=None)
        no_more = "no automatic retries are configured" if auto_retries == 0 else "no automatic retries left"
        return Change(FAILED, f"the provider could not deliver the fax after {attempts_text(attempts)}; {no_more}", fields)
    # A status word we do not know: keep it visible, change nothing else.
    if job.provider_status != status:
        log.warning("tracker_unknown_provider_status", job_id=job.id, status=status)
        return Change(job.state, "", fields)
    return None


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


@dataclass
class PollStats:
    """What one poll did (for tests, logs and the economy bound)."""

    lists: int = 0
    gets: int = 0
    changes: int = 0


class Tracker(Worker):
    """Service "tracker": follows jobs at the provider until they end."""

    name = "tracker"

    def __init__(self, rt: Runtime, *, max_backoff: float = 4.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.rt = rt
        self.max_backoff = max_backoff
        # Poll pacing runs on a monotonic clock (a wall-clock step must not
        # stall or hurry polling); stored times (next_attempt_at) use rt.clock.
        self._mono = monotonic
        self._quiet_polls = 0  # polls in a row that changed nothing: they space out the next ones
        self._last_poll: float | None = None
        self._blocked_until = 0.0
        self._known: set[int] = set()
        # Pages the last full list of each extension took; decides list vs
        # one GET per job (see the module docstring).
        self._list_pages: dict[int, int] = {}
        # When the failed jobs waiting for an automatic retry are due (job id -> rt.clock time).
        self._retry_at: dict[int, float] = {}

    @property
    def _factor(self) -> float:
        """The poll interval's multiple: 1, then doubling with each quiet poll, up to ``max_backoff``."""
        if self._quiet_polls == 0:
            return 1.0
        return backoff_delay(self._quiet_polls, base=2.0, cap=self.max_backoff, low=1.0, high=1.0)

    # ---------------------------------------------------------------- loop

    async def run(self) -> None:
        while not self.rt.stopping.is_set():
            wait = await self.step()
            if await self.rt.nap("tracker", wait):
                return

    async def step(self) -> float:
        """One turn: poll if due, run due retries; returns how long to sleep."""
        store = self.rt.store
        cfg = self.rt.config.provider  # re-read each turn: reload replaces it
        base = float(cfg.status_poll_interval)
        jobs = await store.run(store.jobs_in_states, AT_PROVIDER)
        ids = {j.id for j in jobs}
        if ids - self._known:
            self._quiet_polls = 0  # new work: follow it at the base pace
        self._known = ids
        now = self._mono()
        poll_due = self._last_poll is None or now >= self._last_poll + base * self._factor
        if jobs and poll_due and now >= self._blocked_until:
            await self._guarded_poll(jobs, base)
        elif not jobs:
            self._quiet_polls = 0
            self.rt.health.polled("tracker")  # nothing to follow is a healthy state
        if self._mono() >= self._blocked_until:
            await self._guarded_retries()
        return self._next_wait(base)

    def _next_wait(self, base: float) -> float:
        wait = base  # look at the store at least once per base interval
        now = self._mono()
        if self._last_poll is not None and self._known:
            wait = min(wait, self._last_poll + base * self._factor - now)
        if self._retry_at:
            wait = min(wait, min(self._retry_at.values()) - self.rt.clock())
        wait = max(wait, self._blocked_until - now)
        return max(0.0, wait)

    async def _guarded_poll(self, jobs: Sequence[Job], base: float) -> None:
        try:
            stats = await self.poll(jobs)
        except RateLimited as exc:
            self._rate_limited(exc, base)
            return
        except AuthError as exc:
            log.error("tracker_provider_auth_failed", error=str(exc))
        except ProviderError as exc:
            log.warning("tracker_poll_failed", error=str(exc))
        else:
            self.rt.health.polled("tracker")
            if stats.changes:
                self._quiet_polls = 0
            else:
                self._quiet_polls += 1
        self._last_poll = self._mono()

    def _rate_limited(self, exc: RateLimited, base: float) -> None:
        wait = max(float(exc.retry_after), base)
        self._blocked_until = self._mono() + wait
        self._last_poll = self._mono()
        self.rt.metrics.rate_limit_waits.labels("provider").inc()
        log.warning("tracker_rate_limited", retry_after=round(float(exc.retry_after), 1), waiting=round(wait, 1))

    # ---------------------------------------------------------------- poll

    async def poll(self, jobs: Sequence[Job]) -> PollStats:
        """Look at every job once: one list per extension, GETs only for the missing."""
        stats = PollStats()
        by_ext: dict[int, list[Job]] = defaultdict(list)
        for job in jobs:
            if job.provider_id is None:
                log.warning("tracker_job_without_provider_id", job_id=job.id, state=job.state)
                continue
            by_ext[job.extension].append(job)
        provider = self.rt.provider
        for ext, ext_jobs in sorted(by_ext.items()):
            # A failed job waiting for its automatic retry costs nothing
            # extra: the provider keeps it "failed", and the retry action
            # itself says if that is no longer so. It is matched when the
            # list is fetched anyway.
            moving = [j for j in ext_jobs if j.state != FAILED]
            if not moving:
                continue
            seen: dict[int, SentFax] | None = None
            if len(moving) >= self._list_pages.get(ext, 1):
                listed = await provider.list_sent_faxes(ext)
                stats.lists += 1
                self._list_pages[ext] = len(listed) // PAGE_SIZE + 1
                seen = {f.id: f for f in listed}
            for job in ext_jobs:
                fax_id = job.provider_id
                assert fax_id is not None  # jobs without one were left out above
                fax = seen.get(fax_id) if seen is not None else None
                if fax is None:
                    if job.state == FAILED:
                        continue
                    stats.gets += 1
                    try:
                        fax = await provider.get_sent_fax(ext, fax_id)
                    except NotFound:
                        if await self._end_unknown(job):
                            stats.changes += 1
                        continue
                if await self._apply(job, fax.status):
                    stats.changes += 1
        if stats.changes:
            self.rt.wake("reports")
        log.debug("tracker_polled", jobs=len(jobs), lists=stats.lists, gets=stats.gets, changes=stats.changes)
        return stats

    async def _apply(self, job: Job, status: str) -> bool:
        """Apply the provider's status; True when the job's state changed."""
        cfg = self.rt.config.provider
        change = plan_change(job, status, auto_retries=int(cfg.auto_retries), retry_delay=float(cfg.retry_delay), now=self.rt.clock())
        if change is None:
            return False
        store = self.rt.store
        with bind_context(job_id=job.id, provider_id=job.provider_id):
            if not change.is_transition:
                await store.run(store.update_job_if, job.id, (job.state,), **change.fields)
                return False
            # expect=: the CLI may have acted on the job since we read it.
            done = await store.run(store.transition, job.id, change.to_state, change.reason, expect=(job.state,), **change.fields)
            if done:
                log.info("job_state_changed", from_state=job.state, to_state=change.to_state, reason=change.reason)
            else:
                log.info("job_changed_meanwhile", expected=job.state)
            return done

    async def _end_unknown(self, job: Job) -> bool:
        store = self.rt.store
        done = await store.run(store.transition, job.id, UNKNOWN, NO_LONGER_KNOWN, expect=(job.state,), next_attempt_at=None)
        if done:
            log.warning("job_unknown_at_provider", job_id=job.id, provider_id=job.provider_id)
        return done

    async def _retried_unknown(self, job: Job) -> bool:
        """A retry found the fax gone at the provider: the job ends, and its report is due."""
        changed = await self._end_unknown(job)
        self.rt.wake("reports")
        return changed

    # ------------------------------------------------------------- retries

    async def _guarded_retries(self) -> None:
        try:
            await self.run_due_retries()
        except RateLimited as exc:
            self._rate_limited(exc, float(self.rt.config.provider.status_poll_interval))
        except ProviderError as exc:
            log.warning("tracker_retry_failed", error=str(exc))

    async def run_due_retries(self) -> int:
        """``action=retry`` for every failed job whose retry is due; returns how many."""
        store = self.rt.store
        now = self.rt.clock()
        waiting = await store.run(store.due_jobs, FAILED, float("inf"))
        # Remember when the others are due, so the loop wakes up for them.
        self._retry_at = {j.id: j.next_attempt_at for j in waiting if j.next_attempt_at is not None and j.next_attempt_at > now}
        done = 0
        for job in waiting:
            if job.next_attempt_at is not None and job.next_attempt_at > now:
                continue
            if self.rt.stopping.is_set():
                break
            with bind_context(job_id=job.id, provider_id=job.provider_id):
                if await self._retry(job):
                    done += 1
        if done:
            self._quiet_polls = 0
        return done

    async def _retry(self, job: Job) -> bool:
        store = self.rt.store
        cfg = self.rt.config.provider
        provider = self.rt.provider
        if job.provider_id is None:
            return False
        try:
            fax = await provider.retry_fax(job.extension, job.provider_id)
        except NotFound:
            return await self._retried_unknown(job)
        except Rejected as exc:
            # Refused: the fax is no longer "failed" there (canceled from the
            # provider's portal?) or the provider will not retry it. Look.
            try:
                fax = await provider.get_sent_fax(job.extension, job.provider_id)
            except NotFound:
                return await self._retried_unknown(job)
            if fax.status == P_FAILED:
                why = exc.message or str(exc)
                changed = await store.run(
                    store.transition, job.id, FAILED,
                    f"the provider refused the automatic retry ({why}); the fax failed after {attempts_text(job.attempts)}",
                    expect=(FAILED,), finished_at=self.rt.clock(), next_attempt_at=None,
                )
            else:
                changed = await self._apply(job, fax.status)
            self.rt.wake("reports")
            return changed
        n = job.auto_retries_used + 1
        attempt = job.attempts + 1
        changed = await store.run(
            store.transition, job.id, SUBMITTED,
            f"automatic retry {n} of {int(cfg.auto_retries)}: the provider queued the fax again (attempt {attempt})",
            expect=(FAILED,), attempts=attempt, auto_retries_used=n, next_attempt_at=None, provider_status=fax.status,
        )
        if changed:
            log.info("job_retried", attempt=attempt, auto_retry=n)
        return changed


__all__ = ["Change", "NO_LONGER_KNOWN", "PollStats", "Tracker", "attempts_text", "plan_change"]
