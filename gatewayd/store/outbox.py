"""The outbox: every email gatewayd sends (reports, received faxes, replies, admin notices), stored before any attempt.

docs/architecture.md, "Durability rules" 4: an email is sent only after
the relay's 250, and a received fax riding on an email becomes "relayed"
in the same commit that marks the email sent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gatewayd.store.database import DB_ERRORS, Database, StoreError, StorePart, inserted_id, where_terms

__all__ = ["OUTBOX_COLUMNS", "OutboxMail", "OutboxTable", "insert_mail", "outbox_mail"]


@dataclass(frozen=True)
class OutboxMail:
    id: int
    created_at: float
    kind: str  # "report" | "admin" | "received" | "reply"
    ref: str
    mail_from: str
    recipients: tuple[str, ...]
    message: bytes = field(repr=False)
    state: str  # "pending" | "sent" | "failed"
    attempts: int
    next_attempt_at: float
    last_error: str
    sent_at: float | None


OUTBOX_COLUMNS = (
    "id, created_at, kind, ref, mail_from, recipients, message, state, attempts, next_attempt_at, last_error, sent_at"
)


def outbox_mail(row: Sequence[Any]) -> OutboxMail:
    """An ``OutboxMail`` from a row of ``OUTBOX_COLUMNS``."""
    values = list(row)
    values[5] = tuple(json.loads(values[5]))
    values[6] = bytes(values[6])
    return OutboxMail(*values)


def insert_mail(db: Database, now: float, kind: str, mail_from: str, recipients: Sequence[str], message: bytes, *, ref: str = "") -> int:
    """Add a pending mail, due ``now``; its own commit, or part of the caller's transaction. Returns its id."""
    cur = db.write(
        "INSERT INTO outbox (created_at, kind, ref, mail_from, recipients, message, state, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?) RETURNING id",
        (now, kind, ref, mail_from, json.dumps(list(recipients)), message, now),
    )
    return inserted_id(cur)


class OutboxTable(StorePart):
    """The ``Store``'s outbox."""

    def enqueue_mail(self, kind: str, mail_from: str, recipients: Sequence[str], message: bytes, *, ref: str = "") -> int:
        return insert_mail(self._db, self.clock(), kind, mail_from, recipients, message, ref=ref)

    def due_mail(self, now: float, limit: int = 20) -> list[OutboxMail]:
        rows = self._db.query(f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?", (now, limit))
        return [outbox_mail(r) for r in rows]

    def get_mail(self, mail_id: int) -> OutboxMail:
        rows = self._db.query(f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id = ?", (mail_id,))
        if not rows:
            raise StoreError(f"no outbox mail {mail_id}")
        return outbox_mail(rows[0])

    def list_mail(self, *, state: str | None = None, kind: str | None = None, limit: int = 1000) -> list[OutboxMail]:
        where, params = where_terms((bool(state), "state = ?", state), (bool(kind), "kind = ?", kind))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._db.query(f"SELECT {OUTBOX_COLUMNS} FROM outbox {clause} ORDER BY id LIMIT ?", (*params, limit))
        return [outbox_mail(r) for r in rows]

    def mark_mail_sent(self, mail_id: int, *, delete_at_provider: bool = False) -> None:
        """The relay said 250. A received fax riding on this mail is now relayed.

        ``delete_at_provider`` (``inbound.delete_after_relay``): the fax is
        also due for deletion at the provider, in the same commit
        (gatewayd/store/provider_deletes.py).
        """
        now = self.clock()
        try:
            with self._db.transaction() as conn:
                conn.execute("UPDATE outbox SET state = 'sent', sent_at = ?, attempts = attempts + 1, last_error = '' WHERE id = ?", (now, mail_id))
                if delete_at_provider:
                    conn.execute("UPDATE received SET state = 'relayed', relayed_at = ?, provider_delete = 'pending', delete_next_at = ? "
                                 "WHERE outbox_id = ? AND state = 'queued'", (now, now, mail_id))
                else:
                    conn.execute("UPDATE received SET state = 'relayed', relayed_at = ? WHERE outbox_id = ? AND state = 'queued'", (now, mail_id))
        except DB_ERRORS as exc:
            raise StoreError(f"cannot mark mail {mail_id} sent: {exc}") from exc

    def mark_mail_retry(self, mail_id: int, error: str, next_attempt_at: float) -> None:
        self._db.write("UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE id = ?", (error, next_attempt_at, mail_id))

    def mark_mail_failed(self, mail_id: int, error: str) -> None:
        self._db.write("UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ? WHERE id = ?", (error, mail_id))

    def outbox_stats(self) -> tuple[int, float | None]:
        """(pending count, age in seconds of the oldest pending mail)."""
        rows = self._db.query("SELECT COUNT(*), MIN(created_at) FROM outbox WHERE state = 'pending'")
        count, oldest = rows[0]
        return int(count), (self.clock() - oldest) if oldest is not None else None

    def split_mail_deferred(self, mail_id: int, recipients: Sequence[str], error: str, next_attempt_at: float) -> int:
        """Some recipients of an outbox mail were deferred (4xx per recipient):
        they get their own row that keeps the attempt count and waits until
        ``next_attempt_at`` (a fresh row due now would be retried at once,
        forever). Returns the new row's id. Joins the caller's transaction."""
        now = self.clock()
        try:
            with self._db.transaction() as conn:
                row = conn.execute("SELECT kind, ref, mail_from, message, attempts FROM outbox WHERE id = ?", (mail_id,)).fetchone()
                if row is None:
                    raise StoreError(f"no outbox mail {mail_id}")
                kind, ref, mail_from, message, attempts = row
                cur = conn.execute(
                    "INSERT INTO outbox (created_at, kind, ref, mail_from, recipients, message, state, attempts, next_attempt_at, last_error) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?) RETURNING id",
                    (now, kind, ref, mail_from, json.dumps(list(recipients)), message, attempts + 1, next_attempt_at, error),
                )
                return inserted_id(cur)
        except DB_ERRORS as exc:
            raise StoreError(f"cannot split outbox mail {mail_id}: {exc}") from exc

    def defer_mail_recipients(self, mail_id: int, recipients: Sequence[str], error: str, next_attempt_at: float) -> None:
        """Nobody accepted an outbox mail yet: keep the SAME row pending for
        the deferred ``recipients`` only (permanently refused ones are dropped
        from it), so whatever rides on the row (a received fax) stays queued
        until a relay really accepts it."""
        self._db.write(
            "UPDATE outbox SET recipients = ?, attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE id = ? AND state = 'pending'",
            (json.dumps(list(recipients)), error, next_attempt_at, mail_id),
        )
