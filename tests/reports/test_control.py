"""`gatewayd cancel` / `gatewayd retry`: what each state allows, refusals
with their reasons, and compare-and-set against the daemon."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

import pytest
from support.reports import Gateway, finished_job

from gatewayd.commands.common import CommandError
from gatewayd.commands.control import cancel_job, retry_job
from gatewayd.provider.client import ProviderClient
from gatewayd.provider.simulator import ProviderSimulator
from gatewayd.store import NewJob


def provider_of(gw: Gateway):  # type: ignore[no-untyped-def]
    return lambda: ProviderClient.from_config(gw.config.provider)


def no_provider():  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def refuse() -> Any:
        raise AssertionError("the provider must not be asked")
        yield

    return refuse()


async def queued_job(gw: Gateway) -> int:
    store = gw.store
    sha = await store.run(store.save_document, b"%PDF-1.4\n%%EOF\n")
    new = NewJob(number="+78123092631", dst_num="78123092631", extension=122, report_to="a@example.test", source="cli")
    (job_id,) = await store.run(store.enqueue_jobs, sha, 1, 15, [new])
    return job_id


async def test_cancel_a_queued_job_locally(gateway: Gateway, sim: ProviderSimulator) -> None:
    job_id = await queued_job(gateway)
    line = await cancel_job(gateway.store, job_id, no_provider)
    assert line == f"job {job_id}: canceled (canceled from the command line before it was submitted; it had not reached the provider)"
    job = await gateway.job(job_id)
    assert job.state == "canceled" and job.finished_at is not None and job.reported_at is None  # the sender is told


async def test_a_job_being_submitted_cannot_be_canceled(gateway: Gateway) -> None:
    job_id = await queued_job(gateway)
    await gateway.store.run(gateway.store.transition, job_id, "submitting", "submitting to the provider")
    with pytest.raises(CommandError, match="cannot be canceled safely until the provider has answered") as info:
        await cancel_job(gateway.store, job_id, no_provider)
    assert info.value.exit_code == 1
    assert (await gateway.job(job_id)).state == "submitting"


async def test_a_fax_being_sent_cannot_be_canceled(gateway: Gateway, sim: ProviderSimulator) -> None:
    gw = gateway
    job_id = await gw.submit()
    await gw.store.run(gw.store.transition, job_id, "sending", "the provider is sending the fax", provider_status="sending")
    with pytest.raises(CommandError, match="being sent by the provider"):
        await cancel_job(gw.store, job_id, no_provider)


async def test_the_provider_refuses_when_our_view_is_stale(gateway: Gateway, sim: ProviderSimulator) -> None:
    gw = gateway
    job_id = await gw.submit()
    sim.clock.advance(1.5)  # the provider is sending it; the tracker has not seen that yet
    with pytest.raises(CommandError, match=r"the provider refused to cancel job \d+ \(fax \d+\): Cannot cancel a message with status sending"):
        await cancel_job(gw.store, job_id, provider_of(gw))
    assert (await gw.job(job_id)).state == "submitted"  # unchanged


async def test_cancel_a_failed_job_waiting_for_its_retry(gateway: Gateway, sim: ProviderSimulator) -> None:
    gw = gateway
    gw.set_config(retry_delay=3600)
    sim.set_outcome("78123092631", ["failed"])
    job_id = await gw.submit()
    gw.start("tracker")
    sim.clock.advance(5)
    await gw.wait_job(job_id, lambda j: j.state == "failed" and j.next_attempt_at is not None)
    line = await cancel_job(gw.store, job_id, provider_of(gw))
    assert line.startswith(f"job {job_id}: canceled")
    job = await gw.job(job_id)
    assert job.state == "canceled" and job.next_attempt_at is None and job.finished_at is not None
    assert sim.sent_faxes()[0].status == "canceled"


@pytest.mark.parametrize("state", ["sent", "error", "canceled", "rejected", "unknown"])
async def test_cancel_refused_for_finished_jobs(gateway: Gateway, state: str) -> None:
    job_id = await finished_job(gateway, state, reason=f"it ended {state}")
    with pytest.raises(CommandError, match=f"job {job_id} is already {state} \\(it ended {state}\\); there is nothing to cancel"):
        await cancel_job(gateway.store, job_id, no_provider)


@pytest.mark.parametrize(
    ("state", "words"),
    [
        ("queued", "only a failed job can be retried, and this one has not failed"),
        ("sent", "it was sent; there is nothing to retry"),
        ("error", "the provider allows retrying only a failed fax"),
        ("rejected", "it never reached the provider"),
    ],
)
async def test_retry_refused_unless_failed(gateway: Gateway, state: str, words: str) -> None:
    job_id = await (queued_job(gateway) if state == "queued" else finished_job(gateway, state))
    with pytest.raises(CommandError, match=words):
        await retry_job(gateway.store, job_id, no_provider)


async def test_retry_refused_by_the_provider(gateway: Gateway, sim: ProviderSimulator) -> None:
    """Our record says failed, the provider has it canceled already."""
    gw = gateway
    job_id = await gw.submit()
    fax = sim.sent_faxes()[0]
    fax.status = "canceled"
    await gw.store.run(gw.store.transition, job_id, "failed", "failed", provider_status="failed", next_attempt_at=gw.clock() + 3600)
    with pytest.raises(CommandError, match="the provider refused to retry"):
        await retry_job(gw.store, job_id, provider_of(gw))
    assert (await gw.job(job_id)).state == "failed"


async def test_unknown_job(gateway: Gateway) -> None:
    with pytest.raises(CommandError, match="no job 424242"):
        await cancel_job(gateway.store, 424242, no_provider)
    with pytest.raises(CommandError, match="no job 424242"):
        await retry_job(gateway.store, 424242, no_provider)


async def test_provider_unreachable(gateway: Gateway, sim: ProviderSimulator) -> None:
    gw = gateway
    job_id = await gw.submit()
    sim.fail_next(10, path="/extension/122/fax/out/*", status=503)
    client = lambda: ProviderClient.from_config(gw.config.provider, backoff_base=0.01)  # noqa: E731
    with pytest.raises(CommandError, match="the job was not changed here"):
        await cancel_job(gw.store, job_id, client)
    assert (await gw.job(job_id)).state == "submitted"
