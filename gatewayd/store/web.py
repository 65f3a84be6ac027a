"""The web console's part of the store: sessions, and the paged, per-account job and fax lists (docs/web.md).

Sessions live in the store (not in the process) so they survive a restart
and can be shared by several nodes later. Only a hash of the session token
is stored: a copy of the database does not log anyone in. Expired rows are
removed as new sessions are made, so nothing is kept for ever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gatewayd.store.database import StorePart, where_terms
from gatewayd.store.jobs import JOB_COLUMNS, Job
from gatewayd.store.received import RECEIVED_COLUMNS, ReceivedFax, received_fax, received_tiebreak

__all__ = ["JobFilter", "ReceivedFilter", "WebSession", "WebTables"]


@dataclass(frozen=True)
class WebSession:
    token_hash: str
    account: str
    csrf: str
    created_at: float
    expires_at: float


@dataclass(frozen=True)
class JobFilter:
    """Which jobs an account may see; ``everything`` for admins."""

    everything: bool = False
    account: str = ""
    senders: tuple[str, ...] = ()  # envelope senders (report_to), lowercase


@dataclass(frozen=True)
class ReceivedFilter:
    everything: bool = False
    targets: tuple[str, ...] = ()  # destination numbers or extension ids


def _senders_in(dialect: str, count: int) -> str:
    """``report_to`` among ``count`` lowercase senders, ignoring case, on the index that ignores case.

    SQLite's index is on ``report_to COLLATE NOCASE``; PostgreSQL's (the same
    migration, gatewayd/store/postgres.py, ``postgres_ddl``) on ``lower(report_to)``.
    """
    marks = ",".join("?" * count)
    return f"lower(report_to) IN ({marks})" if dialect == "postgresql" else f"report_to COLLATE NOCASE IN ({marks})"


def _job_scope(scope: JobFilter, dialect: str) -> tuple[str, list[Any]]:
    # TRUE and FALSE, not 1 and 0: PostgreSQL wants a boolean after WHERE (SQLite knows both).
    if scope.everything:
        return "TRUE", []
    parts: list[str] = []
    params: list[Any] = []
    if scope.account:
        parts.append("(account = ? AND account != '')")
        params.append(scope.account)
    if scope.senders:
        parts.append(_senders_in(dialect, len(scope.senders)))
        params.extend(scope.senders)
    return ("(" + " OR ".join(parts) + ")") if parts else "FALSE", params


def _received_scope(scope: ReceivedFilter) -> tuple[str, list[Any]]:
    if scope.everything:
        return "TRUE", []
    if not scope.targets:
        return "FALSE", []
    marks = ",".join("?" * len(scope.targets))
    return f"(destination IN ({marks}) OR CAST(extension_id AS TEXT) IN ({marks}))", [*scope.targets, *scope.targets]


class WebTables(StorePart):
    """The ``Store``'s web sessions and the console's queries."""

    # --- sessions

    def create_session(self, token_hash: str, account: str, csrf: str, lifetime: float) -> WebSession:
        now = self.clock()
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM web_sessions WHERE expires_at <= ?", (now,))
            conn.execute(
                "INSERT INTO web_sessions (token_hash, account, csrf, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                (token_hash, account, csrf, now, now + lifetime),
            )
        return WebSession(token_hash, account, csrf, now, now + lifetime)

    def get_session(self, token_hash: str) -> WebSession | None:
        rows = self._db.query(
            "SELECT token_hash, account, csrf, created_at, expires_at FROM web_sessions WHERE token_hash = ? AND expires_at > ?",
            (token_hash, self.clock()),
        )
        return WebSession(*rows[0]) if rows else None

    def delete_session(self, token_hash: str) -> None:
        self._db.write("DELETE FROM web_sessions WHERE token_hash = ?", (token_hash,))

    # --- jobs

    def web_jobs(self, scope: JobFilter, *, state: str = "", number: str = "", before: int | None = None, limit: int = 50) -> list[Job]:
        """One page of jobs, newest first (keyset paging on id: every page costs the same)."""
        extra, extra_params = where_terms(
            (bool(state), "state = ?", state),
            (bool(number), "strpos(number, ?) > 0" if self._db.dialect == "postgresql" else "instr(number, ?) > 0", number),
            (before is not None, "id < ?", before),
        )
        branches: list[tuple[str, list[Any]]] = []
        if scope.everything:
            branches.append(("TRUE", []))
        else:
            # One branch per index (account, report_to), each walked newest
            # first and cut at ``limit``, then merged: an OR across two
            # indexes would sort every match of a busy account.
            if scope.account:
                branches.append(("account = ? AND account != ''", [scope.account]))
            if scope.senders:
                branches.append((_senders_in(self._db.dialect, len(scope.senders)), list(scope.senders)))
        if not branches:
            return []
        parts: list[str] = []
        params: list[Any] = []
        for n, (where, branch_params) in enumerate(branches):
            # Each subquery named: PostgreSQL before 16 requires it.
            parts.append(f"SELECT * FROM (SELECT {JOB_COLUMNS} FROM jobs WHERE {' AND '.join([where, *extra])} ORDER BY id DESC LIMIT ?) AS b{n}")
            params += [*branch_params, *extra_params, limit]
        rows = self._db.query(f"{' UNION '.join(parts)} ORDER BY id DESC LIMIT ?", (*params, limit))
        return [Job(*r) for r in rows]

    def web_job(self, scope: JobFilter, job_id: int) -> Job | None:
        where, params = _job_scope(scope, self._db.dialect)
        rows = self._db.query(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ? AND {where}", (job_id, *params))
        return Job(*rows[0]) if rows else None

    # --- received faxes

    def web_received(self, scope: ReceivedFilter, *, limit: int = 50, before: float | None = None) -> list[ReceivedFax]:
        where, params = _received_scope(scope)
        if before is not None:
            where += " AND first_seen < ?"
            params.append(before)
        rows = self._db.query(
            f"SELECT {RECEIVED_COLUMNS} FROM received WHERE {where} ORDER BY first_seen DESC, {received_tiebreak(self._db.dialect)} DESC LIMIT ?",
            (*params, limit),
        )
        return [received_fax(r) for r in rows]

    def web_received_one(self, scope: ReceivedFilter, uuid: str) -> ReceivedFax | None:
        where, params = _received_scope(scope)
        rows = self._db.query(f"SELECT {RECEIVED_COLUMNS} FROM received WHERE uuid = ? AND {where}", (uuid, *params))
        return received_fax(rows[0]) if rows else None

    def outbox_by_state(self) -> dict[str, int]:
        return {state: n for state, n in self._db.query("SELECT state, COUNT(*) FROM outbox GROUP BY state")}

    def outbox_message(self, mail_id: int) -> bytes | None:
        rows = self._db.query("SELECT message FROM outbox WHERE id = ?", (mail_id,))
        return bytes(rows[0][0]) if rows else None
