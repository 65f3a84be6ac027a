"""Who owns a provider fax id: a job takes its id in one commit, releasing it from an old job the provider reused it for.

A provider fax id is unique per extension among the jobs (``jobs_provider``
index). The provider may hand out an id again: a simulator restarted, an
account reset, a deployment moved from a test account to the production one.
docs/architecture.md, "Provider ids handed out again", says what happens to
the old job: a finished one keeps the id in its history only; an unfinished
one can no longer be followed and ends ``unknown``. Either way the live job
gets the id, so it is never stranded in ``submitting``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gatewayd.jobstates import UNKNOWN
from gatewayd.store.database import DB_ERRORS, StoreError, StorePart

__all__ = ["IdOwner", "ProviderIds", "ReleasedId"]


@dataclass(frozen=True)
class IdOwner:
    """The job that holds a provider id, as reconciliation needs to judge it."""

    job_id: int
    finished: bool
    dst_num: str
    submitted_at: float | None


@dataclass(frozen=True)
class ReleasedId:
    """A job that lost its provider id to another job (the provider reused the id)."""

    job_id: int
    provider_id: int
    state: str
    was_finished: bool


class ProviderIds(StorePart):
    """The ``Store``'s provider-id ownership."""

    def provider_id_owners(self, extension: int) -> dict[int, IdOwner]:
        """Every provider id a job of this extension holds, with its job."""
        rows = self._db.query(
            "SELECT provider_id, id, finished_at IS NOT NULL, dst_num, submitted_at FROM jobs WHERE extension = ? AND provider_id IS NOT NULL",
            (extension,),
        )
        return {int(r[0]): IdOwner(int(r[1]), bool(r[2]), r[3], r[4]) for r in rows}

    def take_provider_id(
        self, job_id: int, to_state: str, reason: str, *, provider_id: int, expect: Sequence[str], **fields: Any
    ) -> tuple[bool, list[ReleasedId]]:
        """``transition(job_id, to_state, ..., provider_id=provider_id)``, first
        releasing the id from any other job of the extension, all in one commit.

        Returns (moved, released). Nothing is released when ``expect`` does not hold.
        """
        released: list[ReleasedId] = []
        now = self.clock()
        try:
            with self._db.transaction() as conn:
                row = conn.execute("SELECT state, extension FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None or row[0] not in expect:
                    return False, []
                extension = row[1]
                for other_id, state, finished_at in conn.execute(
                    "SELECT id, state, finished_at FROM jobs WHERE extension = ? AND provider_id = ? AND id != ?",
                    (extension, provider_id, job_id),
                ).fetchall():
                    why = f"the provider gave fax id {provider_id} to job {job_id}: this job no longer holds it"
                    if finished_at is not None:
                        # Its outcome is known and reported: only the id goes, kept here in its history.
                        conn.execute("UPDATE jobs SET provider_id = NULL, updated_at = ? WHERE id = ?", (now, other_id))
                        conn.execute("INSERT INTO job_events (job_id, at, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?)",
                                     (other_id, now, state, state, why))
                    else:
                        # Its fax can no longer be followed at the provider: the id names another fax now.
                        self.transition(  # type: ignore[attr-defined]
                            other_id, UNKNOWN, f"{why}; the provider no longer knows this job's fax (id reused), its outcome is unknown",
                            provider_id=None, next_attempt_at=None,
                        )
                    released.append(ReleasedId(other_id, provider_id, state, finished_at is not None))
                moved = self.transition(  # type: ignore[attr-defined]
                    job_id, to_state, reason, expect=expect, provider_id=provider_id, **fields
                )
        except DB_ERRORS as exc:
            raise StoreError(f"cannot give provider id {provider_id} to job {job_id}: {exc}") from exc
        return moved, released
