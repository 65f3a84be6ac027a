"""Office documents waiting for conversion: the ``conversions`` table and its original files.

docs/documents.md, "Office documents": a message with an office attachment
is stored before the ``250`` as its parts in the sender's order (each
office original, and each PDF or image already made into a PDF) plus what
the cover page needs, with its jobs in the state ``converting``, in one
commit. The converter service (gatewayd/email_to_fax/converter.py) then
makes the fax document and moves the jobs on (``queued``) or ends them
(``rejected``), again in one commit, and the originals are deleted.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gatewayd.jobstates import CONVERTING, QUEUED, REJECTED
from gatewayd.store.database import DB_ERRORS, StoreError, StorePart
from gatewayd.store.jobs import NewJob, intake_ids

__all__ = ["Conversion", "ConversionPart", "ConversionTable", "PART_SUFFIX"]

PART_SUFFIX = ".part"


@dataclass(frozen=True)
class ConversionPart:
    """One part of the fax in the sender's order: a PDF (``kind`` "pdf") or an office original."""

    filename: str
    kind: str
    sha256: str


@dataclass(frozen=True)
class Conversion:
    id: int
    created_at: float
    parts: tuple[ConversionPart, ...]
    spec: dict[str, Any]  # each job's cover page fields ("covers"), page_size, max_pages
    job_ids: tuple[int, ...]


class ConversionTable(StorePart):
    """The ``Store``'s pending conversions (needs ``DocumentFiles`` and ``JobTable`` beside it)."""

    def save_conversion(self, parts: Sequence[tuple[str, str, bytes]], spec: dict[str, Any], jobs: Sequence[NewJob], *,
                        intake_key: str | None = None) -> list[int]:
        """Write every part durably, then the conversion and its ``converting`` jobs in one commit; returns the job ids."""
        stored = [ConversionPart(name, kind, self.save_document(data, suffix=PART_SUFFIX)) for name, kind, data in parts]  # type: ignore[attr-defined]
        now = self.clock()
        try:
            with self._db.transaction() as conn:
                seen = intake_ids(conn, intake_key)
                if seen is not None:
                    return seen
                ids = self.enqueue_jobs("", 0, 0, jobs, intake_key=intake_key, state=CONVERTING)  # type: ignore[attr-defined]
                conn.execute(
                    "INSERT INTO conversions (created_at, state, parts, spec, job_ids) VALUES (?, 'pending', ?, ?, ?)",
                    (now, json.dumps([p.__dict__ for p in stored]), json.dumps(spec), json.dumps(ids)),
                )
        except DB_ERRORS as exc:
            raise StoreError(f"cannot store the conversion: {exc}") from exc
        return ids

    def pending_conversions(self, limit: int = 100) -> list[Conversion]:
        rows = self._db.query(
            "SELECT id, created_at, parts, spec, job_ids FROM conversions WHERE state = 'pending' ORDER BY id LIMIT ?", (limit,))
        return [
            Conversion(r[0], r[1], tuple(ConversionPart(**p) for p in json.loads(r[2])), json.loads(r[3]), tuple(json.loads(r[4])))
            for r in rows
        ]

    def read_part(self, part: ConversionPart) -> bytes:
        return self.read_document(part.sha256, PART_SUFFIX)  # type: ignore[attr-defined]

    def finish_conversion(self, conversion: Conversion, shared: tuple[bytes, str, int],
                          own: Sequence[tuple[bytes, str, int] | None]) -> list[int]:
        """Save the attachments (data, sha256, pages) and each job's own cover, then move the jobs still ``converting`` to ``queued``.

        ``own[i]`` is the cover of ``conversion.job_ids[i]`` (None: no cover),
        stored apart as the intake stores it (docs/architecture.md, Storage
        layout). Everything is durable before the one commit that references
        it; returns the job ids moved.
        """
        if len(own) != len(conversion.job_ids):
            raise ValueError("one cover (or None) per job")
        sha = self.save_document(shared[0], shared[1])  # type: ignore[attr-defined]
        for cover in own:
            if cover is not None:
                self.save_document(cover[0], cover[1])  # type: ignore[attr-defined]
        now = self.clock()
        fields = {
            job_id: {"document": sha, "pages": shared[2] + (c[2] if c else 0), "doc_bytes": len(shared[0]) + (len(c[0]) if c else 0),
                     "cover": c[1] if c else "", "next_attempt_at": now}
            for job_id, c in zip(conversion.job_ids, own, strict=True)
        }
        return self._end(conversion, "done", "", QUEUED, "converted", fields)

    def fail_conversion(self, conversion: Conversion, reason: str) -> list[int]:
        """End the jobs still ``converting`` as ``rejected`` with ``reason`` (it names the file); returns those job ids."""
        return self._end(conversion, "failed", reason, REJECTED, reason, {})

    def _end(self, conversion: Conversion, state: str, why: str, job_state: str, job_reason: str,
             fields: dict[int, dict[str, Any]]) -> list[int]:
        moved: list[int] = []
        try:
            with self._db.transaction() as conn:
                cur = conn.execute("UPDATE conversions SET state = ?, reason = ?, finished_at = ? WHERE id = ? AND state = 'pending'",
                                   (state, why, self.clock(), conversion.id))
                if cur.rowcount != 1:
                    return []
                for job_id in conversion.job_ids:
                    # Compare and set: a job canceled meanwhile stays canceled.
                    if self.transition(job_id, job_state, job_reason, expect=[CONVERTING], **fields.get(job_id, {})):  # type: ignore[attr-defined]
                        moved.append(job_id)
        except DB_ERRORS as exc:
            raise StoreError(f"cannot end conversion {conversion.id}: {exc}") from exc
        self._remove_parts(conversion)
        return moved

    def _remove_parts(self, conversion: Conversion) -> None:
        """Delete the originals no other pending conversion uses (clean_documents catches any left over)."""
        still = self.pending_parts()  # type: ignore[attr-defined]
        for part in conversion.parts:
            if part.sha256 not in still:
                with contextlib.suppress(OSError, StoreError):
                    self.delete_document(part.sha256, PART_SUFFIX)  # type: ignore[attr-defined]
