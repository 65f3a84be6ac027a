"""The tracker: the provider status mapping, its economy (requests per poll
interval, counted in the simulator's request log), backoff and 429s."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from typing import Any

import pytest
from support.reports import Gateway, wait_for

from gatewayd.email_to_fax.tracker import NO_LONGER_KNOWN, Tracker, plan_change
from gatewayd.leadership import Leased
from gatewayd.provider.simulator import ProviderSimulator, SimSentFax
from gatewayd.store import AT_PROVIDER, Job

FAX_OUT = "/extension/*/fax/out/"
FAX_ONE = "/extension/*/fax/out/[0-9]*"


def job(**kw: Any) -> Job:
    base = dict(id=1, created_at=0.0, updated_at=0.0, state="submitted", reason="", number="+1", dst_num="1", extension=122,
                report_to="", source="smtp", message_id="", subject="", document="x", pages=1, doc_bytes=1, provider_id=7,
                provider_status="ready_to_send", submitted_at=0.0, finished_at=None, attempts=1, auto_retries_used=0,
                next_attempt_at=None, rule_key="", note="")
    base.update(kw)
    return Job(**base)


@pytest.mark.parametrize(
    ("state", "used", "status", "to", "words"),
    [
        ("submitted", 0, "sending", "sending", "the provider is sending the fax (attempt 1)"),
        ("submitted", 0, "sent", "sent", "the provider reports the fax as sent, after 1 attempt"),
        ("sending", 0, "sent", "sent", "the provider reports the fax as sent, after 1 attempt"),
        ("sending", 0, "canceled", "canceled", "canceled at the provider"),
        ("sending", 0, "error", "error", "the provider reports an error sending the fax (attempt 1)"),
        ("sending", 0, "failed", "failed", "the provider could not deliver the fax (attempt 1); automatic retry 1 of 2 in 5 min"),
        ("sending", 1, "failed", "failed", "the provider could not deliver the fax (attempt 1); automatic retry 2 of 2 in 5 min"),
        ("sending", 2, "failed", "failed", "the provider could not deliver the fax after 1 attempt; no automatic retries left"),
        ("sending", 0, "ready_to_send", "submitted", "the provider queued the fax again"),
    ],
)
def test_plan_change(state: str, used: int, status: str, to: str, words: str) -> None:
    change = plan_change(job(state=state, auto_retries_used=used), status, auto_retries=2, retry_delay=300, now=1000.0)
    assert change is not None and change.to_state == to and change.reason == words
    if to == "failed" and used < 2:
        assert change.fields["next_attempt_at"] == 1300.0 and "finished_at" not in change.fields
    if to == "failed" and used == 2:
        assert change.fields["finished_at"] == 1000.0


def test_plan_change_without_a_change() -> None:
    assert plan_change(job(), "ready_to_send", auto_retries=2, retry_delay=1, now=0) is None
    assert plan_change(job(state="sending", provider_status="sending"), "sending", auto_retries=2, retry_delay=1, now=0) is None
    assert plan_change(job(state="failed", provider_status="failed"), "failed", auto_retries=2, retry_delay=1, now=0) is None
    # only the provider's word changes: no history entry
    change = plan_change(job(provider_status=""), "ready_to_send", auto_retries=2, retry_delay=1, now=0)
    assert change is not None and not change.is_transition and change.fields == {"provider_status": "ready_to_send"}
    change = plan_change(job(), "on_hold", auto_retries=2, retry_delay=1, now=0)
    assert change is not None and not change.is_transition and change.to_state == "submitted"


def test_plan_change_counts_a_retry_it_did_not_see() -> None:
    """Failed, waiting for its retry, yet the provider has it queued again
    (our retry whose bookkeeping a crash lost): the attempt is counted."""
    change = plan_change(job(state="failed", provider_status="failed", attempts=1, auto_retries_used=0), "sent",
                         auto_retries=2, retry_delay=1, now=0)
    assert change is not None and change.to_state == "sent"
    assert change.fields["attempts"] == 2 and change.fields["auto_retries_used"] == 1
    assert change.reason == "the provider reports the fax as sent, after 2 attempts"


def test_plan_change_no_retries_configured() -> None:
    change = plan_change(job(state="sending"), "failed", auto_retries=0, retry_delay=1, now=5)
    assert change is not None and change.reason.endswith("no automatic retries are configured")
    assert change.fields["finished_at"] == 5


async def submit_many(gw: Gateway, per_extension: dict[int, int]) -> list[int]:
    ids = []
    for ext, n in per_extension.items():
        for i in range(n):
            ids.append(await gw.submit(f"+7812309{ext}{i:02d}", dst=f"7812309{ext}{i:02d}", extension=ext, pages=1,
                                       message_id=f"<m{ext}-{i}@example.test>"))
    return ids


async def test_fifty_jobs_cost_one_list_per_extension(gateway: Gateway, sim: ProviderSimulator) -> None:
    gw = gateway
    ids = await submit_many(gw, {122: 25, 123: 25})
    jobs = await gw.store.run(gw.store.jobs_in_states, AT_PROVIDER)
    assert len(jobs) == 50
    sim.request_log.clear()

    stats = await gw.tracker.poll(jobs)
    assert (stats.lists, stats.gets) == (2, 0)
    assert len(sim.request_log) == 2  # bound: extensions with jobs (2) + jobs missing from the list (0)
    assert sim.count_requests("GET", FAX_OUT) == 2

    # Two faxes the provider forgot: one GET each (404), then "unknown".
    forgotten = [await gw.job(ids[0]), await gw.job(ids[30])]
    for j in forgotten:
        del sim.sent[j.provider_id]
    sim.request_log.clear()
    stats = await gw.tracker.poll(jobs)
    assert (stats.lists, stats.gets) == (2, 2)
    assert len(sim.request_log) == 2 + 2
    assert sim.count_requests("GET", FAX_ONE) == 2
    for j in forgotten:
        after = await gw.job(j.id)
        assert (after.state, after.reason) == ("unknown", NO_LONGER_KNOWN) and after.finished_at is not None

    # Everything moves at once: still one list per extension.
    sim.clock.advance(1.5)
    sim.request_log.clear()
    jobs = await gw.store.run(gw.store.jobs_in_states, AT_PROVIDER)
    stats = await gw.tracker.poll(jobs)
    assert (stats.lists, stats.gets, stats.changes) == (2, 0, 48)
    assert len(sim.request_log) == 2


async def test_polls_are_spaced_and_back_off_when_nothing_changes(gateway: Gateway, sim: ProviderSimulator) -> None:
    gw = gateway
    gw.set_config(status_poll_interval=0.1)
    await submit_many(gw, {122: 25, 123: 25})
    polls: list[tuple[float, int]] = []  # (monotonic time, requests made by the poll)
    real_poll = gw.tracker.poll

    async def counting_poll(jobs):  # type: ignore[no-untyped-def]
        before = len(sim.request_log)
        stats = await real_poll(jobs)
        polls.append((time.monotonic(), len(sim.request_log) - before))
        return stats

    gw.tracker.poll = counting_poll  # type: ignore[method-assign]
    gw.start("tracker")
    await asyncio.sleep(1.6)
    assert all(n == 2 for _, n in polls), polls  # 2 extensions with jobs, none missing
    gaps = [b - a for (a, _), (b, _) in zip(polls, polls[1:])]
    assert all(g >= 0.095 for g in gaps), gaps  # never closer than status_poll_interval
    # nothing changes: 0.1, 0.2, 0.4, 0.4 ... instead of every 0.1 s
    assert len(polls) <= 6, gaps
    assert gaps[-1] >= 0.35, gaps

    assert gw.rt.health.polls.get("tracker") is not None


async def test_poll_schedule(gateway: Gateway, sim: ProviderSimulator) -> None:
    """The exact pace, on a fake monotonic clock (interval 10 s): while nothing
    changes polls come 20 s, then 40 s apart; a change or a new job brings
    them back to every 10 s. The store is looked at every 10 s regardless."""
    gw = gateway
    gw.set_config(status_poll_interval=10.0)
    now = [100.0]
    tracker = Tracker(gw.rt, monotonic=lambda: now[0])
    await submit_many(gw, {122: 2})
    sim.request_log.clear()

    async def turns(n: int) -> list[int]:
        """Provider requests made by each of n turns of the loop."""
        made = []
        for _ in range(n):
            before = len(sim.request_log)
            wait = await tracker.step()
            assert 0 < wait <= 10.0
            made.append(len(sim.request_log) - before)
            now[0] += wait
        return made

    # t = 0 .. 70: polls at 0, 20 and 60 (one list request each)
    assert await turns(8) == [1, 0, 1, 0, 0, 0, 1, 0]
    sim.clock.advance(1.5)  # both faxes go to "sending"
    now[0] += 40  # t = 120: due
    assert await turns(3) == [1, 1, 0]  # the change resets the pace: 120, 130, then 150
    assert await turns(6) == [1, 0, 0, 0, 1, 0]  # 150, 190: slowing down again
    await submit_many(gw, {123: 1})  # t = 210: a new job; without it the next poll is at 230
    assert await turns(1) == [2]  # polled at once: one list for each extension


async def test_long_provider_history_uses_one_get_per_job(gateway: Gateway, sim: ProviderSimulator) -> None:
    """The provider's list has no filter: 250 old faxes are 3 pages. With one
    job in flight a GET is cheaper, and the tracker learns that."""
    gw = gateway
    now = sim._now_dt()
    for i in range(250):
        sim.sent[10_000 + i] = SimSentFax(id=10_000 + i, extension_id=123, dst_num="100", filename="old.pdf", document=b"",
                                          sha256=hashlib.sha256(b"").hexdigest(), kind="pdf", pages=1, created=now, status="sent")
    (job_id,) = await submit_many(gw, {123: 1})
    jobs = await gw.store.run(gw.store.jobs_in_states, AT_PROVIDER)
    sim.request_log.clear()
    await gw.tracker.poll(jobs)
    assert sim.count_requests("GET", FAX_OUT) == 3  # the first poll learns the list's length
    sim.request_log.clear()
    for _ in range(3):
        await gw.tracker.poll(jobs)
    assert [r.path for r in sim.request_log] == [f"/extension/123/fax/out/{(await gw.job(job_id)).provider_id}"] * 3


class CountingProvider:
    """The real client, counting the tracker's calls (even those the client
    would refuse locally during a rate-limit block)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[float, str]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        async def call(*args: Any, **kw: Any) -> Any:
            self.calls.append((time.monotonic(), name))
            return await attr(*args, **kw)

        return call


