"""A provider that hands out a fax id an old job of ours already holds (a
simulator restarted, an account reset or switched): the live job takes the
id, still finishes and is reported; the old job keeps the id in its history
only (docs/architecture.md, "Provider ids handed out again")."""

from __future__ import annotations

import asyncio

import httpx
from support.reports import DST, NUMBER, SENDER, Gateway, make_pdf, wait_for

from gatewayd.email_to_fax.sender import Sender, SenderTuning
from gatewayd.mailsink import MailSink
from gatewayd.provider.simulator import ProviderSimulator
from gatewayd.store import QUEUED, SENT, SUBMITTED, UNKNOWN, NewJob

FAST = SenderTuning(idle_poll=0.1, backoff_base=0.1, backoff_cap=1.0, recheck_delay=0.2, reconcile_delay=0.1, stop_grace=1.0)
OTHER_NUMBER, OTHER_DST = "+74951112233", "74951112233"


async def queue_job(gw: Gateway, number: str = NUMBER, dst: str = DST, subject: str = "Second fax") -> int:
    pdf = make_pdf(1)
    sha = await gw.store.run(gw.store.save_document, pdf)
    new = NewJob(number=number, dst_num=dst, extension=122, report_to=SENDER, source="smtp",
                 message_id="<orig-2@example.test>", subject=subject)
    (job_id,) = await gw.store.run(gw.store.enqueue_jobs, sha, 1, len(pdf), [new])
    return job_id


async def next_fax_id(sim: ProviderSimulator, fax_id: int) -> None:
    # Through the control API, as an operator or another test would.
    async with httpx.AsyncClient() as client:
        resp = await client.post(sim.base_url.split("/api/")[0] + "/_sim/next_fax_id", json={"id": fax_id})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"next_fax_id": fax_id}


async def run_sender(gw: Gateway) -> asyncio.Task[None]:
    sender = Sender(gw.rt, FAST)
    await sender.start()
    task = asyncio.create_task(sender.run(), name="sender")
    gw.tasks.append(task)
    return task


def reports_about(sink: MailSink, job_subject: str) -> list[str]:
    return [m.message["Subject"] for m in sink.messages if job_subject in (m.message["Subject"] or "")]


async def test_id_of_an_old_finished_job_goes_to_the_live_one(gateway: Gateway, sim: ProviderSimulator, sink: MailSink) -> None:
    gw = gateway.start()
    old = await gw.submit(subject="First fax")
    old_id = (await gw.job(old)).provider_id
    sim.clock.advance(10)  # -> sent
    await gw.wait_job(old, lambda j: j.state == SENT and j.reported_at is not None)
    await wait_for(lambda: reports_about(sink, "First fax"), what="the first report")

    await next_fax_id(sim, old_id)  # the provider starts counting again
    new = await queue_job(gw)
    await run_sender(gw)
    job = await gw.wait_job(new, lambda j: j.state == SUBMITTED)
    assert job.provider_id == old_id
    sim.clock.advance(10)
    job = await gw.wait_job(new, lambda j: j.state == SENT and j.reported_at is not None)
    await wait_for(lambda: reports_about(sink, "Second fax"), what="the live job's report")
    await gw.stop()

    before = gw.store  # closed; read through a fresh one
    from gatewayd.store import Store

    store = Store(before.state_dir)
    try:
        old_job = store.get_job(old)
        history = [e.reason for e in store.job_events(old)]
        new_events = [e.reason for e in store.job_events(new)]
    finally:
        store.close()
    assert old_job.state == SENT and old_job.provider_id is None  # its outcome stays; the id moved on
    assert any(f"gave fax id {old_id} to job {new}" in r for r in history), history
    assert any(f"as fax {old_id}" in r for r in new_events)
    assert sim.count_requests("POST", "/extension/*/fax/out/") == 2  # nothing sent twice
    assert reports_about(sink, "Second fax") == [f"Fax to {NUMBER} sent: Second fax"]


async def test_lost_answer_adopts_a_reused_id(gateway: Gateway, sim: ProviderSimulator) -> None:
    # The POST's answer is lost and the fax it created carries an id a finished
    # job to another number holds: reconciliation adopts it instead of sending again.
    gw = gateway.start()
    old = await gw.submit(subject="First fax")
    old_id = (await gw.job(old)).provider_id
    sim.clock.advance(10)
    await gw.wait_job(old, lambda j: j.state == SENT)
    await next_fax_id(sim, old_id)
    sim.drop_after_commit(1)
    new = await queue_job(gw, OTHER_NUMBER, OTHER_DST)
    await run_sender(gw)
    job = await gw.wait_job(new, lambda j: j.state == SUBMITTED, timeout=15)
    assert job.provider_id == old_id
    assert (await gw.job(old)).provider_id is None
    assert sim.count_requests("POST", "/extension/*/fax/out/") == 2  # one each: never resent
    events = [e.reason for e in await gw.store.run(gw.store.job_events, new)]
    assert any("found at the provider after a lost answer" in r for r in events), events
    assert not any(e == "provider has no record of the submission" for e in events)


async def test_id_of_an_unfinished_job_ends_that_job_unknown(gateway: Gateway, sim: ProviderSimulator) -> None:
    # The provider reuses the id of a fax it had accepted and we still follow:
    # that fax can no longer be followed. The old job ends "unknown" (reported
    # as such), the live job gets the id; nothing is sent again.
    gw = gateway  # the tracker is not started: the old job stays "submitted"
    old = await gw.submit(subject="First fax")
    old_id = (await gw.job(old)).provider_id
    await next_fax_id(sim, old_id)
    new = await queue_job(gw)
    await run_sender(gw)
    job = await gw.wait_job(new, lambda j: j.state == SUBMITTED)
    old_job = await gw.job(old)
    assert job.provider_id == old_id
    assert old_job.state == UNKNOWN and old_job.provider_id is None and old_job.finished_at is not None
    assert "id reused" in old_job.reason
    assert sim.count_requests("POST", "/extension/*/fax/out/") == 2
    assert (await gw.job(new)).state != QUEUED
