"""Where a reliability test's daemon keeps its queue: SQLite in the state
directory, or a PostgreSQL database (issue 17; docs/architecture.md,
Storage backends). One ``Backend`` gives the daemon's ``[storage]`` keys and
reads back what was stored, independently of the store's own code: plain
sqlite3 on the file, plain psycopg on the database.

"Whole" means the same on both: every job's document (and its cover, when
it has one) is there with the recorded digest (and size for the shared
document), and the database itself is sound. On SQLite that is
``PRAGMA integrity_check`` and the files under ``documents/``; on PostgreSQL
(which keeps documents as rows of ``documents``, named sha256 + ".pdf") it
is those rows, checked against their digests, and no row whose ``size``
disagrees with its data (the server's own pages are its business:
``amcheck`` needs a superuser, and the store's role is not one).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.postgres import PgServer

BACKENDS = ["sqlite", "postgresql"]

Job = tuple[int, str, str, int]  # (id, state, document sha256, doc_bytes)


@dataclass
class Backend:
    """One store backend for a test; ``state_dir`` is the daemon's either way."""

    name: str
    state_dir: Path
    pg: PgServer | None = None
    dbname: str = ""

    @property
    def postgres(self) -> bool:
        return self.name == "postgresql"

    # ------------------------------------------------------------ config

    def storage(self) -> dict[str, Any]:
        """The ``[storage]`` keys besides ``state_dir`` (none on SQLite)."""
        if not self.postgres:
            return {}
        assert self.pg is not None
        return {"database_url": self.pg.url(self.dbname), "database_password": self.pg.password}

    def config_overrides(self) -> dict[str, dict[str, Any]]:
        """Sections for ``support.reliability.config_data(..., **overrides)``."""
        storage = self.storage()
        return {"storage": storage} if storage else {}

    # ------------------------------------------------------------ reading

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self.postgres:
            assert self.pg is not None
            with self.pg.connect(self.dbname) as conn:
                return [tuple(r) for r in conn.execute(sql).fetchall()]
        conn = sqlite3.connect(f"file:{self.state_dir / 'gatewayd.sqlite3'}?mode=ro", uri=True, timeout=15)
        try:
            return [tuple(r) for r in conn.execute(sql)]
        finally:
            conn.close()

    def stored_jobs(self) -> list[Job]:
        """(id, state, document sha, doc_bytes) of every job, read past the store."""
        return [(int(i), str(s), str(d), int(b)) for i, s, d, b in
                self._rows("SELECT id, state, document, doc_bytes FROM jobs ORDER BY id")]

    def _kept(self) -> list[tuple[int, str, int, str]]:
        """(id, document, doc_bytes, cover) of the jobs whose documents must be there:
        not waiting for a conversion (no document yet), not purged (docs/operations.md, Retention)."""
        return [(int(i), str(d), int(b), str(c)) for i, d, b, c in self._rows(
            "SELECT id, document, doc_bytes, cover FROM jobs WHERE document <> '' AND document_purged_at IS NULL ORDER BY id")]

    def _document(self, sha: str) -> bytes | None:
        if self.postgres:
            assert self.pg is not None
            with self.pg.connect(self.dbname) as conn:
                row = conn.execute("SELECT data FROM documents WHERE name = %s", (sha + ".pdf",)).fetchone()
            return None if row is None else bytes(row[0])
        path = self.state_dir / "documents" / sha[:2] / f"{sha}.pdf"
        return path.read_bytes() if path.exists() else None

    # ------------------------------------------------------------ checks

    def integrity(self) -> str:
        """"ok", or what is wrong with the database."""
        if not self.postgres:
            return str(self._rows("PRAGMA integrity_check")[0][0])
        # The queue is in the database: a SQLite file or a document file in the
        # state directory would mean some part of the daemon stored it there
        # instead (the Store makes the documents directory either way, empty).
        stray = [str(p) for p in [self.state_dir / "gatewayd.sqlite3", *(self.state_dir / "documents").rglob("*")]
                 if p.exists() and not p.is_dir()]
        names = {str(n) for (n,) in self._rows("SELECT name FROM documents")}
        problems = [f"{p} exists on a PostgreSQL store" for p in stray]
        problems += [f"job {i}: {what} {sha} has no row" for i, doc, _, cover in self._kept()
                    for what, sha in (("document", doc), ("cover", cover)) if sha and sha + ".pdf" not in names]
        problems += [f"document row {name}: size {size}, {length} bytes of data" for name, size, length in self._rows(
            "SELECT name, size, octet_length(data) FROM documents WHERE size <> octet_length(data) ORDER BY name")]
        return "; ".join(problems) or "ok"

    def assert_documents_whole(self) -> None:
        """Every job's document and cover is there with its digest; no referenced partial one."""
        for job_id, sha, size, cover in self._kept():
            data = self._document(sha)
            assert data is not None, f"job {job_id}: document {sha} missing ({self.name})"
            # doc_bytes counts the job's own cover too (store/conversions.py)
            whole = hashlib.sha256(data).hexdigest() == sha and (bool(cover) or len(data) == size)
            assert whole, f"job {job_id}: document {sha} damaged"
            if cover:
                data = self._document(cover)
                assert data is not None, f"job {job_id}: cover {cover} missing ({self.name})"
                assert hashlib.sha256(data).hexdigest() == cover, f"job {job_id}: cover {cover} damaged"
        if not self.postgres:
            tmp = sorted(str(p) for p in (self.state_dir / "documents").rglob(".tmp-*"))
            assert not tmp, f"temporary document files left: {tmp}"

    def state_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, state, _, _ in self.stored_jobs():
            counts[state] = counts.get(state, 0) + 1
        return counts


def backend_for(request: pytest.FixtureRequest, name: str, state_dir: Path) -> Iterator[Backend]:
    """The ``Backend`` called ``name``; PostgreSQL's fixtures are asked for only when
    it is the one, so a SQLite run starts no server."""
    if name == "sqlite":
        yield Backend(name, state_dir)
    elif name == "postgresql":
        yield Backend(name, state_dir, pg=request.getfixturevalue("pg_server"),
                      dbname=request.getfixturevalue("pg_database"))
    else:
        raise AssertionError(f"unknown backend {name!r}")
