"""The store's database: the interface every backend gives, and the SQLite backend (one connection, one worker thread).

Two backends implement ``Database``: ``SqliteDatabase`` here (one machine,
the default) and ``PostgresDatabase`` in gatewayd/store/postgres.py (several
nodes on one database, docs/deployment.md, Several nodes). The store's
parts write their SQL once, with ``?`` placeholders, in the subset both
understand; where the two differ the part asks ``db.dialect``.

Every part of the ``Store`` (jobs, outbox, received ledger, ...) goes
through the same ``Database``, so a commit that spans tables (a job's
report email and its ``reported_at``, the relay's 250 and the ledger) is
one SQLite transaction. Async code runs store methods with ``run``: one
worker thread keeps writes in order and keeps SQLite and fsync off the
event loop. docs/architecture.md, "Durability rules", says why
``synchronous=FULL`` and explicit ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psycopg

from gatewayd.store.migrations import MIGRATIONS

__all__ = ["DB_ERRORS", "DB_NAME", "Cursor", "Rows", "Database", "DbConnection", "SqliteDatabase", "StoreError", "StorePart", "inserted_id", "where_terms"]

T = TypeVar("T")

DB_NAME = "gatewayd.sqlite3"


class StoreError(Exception):
    """The store could not do what was asked (disk full, corrupt, locked, database unreachable)."""


# What either backend's driver raises; parts catch these and say StoreError.
DB_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)


class Cursor(Protocol):
    """What a statement gives back, on either backend."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class DbConnection(Protocol):
    """The connection a transaction yields: statements with ``?`` placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]], /) -> Any: ...


class Database(Protocol):
    """What the store's parts use of a backend."""

    dialect: str  # "sqlite" or "postgresql"
    where: str  # for messages: the file, or the server and database (never a password)

    def close(self) -> None: ...

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    def transaction(self) -> contextlib.AbstractContextManager[Any]: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def write(self, sql: str, params: Sequence[Any] = ()) -> Any: ...

    def migrate(self) -> None: ...

    @property
    def schema_version(self) -> int: ...


def where_terms(*terms: tuple[bool, str, Any]) -> tuple[list[str], list[Any]]:
    """The optional filters of a query: of each (applies, condition, value) that applies, the condition and its value, in order."""
    kept = [(sql, value) for applies, sql, value in terms if applies]
    return [sql for sql, _ in kept], [value for _, value in kept]


def inserted_id(cur: Any) -> int:
    """The id an ``INSERT ... RETURNING id`` on ``cur`` made (both backends know RETURNING)."""
    # fetchall, not fetchone: SQLite finishes the statement only when its
    # rows are read, and a COMMIT with a statement in progress fails.
    rows = cur.fetchall()
    if not rows:
        raise StoreError("the INSERT made no row")
    return int(rows[0][0])


class Rows:
    """The result of one statement, read before its transaction ended.

    ``write`` returns it: SQLite cannot commit while a ``RETURNING``
    statement's rows are unread, and PostgreSQL's connection goes back to
    the pool at the commit.
    """

    def __init__(self, cur: Any) -> None:
        self.rowcount: int = cur.rowcount
        self._rows: list[Any] = cur.fetchall() if cur.description is not None else []
        self._next = 0

    def fetchone(self) -> Any:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[Any]:
        rows, self._next = self._rows[self._next:], len(self._rows)
        return rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class SqliteDatabase:
    """The SQLite file of one state directory, opened in WAL mode with ``synchronous=FULL``.

    Opening may raise ``OSError`` or ``sqlite3.Error`` (the ``Store`` turns
    them into ``StoreError`` naming the state directory).
    """

    dialect = "sqlite"

    def __init__(self, state_dir: Path, *, busy_timeout_ms: int) -> None:
        self.state_dir = state_dir
        self.path = state_dir / DB_NAME
        self.where = str(self.path)
        self._lock = threading.RLock()
        self._depth = 0
        self._executor: ThreadPoolExecutor | None = None
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE),
        # so a writer takes the lock up front instead of failing mid-way.
        self.conn = sqlite3.connect(self.path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False)
        self.conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        if self.conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            # A new database: freed pages can go back to the file system in
            # small steps (gatewayd/store/retention.py). An older one is
            # switched by one VACUUM at the daemon's start (ensure_incremental_vacuum).
            self.conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = self._switch_to_wal(busy_timeout_ms / 1000)
        if mode.lower() != "wal":
            raise StoreError(f"cannot use WAL journal mode on {self.path} (got {mode})")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")

    def _switch_to_wal(self, timeout: float) -> str:
        """``PRAGMA journal_mode=WAL``, retried while another process creates
        the same new database: SQLite answers "database is locked" at once
        there, without calling the busy handler (it would deadlock)."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                return str(self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(0.1, delay * 2)

    def files(self) -> tuple[Path, Path, Path]:
        """The database file and the -wal and -shm files SQLite keeps beside it."""
        return (self.path, self.path.with_name(self.path.name + "-wal"), self.path.with_name(self.path.name + "-shm"))

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("PRAGMA optimize")
            self.conn.close()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the store's own thread, off the event loop."""
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
                    self.conn.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    raise StoreError(f"cannot start a transaction: {exc}") from exc
            self._depth += 1
            try:
                yield self.conn
            except BaseException:
                self._depth -= 1
                if outer:
                    with contextlib.suppress(sqlite3.Error):
                        self.conn.execute("ROLLBACK")
                raise
            else:
                self._depth -= 1
                if outer:
                    try:
                        self.conn.execute("COMMIT")
                    except sqlite3.Error as exc:
                        with contextlib.suppress(sqlite3.Error):
                            self.conn.execute("ROLLBACK")
                        raise StoreError(f"commit failed: {exc}") from exc

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read (it sees the current transaction, if any)."""
        with self._lock:
            try:
                return self.conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(str(exc)) from exc

    def write(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        """One statement in its own commit, or in the caller's transaction."""
        try:
            with self.transaction() as conn:
                return Rows(conn.execute(sql, params))
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    def migrate(self) -> None:
        """Bring the schema to ``len(MIGRATIONS)``, each migration in its own transaction."""
        with self._lock:
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
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
        return int(self.query("PRAGMA user_version")[0][0])


class StorePart:
    """Base of the ``Store``'s parts, one per table group: what they share.

    ``_db``: the one ``Database`` (one connection, one worker thread);
    ``clock``: the store's clock (tests replace it on the ``Store``).
    """

    _db: Database
    clock: Callable[[], float]