async def test_429_stops_polling_until_the_reset(gateway: Gateway, sim: ProviderSimulator) -> None:
    gw = gateway
    await submit_many(gw, {122: 2})
    counting = CountingProvider(gw.provider)
    gw.rt.provider = counting
    sim.rate_limit_next(reset=2.5, n=1, path="/extension/122/fax/out/")
    limited_at = time.monotonic()
    gw.start("tracker")
    await wait_for(lambda: gw.rt.metrics.rate_limit_waits.labels("provider")._value.get() == 1, what="the 429")
    await wait_for(lambda: any(r.status == 200 for r in sim.request_log if r.method == "GET" and r.path.endswith("/fax/out/")), timeout=6,
                   what="polling to resume")
    first, second = counting.calls[0][0], counting.calls[1][0]
    assert first - limited_at < 1.0
    assert second - first >= 2.4, counting.calls  # no call at all until X-RateLimit-Reset passed
    statuses = [r.status for r in sim.request_log if r.method == "GET" and r.path.endswith("/fax/out/")]
    assert statuses[:2] == [429, 200], statuses
    assert gw.rt.metrics.rate_limit_waits.labels("provider")._value.get() == 1


async def test_provider_outage_is_survived(gateway: Gateway, sim: ProviderSimulator) -> None:
    gw = gateway
    (job_id,) = await submit_many(gw, {122: 1})
    sim.fail_next(20, path="/extension/122/fax/out/", status=503)
    gw.start("tracker")
    await wait_for(lambda: sim.count_requests("GET", FAX_OUT) >= 8, what="failing polls")
    sim.clear_faults()
    sim.clock.advance(5)
    assert (await gw.wait_job(job_id, lambda j: j.state == "sent")).finished_at is not None


