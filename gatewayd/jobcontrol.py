"""Cancel and retry one job: what ``gatewayd cancel``/``retry`` and the web console's buttons do (docs/reports.md, Cancel and retry).

Every change is a compare-and-set (``Store.transition(expect=...)``), so the
command line, the console and the daemon never undo each other: whoever
moves the job first wins, and the loser looks again.

* cancel: a ``queued`` job is canceled locally (nothing reached the
  provider). A ``submitting`` job is refused: its upload may be in flight and
  only the provider's answer tells whether a fax exists to cancel. A job at
  the provider (``submitted``, or ``failed`` - also a failed job that is
  already over) is canceled with the provider's ``action=cancel``, which the
  provider allows only from ``ready_to_send`` and ``failed``; a fax that is
  being sent cannot be canceled.
* retry: only a ``failed`` job, with the provider's ``action=retry``. A job
  that had failed for good is reopened: ``submitted`` again, ``finished_at``
  and ``reported_at`` cleared, so the tracker follows it and its sender gets
  a new report for the new outcome (after the failure report they may
  already have). A manual retry does not use up an automatic retry.

Refusals raise ``ControlRefused`` with the reason in words.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gatewayd.provider.client import NotFound, ProviderError, RateLimited, Rejected, SentFax
from gatewayd.store import (
    CANCELED,
    CONVERTING,
    ERROR,
    FAILED,
    QUEUED,
    REJECTED,
    SENDING,
    SENT,
    SUBMITTED,
    SUBMITTING,
    UNKNOWN,
    Job,
    JobNotFound,
    Store,
)

ProviderFactory = Callable[[], Any]  # returns an async context manager yielding a ProviderClient

# How often to look again when the daemon moved the job between our read and write.
_ROUNDS = 3


class ControlRefused(Exception):
    """The job's state, or the provider, does not allow the action; the text says why."""


# ------------------------------------------------------------------ cancel


async def cancel_job(store: Store, job_id: int, provider_factory: ProviderFactory, *, by: str = "from the command line") -> str:
    """Cancel one job; returns the line to print. Raises ControlRefused when refused."""
    for _ in range(_ROUNDS):
        job = await _get(store, job_id)
        if job.state in (CONVERTING, QUEUED):
            if await store.run(store.transition, job_id, CANCELED, f"canceled {by} before it was submitted",
                               expect=(CONVERTING, QUEUED)):
                return await _done(store, job_id, "it had not reached the provider")
            continue  # the sender picked it up meanwhile: look again
        if job.state == SUBMITTING:
            raise ControlRefused(
                f"job {job_id} is being handed to the provider right now (state submitting); it cannot be canceled "
                "safely until the provider has answered. Try again in a few seconds."
            )
        if job.state == SENDING:
            raise ControlRefused(
                f"job {job_id} is being sent by the provider (state sending); the provider can cancel only a fax "
                "that is waiting to be sent or has failed"
            )
        if job.state in (SUBMITTED, FAILED):
            fax = await _provider_action(provider_factory, job, "cancel")
            return await _record_canceled(store, job, fax, by)
        raise ControlRefused(f"job {job_id} is already {job.state}{_final_why(job)}; there is nothing to cancel")
    raise ControlRefused(f"job {job_id} keeps changing state; try again in a moment")


async def _record_canceled(store: Store, job: Job, fax: SentFax, by: str) -> str:
    reason = f"canceled {by} (the provider confirmed)"
    state = job.state
    for _ in range(_ROUNDS):
        if await store.run(store.transition, job.id, CANCELED, reason, expect=(state,), provider_status=fax.status, next_attempt_at=None):
            return await _done(store, job.id)
        # The daemon moved it meanwhile; the provider's "canceled" is the truth
        # unless the job ended on its own already.
        current = await _get(store, job.id)
        if current.state == CANCELED:
            # The tracker saw our cancel at the provider first: add who did it
            # to the history (finished_at kept: the report is not disturbed).
            await store.run(store.transition, job.id, CANCELED, reason, expect=(CANCELED,), finished_at=current.finished_at)
            return await _done(store, job.id)
        if current.final:
            return f"job {job.id}: {current.state} ({current.reason})"
        state = current.state
    raise ControlRefused(f"the provider canceled job {job.id}, but the job keeps changing state here; the tracker will record it")


