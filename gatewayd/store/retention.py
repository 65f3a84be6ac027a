"""Retention: what finished state is purged when, in batches small enough that intake never waits long.

docs/operations.md, "Retention and privacy", says what goes when. In short
(every duration from ``[retention]``, 0 = keep for ever):

- ``documents``: the fax document of jobs finished (and reported) longer
  ago than ``retention.documents``, once no unfinished, unreported or
  younger job shares it (a document never outlives the last job record that
  names it);
- ``mail``: the body of an email the relay accepted or refused for good,
  ``retention.mail`` after that outcome (the row keeps recipients, time and
  outcome);
- ``jobs``: finished and reported jobs with their history, ``retention.jobs``
  after they finished;
- ``emails``: the remaining records of those emails, after ``retention.jobs``
  too (never one a received-fax record still names);
- ``received``: ledger records of relayed received faxes, after
  ``retention.received``, and never one the inbound poller could still list
  at the provider (its window start, from the store's meta table);
- ``counters``: hourly sender counters older than ``USAGE_KEEP`` (only the
  last hour counts, gatewayd/email_to_fax/policy.py) and intake keys older
  than ``retention.jobs``; finished office conversions' records after
  ``retention.jobs``; expired web console sessions.

Nothing unfinished is ever purged: pending mail, unfinished or unreported
jobs, received faxes not yet relayed, documents a live job still needs.

Every step is one short transaction of at most ``batch`` rows on the store's
thread; ``purge`` yields between steps, so a commit from intake waits for at
most one step. After each step the WAL is checkpointed from a connection and
thread of its own (``checkpoint_aside``), so that no commit of intake pays
for copying the purge's pages into the database file. Freed pages go back to the file system the same way, a few
hundred pages per ``PRAGMA incremental_vacuum`` step (the database is put in
``auto_vacuum = INCREMENTAL`` mode by ``ensure_incremental_vacuum``).

On PostgreSQL (docs/deployment.md, Several nodes) the same steps run with
the same SQL where the two agree; documents are rows there, deleted in the
step's own transaction (no file to unlink afterwards), a mail body is
cleared in place (the server keeps a long body out of line, TOAST, so the
short row left packs as well as a fresh insert would), and there is no
checkpoint or incremental vacuum to do: the server's autovacuum does that
work.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gatewayd.store.database import DB_ERRORS, DbConnection, SqliteDatabase, StoreError, StorePart

if TYPE_CHECKING:
    from gatewayd.store import Store

__all__ = [
    "KINDS", "USAGE_KEEP", "PurgeResult", "RetentionPolicy", "RetentionPart", "StorageFacts", "Tally",
    "document_bytes", "purge",
]

# Purged in this order: a received record goes before its email's record,
# documents before the jobs that name them.
KINDS = ("received", "mail", "documents", "jobs", "emails", "counters")

# The retention setting each kind's cutoff comes from. A kind whose setting
# keeps everything (0) has nothing to do, except the counters: the usage log
# has its own horizon (USAGE_KEEP).
_SETTING = {"received": "received", "mail": "mail", "documents": "documents", "jobs": "jobs", "emails": "jobs", "counters": "jobs"}
USAGE_KEEP = 48 * 3600.0  # sender_usage rows: only the last hour is ever read
# A document saved (or its age refreshed by a save of the same content)
# this recently may be about to be named by a job another process is
# committing: spared (gatewayd/store/documents.py, save_document).
DOCUMENT_GRACE = 3600.0
BATCH = 50  # rows per step: a few ms each (docs/performance.md (e))
VACUUM_PAGES = 32  # pages per incremental vacuum step (128 KiB at 4 KiB pages): each moved page rewrites its parent too


@dataclass(frozen=True)
class RetentionPolicy:
    """The ``[retention]`` durations in seconds (0 = for ever), and how far back the inbound poller looks."""

    documents: float
    mail: float
    jobs: float
    received: float
    inbound_overlap: float = 0.0  # a poll window reaches this far before the extension's high-water mark


@dataclass
class Tally:
    rows: int = 0
    bytes: int = 0

    def add(self, rows: int, size: int) -> None:
        self.rows += rows
        self.bytes += size


@dataclass
class PurgeResult:
    """What a round purged (or, dry, would purge) per kind, and how long its steps held the store."""

    dry_run: bool
    tallies: dict[str, Tally] = field(default_factory=lambda: {k: Tally() for k in KINDS})
    steps: int = 0
    longest_step: float = 0.0  # seconds: the longest any intake commit could have waited
    longest_by_kind: dict[str, float] = field(default_factory=dict)  # the same per kind ("vacuum" too)
    seconds: float = 0.0
    vacuumed_pages: int = 0

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tallies.values())


@dataclass(frozen=True)
class StorageFacts:
    """For /metrics: the database's size and the outbox by state."""

    file_bytes: int  # the database file and its WAL (PostgreSQL: the database's size on the server)
    outbox: dict[str, int]  # state -> rows ("pending", "sent", "failed")


