"""A consistent copy of the state directory while the daemon runs: SQLite's online backup plus the documents the copy refers to, fsynced.

docs/operations.md, "Backup and restore": the copy is a state directory
(restoring is stop, put it in place, start). The copy carries a mark in its
``meta`` table (never the live database's): the daemon that starts on it
reconciles every unfinished job against the provider before it sends
anything (``gatewayd/store/restore.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gatewayd.store.database import DB_NAME, StoreError

__all__ = ["RESTORE_MARK", "BackupResult", "make_backup"]

RESTORE_MARK = "restored_from_backup"  # meta key, written into the copy only


@dataclass(frozen=True)
class BackupResult:
    backup_id: str
    taken_at: float
    directory: Path
    database_bytes: int
    documents: int
    document_bytes: int
    missing_documents: tuple[str, ...]  # referenced, but gone from the live state (finished jobs' purged files)


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, (os.O_RDONLY | os.O_DIRECTORY) if directory else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_file(src: Path, dst: Path) -> int:
    """Copy and fsync one file; returns its size."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())
    os.chmod(dst, 0o600)
    return dst.stat().st_size


def make_backup(state_dir: Path, dest: Path, *, clock: Callable[[], float] = time.time) -> BackupResult:
    """Copy the state of ``state_dir`` into the new or empty directory ``dest``.

    The database is copied first, in one step of SQLite's online backup (a
    read transaction: in WAL mode the daemon keeps writing meanwhile); then
    the documents the copy's jobs refer to. A document is on disk before any
    row refers to it (docs/architecture.md, Durability rules, 2), so every
    document the copy needs exists when it is copied, unless retention
    removed a finished job's file in between (listed in ``missing_documents``).
    """
    source = state_dir / DB_NAME
    if not source.is_file():
        raise StoreError(f"no gatewayd database at {source}")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise StoreError(f"{dest} exists and is not an empty directory")
    if dest.resolve() == state_dir.resolve() or state_dir.resolve() in dest.resolve().parents:
        raise StoreError(f"{dest} is inside the state directory {state_dir}")
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    (dest / "documents").mkdir(mode=0o700)
    partial = dest / f"{DB_NAME}.partial"
    backup_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock())) + "-" + uuid.uuid4().hex[:8]
    try:
        src = sqlite3.connect(source, timeout=15, isolation_level=None)
        try:
            src.execute("PRAGMA busy_timeout=15000")
            dst = sqlite3.connect(partial, isolation_level=None)
            try:
                # Everything committed before this point is in the copy; a
                # job queued in it may be submitted by the daemon from now on.
                taken_at = clock()
                src.backup(dst)  # pages=-1: the whole database in one consistent step
                mark = json.dumps({"backup_id": backup_id, "taken_at": taken_at})
                dst.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                            (RESTORE_MARK, mark))
                documents = sorted({r[0] for r in dst.execute("SELECT DISTINCT document FROM jobs")})
                dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            finally:
                dst.close()
        finally:
            src.close()
        _fsync_path(partial)
        count, total, missing = 0, 0, []
        for sha in documents:
            rel = Path(sha[:2]) / f"{sha}.pdf"
            src_doc = state_dir / "documents" / rel
            if not src_doc.is_file():
                missing.append(sha)
                continue
            (dest / "documents" / rel.parent).mkdir(exist_ok=True, mode=0o700)
            total += _copy_file(src_doc, dest / "documents" / rel)
            count += 1
        for sub in (dest / "documents").iterdir():
            _fsync_path(sub, directory=True)
        _fsync_path(dest / "documents", directory=True)
        # Renamed last: a copy cut short has no database under its real name.
        os.replace(partial, dest / DB_NAME)
        _fsync_path(dest, directory=True)
    except (OSError, sqlite3.Error) as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise StoreError(f"backup into {dest} failed: {exc}") from exc
    return BackupResult(backup_id, taken_at, dest, (dest / DB_NAME).stat().st_size, count, total, tuple(missing))
