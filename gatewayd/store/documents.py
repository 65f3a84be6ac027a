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
import threading
import time
from pathlib import Path

from gatewayd.store.database import StoreError, StorePart

__all__ = ["DocumentFiles", "adopt", "foreign_owner"]


def foreign_owner(state_dir: Path) -> tuple[int, int] | None:
    """(uid, gid) of ``state_dir`` when we are root and it belongs to another user."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    st = state_dir.stat()
    return None if st.st_uid == 0 else (st.st_uid, st.st_gid)


def adopt(path: Path, owner: tuple[int, int] | None) -> None:
    """Give ``path`` to ``owner``, the state directory's owner (only set when running as root for someone else)."""
    if owner is None:
        return
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if (st.st_uid, st.st_gid) != owner:
        os.chown(path, *owner)


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
        try:
            final.parent.mkdir(exist_ok=True, mode=0o700)
            adopt(final.parent, self._owner)
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

    def read_document(self, sha256: str, suffix: str = ".pdf") -> bytes:
        try:
            return self.document_path(sha256, suffix).read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read document {sha256}: {exc}") from exc

    def clean_documents(self, *, orphan_age: float = 86400.0) -> int:
        """Remove leftover temporary files, and documents no job references.

        Only orphans older than ``orphan_age`` go: a document is saved just
        before the job that references it is committed. Documents of jobs
        finished more than 30 days ago count as unreferenced.
        """
        removed = 0
        now = time.time()
        referenced = {row[0] for row in self._db.query("SELECT DISTINCT document FROM jobs WHERE finished_at IS NULL OR finished_at > ?", (self.clock() - 30 * 86400,))}
        # Originals of office documents are kept only while their conversion is pending.
        pending_parts = {row[0] for row in self._db.query(
            "SELECT DISTINCT json_extract(p.value, '$.sha256') FROM conversions, json_each(conversions.parts) AS p "
            "WHERE conversions.state = 'pending'")}
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
                    elif name.endswith(".part") and name[:-5] not in pending_parts and now - path.stat().st_mtime > orphan_age:
                        path.unlink()
                        removed += 1
                    elif name.endswith(".pdf") and name[:-4] not in referenced and now - path.stat().st_mtime > orphan_age:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed
