"""The PostgreSQL backend of the store: a psycopg connection pool, writers serialised as SQLite serialises them, the schema's PostgreSQL form.

Several gatewayd nodes share one PostgreSQL database (docs/deployment.md,
Several nodes). The store's parts are written once for both backends; this
module makes PostgreSQL behave as the parts expect of SQLite:

- **One writer at a time.** SQLite's ``BEGIN IMMEDIATE`` takes the database's
  write lock up front, and every read-check-write in the parts relies on it
  (a job's state is read, checked and changed in one transaction). Here each
  transaction takes one transaction-scoped advisory lock first, so the same
  code is just as safe across nodes. Writes are short; reads outside a
  transaction take no lock.
- **A stopped node cannot hold the lock for ever.** Each session sets
  ``idle_in_transaction_session_timeout``: the server ends the session of a
  node frozen inside a transaction (SIGSTOP, a swap storm) and its locks
  with it; ``lock_timeout`` bounds the wait of the others.
- **Placeholders.** The parts write ``?``; psycopg wants ``%s`` (and ``%%``
  for a literal ``%``): ``to_pyformat`` translates, once per statement text.
- **Types.** The schema's SQLite text is translated by ``postgres_ddl``:
  ``REAL`` becomes ``DOUBLE PRECISION`` (PostgreSQL's ``real`` is 4 bytes:
  an epoch time would lose minutes), ``INTEGER`` ``BIGINT``, ``BLOB``
  ``BYTEA``, ``AUTOINCREMENT`` ids identity columns.

The store's methods are synchronous and run on worker threads
(``Database.run``), as on SQLite; this backend uses psycopg's synchronous
API with a thread pool of its own instead of psycopg's async one, so that
one set of parts serves both backends (docs/architecture.md, Storage
backends).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg.adapt import Loader
from psycopg_pool import ConnectionPool, PoolTimeout

from gatewayd.dburl import redact_url
from gatewayd.store.database import Rows, StoreError
from gatewayd.store.migrations import MIGRATIONS

__all__ = ["WRITER_LOCK", "PostgresDatabase", "PostgresSettings", "connection_kwargs", "postgres_ddl", "to_pyformat"]

T = TypeVar("T")

# The advisory lock every write transaction takes first: "gatewayd" in ASCII.
WRITER_LOCK = 0x67617465776179


@dataclass(frozen=True)
class PostgresSettings:
    """How the store talks to PostgreSQL; the defaults are what the daemon uses."""

    url: str
    password: str | None = field(default=None, repr=False)
    connect_timeout: float = 10.0  # a connection, or a pooled one, within this
    # The pool retries a failed connection with a doubling delay; it gives up
    # after this long and the next store call starts again at once, so a
    # database back after a long outage is used within seconds, not after
    # the last (minutes long) delay (docs/operations.md, Database outage).
    reconnect_timeout: float = 10.0
    pool_size: int = 8
    threads: int = 4  # store calls running at once (``Database.run``)
    # A node frozen inside a transaction loses its session (and the writer
    # lock) after this long; kept well under storage.lease.
    idle_in_transaction: float = 10.0
    lock_timeout: float = 30.0
    statement_timeout: float = 120.0
    application_name: str = "gatewayd"


def connection_kwargs(settings: PostgresSettings) -> dict[str, Any]:
    """What every connection of this node is opened with (the pool's, and the
    wake relay's listening one, gatewayd/wakerelay.py): autocommit, its name,
    the timeouts, and the password beside the URL, never pasted into it."""
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "application_name": settings.application_name,
        "connect_timeout": max(1, round(settings.connect_timeout)),
        # A database host that vanishes is noticed in seconds, not hours.
        "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
    }
    if settings.password:
        kwargs["password"] = settings.password
    return kwargs


@functools.lru_cache(maxsize=1024)
def to_pyformat(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s``, and every literal ``%`` doubled (outside and inside quotes)."""
    out: list[str] = []
    quote = ""
    for ch in sql:
        if ch == "%":
            out.append("%%")
        elif quote:
            out.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        else:
            out.append(ch)
    return "".join(out)


_DDL_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\b(\w+) COLLATE NOCASE\b"), r"(lower(\1))"),
    # An expression in an index needs its own parentheses in PostgreSQL.
    (re.compile(r"\((COALESCE\([^()]*\))\)"), r"((\1))"),
]


def postgres_ddl(sql: str) -> str:
    """The PostgreSQL form of one SQLite migration (gatewayd/store/migrations.py)."""
    for pattern, replacement in _DDL_RULES:
        sql = pattern.sub(replacement, sql)
    return sql


class _NumericLoader(Loader):
    """``numeric`` (what SUM() of integers gives) as int or float, as SQLite gives it, not Decimal."""

    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        return float(text) if any(c in text for c in ".eEnN") else int(text)


