"""Conversions are durable: stored before the 250, finished after a restart, originals kept only while pending (docs/documents.md)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from support.e2f import NUMBER_1, load
from support.office import WORDS, pdftotext, run_office_gateway
from support.office import _sent

from gatewayd.store import CONVERTING, QUEUED, NewJob, Store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


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