async def test_the_daemon_and_the_cli_do_not_undo_each_other(gateway: Gateway, sim: ProviderSimulator) -> None:
    from gatewayd.commands.control import cancel_job
    from gatewayd.provider.client import ProviderClient

    gw = gateway
    (job_id,) = await submit_many(gw, {122: 1})
    stale = await gw.job(job_id)  # what the tracker read before its poll
    await cancel_job(gw.store, job_id, lambda: ProviderClient.from_config(gw.config.provider))
    assert await gw.tracker._apply(stale, "sending") is False  # its observation is out of date
    after = await gw.job(job_id)
    assert after.state == "canceled"
    events = await gw.store.run(gw.store.job_events, job_id)
    assert [e.to_state for e in events] == ["queued", "submitted", "canceled"]


async def test_wired_into_the_daemon(gateway: Gateway) -> None:
    from gatewayd.daemon import build_services

    rt = gateway.rt
    rt.config = dataclasses.replace(rt.config, inbound=dataclasses.replace(rt.config.inbound, enabled=True))
    names = [s.name for s in build_services(rt)]
    for name in ("tracker", "reports", "outbox"):
        assert names.count(name) == 1, names
    tracker = next(s for s in build_services(rt) if s.name == "tracker")
    assert isinstance(tracker, Leased) and isinstance(tracker.service, Tracker)  # one node at a time (gatewayd/leadership.py)


async def test_a_failed_job_waiting_for_its_retry_costs_no_requests(gateway: Gateway, sim: ProviderSimulator) -> None:
    gw = gateway
    gw.set_config(retry_delay=0.8)
    sim.set_outcome("78123092631", ["failed", "sent"])
    job_id = await gw.submit()
    gw.start("tracker")
    sim.clock.advance(5)
    await gw.wait_job(job_id, lambda j: j.state == "failed" and j.next_attempt_at is not None)
    sim.request_log.clear()
    await asyncio.sleep(0.5)
    assert sim.request_log == []  # nothing to learn until the retry is due
    job = await gw.wait_job(job_id, lambda j: j.state == "submitted" and j.attempts == 2)
    assert sim.count_requests("PUT", "/extension/122/fax/out/*") == 1
    assert job.auto_retries_used == 1
