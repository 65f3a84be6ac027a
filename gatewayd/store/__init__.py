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
- ``outbox``: every email gatewayd sends;
- ``conversions``: office documents waiting for LibreOffice (state ``converting``);
- ``received``: the ledger of received faxes;
- ``usage``: the hourly sender counters;
- ``markers``: metadata and the IMAP reply markers.

docs/architecture.md, "Storage layout" and "Durability rules", describes
the files and the guarantees. The job states live in gatewayd/jobstates.py
and are re-exported here.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

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
from gatewayd.store.database import Database, StoreError
from gatewayd.store.documents import DocumentFiles, adopt, foreign_owner
from gatewayd.store.jobs import Job, JobEvent, JobNotFound, JobTable, NewJob
from gatewayd.store.markers import Markers
from gatewayd.store.migrations import MIGRATIONS
from gatewayd.store.outbox import OutboxMail, OutboxTable
from gatewayd.store.received import ReceivedFax, ReceivedLedger
from gatewayd.store.usage import SenderUsage

__all__ = [
    "ACTIVE_STATES", "AT_PROVIDER", "CANCELED", "CONVERTING", "ERROR", "FAILED", "FINAL_STATES", "JOB_STATES", "MIGRATIONS",
    "QUEUED", "REJECTED", "SENDING", "SENT", "SUBMITTED", "SUBMITTING", "UNKNOWN",
    "Conversion", "ConversionPart", "Job", "JobEvent", "JobNotFound", "NewJob", "OutboxMail", "ReceivedFax", "Store", "StoreError",
]

T = TypeVar("T")


class Store(DocumentFiles, JobTable, ConversionTable, OutboxTable, ReceivedLedger, SenderUsage, Markers):
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
            self._owner = foreign_owner(self.state_dir)
            self.documents_dir.mkdir(exist_ok=True, mode=0o700)
            adopt(self.documents_dir, self._owner)
            self._db = Database(self.state_dir, busy_timeout_ms=busy_timeout_ms)
            self.db_path = self._db.path
            for path in self._db.files():
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

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; nested uses (every store method inside) join the outer transaction."""
        return self._db.transaction()

    @property
    def schema_version(self) -> int:
        return self._db.schema_version

    def ping(self) -> bool:
        """True when the database answers (for /healthz and the watchdog)."""
        return self._db.query("SELECT 1")[0][0] == 1

    def save_and_enqueue(self, document: bytes, sha256: str, pages: int, jobs: Sequence[NewJob], *, intake_key: str | None = None) -> list[int]:
        """``save_document`` then ``enqueue_jobs``, in one trip to the store's thread."""
        sha = self.save_document(document, sha256)
        return self.enqueue_jobs(sha, pages, len(document), jobs, intake_key=intake_key)
