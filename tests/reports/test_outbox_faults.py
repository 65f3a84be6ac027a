"""The relay misbehaves: 451 for a while (across daemon restarts), 550 for a
recipient or for everything, 4xx for one recipient of several. Real SMTP to
the MailSink; the outbox's backoff is skipped by moving the runtime clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from support.reports import ADMIN, NUMBER, SENDER, Gateway, OffsetClock, wait_for

from gatewayd.mail.compose import new_message, to_bytes
from gatewayd.mailsink import MailSink
from gatewayd.provider.simulator import ProviderSimulator
from gatewayd.store import ReceivedFax

HOUR = 3600.0


def report_rows(gw: Gateway):
    return gw.store.list_mail(kind="report")


async def test_451_then_recovery_across_restarts_delivers_exactly_once(
    make_gateway: Callable[..., Gateway], sim: ProviderSimulator, sink: MailSink, clock: OffsetClock
) -> None:
    sink.fail_data_with = "451 4.3.0 try later"
    first = make_gateway().start()
    job_id = await first.submit()
    sim.clock.advance(5)  # sent
    await first.wait_job(job_id, lambda j: j.reported_at is not None)
    await wait_for(lambda: sink.attempts >= 1, what="first delivery attempt")
    await wait_for(lambda: report_rows(first)[0].attempts == 1, what="deferral recorded")
    (row,) = report_rows(first)
    assert row.state == "pending" and "451" in row.last_error and row.next_attempt_at > clock() + 10
    await first.stop()

    second = make_gateway().start()  # restart; the relay still says 451
    clock.advance(HOUR)
    await wait_for(lambda: sink.attempts >= 2, what="second attempt after the restart")
    await wait_for(lambda: report_rows(second)[0].attempts == 2, what="second deferral recorded")
    await second.stop()
    assert sink.messages == []

    sink.fail_data_with = None  # the relay recovers; a third daemon run delivers
    third = make_gateway().start()
    await asyncio.sleep(0.2)
    assert sink.messages == []  # not before its backoff is over
    clock.advance(HOUR)
    (mail,) = await sink.wait_for(1)
    assert mail.rcpt_tos == (SENDER,)
    assert mail.message["Subject"] == f"Fax to {NUMBER} sent: Quarterly report"
    await asyncio.sleep(0.4)
    assert len(sink.messages) == 1
    (row,) = report_rows(third)  # the report was never queued twice
    assert (row.state, row.attempts) == ("sent", 3)
    assert sink.attempts == 3


async def test_550_for_the_sender_notifies_the_admin_once(gateway: Gateway, sim: ProviderSimulator, sink: MailSink, clock: OffsetClock) -> None:
    sink.refuse_rcpt = {SENDER: "550 5.1.1 no such user"}
    gw = gateway.start()
    job_id = await gw.submit()
    sim.clock.advance(5)
    (notice,) = await sink.wait_for(1)
    assert notice.rcpt_tos == (ADMIN,)
    msg = notice.message
    assert msg["Subject"] == f"Fax gateway: email to {SENDER} refused"
    assert msg["Auto-Submitted"] == "auto-generated"
    text = msg.get_body(preferencelist=("plain",)).get_content()
    assert "550 5.1.1 no such user" in text and f"job:{job_id}" in text
    clock.advance(10 * HOUR)  # any retry would be due by now
    await asyncio.sleep(0.5)
    (row,) = report_rows(gw)
    assert (row.state, row.attempts) == ("failed", 1)  # refused for good: not retried
    assert len(sink.messages) == 1


async def test_550_for_everything_stops_after_one_attempt_each(gateway: Gateway, sim: ProviderSimulator, sink: MailSink, clock: OffsetClock) -> None:
    sink.fail_data_with = "550 5.7.1 message refused"
    gw = gateway.start()
    job_id = await gw.submit()
    sim.clock.advance(5)
    await gw.wait_job(job_id, lambda j: j.reported_at is not None)
    await wait_for(lambda: sink.attempts >= 2, what="report and admin notice attempted")
    clock.advance(10 * HOUR)
    await asyncio.sleep(0.5)
    rows = gw.store.list_mail()
    # the report fails; the admin notice about it fails too and is not reported again
    assert [(r.kind, r.state, r.attempts) for r in rows] == [("report", "failed", 1), ("admin", "failed", 1)]
    assert sink.attempts == 2 and sink.messages == []


async def test_one_deferred_recipient_waits_for_its_backoff(make_gateway: Callable[..., Gateway], sim: ProviderSimulator, sink: MailSink, clock: OffsetClock) -> None:
    ops = "ops@example.test"
    sink.refuse_rcpt = {ops: "450 4.2.1 mailbox busy"}
    gw = make_gateway(admin=(ADMIN, ops)).start()
    sim.set_outcome("78123092631", ["error"])
    job_id = await gw.submit()
    sim.clock.advance(5)
    await gw.wait_job(job_id, lambda j: j.reported_at is not None)
    await sink.wait_for(2)  # the sender, and the admin copy for ADMIN
    await asyncio.sleep(0.5)
    rows = gw.store.list_mail()
    assert len(rows) == 3  # report, admin copy, and one row for the deferred recipient: no tight loop
    deferred = rows[2]
    assert deferred.recipients == (ops,) and deferred.state == "pending" and deferred.attempts == 1
    assert deferred.next_attempt_at > clock() + 10
    assert len(sink.messages) == 2
    sink.refuse_rcpt = {}
    clock.advance(HOUR)
    mails = await sink.wait_for(3)
    assert mails[2].rcpt_tos == (ops,)
    assert mails[2].message["Subject"] == mails[1].message["Subject"]


async def test_a_mail_nobody_accepted_stays_pending(gateway: Gateway, sink: MailSink, clock: OffsetClock) -> None:
    """All recipients deferred: the row is not marked sent, so a received fax
    riding on it is not counted as relayed (SPEC section 7)."""
    a, b = "a@example.test", "b@example.test"
    sink.refuse_rcpt = {a: "450 4.2.1 busy", b: "451 4.3.0 later"}
    gw = gateway.start("outbox")
    msg = new_message(mail_from="Fax Gateway <fax-gateway@gw.test>", to=[a, b], subject="Fax from 1 to 2")
    msg.set_content("a fax\n")
    fax = ReceivedFax(uuid="u-1", extension_id=122, caller_id="1", destination="2", fax_time="", file_size=1, first_seen=clock(),
                      state="queued", recipients=(a, b), outbox_id=None, relayed_at=None, note="")
    outbox_id = await gw.store.run(gw.store.queue_received, fax, "fax-gateway@gw.test", to_bytes(msg))
    gw.rt.wake("outbox")
    await wait_for(lambda: gw.store.get_mail(outbox_id).attempts == 1, what="first attempt")
    row = gw.store.get_mail(outbox_id)
    assert row.state == "pending" and row.recipients == (a, b)
    assert gw.store.get_received("u-1").state == "queued"
    # one recipient now refused for good, the other still busy: the row keeps the busy one only
    sink.refuse_rcpt = {a: "550 5.1.1 gone", b: "451 4.3.0 later"}
    clock.advance(HOUR)
    gw.rt.wake("outbox")
    await wait_for(lambda: gw.store.get_mail(outbox_id).attempts == 2, what="second attempt")
    row = gw.store.get_mail(outbox_id)
    assert row.state == "pending" and row.recipients == (b,)
    assert gw.store.get_received("u-1").state == "queued"
    sink.refuse_rcpt = {}
    clock.advance(HOUR)
    gw.rt.wake("outbox")
    await wait_for(lambda: gw.store.get_received("u-1").state == "relayed", what="relayed")
    delivered = [m for m in sink.messages if m.rcpt_tos == (b,)]
    assert len(delivered) == 1
    notices = [m for m in sink.messages if m.rcpt_tos == (ADMIN,)]
    assert len(notices) == 1 and a in notices[0].message["Subject"]


async def test_a_node_whose_outbox_lease_ran_out_mid_transaction_sends_no_data(
    gateway: Gateway, sim: ProviderSimulator, sink: MailSink, clock: OffsetClock
) -> None:
    """Several nodes (docs/deployment.md, Several nodes): the fence is asked right before DATA. A node
    thawed after a freeze longer than its lease hands the relay nothing (the node now holding the
    outbox sends it), records no attempt, and delivers once its fence is good again."""
    fence_open = False
    asked = 0

    def fence(name: str) -> bool:
        nonlocal asked
        asked += 1
        # Open for the worker's look before the mail, closed at DATA: the freeze fell mid-transaction.
        return name == "outbox" and (fence_open or asked % 2 == 1)

    gateway.rt.lease_fence = fence
    gateway.start()
    job_id = await gateway.submit()
    sim.clock.advance(5)  # sent
    await gateway.wait_job(job_id, lambda j: j.reported_at is not None)
    await wait_for(lambda: asked >= 2, what="the fence asked before DATA")
    await asyncio.sleep(0.3)
    assert sink.messages == []
    (row,) = report_rows(gateway)
    assert (row.state, row.attempts) == ("pending", 0)
    fence_open = True
    (mail,) = await sink.wait_for(1)
    assert mail.rcpt_tos == (SENDER,)
    await wait_for(lambda: report_rows(gateway)[0].state == "sent", what="marked sent")
    assert len(sink.messages) == 1
