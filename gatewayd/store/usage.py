"""Hourly sender counters (``sender_usage``): how many faxes a ``[[senders]]`` rule has sent since a time.

The rows are written with the jobs, in the same commit (``JobTable.enqueue_jobs``),
so the counts survive restarts (docs/architecture.md, "Durability rules" 5;
the limits themselves are in docs/configuration.md, "[[senders]]").
"""

from __future__ import annotations

from gatewayd.store.database import StorePart

__all__ = ["SenderUsage"]


class SenderUsage(StorePart):
    """The ``Store``'s sender counters."""

    def usage_since(self, rule_key: str, since: float) -> int:
        rows = self._db.query("SELECT COALESCE(SUM(count), 0) FROM sender_usage WHERE rule_key = ? AND at > ?", (rule_key, since))
        return int(rows[0][0])

    def prune_usage(self, before: float) -> None:
        self._db.write("DELETE FROM sender_usage WHERE at <= ?", (before,))
