"""Small markers in the ``meta`` table: plain key/value metadata, and the IMAP "reply already queued" markers.

docs/imap.md, "Never twice", describes why a refused mailbox message is
answered at most once.
"""

from __future__ import annotations

from collections.abc import Sequence

from gatewayd.store.database import DB_ERRORS, StoreError, StorePart
from gatewayd.store.outbox import insert_mail

__all__ = ["Markers"]


class Markers(StorePart):
    """The ``Store``'s metadata and markers."""

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._db.query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        self._db.write("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def hold_until(self, key: str) -> float:
        """A time kept in ``meta`` under ``key`` (0 when none): e.g. the
        sender's "no provider calls before" shared by every node."""
        value = self.get_meta(key)
        try:
            return float(value) if value else 0.0
        except ValueError:
            return 0.0

    def extend_hold(self, key: str, until: float) -> float:
        """Move the time under ``key`` to ``until`` unless it is later already; the time now kept."""
        with self._db.transaction() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            try:
                current = float(row[0]) if row else 0.0
            except ValueError:
                current = 0.0
            if until > current:
                conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                             (key, repr(until)))
        return max(current, until)

    def imap_queue_reply_once(self, key: str, mail_from: str, recipients: Sequence[str], message: bytes, *, ref: str = "") -> bool:
        """Queue the reply to a refused mailbox message, once per intake ``key``.

        The outbox row and a marker in ``meta`` are one commit, so a message
        that is seen again (its move to the failed folder failed, or the
        daemon died first) never mails its sender twice. False when a reply
        was already queued for ``key``.
        """
        marker = f"imap-reply:{key}"
        now = self.clock()
        try:
            with self._db.transaction() as conn:
                if conn.execute("SELECT 1 FROM meta WHERE key = ?", (marker,)).fetchone():
                    return False
                insert_mail(self._db, self.clock(), "reply", mail_from, recipients, message, ref=ref)
                conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (marker, repr(now)))
        except DB_ERRORS as exc:
            raise StoreError(f"cannot queue the reply: {exc}") from exc
        return True

    def imap_prune_reply_markers(self, before: float) -> int:
        """Forget reply markers older than ``before`` (a message is not refused twice months apart)."""
        cur = self._db.write("DELETE FROM meta WHERE key LIKE 'imap-reply:%' AND CAST(value AS DOUBLE PRECISION) < ?", (before,))
        return int(cur.rowcount)
