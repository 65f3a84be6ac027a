"""The received-fax ledger (``received``): one row per fax the provider received, so each is emailed exactly once.

docs/inbound.md describes the fax-to-email flow; docs/architecture.md,
"Fax to email, step by step", says how the ledger row and its email in
the outbox are written in one commit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gatewayd.store.database import DB_ERRORS, DbConnection, StoreError, StorePart, inserted_id

__all__ = ["RECEIVED_COLUMNS", "ReceivedFax", "ReceivedLedger", "received_fax", "received_tiebreak"]


@dataclass(frozen=True)
class ReceivedFax:
    uuid: str
    extension_id: int
    caller_id: str
    destination: str
    fax_time: str
    file_size: int
    first_seen: float
    state: str  # "queued" | "relayed" | "no_recipient"
    recipients: tuple[str, ...]
    outbox_id: int | None
    relayed_at: float | None
    note: str


RECEIVED_COLUMNS = (
    "uuid, extension_id, caller_id, destination, fax_time, file_size, first_seen, state, recipients, outbox_id, relayed_at, note"
)


def received_tiebreak(dialect: str, alias: str = "") -> str:
    """What orders received faxes seen at the same moment: the insertion order
    on SQLite (``rowid``); PostgreSQL rows have none, so their uuid there."""
    return f"{alias}{'uuid' if dialect == 'postgresql' else 'rowid'}"


def received_fax(row: Sequence[Any]) -> ReceivedFax:
    """A ``ReceivedFax`` from a row of ``RECEIVED_COLUMNS``."""
    values = list(row)
    values[8] = tuple(json.loads(values[8]))
    return ReceivedFax(*values)


class ReceivedLedger(StorePart):
    """The ``Store``'s ledger of received faxes."""

    def get_received(self, uuid: str) -> ReceivedFax | None:
        rows = self._db.query(f"SELECT {RECEIVED_COLUMNS} FROM received WHERE uuid = ?", (uuid,))
        return received_fax(rows[0]) if rows else None

    def known_received(self, uuids: Sequence[str]) -> set[str]:
        if not uuids:
            return set()
        marks = ",".join("?" * len(uuids))
        return {r[0] for r in self._db.query(f"SELECT uuid FROM received WHERE uuid IN ({marks})", tuple(uuids))}

    def queue_received(self, fax: ReceivedFax, mail_from: str, message: bytes) -> int:
        """Record a received fax and its email in one commit; returns the outbox id.

        Exactly once: a fax already relayed, or queued with its email still
        pending, keeps its one email (that outbox id is returned and nothing
        is added). A fax held for lack of a recipient (``hold_received``), or
        whose email the relay refused for good, may be queued again.
        """
        now = self.clock()
        try:
            with self._db.transaction() as conn:
                row = conn.execute(
                    "SELECT r.state, r.outbox_id, o.state FROM received r LEFT JOIN outbox o ON o.id = r.outbox_id WHERE r.uuid = ?",
                    (fax.uuid,),
                ).fetchone()
                if row is not None and row[1] is not None and (row[0] == "relayed" or (row[0] == "queued" and row[2] != "failed")):
                    return int(row[1])
                outbox_id = self._insert_received(conn, fax, mail_from, message, now)
        except DB_ERRORS as exc:
            raise StoreError(f"cannot queue received fax {fax.uuid}: {exc}") from exc
        return outbox_id

    def _insert_received(self, conn: DbConnection, fax: ReceivedFax, mail_from: str, message: bytes, now: float) -> int:
        cur = conn.execute(
            "INSERT INTO outbox (created_at, kind, ref, mail_from, recipients, message, state, next_attempt_at) VALUES (?, 'received', ?, ?, ?, ?, 'pending', ?) RETURNING id",
            (now, fax.uuid, mail_from, json.dumps(list(fax.recipients)), message, now),
        )
        outbox_id = inserted_id(cur)
        conn.execute(
            f"INSERT INTO received ({RECEIVED_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, NULL, ?) "
            "ON CONFLICT(uuid) DO UPDATE SET state = 'queued', recipients = excluded.recipients, outbox_id = excluded.outbox_id, note = excluded.note",
            (fax.uuid, fax.extension_id, fax.caller_id, fax.destination, fax.fax_time, fax.file_size,
             fax.first_seen or now, json.dumps(list(fax.recipients)), outbox_id, fax.note),
        )
        return outbox_id

    def hold_received(self, fax: ReceivedFax, note: str) -> None:
        """A fax with no valid recipient: kept, retried when routes change."""
        now = self.clock()
        self._db.write(
            f"INSERT INTO received ({RECEIVED_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 'no_recipient', '[]', NULL, NULL, ?) "
            "ON CONFLICT(uuid) DO UPDATE SET note = excluded.note",
            (fax.uuid, fax.extension_id, fax.caller_id, fax.destination, fax.fax_time, fax.file_size, fax.first_seen or now, note),
        )

    def list_received(self, *, state: str | None = None, limit: int = 50) -> list[ReceivedFax]:
        if state:
            rows = self._db.query(f"SELECT {RECEIVED_COLUMNS} FROM received WHERE state = ? ORDER BY first_seen DESC LIMIT ?", (state, limit))
        else:
            rows = self._db.query(f"SELECT {RECEIVED_COLUMNS} FROM received ORDER BY first_seen DESC LIMIT ?", (limit,))
        return [received_fax(r) for r in rows]

    def count_received(self, state: str) -> int:
        """Received faxes in one ledger state (e.g. held: "no_recipient"), for metrics."""
        return int(self._db.query("SELECT COUNT(*) FROM received WHERE state = ?", (state,))[0][0])

    def received_with_mail(self, *, limit: int = 50) -> list[tuple[ReceivedFax, str | None, str]]:
        """Newest received faxes with their email's outbox state and last error
        (``None`` when no email was queued), for ``gatewayd received``."""
        rows = self._db.query(
            f"SELECT {', '.join('r.' + c.strip() for c in RECEIVED_COLUMNS.split(','))}, o.state, COALESCE(o.last_error, '') "
            f"FROM received r LEFT JOIN outbox o ON o.id = r.outbox_id ORDER BY r.first_seen DESC, {received_tiebreak(self._db.dialect, 'r.')} DESC LIMIT ?",
            (limit,),
        )
        return [(received_fax(r[:12]), r[12], r[13]) for r in rows]
