"""The durable state: SQLite in WAL mode plus content-addressed documents.

One ``Store`` per process. The daemon writes; the CLI reads and changes the
same file while the daemon runs (WAL readers never block the writer; the busy
timeout covers short write overlaps). Every method is synchronous; async code
calls ``await store.run(store.method, ...)`` so SQLite and fsync never block
the event loop, and one worker thread keeps writes in order.

Durability rules (SPEC section 7): ``synchronous=FULL``; a document is
written to a temporary name, fsynced, renamed and its directory fsynced
before any row references it, so a crash never leaves a referenced partial
file. Temporary files found at start are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")


class StoreError(Exception):
    """The store could not do what was asked (disk full, corrupt, locked)."""


class JobNotFound(StoreError):
    pass


# ------------------------------------------------------------------- states

QUEUED = "queued"
SUBMITTING = "submitting"
SUBMITTED = "submitted"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"
CANCELED = "canceled"
ERROR = "error"
REJECTED = "rejected"
UNKNOWN = "unknown"

JOB_STATES = (QUEUED, SUBMITTING, SUBMITTED, SENDING, SENT, FAILED, CANCELED, ERROR, REJECTED, UNKNOWN)
# A job in one of these states is over ("failed" only once its retries are
# exhausted, so it is final only when the caller sets finished_at).
FINAL_STATES = (SENT, CANCELED, ERROR, REJECTED, UNKNOWN)
# States of a job on its way: never finished.
ACTIVE_STATES = (QUEUED, SUBMITTING, SUBMITTED, SENDING)
# States in which the provider may still change the job; the tracker follows these.
AT_PROVIDER = (SUBMITTED, SENDING, FAILED)


# ----------------------------------------------------------------- records


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


# --------------------------------------------------------------- migrations

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        number TEXT NOT NULL,
        dst_num TEXT NOT NULL,
        extension INTEGER NOT NULL,
        report_to TEXT NOT NULL DEFAULT '',
        source TEXT NOT NULL,
        message_id TEXT NOT NULL DEFAULT '',
        subject TEXT NOT NULL DEFAULT '',
        document TEXT NOT NULL,
        pages INTEGER NOT NULL,
        doc_bytes INTEGER NOT NULL,
        provider_id INTEGER,
        provider_status TEXT NOT NULL DEFAULT '',
        submitted_at REAL,
        finished_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        auto_retries_used INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        rule_key TEXT NOT NULL DEFAULT '',
        note TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX jobs_state ON jobs(state);
    CREATE UNIQUE INDEX jobs_provider ON jobs(extension, provider_id) WHERE provider_id IS NOT NULL;
    CREATE TABLE job_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        at REAL NOT NULL,
        from_state TEXT NOT NULL,
        to_state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX job_events_job ON job_events(job_id);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at REAL NOT NULL,
        kind TEXT NOT NULL,
        ref TEXT NOT NULL DEFAULT '',
        mail_from TEXT NOT NULL,
        recipients TEXT NOT NULL,
        message BLOB NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT NOT NULL DEFAULT '',
        sent_at REAL
    );
    CREATE INDEX outbox_due ON outbox(state, next_attempt_at);
    CREATE TABLE received (
        uuid TEXT PRIMARY KEY,
        extension_id INTEGER NOT NULL,
        caller_id TEXT NOT NULL DEFAULT '',
        destination TEXT NOT NULL DEFAULT '',
        fax_time TEXT NOT NULL DEFAULT '',
        file_size INTEGER NOT NULL DEFAULT 0,
        first_seen REAL NOT NULL,
        state TEXT NOT NULL,
        recipients TEXT NOT NULL DEFAULT '[]',
        outbox_id INTEGER REFERENCES outbox(id),
        relayed_at REAL,
        note TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX received_state ON received(state);
    CREATE TABLE sender_usage (
        rule_key TEXT NOT NULL,
        at REAL NOT NULL,
        count INTEGER NOT NULL
    );
    CREATE INDEX sender_usage_rule ON sender_usage(rule_key, at);
    CREATE TABLE intake_keys (
        key TEXT PRIMARY KEY,
        at REAL NOT NULL,
        job_ids TEXT NOT NULL
    );
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: a job's final report is queued once, in the same commit that sets this
    """
    ALTER TABLE jobs ADD COLUMN reported_at REAL;
    CREATE INDEX jobs_unreported ON jobs(finished_at) WHERE finished_at IS NOT NULL AND reported_at IS NULL;
    """,
]

_JOB_COLUMNS = (
    "id, created_at, updated_at, state, reason, number, dst_num, extension, report_to, source, "
    "message_id, subject, document, pages, doc_bytes, provider_id, provider_status, submitted_at, "
    "finished_at, attempts, auto_retries_used, next_attempt_at, rule_key, note, reported_at"
)
_OUTBOX_COLUMNS = (
    "id, created_at, kind, ref, mail_from, recipients, message, state, attempts, next_attempt_at, last_error, sent_at"
)
_RECEIVED_COLUMNS = (
    "uuid, extension_id, caller_id, destination, fax_time, file_size, first_seen, state, recipients, outbox_id, relayed_at, note"
)
_JOB_FIELDS = set(_JOB_COLUMNS.replace(" ", "").split(",")) - {"id", "created_at"}


def _writer_alive(tmp_name: str) -> bool:
    """Whether the process that named ``.tmp-<sha>-<pid>-<thread>`` still runs."""
    try:
        pid = int(tmp_name.split("-")[2])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False  # clean_documents runs at start, before this process writes
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _foreign_owner(state_dir: Path) -> tuple[int, int] | None:
    """(uid, gid) of ``state_dir`` when we are root and it belongs to another user."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    st = state_dir.stat()
    return None if st.st_uid == 0 else (st.st_uid, st.st_gid)


