"""Leases: which node does a piece of work that must run on one node at a time (docs/deployment.md, Several nodes).

A lease is a row (name, holder, acquired_at, expires_at). A node takes a
free or expired lease, or renews its own, in one statement; it holds it
until ``expires_at`` and must renew before then. Another node takes it over
only after it expired, so a node that died or froze loses its work within
one lease period. On SQLite there is one node, and it always gets its
leases; the same code runs on both backends.

Times are the nodes' clocks (``Store.clock``): nodes keep them in step with
NTP, as any cluster does; the lease period (``storage.lease``, 30 s by
default) is far above the skew NTP leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

from gatewayd.store.database import StorePart

__all__ = ["Lease", "LeaseTable", "Taken"]


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    acquired_at: float
    expires_at: float


@dataclass(frozen=True)
class Taken:
    """What ``take_lease`` found: whether ``holder`` has it now, and who had it before when that was someone else."""

    held: bool
    lease: Lease | None  # the row as it is after the attempt
    previous: str = ""  # the holder it was taken over from ("" when new, or renewed)


class LeaseTable(StorePart):
    """The ``leases`` table."""

    def take_lease(self, name: str, holder: str, ttl: float, now: float | None = None) -> Taken:
        """Take ``name`` for ``holder`` until now + ``ttl`` if it is free, expired or already ``holder``'s."""
        now = self.clock() if now is None else now
        with self._db.transaction() as conn:
            row = conn.execute("SELECT holder, acquired_at, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
            if row is None:
                conn.execute("INSERT INTO leases (name, holder, acquired_at, expires_at) VALUES (?, ?, ?, ?)", (name, holder, now, now + ttl))
                return Taken(True, Lease(name, holder, now, now + ttl))
            old_holder, acquired_at, expires_at = row[0], float(row[1]), float(row[2])
            if old_holder == holder:
                conn.execute("UPDATE leases SET expires_at = ? WHERE name = ?", (now + ttl, name))
                return Taken(True, Lease(name, holder, acquired_at, now + ttl))
            if expires_at > now:
                return Taken(False, Lease(name, old_holder, acquired_at, expires_at))
            conn.execute("UPDATE leases SET holder = ?, acquired_at = ?, expires_at = ? WHERE name = ?", (holder, now, now + ttl, name))
            return Taken(True, Lease(name, holder, now, now + ttl), previous=old_holder)

    def holds_lease(self, name: str, holder: str, margin: float = 0.0, now: float | None = None) -> bool:
        """Whether ``holder`` holds ``name`` for at least ``margin`` seconds more."""
        now = self.clock() if now is None else now
        rows = self._db.query("SELECT 1 FROM leases WHERE name = ? AND holder = ? AND expires_at > ?", (name, holder, now + margin))
        return bool(rows)

    def release_lease(self, name: str, holder: str) -> bool:
        """Give ``name`` up (a clean stop), if ``holder`` has it; True when it did."""
        cur = self._db.write("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))
        return cur.rowcount > 0

    def leases(self) -> list[Lease]:
        """Every lease, by name (expired ones included: ``expires_at`` tells)."""
        rows = self._db.query("SELECT name, holder, acquired_at, expires_at FROM leases ORDER BY name")
        return [Lease(r[0], r[1], float(r[2]), float(r[3])) for r in rows]
