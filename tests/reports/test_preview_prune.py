"""The console's cached previews go with their documents in the purge rounds (gatewayd/purger.py, docs/web.md)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from support.reports import DST, NUMBER, SENDER, Gateway, OffsetClock, finished_job, make_config

from gatewayd.documents.preview import Previews
from gatewayd.purger import Purger
from gatewayd.store import NewJob

DAY = 86400.0


async def test_previews_of_purged_documents_are_removed(state_dir: Path, clock: OffsetClock) -> None:
    gw = Gateway(make_config(state_dir, None, None), clock)
    try:
        old = await finished_job(gw, "sent", subject="old")
        assert await gw.reporter.report_due() == 1
        clock.advance(31 * DAY)  # past retention.documents (30 days)
        old_sha = (await gw.job(old)).document
        previews = Previews(gw.config.state_dir)
        # A queued job's document: kept, and so is its preview.
        new_pdf = b"%PDF-" + os.urandom(8)
        new_sha = await gw.store.run(gw.store.save_document, new_pdf)
        await gw.store.run(gw.store.enqueue_jobs, new_sha, 1, len(new_pdf), [NewJob(number=NUMBER, dst_num=DST, extension=122, report_to=SENDER, source="smtp")])
        for key in (old_sha, new_sha, "rx-gone-uuid"):
            path = previews.path(key, 300)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"png")
        stale_tmp = previews.dir / ".tmp-x.png-1-2"
        stale_tmp.write_bytes(b"half")
        os.utime(stale_tmp, (time.time() - 2 * 3600,) * 2)
        young_tmp = previews.dir / ".tmp-y.png-1-2"
        young_tmp.write_bytes(b"half")

        result = await Purger(gw.rt, previews=previews).round()
        assert result is not None and result.tallies["documents"].rows == 1
        assert sorted(p.name for p in previews.dir.iterdir()) == sorted([f"{new_sha}-300.png", young_tmp.name])
    finally:
        gw.store.close()
