"""Content-addressed document files under ``state_dir/documents``: durable write, read, clean-up, ownership.

docs/architecture.md, "Durability rules" 2: a document is written to a
temporary name, fsynced, renamed and its directory fsynced before any row
references it, so a crash never leaves a referenced partial file.
Temporary files found at start are removed (``clean_documents``).
docs/documents.md describes what the documents are.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
import time
from pathlib import Path

from gatewayd.store.database import StoreError, StorePart
from gatewayd.store.retention import document_bytes

__all__ = ["DocumentFiles", "adopt", "foreign_owner", "refuse_link"]


def foreign_owner(state_dir: Path) -> tuple[int, int] | None:
    """(uid, gid) of ``state_dir`` when we are root and it belongs to another user."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    st = state_dir.stat()
    return None if st.st_uid == 0 else (st.st_uid, st.st_gid)


def refuse_link(path: Path, owner: tuple[int, int] | None) -> None:
    """``StoreError`` when root works for ``owner`` and ``path`` is a symbolic link.

    The state directory's owner (the daemon user) can plant links in it; root
    must never follow one (``documents -> /etc`` would give /etc away).
    docs/security.md, "Hardening (issue 14, items 5-11)".
    """
    if owner is None:
        return
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise StoreError(f"{path} is a symbolic link; refusing to follow it as root (remove it, or run the command as the state directory's owner)")


def adopt(path: Path, owner: tuple[int, int] | None) -> None:
    """Give ``path`` to ``owner``, the state directory's owner (only set when running as root for someone else).

    Never through a symbolic link: ``refuse_link`` first, and ``chown``
    without following, so a link swapped in meanwhile only changes itself.
    """
    if owner is None:
        return
    refuse_link(path, owner)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if (st.st_uid, st.st_gid) != owner:
        os.chown(path, *owner, follow_symlinks=False)


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


