"""Eight months on a moved clock: thousands of jobs and received faxes go
through the real store, the real "purge" service runs its round every
simulated day, and the store's size (rows, bytes, and the SQLite file after
the incremental vacuum) levels off at what the retention windows hold, while
nothing unfinished is lost (docs/operations.md, Retention and privacy).
On both store backends (the store contract suite, tests/support/stores.py);
the file's size and SQLite's integrity pragmas are SQLite's own."""

from __future__ import annotations

import asyncio
from pathlib import Path

from support.foundation import base_config, merge
from support.stores import StoreFactory, document_exists
from gatewayd.config import load_config_data
from gatewayd.health import Health
from gatewayd.metrics import Metrics
from gatewayd.purger import Purger
from gatewayd.runtime import Runtime
from gatewayd.store import NewJob, ReceivedFax, Store
from gatewayd.store.retention import document_bytes

DAY = 86400.0
START = 1_800_000_000.0
DAYS = 240
JOBS_PER_DAY = 20  # 5 documents a day, each faxed to 4 numbers
RECEIVED_PER_DAY = 15
WINDOW_DAYS = 60  # retention.jobs and retention.received


class Clock:
    def __init__(self) -> None:
        self.t = START

    def __call__(self) -> float:
        return self.t


def _pdf(day: int, n: int) -> bytes:
    return b"%PDF-1.4\n%" + f"day {day} doc {n}".encode() + b"\n" + bytes([day % 251]) * 6000 + b"\n%%EOF\n"


def _job(n: int) -> NewJob:
    return NewJob(number=f"+749512{n:05d}", dst_num=f"749512{n:05d}", extension=100, report_to="clinic@example.com", source="smtp")


def _size(store: Store) -> dict[str, int]:
    q = store._db.query
    if store.dialect == "postgresql":
        documents = int(q("SELECT COALESCE(SUM(size), 0) FROM documents")[0][0])
        file = store.storage_facts().file_bytes
    else:
        documents, file = document_bytes(store.documents_dir), store.db_path.stat().st_size
    return {
        "jobs": q("SELECT COUNT(*) FROM jobs")[0][0],
        "events": q("SELECT COUNT(*) FROM job_events")[0][0],
        "outbox": q("SELECT COUNT(*) FROM outbox")[0][0],
        "received": q("SELECT COUNT(*) FROM received")[0][0],
        "bodies": q("SELECT COALESCE(SUM(LENGTH(message)), 0) FROM outbox")[0][0],
        "documents": documents,
        "file": file,
    }