# ------------------------------------------------------------------- retry


async def retry_job(store: Store, job_id: int, provider_factory: ProviderFactory, *, by: str = "from the command line") -> str:
    """Retry one failed job; returns the line to print. Raises ControlRefused when refused."""
    job = await _get(store, job_id)
    if job.state != FAILED:
        raise ControlRefused(_cannot_retry(job))
    fax = await _provider_action(provider_factory, job, "retry")
    attempt = job.attempts + 1
    reason = f"retried {by}: the provider queued the fax again (attempt {attempt})"
    if await store.run(
        store.transition, job_id, SUBMITTED, reason, expect=(FAILED,),
        attempts=attempt, finished_at=None, reported_at=None, next_attempt_at=None, provider_status=fax.status,
    ):
        return await _done(store, job_id)
    # The tracker got there first (its own automatic retry, or the outcome).
    current = await _get(store, job_id)
    return f"job {job_id}: {current.state} ({current.reason})"


def _cannot_retry(job: Job) -> str:
    head = f"job {job.id} is {job.state}"
    if job.state in (CONVERTING, QUEUED, SUBMITTING, SUBMITTED, SENDING):
        return f"{head}: only a failed job can be retried, and this one has not failed"
    if job.state == SENT:
        return f"{head}: it was sent; there is nothing to retry (send a new fax to send it again)"
    if job.state == REJECTED:
        return f"{head}{_final_why(job)}: it never reached the provider; send the document again as a new fax"
    if job.state in (CANCELED, ERROR, UNKNOWN):
        return f"{head}{_final_why(job)}: the provider allows retrying only a failed fax; send the document again as a new fax"
    return f"{head}: only a failed job can be retried"


# ----------------------------------------------------------------- helpers


async def _get(store: Store, job_id: int) -> Job:
    try:
        return await store.run(store.get_job, job_id)
    except JobNotFound:
        raise ControlRefused(f"no job {job_id}") from None


async def _done(store: Store, job_id: int, extra: str = "") -> str:
    job = await store.run(store.get_job, job_id)
    detail = job.reason + (f"; {extra}" if extra else "")
    return f"job {job_id}: {job.state}" + (f" ({detail})" if detail else "")


def _final_why(job: Job) -> str:
    return f" ({job.reason})" if job.reason else ""


async def _provider_action(provider_factory: ProviderFactory, job: Job, action: str) -> SentFax:
    if job.provider_id is None:
        raise ControlRefused(f"job {job.id} is {job.state} but has no provider fax id; nothing can be done at the provider")
    what = {"cancel": "cancel", "retry": "retry"}[action]
    try:
        async with provider_factory() as provider:
            call: Callable[[int, int], Awaitable[SentFax]] = provider.cancel_fax if action == "cancel" else provider.retry_fax
            return await call(job.extension, job.provider_id)
    except Rejected as exc:
        raise ControlRefused(f"the provider refused to {what} job {job.id} (fax {job.provider_id}): {exc.message or exc}") from None
    except NotFound:
        raise ControlRefused(f"the provider no longer knows fax {job.provider_id} of job {job.id}; nothing was changed") from None
    except RateLimited as exc:
        raise ControlRefused(f"the provider is limiting requests; try again in {int(exc.retry_after) + 1} s; nothing was changed") from None
    except ProviderError as exc:
        # The answer may have been lost after the provider acted: say so.
        raise ControlRefused(f"cannot {what} job {job.id} at the provider: {exc}; the job was not changed here "
                           "(look at the job again later: the tracker records what the provider did)") from None


__all__ = ["ControlRefused", "ProviderFactory", "cancel_job", "retry_job"]