@dataclass(frozen=True)
class _Step:
    rows: int
    bytes: int
    cursor: Any
    done: bool
    unlink: tuple[Path, ...] = ()  # document files to remove once the step is committed (``unlink_documents``)


def unlink_documents(paths: tuple[Path, ...], now: float) -> None:
    """Remove the files of documents a committed step gave up, off the store's
    thread (unlinks can stall on a busy file system). One saved again since
    (its age refreshed by a save of the same content, for a job about to be
    committed) is left: its new job names it. One left by a crash before
    this ran is an orphan, removed at the next start (``clean_documents``)."""
    for path in paths:
        try:
            if now - path.stat().st_mtime < DOCUMENT_GRACE:
                continue
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot remove document {path.name}: {exc}") from exc


def document_bytes(documents_dir: Path) -> int:
    """Bytes of the document files (a directory walk: call it off the event loop and off the store's thread)."""
    total = 0
    try:
        subs = list(os.scandir(documents_dir))
    except OSError:
        return 0
    for sub in subs:
        if not sub.is_dir(follow_symlinks=False):
            continue
        try:
            with os.scandir(sub.path) as entries:
                for entry in entries:
                    try:
                        total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        pass
        except OSError:
            pass
    return total


def _cutoff(now: float, keep: float) -> float | None:
    return None if keep <= 0 else now - keep


def _next_cursor(rows: list[Any], cursor: Any) -> Any:
    """Where a keyset step resumes: the (time, id) of its last row, or where it was."""
    return (rows[-1][0], rows[-1][1]) if rows else cursor


