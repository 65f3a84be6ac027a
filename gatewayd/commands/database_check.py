"""``gatewayd check-config``'s database line: connect to the store's database, read only, and name its schema version.

It changes nothing: no state directory is made, no migration runs (the
daemon migrates at its start). PostgreSQL is reached as the daemon would
reach it (the URL, the password beside it); a wrong password or a server
that does not answer is one line and a failed check, never a traceback
and never the password (docs/operations.md, Checking the configuration).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

import psycopg

from gatewayd.config import Config, redact_url
from gatewayd.store.database import DB_NAME
from gatewayd.store.migrations import MIGRATIONS

__all__ = ["DatabaseCheck", "check_database"]

CONNECT_TIMEOUT = 10  # seconds, as the daemon's pool (gatewayd/store/postgres.py, PostgresSettings)


@dataclass(frozen=True)
class DatabaseCheck:
    """What check-config adds to its ``database`` line (``schema 8 (this gatewayd: 8)``), and whether the database can be used."""

    text: str
    ok: bool
    where: str = ""  # the database, for the error message (never a password)


def check_database(config: Config) -> DatabaseCheck:
    ours = len(MIGRATIONS)
    if config.storage.postgres:
        return _check_postgres(config, ours)
    return _check_sqlite(config, ours)


def _verdict(where: str, version: int | None, ours: int) -> DatabaseCheck:
    if version is None:
        return DatabaseCheck(f"no schema yet (this gatewayd: {ours}; made at the daemon's first start)", True, where)
    if version > ours:
        return DatabaseCheck(f"schema {version}, NEWER than this gatewayd ({ours})", False, where)
    note = "" if version == ours else "; migrated at the daemon's next start"
    return DatabaseCheck(f"schema {version} (this gatewayd: {ours}{note})", True, where)


def _check_postgres(config: Config, ours: int) -> DatabaseCheck:
    s = config.storage
    shown = redact_url(s.database_url)
    where = f"the database {shown}"
    secret = [s.database_password] if s.database_password else []
    kwargs: dict[str, Any] = {"password": s.database_password} if s.database_password else {}
    try:
        with psycopg.connect(s.database_url, connect_timeout=CONNECT_TIMEOUT, autocommit=True,
                             application_name="gatewayd check-config", **kwargs) as conn:
            exists = conn.execute("SELECT to_regclass('gatewayd_schema') IS NOT NULL").fetchone()
            row = conn.execute("SELECT version FROM gatewayd_schema").fetchone() if exists and exists[0] else None
    except psycopg.Error as exc:
        return DatabaseCheck(f"CANNOT CONNECT: {_scrub(str(exc), secret)}", False, where)
    return _verdict(where, None if row is None else int(row[0]), ours)


def _check_sqlite(config: Config, ours: int) -> DatabaseCheck:
    path = config.state_dir / DB_NAME
    where = f"the database {path}"
    if not path.exists():
        return _verdict(where, None, ours)
    try:
        # Read only: check-config may run as another user, beside the daemon.
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return DatabaseCheck(f"CANNOT OPEN: {exc}", False, where)
    return _verdict(where, version or None, ours)


def _scrub(message: str, secrets: list[str]) -> str:
    """A driver message on one line, without any secret in it (libpq does not echo passwords; this makes sure)."""
    text = " ".join(message.split()) or "no answer"
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
