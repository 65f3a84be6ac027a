"""The sender against the provider simulator: submissions, the provider's
refusals and faults, and reconciliation of lost answers (never a blind resend)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from support.corpus import good_message, make_image, make_pdf
from support.e2f import DOMAIN, FAST_SENDER, enqueue, NUMBER_1, NUMBER_2, RawSMTP, load, merge, page_sizes_pt, pdfinfo, run_gateway, wait_for

from gatewayd.provider.client import ProviderClient
from gatewayd.store import Store

PAGE_PTS = {"A4": (595.28, 841.89), "Letter": (612.0, 792.0)}


def settled(store: Store, ids: list[int], state: str = "submitted") -> bool:
    return all(store.get_job(i).state == state for i in ids)


@pytest.mark.parametrize("page_size", ["A4", "Letter"])
async def test_end_to_end_two_numbers_submitted_once(tmp_path: Path, sim_data: dict, sim, page_size: str) -> None:
    data = merge(sim_data, {"documents": {"page_size": page_size}})
    size = PAGE_PTS[page_size]
    raw = good_message(
        [("report.pdf", "application/pdf", make_pdf(2, size=size)), ("photo.jpg", "image/jpeg", make_image("JPEG", (1200, 900)))],
        subject="Quarterly report", body="Two pages and a photo follow.",
    )
    async with run_gateway(load(tmp_path, data), sim=sim, sender=True) as gw:
        c = await RawSMTP.connect(gw.port)
        _, _, reply = await c.send(raw, recipients=(f"{NUMBER_1}@{DOMAIN}", f"{NUMBER_2}@{DOMAIN}"))
        await c.close()
        ids = [j.id for j in gw.jobs()]
        assert reply == f"250 2.0.0 queued as {ids[0]} {ids[1]}"
        await wait_for(lambda: settled(gw.store, ids), what="both jobs submitted")
        jobs = gw.jobs()
    faxes = sim.sent_faxes()
    assert sorted(f.dst_num for f in faxes) == sorted([NUMBER_1[1:], NUMBER_2[1:]])  # each once
    assert {j.provider_id for j in jobs} == {f.id for f in faxes}
    assert all(j.attempts == 1 and j.submitted_at is not None for j in jobs)
    for fax in faxes:
        assert fax.filename.startswith("fax-")
        info = pdfinfo(fax.document, tmp_path, f"sent-{fax.id}.pdf")
        assert info["Pages"] == "4"  # cover page, two PDF pages, the photo
        sizes = page_sizes_pt(info)
        assert len(sizes) == 4
        for w, h in sizes:
            # Either orientation (a landscape photo gets a landscape page), always the configured size.
            short, long_ = sorted((w, h))
            assert abs(short - size[0]) < 1.5 and abs(long_ - size[1]) < 1.5, (w, h)
        assert sizes[0][0] < sizes[0][1]  # the cover page is portrait


async def test_commit_then_drop_is_reconciled_not_resent(tmp_path: Path, sim_data: dict, sim) -> None:
    sim.drop_after_commit(1)
    async with run_gateway(load(tmp_path, sim_data), sim=sim, sender=True) as gw:
        ids = enqueue(gw.store)
        gw.rt.wake("sender")
        await wait_for(lambda: settled(gw.store, ids), what="the job adopted")
        job = gw.store.get_job(ids[0])
        events = gw.store.job_events(ids[0])
    faxes = sim.sent_faxes()
    assert len(faxes) == 1 and sim.count_requests("POST", "/extension/*/fax/out/") == 1
    assert job.provider_id == faxes[0].id
    assert any("found at the provider after a lost answer" in e.reason for e in events)
    assert gw.rt.metrics.registry.get_sample_value("gatewayd_submissions_total", {"result": "adopted"}) == 1


@pytest.mark.parametrize("fault", ["server_error", "dropped"])
async def test_lost_post_without_a_fax_is_sent_again_once(tmp_path: Path, sim_data: dict, sim, fault: str) -> None:
    if fault == "server_error":
        sim.fail_next(1, "/extension/*/fax/out/", status=502, method="POST")
    else:
        sim.add_fault("/extension/*/fax/out/", method="POST", drop=True)
    async with run_gateway(load(tmp_path, sim_data), sim=sim, sender=True) as gw:
        ids = enqueue(gw.store)
        gw.rt.wake("sender")
        await wait_for(lambda: settled(gw.store, ids), what="the job submitted")
        events = [e.reason for e in gw.store.job_events(ids[0])]
    assert len(sim.sent_faxes()) == 1
    assert sim.count_requests("POST", "/extension/*/fax/out/") == 2
    # Looked twice at the provider's list before the second POST.
    assert sim.count_requests("GET", "/extension/*/fax/out/") >= 2
    assert "provider has no record of the submission" in events


async def test_provider_refusal_is_final(tmp_path: Path, sim_data: dict, sim) -> None:
    sim.add_fault("/extension/*/fax/out/", method="POST", status=400, message="dst_num is not a valid number")
    async with run_gateway(load(tmp_path, sim_data), sim=sim, sender=True) as gw:
        ids = enqueue(gw.store)
        gw.rt.wake("sender")
        await wait_for(lambda: gw.store.get_job(ids[0]).state == "rejected", what="the job rejected")
        job = gw.store.get_job(ids[0])
    assert job.finished_at is not None
    assert job.reason == "refused by the provider: dst_num is not a valid number"
    assert sim.sent_faxes() == []


async def test_rate_limit_and_outage_wait_then_send_once(tmp_path: Path, sim_data: dict, sim) -> None:
    sim.rate_limit_next(1, path="/extension/*/fax/out/")
    async with run_gateway(load(tmp_path, sim_data), sim=sim, sender=True) as gw:
        ids = enqueue(gw.store, (NUMBER_1, NUMBER_2))
        gw.rt.wake("sender")
        await wait_for(lambda: settled(gw.store, ids), what="both submitted")
        waits = gw.rt.metrics.registry.get_sample_value("gatewayd_rate_limit_waits_total", {"scope": "provider"})
        reasons = [e.reason for e in gw.store.job_events(ids[0])]
    assert waits and waits >= 1
    assert any(r.startswith("provider rate limit") for r in reasons)
    assert sorted(f.dst_num for f in sim.sent_faxes()) == sorted([NUMBER_1[1:], NUMBER_2[1:]])


async def test_provider_unreachable_backs_off_and_requeues(tmp_path: Path, sim_data: dict, sim) -> None:
    data = merge(sim_data, {"provider": {"base_url": "http://127.0.0.1:9/api/ver1.0", "token_url": "http://127.0.0.1:9/oauth/token"}})
    async with run_gateway(load(tmp_path, data), sim=None, sender=False) as gw:
        # A client pointed at a closed port: every call fails to connect.
        from support.e2f import FAST_SENDER

        from gatewayd.email_to_fax.sender import Sender

        gw.rt.provider = ProviderClient("http://127.0.0.1:9/api/ver1.0", "http://127.0.0.1:9/oauth/token", "demo", "demo", timeout=2.0, max_attempts=1)
        sender = Sender(gw.rt, FAST_SENDER)
        ids = enqueue(gw.store)
        before = time.time()
        await sender._pass()
        await wait_for(lambda: gw.store.get_job(ids[0]).reason.startswith("provider unavailable"), what="the job requeued")
        await sender._finish_workers()
        await gw.rt.provider.aclose()
        job = gw.store.get_job(ids[0])
    assert job.state == "queued" and job.submitted_at is None
    assert job.next_attempt_at is not None and job.next_attempt_at > before


async def test_credentials_refused_keeps_the_job(tmp_path: Path, sim_data: dict, sim) -> None:
    sim.client_secret = "changed"
    async with run_gateway(load(tmp_path, sim_data), sim=sim, sender=True) as gw:
        ids = enqueue(gw.store)
        gw.rt.wake("sender")
        await wait_for(lambda: gw.store.get_job(ids[0]).reason.startswith("provider refused our credentials"), what="auth refusal")
        assert gw.store.get_job(ids[0]).state == "queued"
        sim.client_secret = "demo"  # the administrator fixes the account
        await wait_for(lambda: settled(gw.store, ids), what="the job submitted")
    assert len(sim.sent_faxes()) == 1


async def _stuck_job(store: Store, number: str = NUMBER_1) -> int:
    """A job left in "submitting" by a process that died around its POST."""
    [job_id] = enqueue(store, (number,))
    assert store.transition(job_id, "submitting", "submitting to the provider", expect=["queued"], submitted_at=time.time())
    return job_id


async def test_restart_adopts_a_fax_the_dead_process_created(tmp_path: Path, sim_data: dict, sim) -> None:
    config = load(tmp_path, sim_data)
    store = Store(config.state_dir)
    job_id = await _stuck_job(store)
    store.close()
    # The POST reached the provider before the process died.
    async with ProviderClient(sim.base_url, sim.token_url, "demo", "demo") as client:
        created = await client.send_fax(122, NUMBER_1[1:], make_pdf(1))
    async with run_gateway(config, sim=sim, sender=True) as gw:
        await wait_for(lambda: settled(gw.store, [job_id]), what="the job adopted")
        assert gw.store.get_job(job_id).provider_id == created.id
    assert sim.count_requests("POST", "/extension/*/fax/out/") == 1


async def test_restart_without_a_fax_sends_once_and_never_adopts_an_owned_one(tmp_path: Path, sim_data: dict, sim) -> None:
    async with run_gateway(load(tmp_path, sim_data), sim=sim, sender=True) as gw:
        # A first job to the same number is submitted normally and owns its fax.
        first = enqueue(gw.store)
        gw.rt.wake("sender")
        await wait_for(lambda: settled(gw.store, first), what="the first job")
    config = load(tmp_path, sim_data)
    store = Store(config.state_dir)
    second = await _stuck_job(store)  # died before its POST left
    store.close()
    async with run_gateway(config, sim=sim, sender=True) as gw:
        await wait_for(lambda: settled(gw.store, [second]), what="the second job submitted")
        a, b = gw.store.get_job(first[0]), gw.store.get_job(second)
    faxes = sim.sent_faxes()
    assert len(faxes) == 2 and a.provider_id != b.provider_id
    assert {a.provider_id, b.provider_id} == {f.id for f in faxes}


async def test_reconciliation_waits_while_the_provider_is_down(tmp_path: Path, sim_data: dict, sim) -> None:
    config = load(tmp_path, sim_data)
    store = Store(config.state_dir)
    job_id = await _stuck_job(store)
    store.close()
    outage = sim.add_fault("/extension/*/fax/out/", method="GET", status=503, count=None)
    async with run_gateway(config, sim=sim, sender=True) as gw:
        # The client's retries of one look can reach the simulator before the
        # sender records its outcome: wait for the outcome, not the requests.
        await wait_for(lambda: gw.store.get_job(job_id).reason.startswith("cannot reconcile yet"), what="a failed look recorded")
        await wait_for(lambda: sim.count_requests("GET", "/extension/*/fax/out/") >= 4, what="a few failed looks")
        job = gw.store.get_job(job_id)
        assert job.state == "submitting" and job.reason.startswith("cannot reconcile yet")
        assert sim.count_requests("POST", "/extension/*/fax/out/") == 0  # never a blind resend
        sim.faults.remove(outage)
        await wait_for(lambda: settled(gw.store, [job_id]), what="the job submitted after the outage")
    assert len(sim.sent_faxes()) == 1


async def test_two_jobs_to_one_number_are_never_confused(tmp_path: Path, sim_data: dict, sim) -> None:
    """An unresolved upload to a number holds back the next upload to it:
    otherwise reconciling the first could adopt the second's fax, sending one
    document twice and the other never."""
    config = load(tmp_path, sim_data)
    store = Store(config.state_dir)
    first = await _stuck_job(store)  # died before its upload left; no fax exists
    [second] = enqueue(store, (NUMBER_1,), pages=2)  # same number, another document
    store.close()
    sim.drop_after_commit(1)  # the next upload is created, its answer lost
    # The first job's second look comes before the lost answer is reconciled
    # (as when the daemon dies in between): the order that used to confuse them.
    tuning = dataclasses.replace(FAST_SENDER, recheck_delay=0.1, reconcile_delay=1.0)
    async with run_gateway(config, sim=sim, sender=True, sender_tuning=tuning) as gw:
        await wait_for(lambda: settled(gw.store, [first, second]), what="both jobs submitted")
        jobs = {i: gw.store.get_job(i) for i in (first, second)}
    faxes = {f.id: f for f in sim.sent_faxes()}
    assert sorted(f.filename for f in faxes.values()) == sorted([f"fax-{first}.pdf", f"fax-{second}.pdf"])
    for job_id, job in jobs.items():
        assert faxes[job.provider_id].filename == f"fax-{job_id}.pdf"  # each job owns its own document's fax


async def test_store_failure_after_the_upload_is_reconciled_not_resent(tmp_path: Path, sim_data: dict, sim, monkeypatch) -> None:
    from gatewayd.store import StoreError

    async with run_gateway(load(tmp_path, sim_data), sim=sim, sender=True) as gw:
        real = gw.store.transition
        failures = []

        def flaky(job_id: int, to_state: str, *args: object, **kw: object) -> bool:
            if to_state == "submitted" and not failures:
                failures.append(job_id)
                raise StoreError("database is locked")
            return real(job_id, to_state, *args, **kw)

        monkeypatch.setattr(gw.store, "transition", flaky)
        ids = enqueue(gw.store)
        gw.rt.wake("sender")
        await wait_for(lambda: failures and gw.store.get_job(ids[0]).state == "submitting", what="the failed commit")
        # The job waits in "submitting"; make it due now instead of after the backoff.
        gw.store.update_job(ids[0], next_attempt_at=0)
        gw.rt.wake("sender")
        await wait_for(lambda: settled(gw.store, ids), what="the job reconciled")
    assert len(sim.sent_faxes()) == 1
    assert sim.count_requests("POST", "/extension/*/fax/out/") == 1