def _open_subdir(path: Path) -> int:
    """A descriptor of the documents subdirectory, never through a symbolic link."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if path.is_symlink():
            raise StoreError(f"{path} is a symbolic link; refusing to write documents through it") from exc
        raise


class DocumentFiles(StorePart):
    """The ``Store``'s document files, named by their SHA-256."""

    documents_dir: Path
    _owner: tuple[int, int] | None  # see foreign_owner
    _durable_subdirs: set[str]  # documents/xx whose entry this process has fsynced

    def document_path(self, sha256: str, suffix: str = ".pdf") -> Path:
        """A fax document (``.pdf``) or an original waiting for conversion (``.part``)."""
        return self.documents_dir / sha256[:2] / f"{sha256}{suffix}"

    def save_document(self, data: bytes, sha256: str | None = None, *, suffix: str = ".pdf") -> str:
        """Write a document durably; returns its sha256. Idempotent.

        ``sha256``: the digest of ``data`` when the caller has it already
        (``FaxDocument.sha256``), so it is not computed twice.
        """
        sha = sha256 or hashlib.sha256(data).hexdigest()
        if self._db.dialect == "postgresql":
            # A row, committed before any job names it; saved again, its age
            # is refreshed (as the file's below) so clean_documents spares it.
            self._db.write(
                "INSERT INTO documents (name, data, size, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET created_at = excluded.created_at",
                (sha + suffix, data, len(data), self.clock()),
            )
            return sha
        final = self.document_path(sha, suffix)
        try:
            if final.stat().st_size == len(data):
                # Already durable. Refresh its age so clean_documents, which
                # removes old unreferenced files, cannot take it away before
                # the job that is about to reference it is committed.
                os.utime(final)
                return sha
        except OSError:
            pass
        tmp = f".tmp-{sha}-{os.getpid()}-{threading.get_ident()}"
        dir_fd = -1
        try:
            final.parent.mkdir(exist_ok=True, mode=0o700)
            # Every name is resolved relative to the subdirectory opened
            # without following links (docs/security.md, "Hardening").
            dir_fd = _open_subdir(final.parent)
            if self._owner is not None:
                dst = os.fstat(dir_fd)
                if (dst.st_uid, dst.st_gid) != self._owner:
                    os.fchown(dir_fd, *self._owner)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
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
            os.replace(tmp, final.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
            if final.parent.name not in self._durable_subdirs:
                # The subdirectory's own entry must be durable too. Once this
                # process has fsynced documents/ after seeing the subdirectory,
                # it is (entries are never removed), so this is at most one
                # extra fsync per subdirectory and process, not one a document.
                _fsync_dir(self.documents_dir)
                self._durable_subdirs.add(final.parent.name)
        except OSError as exc:
            if dir_fd >= 0:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
            raise StoreError(f"cannot write document: {exc}") from exc
        finally:
            if dir_fd >= 0:
                os.close(dir_fd)
        return sha

    def read_document(self, sha256: str, suffix: str = ".pdf") -> bytes:
        if self._db.dialect == "postgresql":
            rows = self._db.query("SELECT data FROM documents WHERE name = ?", (sha256 + suffix,))
            if not rows:
                raise StoreError(f"cannot read document {sha256}: not in the database")
            return bytes(rows[0][0])
        try:
            return self.document_path(sha256, suffix).read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read document {sha256}: {exc}") from exc

    def clean_documents(self, *, orphan_age: float = 86400.0) -> int:
        """Remove leftover temporary files, and documents no job references.

        Only orphans older than ``orphan_age`` go: a document is saved just
        before the job that references it is committed. Documents of
        finished jobs go after ``retention.documents``, in the purge rounds
        (gatewayd/store/retention.py); a file the purge already dealt with
        counts as unreferenced here.
        """
        removed = 0
        now = time.time()
        # A job references its document and its own cover (docs/architecture.md, Storage layout).
        referenced = {row[0] for row in self._db.query(
            "SELECT DISTINCT document FROM jobs WHERE document_purged_at IS NULL "
            "UNION SELECT cover FROM jobs WHERE cover != '' AND document_purged_at IS NULL")}
        # Originals of office documents are kept only while their conversion is pending.
        pending_parts = self.pending_parts()
        if self._db.dialect == "postgresql":
            return self._clean_document_rows(referenced, pending_parts, now - orphan_age)
        for sub in self.documents_dir.iterdir():
            if sub.is_symlink() or not sub.is_dir():
                continue  # never walk into a planted link (docs/security.md, "Hardening")
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
                    elif name.endswith(".part") and name[:-5] not in pending_parts and now - path.stat().st_mtime > orphan_age:
                        path.unlink()
                        removed += 1
                    elif name.endswith(".pdf") and name[:-4] not in referenced and now - path.stat().st_mtime > orphan_age:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def documents_size(self) -> int:
        """Bytes of the documents kept: the files' sizes (a directory walk: call
        it off the event loop and off the store's thread), or on PostgreSQL the
        rows' recorded sizes (gatewayd_document_bytes, docs/operations.md)."""
        if self._db.dialect == "postgresql":
            return int(self._db.query("SELECT COALESCE(SUM(size), 0) FROM documents")[0][0])
        return document_bytes(self.documents_dir)

    def pending_parts(self) -> set[str]:
        """The sha256 of every original a pending conversion still uses."""
        if self._db.dialect == "postgresql":
            sql = ("SELECT DISTINCT p ->> 'sha256' FROM conversions, json_array_elements(conversions.parts::json) AS p "
                   "WHERE conversions.state = 'pending'")
        else:
            sql = ("SELECT DISTINCT json_extract(p.value, '$.sha256') FROM conversions, json_each(conversions.parts) AS p "
                   "WHERE conversions.state = 'pending'")
        return {row[0] for row in self._db.query(sql)}

    def delete_document(self, sha256: str, suffix: str = ".pdf") -> None:
        """Remove one document now (a converted original); gone already is fine."""
        if self._db.dialect == "postgresql":
            self._db.write("DELETE FROM documents WHERE name = ?", (sha256 + suffix,))
            return
        with contextlib.suppress(FileNotFoundError):
            self.document_path(sha256, suffix).unlink()

    def _clean_document_rows(self, referenced: set[str], pending_parts: set[str], before: float) -> int:
        """``clean_documents`` on PostgreSQL: rows nothing names, saved before ``before``."""
        removed = 0
        for (name,) in self._db.query("SELECT name FROM documents WHERE created_at < ?", (before,)):
            sha, _, ext = name.partition(".")
            if (ext == "pdf" and sha in referenced) or (ext == "part" and sha in pending_parts):
                continue
            # Checked again at the delete: a job saved meanwhile names it, or it was saved again.
            cur = self._db.write(
                "DELETE FROM documents WHERE name = ? AND created_at < ? "
                "AND NOT EXISTS (SELECT 1 FROM jobs WHERE (document = ? OR cover = ?) AND document_purged_at IS NULL)",
                (name, before, sha, sha),
            )
            removed += cur.rowcount
        return removed