class Store:
    """SQLite state and document files under one state directory."""

    def __init__(self, state_dir: str | os.PathLike[str], *, clock: Callable[[], float] = time.time, busy_timeout_ms: int = 15000) -> None:
        self.state_dir = Path(state_dir)
        self.documents_dir = self.state_dir / "documents"
        self.clock = clock
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Root (a command run with sudo beside the daemon) creates files
            # as the state directory's owner: the daemon must keep reading
            # and writing them. SQLite does the same for its -wal and -shm.
            self._owner = _foreign_owner(self.state_dir)
            self.documents_dir.mkdir(exist_ok=True, mode=0o700)
            self._adopt(self.documents_dir)
            self.db_path = self.state_dir / "gatewayd.sqlite3"
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE),
            # so a writer takes the lock up front instead of failing mid-way.
            self._conn = sqlite3.connect(self.db_path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"cannot use WAL journal mode on {self.db_path} (got {mode})")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            for path in (self.db_path, self.db_path.with_name(self.db_path.name + "-wal"),
                         self.db_path.with_name(self.db_path.name + "-shm")):
                self._adopt(path)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store in {self.state_dir}: {exc}") from exc
        self._lock = threading.RLock()
        self._depth = 0
        self._executor: ThreadPoolExecutor | None = None
        self._durable_subdirs: set[str] = set()  # documents/xx whose entry this process has fsynced
        self._migrate()

    # ------------------------------------------------------------ plumbing

    def _adopt(self, path: Path) -> None:
        """Give ``path`` to the state directory's owner (only when running as root for someone else)."""
        if self._owner is None:
            return
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        if (st.st_uid, st.st_gid) != self._owner:
            os.chown(path, *self._owner)

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA optimize")
            self._conn.close()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store method on the store's own thread, off the event loop."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; nested uses join the outer transaction."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    raise StoreError(f"cannot start a transaction: {exc}") from exc
            self._depth += 1
            try:
                yield self._conn
            except BaseException:
                self._depth -= 1
                if outer:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise
            else:
                self._depth -= 1
                if outer:
                    try:
                        self._conn.execute("COMMIT")
                    except sqlite3.Error as exc:
                        with contextlib.suppress(sqlite3.Error):
                            self._conn.execute("ROLLBACK")
                        raise StoreError(f"commit failed: {exc}") from exc

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(str(exc)) from exc

    def _write(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            with self.transaction() as conn:
                return conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    def _migrate(self) -> None:
        with self._lock:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StoreError(f"the store in {self.state_dir} has schema {version}, newer than this gatewayd ({len(MIGRATIONS)})")
            while version < len(MIGRATIONS):
                number = version + 1
                try:
                    with self.transaction() as conn:
                        # Read again under the write lock: another process (the
                        # daemon and a CLI command starting together) may have
                        # migrated since.
                        version = conn.execute("PRAGMA user_version").fetchone()[0]
                        if version >= number:
                            continue
                        for statement in MIGRATIONS[version].split(";"):
                            if statement.strip():
                                conn.execute(statement)
                        conn.execute(f"PRAGMA user_version={number}")
                        version = number
                except sqlite3.Error as exc:
                    raise StoreError(f"migration {number} failed: {exc}") from exc

    @property
    def schema_version(self) -> int:
        return self._query("PRAGMA user_version")[0][0]

    def ping(self) -> bool:
        """True when the database answers (for /healthz and the watchdog)."""
        return self._query("SELECT 1")[0][0] == 1

    # ------------------------------------------------------------ documents

    def document_path(self, sha256: str) -> Path:
        return self.documents_dir / sha256[:2] / f"{sha256}.pdf"

    def save_document(self, data: bytes, sha256: str | None = None) -> str:
        """Write a document durably; returns its sha256. Idempotent.

        ``sha256``: the digest of ``data`` when the caller has it already
        (``FaxDocument.sha256``), so it is not computed twice.
        """
        sha = sha256 or hashlib.sha256(data).hexdigest()
        final = self.document_path(sha)
        try:
            if final.stat().st_size == len(data):
                # Already durable. Refresh its age so clean_documents, which
                # removes old unreferenced files, cannot take it away before
                # the job that is about to reference it is committed.
                os.utime(final)
                return sha
        except OSError:
            pass
        try:
            final.parent.mkdir(exist_ok=True, mode=0o700)
            self._adopt(final.parent)
            tmp = final.parent / f".tmp-{sha}-{os.getpid()}-{threading.get_ident()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                if self._owner is not None:
                    os.fchown(fd, *self._owner)
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            if final.parent.name not in self._durable_subdirs:
                # The subdirectory's own entry must be durable too. Once this
                # process has fsynced documents/ after seeing the subdirectory,
                # it is (entries are never removed), so this is at most one
                # extra fsync per subdirectory and process, not one a document.
                _fsync_dir(self.documents_dir)
                self._durable_subdirs.add(final.parent.name)
        except OSError as exc:
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(tmp)
            raise StoreError(f"cannot write document: {exc}") from exc
        return sha

    def read_document(self, sha256: str) -> bytes:
        try:
            return self.document_path(sha256).read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read document {sha256}: {exc}") from exc

    def clean_documents(self, *, orphan_age: float = 86400.0) -> int:
        """Remove leftover temporary files, and documents no job references.

        Only orphans older than ``orphan_age`` go: a document is saved just
        before the job that references it is committed.
        """
        removed = 0
        now = time.time()
        referenced = {row[0] for row in self._query("SELECT DISTINCT document FROM jobs WHERE finished_at IS NULL OR finished_at > ?", (self.clock() - 30 * 86400,))}
        for sub in self.documents_dir.iterdir():
            if not sub.is_dir():
                continue
            for path in sub.iterdir():
                name = path.name
                try:
                    if name.startswith(".tmp-"):
                        # An interrupted write: never referenced by any row.
                        # Spare only one a live process (another gatewayd
                        # command) may still be writing right now.
                        if _writer_alive(name) and now - path.stat().st_mtime < 3600:
                            continue
                        path.unlink()
                        removed += 1
                    elif name.endswith(".pdf") and name[:-4] not in referenced and now - path.stat().st_mtime > orphan_age:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed

    # ----------------------------------------------------------------- jobs

    def enqueue_jobs(self, document_sha: str, pages: int, doc_bytes: int, jobs: Sequence[NewJob], *, intake_key: str | None = None) -> list[int]:
        """Store one job per recipient sharing one saved document; one commit.

        With ``intake_key`` (IMAP: Message-ID + content hash) a second call
        for the same message returns the first call's ids and stores nothing.
        """
        now = self.clock()
        ids: list[int] = []
        try:
            with self.transaction() as conn:
                if intake_key:
                    row = conn.execute("SELECT job_ids FROM intake_keys WHERE key = ?", (intake_key,)).fetchone()
                    if row:
                        return json.loads(row[0])
                for job in jobs:
                    cur = conn.execute(
                        "INSERT INTO jobs (created_at, updated_at, state, reason, number, dst_num, extension, report_to, source, "
                        "message_id, subject, document, pages, doc_bytes, rule_key, note, next_attempt_at) "
                        "VALUES (?, ?, ?, '', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (now, now, QUEUED, job.number, job.dst_num, job.extension, job.report_to, job.source,
                         job.message_id, job.subject, document_sha, pages, doc_bytes, job.rule_key, job.note, now),
                    )
                    job_id = cur.lastrowid
                    ids.append(job_id)
                    conn.execute("INSERT INTO job_events (job_id, at, from_state, to_state, reason) VALUES (?, ?, '', ?, ?)",
                                 (job_id, now, QUEUED, f"accepted from {job.source}"))
                    if job.rule_key:
                        conn.execute("INSERT INTO sender_usage (rule_key, at, count) VALUES (?, ?, 1)", (job.rule_key, now))
                if intake_key:
                    conn.execute("INSERT INTO intake_keys (key, at, job_ids) VALUES (?, ?, ?)", (intake_key, now, json.dumps(ids)))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store the job: {exc}") from exc
        return ids

    def save_and_enqueue(self, document: bytes, sha256: str, pages: int, jobs: Sequence[NewJob], *, intake_key: str | None = None) -> list[int]:
        """``save_document`` then ``enqueue_jobs``, in one trip to the store's thread."""
        sha = self.save_document(document, sha256)
        return self.enqueue_jobs(sha, pages, len(document), jobs, intake_key=intake_key)

    def intake_seen(self, intake_key: str) -> list[int] | None:
        rows = self._query("SELECT job_ids FROM intake_keys WHERE key = ?", (intake_key,))
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
        unknown = set(fields) - _JOB_FIELDS
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        now = self.clock()
        try:
            with self.transaction() as conn:
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
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc
        return True

    def update_job(self, job_id: int, **fields: Any) -> None:
        """Change job columns without a state change (e.g. next_attempt_at)."""
        unknown = set(fields) - _JOB_FIELDS
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        fields["updated_at"] = self.clock()
        sets = ", ".join(f"{k} = ?" for k in fields)
        self._write(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    def get_job(self, job_id: int) -> Job:
        rows = self._query(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise JobNotFound(f"no job {job_id}")
        return Job(*rows[0])

    def list_jobs(self, *, state: str | None = None, limit: int = 50) -> list[Job]:
        if state:
            rows = self._query(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = ? ORDER BY id DESC LIMIT ?", (state, limit))
        else:
            rows = self._query(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
        return [Job(*r) for r in rows]

    def jobs_in_states(self, states: Sequence[str], *, unfinished_only: bool = True) -> list[Job]:
        marks = ",".join("?" * len(states))
        extra = " AND finished_at IS NULL" if unfinished_only else ""
        rows = self._query(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ({marks}){extra} ORDER BY id", tuple(states))
        return [Job(*r) for r in rows]

    def due_jobs(self, state: str, now: float, limit: int = 100) -> list[Job]:
        rows = self._query(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = ? AND finished_at IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY id LIMIT ?",
            (state, now, limit),
        )
        return [Job(*r) for r in rows]

    def job_events(self, job_id: int) -> list[JobEvent]:
        rows = self._query("SELECT job_id, at, from_state, to_state, reason FROM job_events WHERE job_id = ? ORDER BY id", (job_id,))
        return [JobEvent(*r) for r in rows]

    def job_counts(self) -> dict[str, int]:
        return {state: n for state, n in self._query("SELECT state, COUNT(*) FROM jobs GROUP BY state")}

    def provider_ids_in_use(self, extension: int) -> set[int]:
        """Provider message ids already owned by a job of this extension."""
        rows = self._query("SELECT provider_id FROM jobs WHERE extension = ? AND provider_id IS NOT NULL", (extension,))
        return {r[0] for r in rows}

    # ------------------------------------------------------- sender limits

    def usage_since(self, rule_key: str, since: float) -> int:
        rows = self._query("SELECT COALESCE(SUM(count), 0) FROM sender_usage WHERE rule_key = ? AND at > ?", (rule_key, since))
        return int(rows[0][0])

    def prune_usage(self, before: float) -> None:
        self._write("DELETE FROM sender_usage WHERE at <= ?", (before,))

    # --------------------------------------------------------------- outbox

    def enqueue_mail(self, kind: str, mail_from: str, recipients: Sequence[str], message: bytes, *, ref: str = "") -> int:
        now = self.clock()
        cur = self._write(
            "INSERT INTO outbox (created_at, kind, ref, mail_from, recipients, message, state, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
            (now, kind, ref, mail_from, json.dumps(list(recipients)), message, now),
        )
        return int(cur.lastrowid)

    def due_mail(self, now: float, limit: int = 20) -> list[OutboxMail]:
        rows = self._query(f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?", (now, limit))
        return [self._mail(r) for r in rows]

    def get_mail(self, mail_id: int) -> OutboxMail:
        rows = self._query(f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE id = ?", (mail_id,))
        if not rows:
            raise StoreError(f"no outbox mail {mail_id}")
        return self._mail(rows[0])

    def list_mail(self, *, state: str | None = None, kind: str | None = None, limit: int = 1000) -> list[OutboxMail]:
        where, params = [], []
        if state:
            where.append("state = ?")
            params.append(state)
        if kind:
            where.append("kind = ?")
            params.append(kind)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._query(f"SELECT {_OUTBOX_COLUMNS} FROM outbox {clause} ORDER BY id LIMIT ?", (*params, limit))
        return [self._mail(r) for r in rows]

    @staticmethod
    def _mail(row: tuple) -> OutboxMail:
        values = list(row)
        values[5] = tuple(json.loads(values[5]))
        values[6] = bytes(values[6])
        return OutboxMail(*values)

    def mark_mail_sent(self, mail_id: int) -> None:
        """The relay said 250. A received fax riding on this mail is now relayed."""
        now = self.clock()
        try:
            with self.transaction() as conn:
                conn.execute("UPDATE outbox SET state = 'sent', sent_at = ?, attempts = attempts + 1, last_error = '' WHERE id = ?", (now, mail_id))
                conn.execute("UPDATE received SET state = 'relayed', relayed_at = ? WHERE outbox_id = ? AND state = 'queued'", (now, mail_id))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot mark mail {mail_id} sent: {exc}") from exc

    def mark_mail_retry(self, mail_id: int, error: str, next_attempt_at: float) -> None:
        self._write("UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE id = ?", (error, next_attempt_at, mail_id))

    def mark_mail_failed(self, mail_id: int, error: str) -> None:
        self._write("UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ? WHERE id = ?", (error, mail_id))

    def outbox_stats(self) -> tuple[int, float | None]:
        """(pending count, age in seconds of the oldest pending mail)."""
        rows = self._query("SELECT COUNT(*), MIN(created_at) FROM outbox WHERE state = 'pending'")
        count, oldest = rows[0]
        return int(count), (self.clock() - oldest) if oldest is not None else None

    # ------------------------------------------------------ received faxes

    def get_received(self, uuid: str) -> ReceivedFax | None:
        rows = self._query(f"SELECT {_RECEIVED_COLUMNS} FROM received WHERE uuid = ?", (uuid,))
        return self._received(rows[0]) if rows else None

    def known_received(self, uuids: Sequence[str]) -> set[str]:
        if not uuids:
            return set()
        marks = ",".join("?" * len(uuids))
        return {r[0] for r in self._query(f"SELECT uuid FROM received WHERE uuid IN ({marks})", tuple(uuids))}

    def queue_received(self, fax: ReceivedFax, mail_from: str, message: bytes) -> int:
        """Record a received fax and its email in one commit; returns the outbox id.

        Exactly once: a fax already relayed, or queued with its email still
        pending, keeps its one email (that outbox id is returned and nothing
        is added). A fax held for lack of a recipient (``hold_received``), or
        whose email the relay refused for good, may be queued again.
        """
        now = self.clock()
        try:
            with self.transaction() as conn:
                row = conn.execute(
                    "SELECT r.state, r.outbox_id, o.state FROM received r LEFT JOIN outbox o ON o.id = r.outbox_id WHERE r.uuid = ?",
                    (fax.uuid,),
                ).fetchone()
                if row is not None and row[1] is not None and (row[0] == "relayed" or (row[0] == "queued" and row[2] != "failed")):
                    return int(row[1])
                outbox_id = self._insert_received(conn, fax, mail_from, message, now)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot queue received fax {fax.uuid}: {exc}") from exc
        return outbox_id

    def _insert_received(self, conn: sqlite3.Connection, fax: ReceivedFax, mail_from: str, message: bytes, now: float) -> int:
        cur = conn.execute(
            "INSERT INTO outbox (created_at, kind, ref, mail_from, recipients, message, state, next_attempt_at) VALUES (?, 'received', ?, ?, ?, ?, 'pending', ?)",
            (now, fax.uuid, mail_from, json.dumps(list(fax.recipients)), message, now),
        )
        outbox_id = int(cur.lastrowid)
        conn.execute(
            f"INSERT INTO received ({_RECEIVED_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, NULL, ?) "
            "ON CONFLICT(uuid) DO UPDATE SET state = 'queued', recipients = excluded.recipients, outbox_id = excluded.outbox_id, note = excluded.note",
            (fax.uuid, fax.extension_id, fax.caller_id, fax.destination, fax.fax_time, fax.file_size,
             fax.first_seen or now, json.dumps(list(fax.recipients)), outbox_id, fax.note),
        )
        return outbox_id

    def hold_received(self, fax: ReceivedFax, note: str) -> None:
        """A fax with no valid recipient: kept, retried when routes change."""
        now = self.clock()
        self._write(
            f"INSERT INTO received ({_RECEIVED_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 'no_recipient', '[]', NULL, NULL, ?) "
            "ON CONFLICT(uuid) DO UPDATE SET note = excluded.note",
            (fax.uuid, fax.extension_id, fax.caller_id, fax.destination, fax.fax_time, fax.file_size, fax.first_seen or now, note),
        )

    def list_received(self, *, state: str | None = None, limit: int = 50) -> list[ReceivedFax]:
        if state:
            rows = self._query(f"SELECT {_RECEIVED_COLUMNS} FROM received WHERE state = ? ORDER BY first_seen DESC LIMIT ?", (state, limit))
        else:
            rows = self._query(f"SELECT {_RECEIVED_COLUMNS} FROM received ORDER BY first_seen DESC LIMIT ?", (limit,))
        return [self._received(r) for r in rows]

    @staticmethod
    def _received(row: tuple) -> ReceivedFax:
        values = list(row)
        values[8] = tuple(json.loads(values[8]))
        return ReceivedFax(*values)

    # ----------------------------------------------------------------- meta

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        self._write("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    # ------------------------------------------------ area-specific queries
    # Components add the queries they need below, each in its own section.

    # --- email to fax

    def next_submission_due(self) -> float | None:
        """When the sender next has work: the earliest next_attempt_at of a
        queued or submitting job (0 for "now"), or None when there is none."""
        rows = self._query(
            "SELECT MIN(COALESCE(next_attempt_at, 0)) FROM jobs WHERE state IN (?, ?) AND finished_at IS NULL",
            (QUEUED, SUBMITTING),
        )
        return None if rows[0][0] is None else float(rows[0][0])

    def unresolved_submission(self, extension: int, dst_num: str, *, exclude: int | None = None) -> Job | None:
        """A job of this extension to this number whose upload is unresolved
        ("submitting"): another upload to the number must wait for it, or
        reconciliation could not tell the two faxes apart."""
        rows = self._query(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = ? AND extension = ? AND dst_num = ? AND id != ? "
            "AND finished_at IS NULL ORDER BY id LIMIT 1",
            (SUBMITTING, extension, dst_num, -1 if exclude is None else exclude),
        )
        return Job(*rows[0]) if rows else None

    # --- tracking and reports

    def update_job_if(self, job_id: int, expect: Sequence[str], **fields: Any) -> bool:
        """Change job columns without a state change or a history entry, only
        while the job is in one of ``expect`` and not finished (compare and set:
        e.g. the tracker noting the provider's status word while the CLI may be
        acting on the same job). Returns False when the job moved on."""
        unknown = set(fields) - _JOB_FIELDS
        if unknown or "state" in fields:
            raise ValueError(f"fields not allowed here: {sorted(unknown | ({'state'} & set(fields)))}")
        if not expect:
            raise ValueError("expect must name at least one state")
        fields["updated_at"] = self.clock()
        sets = ", ".join(f"{k} = ?" for k in fields)
        marks = ",".join("?" * len(expect))
        cur = self._write(
            f"UPDATE jobs SET {sets} WHERE id = ? AND state IN ({marks}) AND finished_at IS NULL",
            (*fields.values(), job_id, *expect),
        )
        return cur.rowcount == 1

    def unreported_jobs(self, limit: int = 50) -> list[Job]:
        """Finished jobs whose report has not been queued yet, oldest first."""
        rows = self._query(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE finished_at IS NOT NULL AND reported_at IS NULL ORDER BY finished_at, id LIMIT ?",
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
            with self.transaction() as conn:
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
        except sqlite3.Error as exc:
            raise StoreError(f"cannot queue the report of job {job_id}: {exc}") from exc
        return True

    def split_mail_deferred(self, mail_id: int, recipients: Sequence[str], error: str, next_attempt_at: float) -> int:
        """Some recipients of an outbox mail were deferred (4xx per recipient):
        they get their own row that keeps the attempt count and waits until
        ``next_attempt_at`` (a fresh row due now would be retried at once,
        forever). Returns the new row's id. Joins the caller's transaction."""
        now = self.clock()
        try:
            with self.transaction() as conn:
                row = conn.execute("SELECT kind, ref, mail_from, message, attempts FROM outbox WHERE id = ?", (mail_id,)).fetchone()
                if row is None:
                    raise StoreError(f"no outbox mail {mail_id}")
                kind, ref, mail_from, message, attempts = row
                cur = conn.execute(
                    "INSERT INTO outbox (created_at, kind, ref, mail_from, recipients, message, state, attempts, next_attempt_at, last_error) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                    (now, kind, ref, mail_from, json.dumps(list(recipients)), message, attempts + 1, next_attempt_at, error),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot split outbox mail {mail_id}: {exc}") from exc
        return int(cur.lastrowid)

    def defer_mail_recipients(self, mail_id: int, recipients: Sequence[str], error: str, next_attempt_at: float) -> None:
        """Nobody accepted an outbox mail yet: keep the SAME row pending for
        the deferred ``recipients`` only (permanently refused ones are dropped
        from it), so whatever rides on the row (a received fax) stays queued
        until a relay really accepts it."""
        self._write(
            "UPDATE outbox SET recipients = ?, attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE id = ? AND state = 'pending'",
            (json.dumps(list(recipients)), error, next_attempt_at, mail_id),
        )

    # --- fax to email

    def count_received(self, state: str) -> int:
        """Received faxes in one ledger state (e.g. held: "no_recipient"), for metrics."""
        return int(self._query("SELECT COUNT(*) FROM received WHERE state = ?", (state,))[0][0])

    def received_with_mail(self, *, limit: int = 50) -> list[tuple[ReceivedFax, str | None, str]]:
        """Newest received faxes with their email's outbox state and last error
        (``None`` when no email was queued), for ``gatewayd received``."""
        rows = self._query(
            f"SELECT {', '.join('r.' + c.strip() for c in _RECEIVED_COLUMNS.split(','))}, o.state, COALESCE(o.last_error, '') "
            "FROM received r LEFT JOIN outbox o ON o.id = r.outbox_id ORDER BY r.first_seen DESC, r.rowid DESC LIMIT ?",
            (limit,),
        )
        return [(self._received(r[:12]), r[12], r[13]) for r in rows]

    # --- imap

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
            with self.transaction() as conn:
                if conn.execute("SELECT 1 FROM meta WHERE key = ?", (marker,)).fetchone():
                    return False
                self.enqueue_mail("reply", mail_from, recipients, message, ref=ref)
                conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (marker, repr(now)))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot queue the reply: {exc}") from exc
        return True

    def imap_prune_reply_markers(self, before: float) -> int:
        """Forget reply markers older than ``before`` (a message is not refused twice months apart)."""
        cur = self._write("DELETE FROM meta WHERE key LIKE 'imap-reply:%' AND CAST(value AS REAL) < ?", (before,))
        return int(cur.rowcount)
