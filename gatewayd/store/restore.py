"""At start-up after a restore: every unfinished job of the copy is reconciled against the provider before anything is sent.

A backup (``gatewayd/store/backup.py``) marks its copy. A job that was
``queued`` or ``submitting`` in the copy may have been submitted by the old
daemon after the backup was taken, so it is moved to ``submitting`` (the
lost-answer path of gatewayd/email_to_fax/sender.py) with a reconciliation
window from the backup's time to now; the mark is cleared in the same
commit. docs/operations.md, "Backup and restore".
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from gatewayd.jobstates import QUEUED, SUBMITTING
from gatewayd.store.backup import RESTORE_MARK
from gatewayd.store.database import DB_ERRORS, StoreError, StorePart

__all__ = ["RestoreMark", "RestoredFrom"]


# A mark that does not read, or a database that fails.
_MARK_ERRORS: tuple[type[Exception], ...] = (*DB_ERRORS, ValueError, KeyError, TypeError)


@dataclass(frozen=True)
class RestoredFrom:
    backup_id: str
    taken_at: float
    applied_at: float
    queued: int  # queued jobs moved to reconciliation
    submitting: int  # submitting jobs whose window now reaches the restore


class RestoreMark(StorePart):
    """The ``Store``'s handling of a backup's mark."""

    def apply_restore_mark(self) -> RestoredFrom | None:
        """Put the copy's unfinished jobs on the reconcile path and clear the mark; None without a mark."""
        now = self.clock()
        try:
            with self._db.transaction() as conn:
                row = conn.execute("SELECT value FROM meta WHERE key = ?", (RESTORE_MARK,)).fetchone()
                if row is None:
                    return None
                mark = json.loads(row[0])
                backup_id, taken_at = str(mark["backup_id"]), float(mark["taken_at"])
                when = dt.datetime.fromtimestamp(taken_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
                why = (f"restored from backup {backup_id} taken {when}: the old daemon may have sent it after the backup; "
                       "checking the provider's list before any send")
                queued = [r[0] for r in conn.execute("SELECT id FROM jobs WHERE state = ? AND finished_at IS NULL", (QUEUED,))]
                for job_id in queued:
                    # Its upload, if any, started after the backup was taken.
                    self.transition(job_id, SUBMITTING, why, expect=[QUEUED],  # type: ignore[attr-defined]
                                    submitted_at=taken_at, reconcile_until=now, next_attempt_at=now)
                moved = set(queued)
                submitting = [r[0] for r in conn.execute("SELECT id FROM jobs WHERE state = ? AND finished_at IS NULL", (SUBMITTING,))
                              if r[0] not in moved]
                for job_id in submitting:
                    # Its POST started before the backup (submitted_at stays); the
                    # old daemon may have requeued and posted it again since.
                    self.transition(job_id, SUBMITTING, why, expect=[SUBMITTING],  # type: ignore[attr-defined]
                                    reconcile_until=now, next_attempt_at=now)
                conn.execute("DELETE FROM meta WHERE key = ?", (RESTORE_MARK,))
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('last_restore', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (json.dumps({"backup_id": backup_id, "taken_at": taken_at, "applied_at": now,
                                 "queued": len(queued), "submitting": len(submitting)}),),
                )
        except _MARK_ERRORS as exc:
            raise StoreError(f"cannot apply the restore mark: {exc}") from exc
        return RestoredFrom(backup_id, taken_at, now, len(queued), len(submitting))
