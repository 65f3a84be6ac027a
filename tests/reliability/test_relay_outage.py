"""The mail relay down (every DATA answered 451) while reports and received
faxes pile up in the outbox, then back: each report and each received fax is
delivered exactly once, and a received fax is marked relayed only after the
relay accepted it. The outbox's backoff (30 s and up) is skipped by moving
the daemon's clock, not by sleeping. On both backends (issue 17)."""

from __future__ import annotations

import asyncio

import pytest
from support.backends import Backend
from support.reliability import DOMAIN, NUMBERS, config_data, in_process, job_ids, load, message, pdf_bytes, smtp_send, wait_until

from gatewayd.fax_to_email.poller import InboundPoller
from gatewayd.mailsink import MailSink
from gatewayd.provider.simulator import run_simulator


@pytest.mark.timeout(90)
async def test_relay_outage_then_recovery_reports_and_received_faxes_exactly_once(backend: Backend) -> None:
    async with MailSink() as sink, run_simulator(send_delays=(0.1, 0.1)) as sim:
        sim.extensions[122].fax_mailto = "alice@example.com,bob@example.com"
        data = config_data(backend.state_dir, sim=sim, smtp_port=2525, relay=sink.relay, **backend.config_overrides(),
                           inbound={"enabled": True, "extensions": [122], "poll_interval": "1s", "mailto_refresh": "1s"})
        sink.fail_data_with = "451 4.3.0 relay down for maintenance"
        async with in_process(load(data), extra=lambda rt: [InboundPoller(rt)]) as h:
            ids: list[int] = []
            for i in range(3):
                reply = await smtp_send(h.port, message(pdf_bytes(1, seed=i), subject=f"relay test {i}"), rcpt=[f"{NUMBERS[i]}@{DOMAIN}"])
                ids += job_ids(reply)
            assert len(ids) == 3
            uuids = [sim.inject_received(122, pdf_bytes(2, seed=100 + i), caller_id=f"7495000000{i}") for i in range(2)]
            store = h.store

            def pending() -> tuple[int, int]:
                mails = store.list_mail(limit=1000)
                return (sum(1 for m in mails if m.kind == "report"), sum(1 for m in mails if m.kind == "received"))

            await wait_until(lambda: pending() == (3, 2), 30, "3 reports and 2 received faxes in the outbox")
            # Several delivery rounds against the dead relay, each after its backoff.
            for _ in range(3):
                h.clock.advance(4000)
                h.rt.wake("outbox")
                await asyncio.sleep(0.6)
            assert sink.messages == []
            assert sink.attempts >= 10, sink.attempts
            assert all(r.state == "queued" for r in store.list_received(limit=100)), "relayed before the relay accepted it"
            assert all(m.state == "pending" and m.last_error.startswith("451") for m in store.list_mail(limit=100))

            sink.fail_data_with = None
            for _ in range(3):
                h.clock.advance(4000)
                h.rt.wake("outbox")
                h.rt.wake("inbound")
                await asyncio.sleep(0.6)
            await wait_until(lambda: len(sink.messages) >= 5, 20, "every email delivered after the outage")
            await asyncio.sleep(1.0)  # anything extra would show up now
            # The poller keeps polling: a relayed fax is never queued again.
            received = {r.uuid: r for r in store.list_received(limit=100)}

        reports = [m for m in sink.messages if m.message["X-Fax-UUID"] is None]
        faxes = [m for m in sink.messages if m.message["X-Fax-UUID"] is not None]
        assert len(reports) == 3, [str(m.message["Subject"]) for m in reports]
        assert sorted(str(m.message["Subject"]).split(":")[0] for m in reports) == sorted(
            f"Fax to {n} sent" for n in NUMBERS[:3]), [str(m.message["Subject"]) for m in reports]
        assert sorted(str(m.message["X-Fax-UUID"]) for m in faxes) == sorted(uuids)
        assert all(sorted(m.rcpt_tos) == ["alice@example.com", "bob@example.com"] for m in faxes)
        assert all(received[u].state == "relayed" for u in uuids)
        assert [j[0] for j in backend.stored_jobs()] == sorted(ids)
        assert backend.integrity() == "ok"