class RetentionPart(StorePart):
    """The ``Store``'s purge steps, dry-run plan, incremental vacuum and size facts."""

    documents_dir: Path
    db_path: Path
    document_path: Callable[[str], Path]

    def _sqlite(self) -> SqliteDatabase | None:
        """The SQLite database, for the parts of retention that only SQLite has; None on PostgreSQL."""
        return self._db if isinstance(self._db, SqliteDatabase) else None

    # ------------------------------------------------------------ vacuum

    def ensure_incremental_vacuum(self) -> bool:
        """Put the database in ``auto_vacuum = INCREMENTAL`` mode; True when it had to be rebuilt.

        A database created by this version is in that mode from its first
        page (gatewayd/store/database.py). An older one needs one full
        ``VACUUM``, which rewrites the file and holds the write lock while it
        does (about a second per 100 MB): the daemon does it once at start,
        before it accepts anything (docs/operations.md, Retention).
        """
        db = self._sqlite()
        if db is None:
            return False  # PostgreSQL: autovacuum gives dead rows' space back
        with db._lock:
            if db.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
                return False
            if db._depth:
                raise StoreError("cannot vacuum inside a transaction")
            try:
                db.conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
                db.conn.execute("VACUUM")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot switch {db.path} to incremental vacuum: {exc}") from exc
            return True

    def vacuum_step(self, pages: int = VACUUM_PAGES) -> int:
        """Give up to ``pages`` free pages back to the file system, in one short transaction; returns how many."""
        db = self._sqlite()
        if db is None:
            return 0  # PostgreSQL: autovacuum's work
        with db._lock:
            if db._depth:
                raise StoreError("cannot vacuum inside a transaction")
            try:
                before = db.conn.execute("PRAGMA freelist_count").fetchone()[0]
                if not before:
                    return 0
                # executescript steps the pragma to its end (execute() would free one page).
                db.conn.executescript(f"BEGIN IMMEDIATE; PRAGMA incremental_vacuum({int(pages)}); COMMIT;")
                after = db.conn.execute("PRAGMA freelist_count").fetchone()[0]
            except sqlite3.Error as exc:
                if db.conn.in_transaction:
                    db.conn.execute("ROLLBACK")
                raise StoreError(f"incremental vacuum failed: {exc}") from exc
            return int(before - after)

    def checkpoint(self) -> None:
        """Copy the WAL into the database file without waiting for anyone (so the file shows its new size); nothing on PostgreSQL."""
        if self._sqlite() is None:
            return
        self._db.query("PRAGMA wal_checkpoint(PASSIVE)")

    def checkpoint_aside(self) -> None:
        """``checkpoint`` on a connection of its own: call it in a thread of
        its own, and commits go on meanwhile. Done after every purge step, it
        keeps the WAL short, so no intake commit runs one of SQLite's
        automatic checkpoints (every 1,000 pages) of a purge's pages: those
        cost hundreds of milliseconds on a busy disk (docs/performance.md (e))."""
        if self._sqlite() is None:
            return
        conn = sqlite3.connect(self.db_path, timeout=5.0, isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"checkpoint failed: {exc}") from exc
        finally:
            conn.close()

    def storage_facts(self) -> StorageFacts:
        db = self._sqlite()
        if db is None:
            # The whole database (tables, indexes, TOAST, dead rows autovacuum has not reused yet).
            size = int(self._db.query("SELECT pg_database_size(current_database())")[0][0])
        else:
            size = 0
            for path in db.files()[:2]:
                try:
                    size += path.stat().st_size
                except OSError:
                    pass
        # Counted on the outbox_due index: the rows themselves (bodies) are not read.
        outbox = {state: n for state, n in self._db.query("SELECT state, COUNT(*) FROM outbox GROUP BY state")}
        return StorageFacts(size, outbox)

    # ------------------------------------------------------------ one step

    def purge_step(self, kind: str, policy: RetentionPolicy, now: float, cursor: Any = None, limit: int = BATCH) -> _Step:
        """Purge at most ``limit`` rows of one kind in one transaction; ``done`` when nothing of that kind is left to do."""
        step = getattr(self, f"_purge_{kind}")
        cutoff = _cutoff(now, getattr(policy, _SETTING[kind]))
        if cutoff is None and kind != "counters":
            return _Step(0, 0, None, True)
        try:
            with self._db.transaction() as conn:
                return step(conn, policy, cutoff, now, cursor, limit)
        except DB_ERRORS as exc:
            raise StoreError(f"cannot purge {kind}: {exc}") from exc

    def received_horizon(self, overlap: float, now: float) -> float:
        """No received fax seen after this time may be forgotten: the inbound
        poller's oldest window start (per extension: its high-water mark less
        the overlap, or the floor of a first window not yet complete), less
        ``overlap`` again for a provider clock ahead of ours."""
        starts: dict[str, float] = {}
        floors: dict[str, float] = {}
        for key, value in self._db.query("SELECT key, value FROM meta WHERE key LIKE 'inbound.hwm.%' OR key LIKE 'inbound.floor.%'"):
            try:
                t = float(value)
            except ValueError:
                continue
            ext = key.rsplit(".", 1)[-1]
            if key.startswith("inbound.hwm."):
                starts[ext] = min(t, now) - overlap
            else:
                floors[ext] = t
        for ext, floor in floors.items():
            starts.setdefault(ext, floor)
        return min(starts.values(), default=now) - overlap

    @staticmethod
    def _page_after(conn: DbConnection, sql: str, cutoff: float, cursor: Any, limit: int) -> list[Any]:
        """One keyset batch: ``sql`` takes (cutoff, after time, after id, limit); ``cursor`` is the last row's (time, id)."""
        after_t, after_id = cursor if cursor is not None else (-1.0, 0)
        return list(conn.execute(sql, (cutoff, after_t, after_id, limit)).fetchall())

    def _purge_received(self, conn: DbConnection, policy: RetentionPolicy, cutoff: float, now: float, cursor: Any, limit: int) -> _Step:
        cutoff = min(cutoff, self.received_horizon(policy.inbound_overlap, now))
        # INDEXED BY: by state alone, each step would read every relayed
        # record still kept (PostgreSQL's planner picks the partial index itself).
        hint = " INDEXED BY received_relayed" if self._db.dialect == "sqlite" else ""
        rows = conn.execute(
            "SELECT uuid, LENGTH(uuid) + LENGTH(caller_id) + LENGTH(destination) + LENGTH(fax_time) + LENGTH(recipients) + LENGTH(note) + 48 "
            f"FROM received{hint} WHERE state = 'relayed' AND relayed_at < ? AND first_seen < ? LIMIT ?",
            (cutoff, cutoff, limit),
        ).fetchall()
        if rows:
            conn.executemany("DELETE FROM received WHERE uuid = ? AND state = 'relayed'", [(r[0],) for r in rows])
        return _Step(len(rows), sum(r[1] for r in rows), None, len(rows) < limit)

    def _purge_mail(self, conn: DbConnection, policy: RetentionPolicy, cutoff: float, now: float, cursor: Any, limit: int) -> _Step:
        rows = conn.execute(
            "SELECT id, LENGTH(message) FROM outbox WHERE state != 'pending' AND purged_at IS NULL "
            "AND COALESCE(sent_at, next_attempt_at) < ? ORDER BY COALESCE(sent_at, next_attempt_at) LIMIT ?",
            (cutoff, limit),
        ).fetchall()
        if rows and self._db.dialect == "postgresql":
            # In place: the body lived out of line (TOAST) and goes with it.
            conn.execute(
                f"UPDATE outbox SET message = ?, purged_at = ? WHERE id IN ({','.join('?' * len(rows))}) "
                "AND state != 'pending' AND purged_at IS NULL",
                [b"", now, *(r[0] for r in rows)],
            )
        elif rows:
            # Deleted and inserted again without its body, not updated: an
            # UPDATE leaves each short row alone on the page its long body
            # filled (4 KiB a row for retention.jobs), a fresh insert packs
            # them. Every other column is copied as it is (whatever columns
            # the table has); the received ledger's reference is checked at
            # commit, when the row is back.
            cols = [r[1] for r in conn.execute("PRAGMA table_info(outbox)") if r[1] not in ("message", "purged_at")]
            names = ", ".join(cols)
            marks = ",".join("?" * len(rows))
            kept = conn.execute(
                f"SELECT {names} FROM outbox WHERE id IN ({marks}) AND state != 'pending' AND purged_at IS NULL", [r[0] for r in rows]
            ).fetchall()
            conn.execute("PRAGMA defer_foreign_keys = ON")
            conn.executemany("DELETE FROM outbox WHERE id = ?", [(row[cols.index("id")],) for row in kept])
            conn.executemany(
                f"INSERT INTO outbox ({names}, message, purged_at) VALUES ({','.join('?' * len(cols))}, X'', ?)",
                [(*row, now) for row in kept],
            )
        return _Step(len(rows), sum(r[1] for r in rows), None, len(rows) < limit)

    def _purge_documents(self, conn: DbConnection, policy: RetentionPolicy, cutoff: float, now: float, cursor: Any, limit: int) -> _Step:
        rows = self._page_after(
            conn, "SELECT finished_at, id, document FROM jobs WHERE finished_at IS NOT NULL AND document_purged_at IS NULL "
            "AND finished_at < ? AND (finished_at, id) > (?, ?) ORDER BY finished_at, id LIMIT ?",
            cutoff, cursor, limit,
        )
        removed = size = 0
        unlink: list[Path] = []
        for sha in dict.fromkeys(r[2] for r in rows):
            live = conn.execute(
                "SELECT 1 FROM jobs WHERE document = ? AND (finished_at IS NULL OR finished_at >= ? OR reported_at IS NULL) LIMIT 1",
                (sha, cutoff),
            ).fetchone()
            if live:
                continue  # a younger, unfinished or unreported job (its report may attach it) still needs it
            gone = self._doomed_document(conn, sha, now)
            if gone is None:
                continue
            covers = [c for (c,) in conn.execute(
                "SELECT DISTINCT cover FROM jobs WHERE document = ? AND document_purged_at IS NULL AND cover != ''", (sha,))]
            conn.execute("UPDATE jobs SET document_purged_at = ? WHERE document = ? AND document_purged_at IS NULL", (now, sha))
            removed += 1
            size += gone
            self._drop_document(conn, sha, unlink)
            # Each recipient's own cover goes with the shared document, once no
            # job still keeping its documents names it.
            for cover in covers:
                if conn.execute("SELECT 1 FROM jobs WHERE (cover = ? OR document = ?) AND document_purged_at IS NULL LIMIT 1",
                                (cover, cover)).fetchone() is None:
                    cover_gone = self._doomed_document(conn, cover, now)
                    if cover_gone is not None:
                        removed += 1
                        size += cover_gone
                        self._drop_document(conn, cover, unlink)
        return _Step(removed, size, _next_cursor(rows, cursor), len(rows) < limit, tuple(unlink))

    def _doomed_document(self, conn: DbConnection, sha: str, now: float) -> int | None:
        """The size of a document that may go (0 when already gone), or None when it was saved too recently."""
        if self._db.dialect == "postgresql":
            row = conn.execute("SELECT size, created_at FROM documents WHERE name = ?", (sha + ".pdf",)).fetchone()
            if row is None:
                return 0
            return None if now - row[1] < DOCUMENT_GRACE else int(row[0])
        try:
            st = self.document_path(sha).stat()
        except FileNotFoundError:
            return 0
        if now - st.st_mtime < DOCUMENT_GRACE:
            return None
        return int(st.st_size)

    def _drop_document(self, conn: DbConnection, sha: str, unlink: list[Path]) -> None:
        """A document the step gives up: its row deleted in the step's transaction (PostgreSQL), or its file unlinked after the commit (SQLite)."""
        if self._db.dialect == "postgresql":
            conn.execute("DELETE FROM documents WHERE name = ?", (sha + ".pdf",))
        else:
            unlink.append(self.document_path(sha))

    def _purge_jobs(self, conn: DbConnection, policy: RetentionPolicy, cutoff: float, now: float, cursor: Any, limit: int) -> _Step:
        # Unreported jobs are still work for the reporter: kept, and skipped by the cursor.
        rows = self._page_after(
            conn, "SELECT finished_at, id, document, reported_at IS NOT NULL, "
            "LENGTH(reason) + LENGTH(number) + LENGTH(dst_num) + LENGTH(report_to) + LENGTH(message_id) + LENGTH(subject) "
            "+ LENGTH(document) + LENGTH(note) + LENGTH(provider_status) + LENGTH(rule_key) + 120 "
            "FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ? AND (finished_at, id) > (?, ?) ORDER BY finished_at, id LIMIT ?",
            cutoff, cursor, limit,
        )
        doomed = [r for r in rows if r[3]]
        size = sum(r[4] for r in doomed)
        unlink: list[Path] = []
        if doomed:
            ids = [(r[1],) for r in doomed]
            size += sum(
                n for (n,) in conn.execute(
                    f"SELECT COALESCE(SUM(LENGTH(reason) + 40), 0) FROM job_events WHERE job_id IN ({','.join('?' * len(ids))})",
                    [i for (i,) in ids],
                )
            )
            covers = [c for (c,) in conn.execute(
                f"SELECT DISTINCT cover FROM jobs WHERE cover != '' AND id IN ({','.join('?' * len(ids))})", [i for (i,) in ids])]
            conn.executemany("DELETE FROM job_events WHERE job_id = ?", ids)
            conn.executemany("DELETE FROM jobs WHERE id = ? AND finished_at IS NOT NULL", ids)
            # A document (or a recipient's cover) never outlives the last record that names it.
            for sha in dict.fromkeys([*(r[2] for r in doomed), *covers]):
                if conn.execute("SELECT 1 FROM jobs WHERE document = ? OR cover = ? LIMIT 1", (sha, sha)).fetchone() is None:
                    if self._db.dialect == "postgresql":
                        # As unlink_documents: one saved again since is left, its new job names it.
                        conn.execute("DELETE FROM documents WHERE name = ? AND created_at <= ?", (sha + ".pdf", now - DOCUMENT_GRACE))
                    else:
                        unlink.append(self.document_path(sha))
        return _Step(len(doomed), size, _next_cursor(rows, cursor), len(rows) < limit, tuple(unlink))

    def _purge_emails(self, conn: DbConnection, policy: RetentionPolicy, cutoff: float, now: float, cursor: Any, limit: int) -> _Step:
        rows = self._page_after(
            conn, "SELECT COALESCE(sent_at, next_attempt_at), id, LENGTH(message) + LENGTH(recipients) + LENGTH(mail_from) + LENGTH(last_error) + 80, "
            "EXISTS (SELECT 1 FROM received r WHERE r.outbox_id = outbox.id) "
            "FROM outbox WHERE state != 'pending' AND COALESCE(sent_at, next_attempt_at) < ? "
            "AND (COALESCE(sent_at, next_attempt_at), id) > (?, ?) ORDER BY COALESCE(sent_at, next_attempt_at), id LIMIT ?",
            cutoff, cursor, limit,
        )
        doomed = [r for r in rows if not r[3]]
        if doomed:
            conn.executemany("DELETE FROM outbox WHERE id = ? AND state != 'pending'", [(r[1],) for r in doomed])
        return _Step(len(doomed), sum(r[2] for r in doomed), _next_cursor(rows, cursor), len(rows) < limit)

    def _purge_counters(self, conn: DbConnection, policy: RetentionPolicy, cutoff: float | None, now: float, cursor: Any, limit: int) -> _Step:
        # sender_usage has no key: a row's own address (SQLite's rowid, PostgreSQL's ctid).
        if self._db.dialect == "postgresql":
            usage_sql = "DELETE FROM sender_usage WHERE ctid = ANY(ARRAY(SELECT ctid FROM sender_usage WHERE at < ? LIMIT ?))"
        else:
            usage_sql = "DELETE FROM sender_usage WHERE rowid IN (SELECT rowid FROM sender_usage WHERE at < ? LIMIT ?)"
        usage = conn.execute(usage_sql, (now - USAGE_KEEP, limit)).rowcount
        keys = 0
        if cutoff is not None and usage < limit:
            keys = conn.execute(
                "DELETE FROM intake_keys WHERE key IN (SELECT key FROM intake_keys WHERE at < ? LIMIT ?)", (cutoff, limit - usage)
            ).rowcount
        ended = 0
        if cutoff is not None and usage + keys < limit:
            # Finished office conversions (their originals are gone already:
            # gatewayd/store/documents.py): the record, after retention.jobs.
            ended = conn.execute(
                "DELETE FROM conversions WHERE id IN (SELECT id FROM conversions WHERE state != 'pending' "
                "AND finished_at IS NOT NULL AND finished_at < ? LIMIT ?)", (cutoff, limit - usage - keys)
            ).rowcount
        expired = 0
        if usage + keys + ended < limit:
            # Web console sessions past their lifetime (docs/web.md): a login
            # also removes them, but an unused console gets no logins.
            expired = conn.execute(
                "DELETE FROM web_sessions WHERE token_hash IN (SELECT token_hash FROM web_sessions WHERE expires_at <= ? LIMIT ?)",
                (now, limit - usage - keys - ended),
            ).rowcount
        rows = usage + keys + ended + expired
        return _Step(rows, 24 * usage + 64 * keys + 256 * ended + 160 * expired, None, rows < limit)

    def preview_keys(self) -> set[str]:
        """The web console's preview names whose document is still here (gatewayd/documents/preview.py, ``prune``).

        A job's document until the purge removed it; a received fax while
        its record and its email's body (the local copy) are kept.
        """
        q = self._db.query
        keys = {row[0] for row in q(
            "SELECT document FROM jobs WHERE document_purged_at IS NULL "
            "UNION SELECT cover FROM jobs WHERE cover != '' AND document_purged_at IS NULL")}
        keys.update(row[0] for row in q(
            "SELECT 'rx-' || r.uuid FROM received r LEFT JOIN outbox o ON o.id = r.outbox_id "
            "WHERE r.outbox_id IS NULL OR o.purged_at IS NULL"))
        return keys

    # ------------------------------------------------------------ dry run

    def purge_plan(self, policy: RetentionPolicy, now: float) -> dict[str, Tally]:
        """What a round would purge now, per kind (``gatewayd purge --dry-run``): reads only."""
        q = self._db.query
        plan = {k: Tally() for k in KINDS}
        cutoff = _cutoff(now, policy.received)
        if cutoff is not None:
            cutoff = min(cutoff, self.received_horizon(policy.inbound_overlap, now))
            n, b = q(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(uuid) + LENGTH(caller_id) + LENGTH(destination) + LENGTH(fax_time) + LENGTH(recipients) + LENGTH(note) + 48), 0) "
                "FROM received WHERE state = 'relayed' AND relayed_at < ? AND first_seen < ?",
                (cutoff, cutoff),
            )[0]
            plan["received"].add(n, b)
        cutoff = _cutoff(now, policy.mail)
        if cutoff is not None:
            n, b = q(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(message)), 0) FROM outbox WHERE state != 'pending' AND purged_at IS NULL "
                "AND COALESCE(sent_at, next_attempt_at) < ?",
                (cutoff,),
            )[0]
            plan["mail"].add(n, b)
        jobs_cutoff = _cutoff(now, policy.jobs)
        doc_cutoff = _cutoff(now, policy.documents)
        doomed_docs: set[str] = set()
        if doc_cutoff is not None:
            doomed_docs.update(r[0] for r in q(
                "SELECT document FROM jobs WHERE document IN (SELECT document FROM jobs WHERE finished_at < ? AND document_purged_at IS NULL) "
                "GROUP BY document HAVING SUM(CASE WHEN finished_at IS NULL OR finished_at >= ? OR reported_at IS NULL THEN 1 ELSE 0 END) = 0",
                (doc_cutoff, doc_cutoff),
            ))
        if jobs_cutoff is not None:
            n, b = q(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(reason) + LENGTH(number) + LENGTH(dst_num) + LENGTH(report_to) + LENGTH(message_id) "
                "+ LENGTH(subject) + LENGTH(document) + LENGTH(note) + LENGTH(provider_status) + LENGTH(rule_key) + 120), 0) "
                "FROM jobs WHERE finished_at < ? AND reported_at IS NOT NULL",
                (jobs_cutoff,),
            )[0]
            events = q(
                "SELECT COALESCE(SUM(LENGTH(reason) + 40), 0) FROM job_events WHERE job_id IN "
                "(SELECT id FROM jobs WHERE finished_at < ? AND reported_at IS NOT NULL)",
                (jobs_cutoff,),
            )[0][0]
            plan["jobs"].add(n, b + events)
            # Documents whose every job goes now go with them.
            doomed_docs.update(r[0] for r in q(
                "SELECT document FROM jobs WHERE document_purged_at IS NULL GROUP BY document "
                "HAVING SUM(CASE WHEN NOT (finished_at < ? AND reported_at IS NOT NULL) THEN 1 ELSE 0 END) = 0",
                (jobs_cutoff,),
            ))
            n, b = q(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(message) + LENGTH(recipients) + LENGTH(mail_from) + LENGTH(last_error) + 80), 0) "
                "FROM outbox WHERE state != 'pending' AND COALESCE(sent_at, next_attempt_at) < ? "
                "AND NOT EXISTS (SELECT 1 FROM received r WHERE r.outbox_id = outbox.id AND NOT (r.state = 'relayed' AND r.relayed_at < ?))",
                (jobs_cutoff, cutoff if cutoff is not None else float("-inf")),
            )[0]
            plan["emails"].add(n, b)
            n = q("SELECT COUNT(*) FROM intake_keys WHERE at < ?", (jobs_cutoff,))[0][0]
            plan["counters"].add(n, 64 * n)
        for sha in doomed_docs:
            if self._db.dialect == "postgresql":
                rows = q("SELECT size, created_at FROM documents WHERE name = ?", (sha + ".pdf",))
                if rows and now - rows[0][1] >= DOCUMENT_GRACE:
                    plan["documents"].add(1, int(rows[0][0]))
                continue
            try:
                st = self.document_path(sha).stat()
            except OSError:
                continue
            if now - st.st_mtime >= DOCUMENT_GRACE:
                plan["documents"].add(1, st.st_size)
        n = q("SELECT COUNT(*) FROM sender_usage WHERE at < ?", (now - USAGE_KEEP,))[0][0]
        plan["counters"].add(n, 24 * n)
        return plan


