"""Conversions are durable: stored before the 250, finished after a restart, originals kept only while pending (docs/documents.md).

The store's part runs on both backends (the store contract suite,
tests/support/stores.py); the run through a whole gateway is SQLite's until
a gateway's configuration can name a database_url ([storage], issue 17)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from support.e2f import NUMBER_1, load
from support.office import WORDS, pdftotext, run_office_gateway
from support.office import _sent
from support.stores import StoreFactory, age_document, document_exists

from gatewayd.store import CONVERTING, QUEUED, NewJob, Store


def test_a_pending_conversion_keeps_its_original_and_its_end_removes_it(open_store: StoreFactory) -> None:
    store = open_store()
    txt = b"a memo to fax\n"
    (job_id,) = store.save_conversion([("memo.txt", "txt", txt)], {"cover": None, "page_size": "A4", "max_pages": 100}, [_job()])
    assert store.get_job(job_id).state == CONVERTING
    (conversion,) = store.pending_conversions()
    (part,) = conversion.parts
    assert store.read_part(part) == txt and document_exists(store, part.sha256, ".part")
    # Old, but its conversion is pending: start-up clean-up keeps it.
    age_document(store, part.sha256, time.time() - 10 * 86400, ".part")
    assert store.clean_documents(orphan_age=0) == 0 and document_exists(store, part.sha256, ".part")
    assert store.due_jobs(QUEUED, time.time() + 3600) == []  # the sender does not see a converting job
    pdf = b"%PDF-1.4\n% converted\n%%EOF\n"
    sha = hashlib.sha256(pdf).hexdigest()
    assert store.finish_conversion(conversion, (pdf, sha, 1), [None]) == [job_id]
    job = store.get_job(job_id)
    assert (job.state, job.document, job.pages, job.doc_bytes) == (QUEUED, sha, 1, len(pdf))
    assert [j.id for j in store.due_jobs(QUEUED, time.time() + 3600)] == [job_id]
    assert store.pending_conversions() == [] and not document_exists(store, part.sha256, ".part")
    assert store.read_document(sha) == pdf


@pytest.mark.integration
@pytest.mark.timeout(400)


def _job() -> NewJob:
    return NewJob(number=NUMBER_1, dst_num=NUMBER_1.lstrip("+"), extension=122, report_to="alice@example.com", source="smtp")


async def test_a_conversion_stored_before_a_stop_is_done_at_the_next_start(tmp_path: Path, sim, sim_data, documents) -> None:
    config = load(tmp_path, sim_data)
    # What the intake commits before its 250, then the process is gone (no converter ran).
    store = Store(config.state_dir)
    try:
        (job_id,) = store.save_conversion([("memo.txt", "txt", documents["txt"])],
                                          {"cover": None, "page_size": "A4", "max_pages": 100}, [_job()])
        assert store.get_job(job_id).state == CONVERTING
        parts = list((config.state_dir / "documents").rglob("*.part"))
        assert len(parts) == 1
        # Old, but its conversion is pending: start-up clean-up keeps it.
        os.utime(parts[0], (time.time() - 10 * 86400,) * 2)
        assert store.clean_documents(orphan_age=0) == 0
        assert parts[0].exists()
        # The sender does not see a converting job.
        assert store.due_jobs(QUEUED, time.time() + 3600) == []
    finally:
        store.close()
    async with run_office_gateway(config, sim=sim) as (gw, _converter):
        (fax,) = await _sent(sim, gw, [job_id])
        assert WORDS["txt"] in " ".join(pdftotext(fax.document, tmp_path).split())
        assert [e.to_state for e in gw.store.job_events(job_id)][:2] == [CONVERTING, QUEUED]
    assert not parts[0].exists()  # the original went once the conversion ended