class PgConnection:
    """One pooled connection inside a transaction, taking the parts' ``?`` SQL."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        return self.raw.execute(to_pyformat(sql), tuple(params))

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]], /) -> psycopg.Cursor[Any]:
        cur = self.raw.cursor()
        cur.executemany(to_pyformat(sql), [tuple(p) for p in seq])
        return cur


class _Local(threading.local):
    conn: PgConnection | None = None
    depth: int = 0


class PostgresDatabase:
    """A PostgreSQL database shared by the nodes; opening checks that it answers (``StoreError`` if not)."""

    dialect = "postgresql"

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self.where = redact_url(settings.url)
        self._local = _Local()
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        kwargs = connection_kwargs(settings)
        # One direct connection first: its error says why (wrong password, no
        # such database), where the pool would only time out.
        try:
            with psycopg.connect(settings.url, **kwargs) as probe:
                probe.execute("SELECT 1")
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the database {self.where}: {_one_line(exc)}") from exc
        self._pool: ConnectionPool[Any] = ConnectionPool(
            settings.url, kwargs=kwargs, min_size=1, max_size=settings.pool_size, open=False,
            configure=self._configure, check=ConnectionPool.check_connection,
            timeout=settings.connect_timeout, reconnect_timeout=settings.reconnect_timeout, name="gatewayd",
        )
        try:
            self._pool.open(wait=True, timeout=settings.connect_timeout)
        except PoolTimeout as exc:
            self._pool.close()
            raise StoreError(f"cannot connect to the database {self.where}: {exc}") from exc

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        s = self.settings
        conn.adapters.register_loader("numeric", _NumericLoader)
        conn.execute(f"SET idle_in_transaction_session_timeout = {int(s.idle_in_transaction * 1000)}")
        conn.execute(f"SET lock_timeout = {int(s.lock_timeout * 1000)}")
        conn.execute(f"SET statement_timeout = {int(s.statement_timeout * 1000)}")

    def close(self) -> None:
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
        self._pool.close()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on one of the store's threads, off the event loop."""
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.settings.threads, thread_name_prefix="store")
            executor = self._executor
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, functools.partial(fn, *args, **kwargs))

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self._pool.connection() as raw:
                yield raw
        except PoolTimeout as exc:
            raise StoreError(f"the database {self.where} does not answer: {exc}") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[PgConnection]:
        """BEGIN, the writer lock, ... COMMIT; nested uses (on the same thread) join the outer transaction."""
        local = self._local
        if local.conn is not None:
            local.depth += 1
            try:
                yield local.conn
            finally:
                local.depth -= 1
            return
        with self._connection() as raw:
            try:
                raw.execute("BEGIN")
                raw.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
            except psycopg.Error as exc:
                with contextlib.suppress(psycopg.Error):
                    raw.execute("ROLLBACK")
                raise StoreError(f"cannot start a transaction: {_one_line(exc)}") from exc
            conn = PgConnection(raw)
            local.conn, local.depth = conn, 1
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    raw.execute("ROLLBACK")
                raise
            else:
                try:
                    raw.execute("COMMIT")
                except psycopg.Error as exc:
                    with contextlib.suppress(psycopg.Error):
                        raw.execute("ROLLBACK")
                    raise StoreError(f"commit failed: {_one_line(exc)}") from exc
            finally:
                local.conn, local.depth = None, 0

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read (it sees the current transaction, if any)."""
        try:
            if self._local.conn is not None:
                return self._local.conn.execute(sql, params).fetchall()
            with self._connection() as raw:
                return raw.execute(to_pyformat(sql), tuple(params)).fetchall()
        except psycopg.Error as exc:
            raise StoreError(_one_line(exc)) from exc

    def write(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        """One statement in its own commit, or in the caller's transaction."""
        try:
            with self.transaction() as conn:
                return Rows(conn.execute(sql, params))
        except psycopg.Error as exc:
            raise StoreError(_one_line(exc)) from exc

    def migrate(self) -> None:
        """Bring the schema to ``len(MIGRATIONS)``, each migration in its own transaction (under the writer lock: nodes starting together wait for one another)."""
        number = 0
        try:
            while True:
                with self.transaction() as conn:
                    conn.execute("CREATE TABLE IF NOT EXISTS gatewayd_schema (version INTEGER NOT NULL)")
                    row = conn.execute("SELECT version FROM gatewayd_schema").fetchone()
                    if row is None:
                        conn.execute("INSERT INTO gatewayd_schema (version) VALUES (0)")
                        version = 0
                    else:
                        version = int(row[0])
                    if version > len(MIGRATIONS):
                        raise StoreError(f"the database {self.where} has schema {version}, newer than this gatewayd ({len(MIGRATIONS)})")
                    if version == len(MIGRATIONS):
                        return
                    number = version + 1
                    for statement in postgres_ddl(MIGRATIONS[version]).split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute("UPDATE gatewayd_schema SET version = ?", (number,))
        except psycopg.Error as exc:
            raise StoreError(f"migration {number} failed: {_one_line(exc)}") from exc

    def notify(self, channel: str, payload: str) -> None:
        """``pg_notify(channel, payload)`` on a pooled connection: every session
        LISTENing on ``channel`` hears it (gatewayd/wakerelay.py)."""
        try:
            with self._connection() as raw:
                raw.execute("SELECT pg_notify(%s, %s)", (channel, payload))
        except psycopg.Error as exc:
            raise StoreError(_one_line(exc)) from exc

    @property
    def schema_version(self) -> int:
        rows = self.query("SELECT version FROM gatewayd_schema")
        return int(rows[0][0]) if rows else 0


def _one_line(exc: BaseException) -> str:
    """A driver error as one line (server messages may carry a DETAIL on the next)."""
    return " ".join(str(exc).split()) or type(exc).__name__