async def purge(
    store: Store,
    policy: RetentionPolicy,
    now: float | None = None,
    *,
    dry_run: bool = False,
    batch: int = BATCH,
    vacuum_pages: int = VACUUM_PAGES,
    pause: float = 0.0,
    stopping: asyncio.Event | None = None,
) -> PurgeResult:
    """One purge round, then the incremental vacuum, each in short steps on the store's thread.

    Between two steps the event loop runs, and anything queued for the store
    meanwhile (an intake's commit) goes first: no caller waits for more than
    one step (``PurgeResult.longest_step``; docs/performance.md has figures).
    """
    began = time.perf_counter()
    now = store.clock() if now is None else now
    result = PurgeResult(dry_run)
    if dry_run:
        result.tallies = await store.run(store.purge_plan, policy, now)
        result.seconds = time.perf_counter() - began
        return result

    async def timed(kind: str, fn: Callable[..., Any], *args: Any) -> Any:
        t = time.perf_counter()
        value = await store.run(fn, *args)
        took = time.perf_counter() - t
        result.longest_step = max(result.longest_step, took)
        result.longest_by_kind[kind] = max(result.longest_by_kind.get(kind, 0.0), took)
        result.steps += 1
        # Off the store's thread: intake commits go on while the step's pages
        # are copied into the database file, and the next step waits for it.
        await asyncio.to_thread(store.checkpoint_aside)
        await asyncio.sleep(pause)
        return value

    for kind in KINDS:
        cursor = None
        while stopping is None or not stopping.is_set():
            step: _Step = await timed(kind, store.purge_step, kind, policy, now, cursor, batch)
            if step.unlink:
                await asyncio.to_thread(unlink_documents, step.unlink, now)
            result.tallies[kind].add(step.rows, step.bytes)
            if step.done:
                break
            cursor = step.cursor
    while stopping is None or not stopping.is_set():
        freed = await timed("vacuum", store.vacuum_step, vacuum_pages)
        result.vacuumed_pages += freed
        if freed < vacuum_pages:
            break
    await store.run(store.checkpoint)
    result.seconds = time.perf_counter() - began
    return result
