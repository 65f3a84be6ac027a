"""The durable state: SQLite in WAL mode plus content-addressed documents, behind one ``Store``.

One ``Store`` per process. The daemon writes; the CLI reads and changes the
same file while the daemon runs (WAL readers never block the writer; the busy
timeout covers short write overlaps). Every method is synchronous; async code
calls ``await store.run(store.method, ...)`` so SQLite and fsync never block
the event loop, and one worker thread keeps writes in order.

The ``Store`` is composed of one part per table group, all sharing one
``Database`` (one connection, one worker thread), so a commit that spans
tables stays one commit:

- ``database``: the connection, pragmas, transactions, ``run``, migrations
  (the schema itself is in ``migrations``);
- ``documents``: the document files;
- ``jobs``: jobs, their history, intake keys, the job side of reports;
- ``provider_ids``: which job holds a provider fax id (an id the provider
  hands out again moves to the new job);
- ``outbox``: every email gatewayd sends;
- ``conversions``: office documents waiting for LibreOffice (state ``converting``);
- ``received``: the ledger of received faxes;
- ``provider_deletes``: received faxes due for deletion at the provider;
- ``usage``: the hourly sender counters;
- ``markers``: metadata and the IMAP reply markers;
- ``restore``: a backup's mark, applied at the first start on the copy
  (``backup`` makes the copy).
- ``web``: the web console's sessions and queries (docs/web.md).
- ``leases``: which node does the work that runs on one node at a time.
- ``retention``: purging what is finished, the incremental vacuum, size facts.

docs/architecture.md, "Storage layout" and "Durability rules", describes
the files and the guarantees. The job states live in gatewayd/jobstates.py
and are re-exported here.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from gatewayd.jobstates import (
    ACTIVE_STATES,
    AT_PROVIDER,
    CANCELED,
    CONVERTING,
    ERROR,
    FAILED,
    FINAL_STATES,
    JOB_STATES,
    QUEUED,
    REJECTED,
    SENDING,
    SENT,
    SUBMITTED,
    SUBMITTING,
    UNKNOWN,
)
from gatewayd.store.conversions import Conversion, ConversionPart, ConversionTable
from gatewayd.store.database import DB_NAME, Database, SqliteDatabase, StoreError
from gatewayd.store.documents import DocumentFiles, adopt, foreign_owner, refuse_link
from gatewayd.store.jobs import Job, JobEvent, JobNotFound, JobTable, NewJob
from gatewayd.store.leases import Lease, LeaseTable, Taken
from gatewayd.store.markers import Markers
from gatewayd.store.migrations import MIGRATIONS
from gatewayd.store.outbox import OutboxMail, OutboxTable
from gatewayd.store.postgres import PostgresDatabase, PostgresSettings
from gatewayd.store.provider_deletes import PendingDelete, ProviderDeletes
from gatewayd.store.provider_ids import IdOwner, ProviderIds, ReleasedId
from gatewayd.store.received import ReceivedFax, ReceivedLedger
from gatewayd.store.restore import RestoredFrom, RestoreMark
from gatewayd.store.retention import RetentionPart
from gatewayd.store.usage import SenderUsage
from gatewayd.store.web import WebTables

__all__ = [
    "ACTIVE_STATES", "AT_PROVIDER", "CANCELED", "CONVERTING", "ERROR", "FAILED", "FINAL_STATES", "JOB_STATES", "MIGRATIONS",
    "QUEUED", "REJECTED", "SENDING", "SENT", "SUBMITTED", "SUBMITTING", "UNKNOWN",
    "Conversion", "ConversionPart", "IdOwner", "Job", "JobEvent", "JobNotFound", "Lease", "NewJob", "Taken", "OutboxMail", "PendingDelete", "ReceivedFax", "ReleasedId", "RestoredFrom", "Store", "StoreError",
]

T = TypeVar("T")


class Store(
    DocumentFiles, JobTable, ConversionTable, ProviderIds, OutboxTable, ReceivedLedger, SenderUsage, Markers, RestoreMark, ProviderDeletes,
    WebTables, RetentionPart, LeaseTable,
):
    """The durable state: SQLite and document files under one state directory, or (``database_url``) a PostgreSQL database several nodes share.

    With PostgreSQL, documents are rows of the database too (any node can
    submit any job); ``state_dir`` keeps only what is this node's own.
    """

    _db: Database

    def __init__(
        self, state_dir: str | os.PathLike[str], *, database_url: str = "", database_password: str | None = None,
        clock: Callable[[], float] = time.time, busy_timeout_ms: int = 15000, postgres: PostgresSettings | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.database_url = database_url
        self.documents_dir = self.state_dir / "documents"
        self.clock = clock
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Root (a command run with sudo beside the daemon) creates files
            # as the state directory's owner: the daemon must keep reading
            # and writing them. SQLite does the same for its -wal and -shm.
            self._owner = foreign_owner(self.state_dir)
            # The owner may have planted links: root follows none of them
            # (docs/security.md, "Hardening (issue 14, items 5-11)").
            refuse_link(self.documents_dir, self._owner)
            self.documents_dir.mkdir(exist_ok=True, mode=0o700)
            adopt(self.documents_dir, self._owner)
            for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", f"{DB_NAME}-journal"):
                refuse_link(self.state_dir / name, self._owner)
            if database_url or postgres is not None:
                settings = postgres or PostgresSettings(database_url, password=database_password)
                self._db = PostgresDatabase(settings)
                self.db_path = self.state_dir / DB_NAME  # unused: no SQLite file
            else:
                sqlite = SqliteDatabase(self.state_dir, busy_timeout_ms=busy_timeout_ms)
                self._db = sqlite
                self.db_path = sqlite.path
                for path in sqlite.files():
                    adopt(path, self._owner)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store in {self.state_dir}: {exc}") from exc
        self._durable_subdirs: set[str] = set()
        self._db.migrate()

    def close(self) -> None:
        self._db.close()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store method on the store's own thread, off the event loop."""
        return await self._db.run(fn, *args, **kwargs)

    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """BEGIN IMMEDIATE ... COMMIT (PostgreSQL: BEGIN and the writer lock); nested uses (every store method inside) join the outer transaction."""
        return self._db.transaction()

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._db.dialect

    @property
    def where(self) -> str:
        """Where the database is, for messages: the SQLite file, or the server and database (never a password)."""
        return self._db.where

    @property
    def schema_version(self) -> int:
        return self._db.schema_version

    @property
    def postgres(self) -> PostgresSettings | None:
        """How this store reaches PostgreSQL (None on SQLite): the wake relay opens its own connection with it (gatewayd/wakerelay.py)."""
        return self._db.settings if isinstance(self._db, PostgresDatabase) else None

    def notify(self, channel: str, payload: str) -> None:
        """PostgreSQL's NOTIFY to every session listening on ``channel`` (gatewayd/wakerelay.py); StoreError on SQLite, which has none."""
        if not isinstance(self._db, PostgresDatabase):
            raise StoreError("NOTIFY needs the PostgreSQL store")
        self._db.notify(channel, payload)

    def ping(self) -> bool:
        """True when the database answers (for /healthz and the watchdog)."""
        return self._db.query("SELECT 1")[0][0] == 1

    def save_and_enqueue(self, document: bytes, sha256: str, pages: int, jobs: Sequence[NewJob], *, intake_key: str | None = None) -> list[int]:
        """``save_document`` then ``enqueue_jobs``, in one trip to the store's thread."""
        with self._documents_with_jobs():
            sha = self.save_document(document, sha256)
            return self.enqueue_jobs(sha, pages, len(document), jobs, intake_key=intake_key)

    def save_parts_and_enqueue(
        self, shared: tuple[bytes, str, int] | None, own: Sequence[tuple[bytes, str] | None], jobs: Sequence[NewJob],
        *, intake_key: str | None = None,
    ) -> list[int]:
        """Save the shared document (data, sha256, pages) and each job's own one (data, sha256), then ``enqueue_jobs``.

        ``own[i]`` is ``jobs[i]``'s cover (or its whole fax when ``shared``
        is None), already named in that job's ``cover`` or ``document``.
        Everything is durable before the one commit that references it.
        """
        with self._documents_with_jobs():
            for part in own:
                if part is not None:
                    self.save_document(part[0], part[1])
            if shared is None:
                return self.enqueue_jobs("", 0, 0, jobs, intake_key=intake_key)
            sha = self.save_document(shared[0], shared[1])
            return self.enqueue_jobs(sha, shared[2], len(shared[0]), jobs, intake_key=intake_key)

    def _documents_with_jobs(self) -> contextlib.AbstractContextManager[Any]:
        """PostgreSQL: the documents' rows and the jobs in one transaction (one
        commit, one trip; nothing left unreferenced if it fails). SQLite: the
        files are written and fsynced first, outside the transaction that
        references them (docs/architecture.md, Durability rules 2)."""
        return self._db.transaction() if self._db.dialect == "postgresql" else contextlib.nullcontext()
