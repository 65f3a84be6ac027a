"""Faults on the way out: a relay saying 451, files that cannot be converted."""

from __future__ import annotations

import pytest
from support.inbound import attachments, body_text, by_uuid


async def test_relay_451_then_recovery_delivers_each_fax_exactly_once(sim, sink, make_harness, faxes):
    sim.extensions[122].fax_mailto = "alice@x.test,bob@y.test"
    uuids = [sim.inject_received(122, faxes[n].data) for n in ("g3", "g4", "pdf")]
    h = await make_harness()
    sink.fail_data_with = "451 4.3.0 try later"
    await h.cycle()
    for _ in range(3):  # several deferred rounds, each after its backoff
        h.clock.advance(4000)
        await h.cycle()
    assert sink.messages == [] and sink.attempts >= 12
    ledger = h.ledger()
    assert all(ledger[u].state == "queued" for u in uuids)  # never "relayed" on a 451
    assert all(m.last_error.startswith("451") for m in h.store.list_mail(kind="received"))

    sink.fail_data_with = None
    h.clock.advance(4000)
    await h.cycle()
    h.clock.advance(4000)
    await h.cycle()
    mails = by_uuid(sink.messages)
    assert sorted(mails) == sorted(uuids)
    assert all(len(mails[u]) == 1 and sorted(mails[u][0].rcpt_tos) == ["alice@x.test", "bob@y.test"] for u in uuids)
    assert all(r.state == "relayed" for r in h.ledger().values())


async def test_relay_refusing_one_recipient_for_a_while(sim, sink, make_harness, faxes):
    sim.extensions[122].fax_mailto = "alice@x.test,bob@y.test"
    uuid = sim.inject_received(122, faxes["pdf"].data)
    h = await make_harness()
    sink.refuse_rcpt["bob@y.test"] = "451 4.2.1 mailbox busy"
    await h.cycle()
    assert [m.rcpt_tos for m in sink.messages] == [("alice@x.test",)]
    del sink.refuse_rcpt["bob@y.test"]
    h.clock.advance(4000)
    await h.cycle()
    h.clock.advance(4000)
    await h.cycle()
    assert sorted(r for m in by_uuid(sink.messages)[uuid] for r in m.rcpt_tos) == ["alice@x.test", "bob@y.test"]


@pytest.mark.parametrize(
    ("label", "make", "ext"),
    [
        ("garbage", lambda f: b"this is not a fax at all\n" * 10, "bin"),
        ("truncated-tiff", lambda f: f["g3"].data[: len(f["g3"].data) // 3], "tif"),
        ("broken-pdf", lambda f: b"%PDF-1.4\n" + b"\x00garbage" * 50, "pdf"),
    ],
)
async def test_unconvertible_file_goes_out_as_original_and_admin_is_told(sim, sink, make_harness, faxes, label, make, ext):
    sim.extensions[122].fax_mailto = "alice@x.test"
    data = make(faxes)
    uuid = sim.inject_received(122, data, caller_id="74951234567")
    h = await make_harness()
    await h.cycle()
    mails = by_uuid(sink.messages)
    to_alice = [m for m in mails[uuid] if m.rcpt_tos == ("alice@x.test",)]
    to_admin = [m for m in mails[uuid] if m.rcpt_tos == ("admin@gw.test",)]
    assert len(to_alice) == 1 and len(to_admin) == 1 and len(sink.messages) == 2
    msg = to_alice[0].message
    [(filename, ctype, got)] = attachments(msg)
    assert ctype == "application/octet-stream"
    assert got == data  # byte for byte as the provider delivered it
    assert filename.endswith(f"-74951234567.{ext}") and filename.startswith("fax-")
    assert "could not be converted" in body_text(msg)
    notice = to_admin[0].message
    assert "could not be converted" in notice["Subject"]
    assert uuid in body_text(notice) and "alice@x.test" in body_text(notice)
    assert attachments(notice) == []  # the fax itself goes only to its recipients
    row = h.ledger()[uuid]
    assert row.state == "relayed" and "original" in row.note
    assert [m.kind for m in h.store.list_mail()] == ["received", "admin"]
    # The next polls add nothing (not a second notice either).
    await h.cycle()
    assert len(sink.messages) == 2


async def test_empty_file_without_admin_still_reaches_the_recipients(sim, sink, make_harness):
    sim.extensions[122].fax_mailto = "alice@x.test"
    uuid = sim.inject_received(122, b"")
    h = await make_harness(mail={"admin": []})
    await h.cycle()
    [mail] = by_uuid(sink.messages)[uuid]
    assert "empty file" in body_text(mail.message)
    assert "administrator" not in body_text(mail.message)


async def test_a_fax_that_crashes_the_poller_does_not_block_the_others(sim, sink, make_harness, faxes, monkeypatch):
    import gatewayd.fax_to_email.poller as poller

    sim.extensions[122].fax_mailto = "alice@x.test"
    poison = sim.inject_received(122, faxes["g3"].data)
    fine = sim.inject_received(122, faxes["pdf"].data)
    real = poller.prepare_fax

    def crashing(data, **kw):
        if data == faxes["g3"].data:
            raise RuntimeError("a bug")
        return real(data, **kw)

    monkeypatch.setattr(poller, "prepare_fax", crashing)
    h = await make_harness()
    await h.cycle()
    assert list(by_uuid(sink.messages)) == [fine]
    assert poison not in h.ledger()
    monkeypatch.setattr(poller, "prepare_fax", real)  # "fixed": the next poll takes it
    await h.cycle()
    assert sorted(by_uuid(sink.messages)) == sorted([fine, poison])
