"""Each recipient's own cover document: stored with the shared one in the
same trip, referenced by its job (so never cleaned away while the job may
still be sent), and counted in the job's pages and bytes. On both store
backends (the store contract suite, tests/support/stores.py)."""

from __future__ import annotations

import hashlib
import time

from support.stores import StoreFactory, age_document, document_exists
from gatewayd.store import NewJob

SHARED = b"%PDF-1.4\n% the attachments\n" + b"x" * 1000 + b"\n%%EOF\n"


def cover(n: int) -> tuple[bytes, str]:
    data = b"%PDF-1.4\n% cover " + str(n).encode() + b"\n%%EOF\n"
    return data, hashlib.sha256(data).hexdigest()


def job(n: int, **kw) -> NewJob:
    return NewJob(number=f"+7812309{n:04d}", dst_num=f"7812309{n:04d}", extension=100, report_to="a@example.com", source="smtp", **kw)


def test_save_parts_and_enqueue(open_store: StoreFactory) -> None:
    s = open_store()
    try:
        covers = [cover(1), cover(2)]
        shared_sha = hashlib.sha256(SHARED).hexdigest()
        ids = s.save_parts_and_enqueue((SHARED, shared_sha, 2), covers, [
            job(1, cover=covers[0][1], cover_pages=1, cover_bytes=len(covers[0][0])),
            job(2, cover=covers[1][1], cover_pages=2, cover_bytes=len(covers[1][0])),
        ])
        first, second = (s.get_job(i) for i in ids)
        assert first.document == second.document == shared_sha
        assert (first.cover, second.cover) == (covers[0][1], covers[1][1])
        assert (first.pages, second.pages) == (3, 4)
        assert first.doc_bytes == len(SHARED) + len(covers[0][0])
        assert s.read_document(first.cover) == covers[0][0]
        # Without attachments each job's own document is its whole fax.
        (only,) = s.save_parts_and_enqueue(None, [cover(3)], [job(3, document=cover(3)[1], cover_pages=1, cover_bytes=len(cover(3)[0]))])
        alone = s.get_job(only)
        assert (alone.document, alone.cover, alone.pages) == (cover(3)[1], "", 1)
    finally:
        s.close()


def test_clean_documents_keeps_a_queued_jobs_cover(open_store: StoreFactory) -> None:
    s = open_store()
    try:
        data, sha = cover(1)
        shared_sha = hashlib.sha256(SHARED).hexdigest()
        s.save_parts_and_enqueue((SHARED, shared_sha, 1), [(data, sha)], [job(1, cover=sha, cover_pages=1, cover_bytes=len(data))])
        orphan, orphan_sha = cover(9)
        s.save_document(orphan, orphan_sha)
        old = time.time() - 2 * 86400
        for name in (sha, shared_sha, orphan_sha):
            age_document(s, name, old)
        assert s.clean_documents() == 1
        assert document_exists(s, sha) and document_exists(s, shared_sha)
        assert not document_exists(s, orphan_sha)
    finally:
        s.close()
