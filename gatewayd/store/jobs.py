"""Fax jobs: the ``jobs`` and ``job_events`` tables, intake keys, and the job side of reports.

A job is one fax to one recipient. Its states and the moves between them
are in gatewayd/jobstates.py and docs/architecture.md, "Job states"; every
change is a row in ``job_events``, and changes are compare and set.
Enqueueing also counts the sender's hourly usage (``sender_usage``) and
marks IMAP intake keys, in the same commit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gatewayd.jobstates import ACTIVE_STATES, FINAL_STATES, JOB_STATES, QUEUED, SUBMITTING
from gatewayd.store.database import DB_ERRORS, DbConnection, StoreError, StorePart, inserted_id

__all__ = ["JOB_COLUMNS", "Job", "JobEvent", "JobNotFound", "JobTable", "NewJob", "intake_ids"]


class JobNotFound(StoreError):
    pass


@dataclass(frozen=True)
class NewJob:
    """What intake decided for one recipient, before it has an id."""

    number: str  # shown to people: E.164, or the internal number as written
    dst_num: str  # what is sent to the provider as dst_num
    extension: int
    report_to: str  # envelope sender (or From: for IMAP); "" means no report
    source: str  # "smtp" | "imap" | "cli"
    message_id: str = ""
    subject: str = ""
    rule_key: str = ""
    note: str = ""  # e.g. attachments that were not faxed, for the report
    # Hourly counters the job counts against besides rule_key's: an
    # account's own max_per_hour (gatewayd/email_to_fax/policy.py, RateLimiter)
    usage_keys: tuple[str, ...] = ()
    # This recipient's own cover page (docs/documents.md, Cover page): a saved
    # document put before the shared one when the fax is submitted.
    cover: str = ""
    # This recipient's whole fax instead of the shared document (a cover with
    # no attachments): set, it replaces the shared document.
    document: str = ""
    # Pages and bytes of this recipient's own document (cover or whole fax),
    # added to the shared document's.
    cover_pages: int = 0
    cover_bytes: int = 0
    account: str = ""  # the [[smtp.users]] account it was sent under ("" = none)
    node: str = ""  # storage.node_name of the node that took it in (docs/deployment.md, Several nodes)


@dataclass(frozen=True)
class Job:
    id: int
    created_at: float
    updated_at: float
    state: str
    reason: str
    number: str
    dst_num: str
    extension: int
    report_to: str
    source: str
    message_id: str
    subject: str
    document: str
    pages: int
    doc_bytes: int
    provider_id: int | None
    provider_status: str
    submitted_at: float | None
    finished_at: float | None
    attempts: int
    auto_retries_used: int
    next_attempt_at: float | None
    rule_key: str
    note: str
    reported_at: float | None = None
    # After a restore: a fax its upload may have created can carry a
    # provider datetime up to this time (docs/operations.md, Backup and restore).
    reconcile_until: float | None = None
    cover: str = ""  # the recipient's cover document, "" when none (docs/architecture.md, Storage layout)
    account: str = ""
    node: str = ""  # the node that took it in ("" for jobs stored before there were nodes)
    claimed_by: str = ""  # the node that submits it (the sender's claim), "" until claimed

    @property
    def final(self) -> bool:
        return self.finished_at is not None


@dataclass(frozen=True)
class JobEvent:
    job_id: int
    at: float
    from_state: str
    to_state: str
    reason: str


JOB_COLUMNS = (
    "id, created_at, updated_at, state, reason, number, dst_num, extension, report_to, source, "
    "message_id, subject, document, pages, doc_bytes, provider_id, provider_status, submitted_at, "
    "finished_at, attempts, auto_retries_used, next_attempt_at, rule_key, note, reported_at, reconcile_until, cover, account, node, claimed_by"
)
# Columns a caller may set (transition, update_job, update_job_if).
JOB_FIELDS = set(JOB_COLUMNS.replace(" ", "").split(",")) - {"id", "created_at", "account", "node"}


def intake_ids(conn: DbConnection, intake_key: str | None) -> list[int] | None:
    """The job ids stored once already for ``intake_key`` (a message seen before), or None."""
    if not intake_key:
        return None
    row = conn.execute("SELECT job_ids FROM intake_keys WHERE key = ?", (intake_key,)).fetchone()
    return json.loads(row[0]) if row else None


class JobTable(StorePart):
    """The ``Store``'s jobs."""

    def enqueue_jobs(self, document_sha: str, pages: int, doc_bytes: int, jobs: Sequence[NewJob], *, intake_key: str | None = None,
                     state: str = QUEUED) -> list[int]:
        """Store one job per recipient sharing one saved document; one commit.

        A job's ``cover`` (and its pages and bytes) is its own; a job's
        ``document``, when set, replaces the shared one.

        ``state``: ``converting`` for jobs whose document is still being made
        (``document_sha`` is then ""; gatewayd/store/conversions.py).

        With ``intake_key`` (IMAP: Message-ID + content hash) a second call
        for the same message returns the first call's ids and stores nothing.
        """
        now = self.clock()
        ids: list[int] = []
        try:
            with self._db.transaction() as conn:
                seen = intake_ids(conn, intake_key)
                if seen is not None:
                    return seen
                for job in jobs:
                    cur = conn.execute(
                        "INSERT INTO jobs (created_at, updated_at, state, reason, number, dst_num, extension, report_to, source, "
                        "message_id, subject, document, pages, doc_bytes, rule_key, note, next_attempt_at, cover, account, node) "
                        "VALUES (?, ?, ?, '', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                        (now, now, state, job.number, job.dst_num, job.extension, job.report_to, job.source,
                         job.message_id, job.subject, job.document or document_sha, pages + job.cover_pages,
                         doc_bytes + job.cover_bytes, job.rule_key, job.note, now, job.cover, job.account, job.node),
                    )
                    job_id = inserted_id(cur)
                    ids.append(job_id)
                    conn.execute("INSERT INTO job_events (job_id, at, from_state, to_state, reason) VALUES (?, ?, '', ?, ?)",
                                 (job_id, now, state, f"accepted from {job.source}"))
                    for key in dict.fromkeys(k for k in (job.rule_key, *job.usage_keys) if k):
                        conn.execute("INSERT INTO sender_usage (rule_key, at, count) VALUES (?, ?, 1)", (key, now))
                if intake_key:
                    conn.execute("INSERT INTO intake_keys (key, at, job_ids) VALUES (?, ?, ?)", (intake_key, now, json.dumps(ids)))
        except DB_ERRORS as exc:
            raise StoreError(f"cannot store the job: {exc}") from exc
        return ids

    def intake_seen(self, intake_key: str) -> list[int] | None:
        rows = self._db.query("SELECT job_ids FROM intake_keys WHERE key = ?", (intake_key,))
        return json.loads(rows[0][0]) if rows else None

    def transition(self, job_id: int, to_state: str, reason: str = "", *, expect: Sequence[str] | None = None, **fields: Any) -> bool:
        """Move a job to ``to_state`` and record the change with its reason.

        ``expect``: only if the job is in one of these states (compare and
        set, so the CLI and the daemon never undo each other). Extra keyword
        fields update job columns. Returns False when ``expect`` did not hold.
        A final state sets ``finished_at``.
        """
        if to_state not in JOB_STATES:
            raise ValueError(f"unknown job state {to_state!r}")
        unknown = set(fields) - JOB_FIELDS
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        now = self.clock()
        try:
            with self._db.transaction() as conn:
                row = conn.execute("SELECT state, finished_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None:
                    raise JobNotFound(f"no job {job_id}")
                from_state, finished_at = row
                if expect is not None and from_state not in expect:
                    return False
                fields.setdefault("reason", reason)
                fields["state"] = to_state
                if "finished_at" not in fields:
                    if to_state in FINAL_STATES:
                        # Keep the first end time when a final state is restated.
                        fields["finished_at"] = finished_at if finished_at is not None else now
                    elif to_state in ACTIVE_STATES:
                        fields["finished_at"] = None  # e.g. a finished "failed" job retried
                fields["updated_at"] = now
                sets = ", ".join(f"{k} = ?" for k in fields)
                conn.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))
                if from_state != to_state or reason:
                    conn.execute("INSERT INTO job_events (job_id, at, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?)",
                                 (job_id, now, from_state, to_state, reason))
        except DB_ERRORS as exc:
            raise StoreError(str(exc)) from exc
        return True

    def update_job(self, job_id: int, **fields: Any) -> None:
        """Change job columns without a state change (e.g. next_attempt_at)."""
        unknown = set(fields) - JOB_FIELDS
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        fields["updated_at"] = self.clock()
        sets = ", ".join(f"{k} = ?" for k in fields)
        self._db.write(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    def get_job(self, job_id: int) -> Job:
        rows = self._db.query(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise JobNotFound(f"no job {job_id}")
        return Job(*rows[0])

    def list_jobs(self, *, state: str | None = None, limit: int = 50) -> list[Job]:
        if state:
            rows = self._db.query(f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = ? ORDER BY id DESC LIMIT ?", (state, limit))
        else:
            rows = self._db.query(f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
        return [Job(*r) for r in rows]

    def jobs_in_states(self, states: Sequence[str], *, unfinished_only: bool = True) -> list[Job]:
        marks = ",".join("?" * len(states))
        extra = " AND finished_at IS NULL" if unfinished_only else ""
        rows = self._db.query(f"SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ({marks}){extra} ORDER BY id", tuple(states))
        return [Job(*r) for r in rows]

    def due_jobs(self, state: str, now: float, limit: int = 100) -> list[Job]:
        rows = self._db.query(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = ? AND finished_at IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY id LIMIT ?",
            (state, now, limit),
        )
        return [Job(*r) for r in rows]

    def job_events(self, job_id: int) -> list[JobEvent]:
        rows = self._db.query("SELECT job_id, at, from_state, to_state, reason FROM job_events WHERE job_id = ? ORDER BY id", (job_id,))
        return [JobEvent(*r) for r in rows]

    def job_counts(self) -> dict[str, int]:
        return {state: n for state, n in self._db.query("SELECT state, COUNT(*) FROM jobs GROUP BY state")}

    def provider_ids_in_use(self, extension: int) -> set[int]:
        """Provider message ids already owned by a job of this extension."""
        rows = self._db.query("SELECT provider_id FROM jobs WHERE extension = ? AND provider_id IS NOT NULL", (extension,))
        return {r[0] for r in rows}

    # --- for the sender (email to fax)

    def next_submission_due(self) -> float | None:
        """When the sender next has work: the earliest next_attempt_at of a
        queued or submitting job (0 for "now"), or None when there is none."""
        rows = self._db.query(
            "SELECT MIN(COALESCE(next_attempt_at, 0)) FROM jobs WHERE state IN (?, ?) AND finished_at IS NULL",
            (QUEUED, SUBMITTING),
        )
        return None if rows[0][0] is None else float(rows[0][0])

    def unresolved_submission(self, extension: int, dst_num: str, *, exclude: int | None = None) -> Job | None:
        """A job of this extension to this number whose upload is unresolved
        ("submitting"): another upload to the number must wait for it, or
        reconciliation could not tell the two faxes apart."""
        rows = self._db.query(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = ? AND extension = ? AND dst_num = ? AND id != ? "
            "AND finished_at IS NULL ORDER BY id LIMIT 1",
            (SUBMITTING, extension, dst_num, -1 if exclude is None else exclude),
        )
        return Job(*rows[0]) if rows else None

    # --- for the sender on several nodes (docs/provider.md, Several nodes)

    def claim_job(self, job_id: int, node: str, lease: str, margin: float, *, reason: str, submitted_at: float,
                  next_attempt_at: float) -> str:
        """``queued -> submitting`` for ``node``, committed before the POST: "claimed",
        "moved" (no longer queued, or another transaction holds the row), or
        "lease" (``node`` no longer holds ``lease`` for ``margin`` seconds more).

        The lease check and the move are one transaction, so a node whose
        lease lapsed (it froze, its database link failed) claims nothing.
        On PostgreSQL the row is taken ``FOR UPDATE SKIP LOCKED``: a row
        another node is changing is skipped, never waited for.
        """
        now = self.clock()
        lock = " FOR UPDATE SKIP LOCKED" if self._db.dialect == "postgresql" else ""
        try:
            with self._db.transaction() as conn:
                held = conn.execute("SELECT 1 FROM leases WHERE name = ? AND holder = ? AND expires_at > ?",
                                    (lease, node, now + margin)).fetchone()
                if held is None:
                    return "lease"
                row = conn.execute(f"SELECT state FROM jobs WHERE id = ? AND finished_at IS NULL{lock}", (job_id,)).fetchone()
                if row is None or row[0] != QUEUED:
                    return "moved"
                conn.execute("UPDATE jobs SET state = ?, reason = ?, claimed_by = ?, submitted_at = ?, next_attempt_at = ?, "
                             "updated_at = ? WHERE id = ?", (SUBMITTING, reason, node, submitted_at, next_attempt_at, now, job_id))
                conn.execute("INSERT INTO job_events (job_id, at, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?)",
                             (job_id, now, QUEUED, SUBMITTING, reason))
        except DB_ERRORS as exc:
            raise StoreError(str(exc)) from exc
        return "claimed"

    def claimed_by(self, job_id: int) -> str:
        """The node that last claimed this job for submission ("" when none has)."""
        rows = self._db.query("SELECT claimed_by FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise JobNotFound(f"no job {job_id}")
        return str(rows[0][0])

    def reconcile_now(self, now: float, *, extension: int | None = None, claimed_by: Sequence[str] | None = None) -> list[int]:
        """Make unfinished ``submitting`` jobs due at ``now`` (reconciled before
        anything else), of one extension and/or claimed by these nodes; their ids."""
        terms = ["state = ?", "finished_at IS NULL"]
        params: list[Any] = [SUBMITTING]
        if extension is not None:
            terms.append("extension = ?")
            params.append(extension)
        if claimed_by is not None:
            terms.append(f"claimed_by IN ({','.join('?' * len(claimed_by))})")
            params.extend(claimed_by)
        where = " AND ".join(terms)
        with self._db.transaction() as conn:
            ids = [int(r[0]) for r in conn.execute(f"SELECT id FROM jobs WHERE {where} ORDER BY id", tuple(params)).fetchall()]
            if ids:
                conn.execute(f"UPDATE jobs SET next_attempt_at = ? WHERE {where}", (now, *params))
        return ids

    # --- for the tracker and the reports

    def update_job_if(self, job_id: int, expect: Sequence[str], **fields: Any) -> bool:
        """Change job columns without a state change or a history entry, only
        while the job is in one of ``expect`` and not finished (compare and set:
        e.g. the tracker noting the provider's status word while the CLI may be
        acting on the same job). Returns False when the job moved on."""
        unknown = set(fields) - JOB_FIELDS
        if unknown or "state" in fields:
            raise ValueError(f"fields not allowed here: {sorted(unknown | ({'state'} & set(fields)))}")
        if not expect:
            raise ValueError("expect must name at least one state")
        fields["updated_at"] = self.clock()
        sets = ", ".join(f"{k} = ?" for k in fields)
        marks = ",".join("?" * len(expect))
        cur = self._db.write(
            f"UPDATE jobs SET {sets} WHERE id = ? AND state IN ({marks}) AND finished_at IS NULL",
            (*fields.values(), job_id, *expect),
        )
        return cur.rowcount == 1

    def unreported_jobs(self, limit: int = 50) -> list[Job]:
        """Finished jobs whose report has not been queued yet, oldest first."""
        rows = self._db.query(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE finished_at IS NOT NULL AND reported_at IS NULL ORDER BY finished_at, id LIMIT ?",
            (limit,),
        )
        return [Job(*r) for r in rows]

    def queue_report(self, job_id: int, finished_at: float, mails: Sequence[tuple[str, str, Sequence[str], bytes, str]]) -> bool:
        """Mark the job reported and queue its report email(s) in ONE commit.

        ``mails`` holds (kind, mail_from, recipients, message, ref); it may be
        empty (nothing to send, e.g. ``reports = "none"``). Compare and set on
        ``finished_at``: a job that was reopened (``gatewayd retry``) or
        already reported in the meantime is left alone and False returned, so
        each outcome is reported at most once, across restarts.
        """
        now = self.clock()
        try:
            with self._db.transaction() as conn:
                cur = conn.execute(
                    "UPDATE jobs SET reported_at = ? WHERE id = ? AND reported_at IS NULL AND finished_at = ?",
                    (now, job_id, finished_at),
                )
                if cur.rowcount != 1:
                    return False
                for kind, mail_from, recipients, message, ref in mails:
                    conn.execute(
                        "INSERT INTO outbox (created_at, kind, ref, mail_from, recipients, message, state, next_attempt_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                        (now, kind, ref, mail_from, json.dumps(list(recipients)), message, now),
                    )
        except DB_ERRORS as exc:
            raise StoreError(f"cannot queue the report of job {job_id}: {exc}") from exc
        return True
