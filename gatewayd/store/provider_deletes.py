"""Received faxes due for deletion at the provider after their relay (``inbound.delete_after_relay``).

The relay's 250 marks a received fax ``relayed`` and, with the option on,
its deletion ``pending`` in the same commit (``Store.mark_mail_sent``); the
poller works through the pending ones at each poll (docs/inbound.md,
"Deleting at the provider"). A failed DELETE waits with backoff and is
tried again; delivery never waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gatewayd.store.database import StorePart

__all__ = ["PendingDelete", "ProviderDeletes"]


@dataclass(frozen=True)
class PendingDelete:
    uuid: str
    extension_id: int
    attempts: int


class ProviderDeletes(StorePart):
    """The ``Store``'s queue of deletions at the provider."""

    def due_provider_deletes(self, now: float, limit: int = 50) -> list[PendingDelete]:
        rows = self._db.query(
            "SELECT uuid, extension_id, delete_attempts FROM received WHERE provider_delete = 'pending' "
            "AND (delete_next_at IS NULL OR delete_next_at <= ?) ORDER BY delete_next_at LIMIT ?",
            (now, limit),
        )
        return [PendingDelete(r[0], int(r[1]), int(r[2])) for r in rows]

    def provider_delete_done(self, uuid: str) -> None:
        self._db.write("UPDATE received SET provider_delete = 'done', delete_attempts = delete_attempts + 1, delete_next_at = NULL "
                       "WHERE uuid = ?", (uuid,))

    def provider_delete_failed(self, uuid: str, next_at: float) -> None:
        self._db.write("UPDATE received SET delete_attempts = delete_attempts + 1, delete_next_at = ? WHERE uuid = ?", (next_at, uuid))

    def count_provider_deletes(self) -> int:
        """Deletions still pending (for /metrics and the tests)."""
        return int(self._db.query("SELECT COUNT(*) FROM received WHERE provider_delete = 'pending'")[0][0])
