"""The provider misbehaving while the whole daemon runs (sender, tracker,
reports, outbox and the SMTP listener on one Runtime, short timings):
an outage (5xx, then the simulator stopped and restarted on the same port),
lost POST answers, and 429 storms. Every accepted job reaches the provider
exactly once and ends ``sent`` with exactly one report. On both backends
(issue 17)."""

from __future__ import annotations

import asyncio

import pytest
from support.backends import Backend
from support.reliability import (
    DOMAIN,
    NUMBERS,
    assert_exactly_once,
    config_data,
    in_process,
    job_ids,
    load,
    message,
    pdf_bytes,
    smtp_send,
    wait_until,
)

from gatewayd.mailsink import MailSink
from gatewayd.provider.simulator import run_simulator


async def send_many(port: int, n: int, tag: str) -> list[int]:
    ids: list[int] = []
    for i in range(n):
        reply = await smtp_send(port, message(pdf_bytes(1 + i % 2, seed=i), subject=f"{tag} {i}"), rcpt=[f"{NUMBERS[i % len(NUMBERS)]}@{DOMAIN}"])
        assert reply.startswith("250 2.0.0 queued as "), reply
        ids += job_ids(reply)
    return ids


def states(h) -> dict[int, str]:  # type: ignore[no-untyped-def]
    return {j.id: j.state for j in h.store.list_jobs(limit=10_000)}


def reports_by_subject(sink: MailSink) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in sink.messages:
        subject = str(m.message["Subject"])
        out[subject] = out.get(subject, 0) + 1
    return out


@pytest.mark.timeout(90)
async def test_provider_outage_5xx_then_down_then_back_on_the_same_port(backend: Backend) -> None:
    async with MailSink() as sink, run_simulator(send_delays=(0.1, 0.1)) as sim:
        port = sim._port
        config = load(config_data(backend.state_dir, sim=sim, smtp_port=2525, relay=sink.relay, **backend.config_overrides()))
        async with in_process(config) as h:
            sim.add_fault("*", count=None, status=503)  # every call fails
            ids = await send_many(h.port, 4, "during 5xx")
            await asyncio.sleep(1.0)
            assert not sim.sent
            await sim.stop()  # now nothing listens at all
            ids += await send_many(h.port, 4, "while down")
            await asyncio.sleep(1.5)
            assert set(states(h).values()) <= {"queued", "submitting"}, states(h)
            sim.clear_faults()
            await sim.start("127.0.0.1", port)
            h.wake_all()
            await wait_until(lambda: all(s == "sent" for s in states(h).values()), 40, "every job sent after the outage")
            await wait_until(lambda: len(sink.messages) >= len(ids), 20, "one report per job")
            await asyncio.sleep(0.5)
        assert_exactly_once(sim, ids, ids)
        assert [j[0] for j in backend.stored_jobs()] == sorted(ids)
        assert backend.integrity() == "ok"
        assert len(sink.messages) == len(ids)
        assert all(n == 1 for n in reports_by_subject(sink).values()), reports_by_subject(sink)


@pytest.mark.timeout(60)
async def test_lost_post_answers_are_reconciled_not_resent(backend: Backend) -> None:
    async with MailSink() as sink, run_simulator(send_delays=(0.2, 0.2)) as sim:
        config = load(config_data(backend.state_dir, sim=sim, smtp_port=2525, relay=sink.relay, **backend.config_overrides()))
        sim.drop_after_commit(n=5)  # the first five POSTs create the fax, then lose the answer
        async with in_process(config) as h:
            ids = await send_many(h.port, 6, "lost answer")
            await wait_until(lambda: all(s == "sent" for s in states(h).values()), 40, "every job sent")
            await wait_until(lambda: len(sink.messages) >= len(ids), 20, "one report per job")
            events = {i: [e.reason for e in h.store.job_events(i)] for i in ids}
        assert_exactly_once(sim, ids, ids)
        assert [j[0] for j in backend.stored_jobs()] == sorted(ids)
        assert sim.count_requests("POST", "/extension/*/fax/out/") == len(ids)  # never posted twice
        adopted = [i for i, reasons in events.items() if any("found at the provider after a lost answer" in r for r in reasons)]
        assert len(adopted) == 5, events
        assert len(sink.messages) == len(ids)


@pytest.mark.timeout(60)
async def test_429_storm_everything_waits_then_goes_exactly_once(backend: Backend) -> None:
    async with MailSink() as sink, run_simulator(send_delays=(0.1, 0.1)) as sim:
        config = load(config_data(backend.state_dir, sim=sim, smtp_port=2525, relay=sink.relay, **backend.config_overrides()))
        async with in_process(config) as h:
            ids = await send_many(h.port, 2, "before the storm")
            await wait_until(lambda: len(sim.sent) == 2, 20, "first faxes submitted")
            # Every API call answers 429 (reset in 1 s) for the next 12 requests, whatever they are.
            storm = sim.rate_limit_next(reset=1.0, n=12)
            before = len(sim.request_log)
            started = asyncio.get_running_loop().time()
            ids += await send_many(h.port, 4, "in the storm")
            await wait_until(lambda: storm.count == 0, 40, "the storm to be used up")
            storm_seconds = asyncio.get_running_loop().time() - started
            during = len(sim.request_log) - before
            await wait_until(lambda: all(s == "sent" for s in states(h).values()), 30, "every job sent after the storm")
            await wait_until(lambda: len(sink.messages) >= len(ids), 20, "one report per job")
        assert_exactly_once(sim, ids, ids)
        assert [j[0] for j in backend.stored_jobs()] == sorted(ids)
        # Backing off, not hammering: 12 refusals take several reset periods.
        assert storm_seconds >= 3.0, f"12 rate-limited answers in {storm_seconds:.1f} s: the daemon does not wait for the reset"
        assert during >= 12
        assert len(sink.messages) == len(ids)