async def test_store_size_levels_off_over_months_and_nothing_unfinished_is_lost(tmp_path: Path, open_store: StoreFactory) -> None:
    clock = Clock()
    config = load_config_data(merge(base_config(tmp_path / "state"), {
        "retention": {"interval": "1h", "documents": "10d", "mail": "3d", "jobs": f"{WINDOW_DAYS}d", "received": f"{WINDOW_DAYS}d"},
        "inbound": {"first_lookback": "1h", "poll_interval": "30s"},
    }), env={})
    store = open_store(config.state_dir, clock=clock)
    rt = Runtime(config=config, store=store, provider=None, metrics=Metrics(), health=Health(), clock=clock)  # type: ignore[arg-type]
    purger = Purger(rt, first_delay=10 * DAY)  # rounds only when woken: one per simulated day
    task = asyncio.create_task(purger.run())
    provider_id = 0
    sizes: dict[int, dict[str, int]] = {}
    try:
        # Day 0: what must survive every round.
        live_doc = store.save_document(_pdf(0, 99))
        waiting = store.enqueue_jobs(live_doc, 1, 6000, [_job(90001), _job(90002)])  # queued for ever (the provider is down)
        submitted, = store.enqueue_jobs(store.save_document(_pdf(0, 98)), 1, 6000, [_job(90003)])
        store.transition(submitted, "submitted", "at the provider", provider_id=10**9)
        unreported, = store.enqueue_jobs(live_doc, 1, 6000, [_job(90004)])
        store.transition(unreported, "failed", "busy", finished_at=START)  # finished, report not yet queued
        pending_mail = store.enqueue_mail("admin", "gw@test", ["admin@example.com"], b"the relay is down: still to send")
        held = ReceivedFax("held-0", 100, "+74950000000", "74951110000", "", 100, START, "queued", (), None, None, "")
        store.hold_received(held, "no recipient")
        queued_fax = ReceivedFax("queued-0", 100, "+74950000000", "74951110000", "", 100, START, "queued", ("clinic@example.com",), None, None, "")
        queued_box = store.queue_received(queued_fax, "gw@test", b"a received fax the relay has not taken yet")

        for day in range(DAYS):
            base = START + day * DAY
            with store.transaction():
                for d in range(JOBS_PER_DAY // 4):
                    clock.t = base + 3600 + d * 60
                    sha = store.save_document(_pdf(day, d))
                    ids = store.enqueue_jobs(sha, 1, 6000, [_job(day * 100 + d * 4 + k) for k in range(4)])
                    clock.t += 600
                    for job_id in ids:
                        provider_id += 1
                        store.transition(job_id, "submitted", "", provider_id=provider_id, submitted_at=clock.t)
                        store.transition(job_id, "sent", "delivered")
                        job = store.get_job(job_id)
                        store.queue_report(job_id, job.finished_at, [("report", "gw@test", ["clinic@example.com"], b"R" * 3000 + _pdf(day, d), str(job_id))])
                for mail in store.due_mail(clock.t + 1, limit=1000):
                    if mail.kind == "report":
                        store.mark_mail_sent(mail.id)
                for n in range(RECEIVED_PER_DAY):
                    clock.t = base + 7200 + n * 120
                    fax = ReceivedFax(f"fax-{day}-{n}", 100, "+74950000000", "74951111111", "", 20_000, clock.t, "queued", ("clinic@example.com",), None, None, "")
                    box = store.queue_received(fax, "gw@test", b"F" * 20_000)
                    store.mark_mail_sent(box)
                store.set_meta("inbound.hwm.100", repr(clock.t))  # the poller's high-water mark moves with the day
            clock.t = base + DAY - 60
            rounds = purger.rounds
            rt.wake("purge")
            while purger.rounds == rounds:
                assert not task.done(), task
                await asyncio.sleep(0.001)
            if (day + 1) % 20 == 0:
                sizes[day + 1] = _size(store)

        for day, size in sorted(sizes.items()):
            print(f"day {day:3}: {size}")
        # Growing while the windows fill, then level.
        assert sizes[20]["jobs"] < sizes[40]["jobs"] < sizes[60]["jobs"]
        steady = [sizes[d] for d in (100, 140, 180, 220, 240)]
        window_jobs = WINDOW_DAYS * JOBS_PER_DAY
        for size in steady:
            assert abs(size["jobs"] - window_jobs) <= JOBS_PER_DAY + 4, size  # the window, give or take a day, + the 4 unfinished
            assert abs(size["received"] - WINDOW_DAYS * RECEIVED_PER_DAY) <= RECEIVED_PER_DAY + 2, size
            assert size["events"] <= 3 * size["jobs"], size
            # bodies: three days of reports and faxes, plus the pending ones
            assert size["bodies"] <= 4 * (JOBS_PER_DAY * 9200 + RECEIVED_PER_DAY * 20_000), size
            # documents: ten days of 5 a day, plus the two the unfinished jobs need
            assert size["documents"] <= (11 * 5 + 2) * 6100, size
        total_jobs = DAYS * JOBS_PER_DAY
        assert total_jobs == 4800 and sizes[240]["jobs"] < total_jobs / 3
        if store.dialect == "sqlite":
            # SQLite's file after the incremental vacuum (PostgreSQL's space
            # comes back when its autovacuum runs, on the server's schedule).
            files = [size["file"] for size in steady]
            assert max(files) <= 1.1 * min(files), files  # the file no longer grows
            # What would be there without retention: every body stays.
            assert sizes[240]["file"] < (total_jobs * 9200 + DAYS * RECEIVED_PER_DAY * 20_000) / 8, sizes[240]

        # Nothing unfinished was lost.
        for job_id in (*waiting, submitted, unreported):
            job = store.get_job(job_id)
            assert document_exists(store, job.document), job
            assert store.read_document(job.document)
        assert store.get_job(unreported).state == "failed" and store.get_job(submitted).state == "submitted"
        assert store.get_mail(pending_mail).message == b"the relay is down: still to send"
        assert store.get_received("held-0").state == "no_recipient"
        assert store.get_received("queued-0").state == "queued"
        assert store.get_mail(queued_box).message == b"a received fax the relay has not taken yet"
        if store.dialect == "sqlite":
            assert store._db.query("PRAGMA integrity_check")[0][0] == "ok"
            assert store._db.query("PRAGMA foreign_key_check") == []
        purged = {kind: rt.metrics.purged.labels(kind)._value.get() for kind in ("jobs", "received", "mail", "documents")}
        assert purged["jobs"] >= total_jobs - window_jobs - JOBS_PER_DAY and purged["received"] > 2000, purged
    finally:
        rt.stopping.set()
        await asyncio.wait_for(task, 10)
