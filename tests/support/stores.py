"""The store contract suite's helpers: one test, both backends (issue 17).

``tests/conftest.py`` gives ``store_backend`` ("sqlite" or "postgresql",
every test that asks for it runs once per backend) and ``open_store``, a
factory of ``Store`` objects on that backend that closes them all at the
end. Opening twice reaches the same store: the same state directory for
SQLite, the same database for PostgreSQL (two ``Store`` objects on one
database are two nodes).

Where the backends keep a thing differently (a document is a file on
SQLite and a row on PostgreSQL; a failing trigger is written in each one's
own syntax) the helpers below say it once for both, so the tests stay
about the store's behaviour.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatewayd.store import Store
from gatewayd.store.postgres import PostgresSettings, to_pyformat

BACKENDS = ("sqlite", "postgresql")


@dataclass
class StoreFactory:
    """``open_store(**kwargs)``: a new ``Store`` on the test's backend; the same store each time unless ``state_dir`` differs.

    Keyword arguments go to ``Store`` (``clock``, ``busy_timeout_ms``); on
    PostgreSQL ``idle_in_transaction``/``lock_timeout`` (seconds) build the
    ``PostgresSettings``.
    """

    backend: str
    state_dir: Path
    database_url: str = ""
    password: str | None = None
    opened: list[Store] = field(default_factory=list)

    def __call__(self, state_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> Store:
        state = Path(state_dir) if state_dir is not None else self.state_dir
        if self.backend == "postgresql":
            pg: dict[str, Any] = {k: kwargs.pop(k) for k in ("idle_in_transaction", "lock_timeout") if k in kwargs}
            kwargs["postgres"] = PostgresSettings(self.database_url, password=self.password, **pg)
        store = Store(state, **kwargs)
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            with contextlib.suppress(Exception):
                store.close()


def document_exists(store: Store, sha: str, suffix: str = ".pdf") -> bool:
    """Whether the store still keeps this document (a file on SQLite, a row on PostgreSQL)."""
    if store.dialect == "postgresql":
        return bool(store._db.query("SELECT 1 FROM documents WHERE name = ?", (sha + suffix,)))
    return store.document_path(sha, suffix).exists()


def document_names(store: Store) -> set[str]:
    """Every document the store keeps, as ``<sha256><suffix>``."""
    if store.dialect == "postgresql":
        return {name for (name,) in store._db.query("SELECT name FROM documents")}
    return {p.name for p in store.documents_dir.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")}


def age_document(store: Store, sha: str, when: float, suffix: str = ".pdf") -> None:
    """Make a document look saved at ``when`` (a file's mtime; a row's ``created_at``)."""
    if store.dialect == "postgresql":
        store._db.write("UPDATE documents SET created_at = ? WHERE name = ?", (when, sha + suffix))
    else:
        os.utime(store.document_path(sha, suffix), (when, when))


def document_saved_at(store: Store, sha: str, suffix: str = ".pdf") -> float:
    if store.dialect == "postgresql":
        return float(store._db.query("SELECT created_at FROM documents WHERE name = ?", (sha + suffix,))[0][0])
    return store.document_path(sha, suffix).stat().st_mtime


def execute(store: Store, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """One statement of the test's own (``?`` placeholders), committed at once, outside the store's methods."""
    if store.dialect == "postgresql":
        with store._db._connection() as raw:  # type: ignore[attr-defined]
            cur = raw.execute(to_pyformat(sql), tuple(params)) if params else raw.execute(sql)
            return cur.fetchall() if cur.description is not None else []
    cur = store._db.conn.execute(sql, params)  # type: ignore[attr-defined]
    return cur.fetchall()


def fail_writes(store: Store, table: str, operation: str, message: str) -> None:
    """A trigger that makes every ``operation`` (INSERT, UPDATE) on ``table`` fail with ``message``: a failing disk, in SQL."""
    name = f"fail_{table}_{operation.lower()}"
    if store.dialect == "postgresql":
        execute(store, f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '{message}'; END $$")
        execute(store, f"CREATE TRIGGER {name} BEFORE {operation} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()")
    else:
        execute(store, f"CREATE TRIGGER {name} BEFORE {operation} ON {table} BEGIN SELECT RAISE(ABORT, '{message}'); END")


@contextlib.contextmanager
def factory(backend: str, state_dir: Path, database_url: str = "", password: str | None = None) -> Iterator[StoreFactory]:
    made = StoreFactory(backend, state_dir, database_url, password)
    try:
        yield made
    finally:
        made.close_all()


OpenStore = Callable[..., Store]

__all__ = ["BACKENDS", "OpenStore", "StoreFactory", "age_document", "document_exists", "document_names", "document_saved_at",
           "execute", "factory", "fail_writes"]
