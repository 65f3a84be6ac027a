"""Received faxes reach their recipients: conversion, recipients, the email."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

import pytest
from support.inbound import attachments, body_text, by_uuid, is_a4, pdf_info

from gatewayd.fax_to_email.poller import HWM_KEY

NAME_RE = re.compile(r"^fax-\d{8}-\d{6}-[A-Za-z0-9+_-]+\.(pdf|tif|bin)$")


async def test_tiff_and_pdf_faxes_reach_every_fax_mailto_address(sim, sink, make_harness, faxes):
    sim.extensions[122].fax_mailto = "alice@x.test,bob@y.test"
    when = datetime.now(sim.tz).replace(microsecond=0) - timedelta(minutes=3)
    uuids = {
        name: sim.inject_received(122, faxes[name].data, caller_id="74951234567", destination="78123092631", when=when)
        for name in ("g3", "g4", "bogus", "pdf")
    }
    h = await make_harness()
    await h.cycle()

    mails = by_uuid(sink.messages)
    assert set(mails) == set(uuids.values())
    for name, uuid in uuids.items():
        [mail] = mails[uuid]  # one email per fax, to every address
        assert sorted(mail.rcpt_tos) == ["alice@x.test", "bob@y.test"]
        msg = mail.message
        assert msg["Subject"] == "Fax from 74951234567 to 78123092631"
        assert msg["X-Fax-Caller-ID"] == "74951234567"
        assert msg["X-Fax-Destination"] == "78123092631"
        assert msg["X-Fax-Extension"] == "122"
        assert msg["Auto-Submitted"] == "auto-generated"
        assert msg["Message-ID"]
        assert parsedate_to_datetime(msg["Date"]) == when
        [(filename, ctype, data)] = attachments(msg)
        assert ctype == "application/pdf"
        assert filename == f"fax-{when:%Y%m%d-%H%M%S}-74951234567.pdf"
        pages, sizes = pdf_info(data)
        assert pages == faxes[name].pages, name
        assert all(is_a4(s) for s in sizes), (name, sizes)
        if name == "pdf":
            assert data == faxes["pdf"].data  # a PDF fax stays as it is
        text = body_text(msg)
        assert f"Pages:      {faxes[name].pages}" in text
        assert "Extension:  122" in text

    ledger = h.ledger()
    assert {u: ledger[u].state for u in uuids.values()} == {u: "relayed" for u in uuids.values()}
    assert all(ledger[u].recipients == ("alice@x.test", "bob@y.test") for u in uuids.values())
    assert h.rt.metrics.inbound_relayed._value.get() == 4
    assert "inbound" in h.rt.health.polls
    # Never deleted at the provider.
    assert sim.count_requests("DELETE") == 0
    assert all(u in sim.received for u in uuids.values())


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("pdf", [("pdf", "application/pdf")]),
        ("tiff", [("tif", "image/tiff")]),
        ("both", [("pdf", "application/pdf"), ("tif", "image/tiff")]),
        ("original", [("tif", "image/tiff")]),
    ],
)
async def test_attach_modes(sim, sink, make_harness, faxes, mode, expected):
    sim.extensions[122].fax_mailto = "alice@x.test"
    tiff_uuid = sim.inject_received(122, faxes["g4"].data, caller_id="1844*001")
    pdf_uuid = sim.inject_received(122, faxes["pdf"].data)
    h = await make_harness(inbound={"attach": mode})
    await h.cycle()
    mails = by_uuid(sink.messages)
    got = attachments(mails[tiff_uuid][0].message)
    assert [(f.rsplit(".", 1)[1], t) for f, t, _ in got] == expected
    for filename, ctype, data in got:
        assert NAME_RE.match(filename) and "-1844_001." in filename
        if ctype == "image/tiff":
            assert data == faxes["g4"].data  # the original, byte for byte
        else:
            assert pdf_info(data)[0] == faxes["g4"].pages
    # A PDF fax is attached as PDF whatever the mode.
    [(name, ctype, data)] = attachments(mails[pdf_uuid][0].message)
    assert ctype == "application/pdf" and data == faxes["pdf"].data


async def test_routes_override_fax_mailto_and_fallback_applies(sim, sink, make_harness, faxes):
    sim.extensions[122].fax_mailto = "alice@x.test"
    routed = sim.inject_received(122, faxes["pdf"].data, destination="+7 (812) 000-00-01")
    mailto = sim.inject_received(122, faxes["pdf"].data, destination="78120000002")
    fallback = sim.inject_received(123, faxes["pdf"].data, destination="78120000003")  # 123 has no fax_mailto
    h = await make_harness(inbound={
        "routes": {"78120000001": ["sales@z.test", "boss@z.test"]},
        "fallback_to": ["frontdesk@z.test"],
    })
    await h.cycle()
    mails = by_uuid(sink.messages)
    assert sorted(mails[routed][0].rcpt_tos) == ["boss@z.test", "sales@z.test"]
    assert mails[mailto][0].rcpt_tos == ("alice@x.test",)
    assert mails[fallback][0].rcpt_tos == ("frontdesk@z.test",)
    assert len(sink.messages) == 3


async def test_invalid_fax_mailto_addresses_are_dropped(sim, sink, make_harness, faxes):
    # The provider stores whatever its UI accepted; set it behind the API's back.
    sim.extensions[122].fax_mailto = "good@x.test, not an address ,@x.test,GOOD@x.test"
    uuid = sim.inject_received(122, faxes["pdf"].data)
    h = await make_harness()
    await h.cycle()
    [mail] = by_uuid(sink.messages)[uuid]
    assert mail.rcpt_tos == ("good@x.test",)


async def test_no_recipient_is_held_then_delivered_when_fax_mailto_is_set(sim, sink, make_harness, faxes):
    uuid = sim.inject_received(123, faxes["g3"].data)
    h = await make_harness()
    await h.cycle()
    assert sink.messages == []
    row = h.ledger()[uuid]
    assert row.state == "no_recipient" and "fax_mailto" in row.note
    assert h.rt.metrics.inbound_held._value.get() == 1
    # Held without downloading; polls go on and keep it.
    assert sim.count_requests("GET", f"/extension/123/fax/in/{uuid}") == 0
    await h.cycle()
    assert sink.messages == [] and h.ledger()[uuid].state == "no_recipient"

    sim.extensions[123].fax_mailto = "late@x.test"
    h.monotonic.advance(2)  # past mailto_refresh (1 s)
    await h.cycle()
    [mail] = by_uuid(sink.messages)[uuid]
    assert mail.rcpt_tos == ("late@x.test",)
    assert pdf_info(attachments(mail.message)[0][2])[0] == 3
    assert h.ledger()[uuid].state == "relayed"
    assert h.rt.metrics.inbound_held._value.get() == 0
    assert sim.count_requests("GET", f"/extension/123/fax/in/{uuid}") == 1
    await h.cycle()
    assert len(sink.messages) == 1


async def test_held_fax_is_delivered_after_a_reload_adds_a_fallback(sim, sink, make_harness, config_factory, faxes):
    uuid = sim.inject_received(123, faxes["pdf"].data)
    h = await make_harness()
    await h.cycle()
    assert h.ledger()[uuid].state == "no_recipient"
    h.reload(config_factory(inbound={"fallback_to": ["ops@x.test"]}))
    assert h.rt.wakeups["inbound"].is_set()  # the reload hook wakes the poller
    await h.cycle()
    [mail] = by_uuid(sink.messages)[uuid]
    assert mail.rcpt_tos == ("ops@x.test",)


async def test_polls_and_restarts_never_duplicate(sim, sink, make_harness, faxes):
    sim.extensions[122].fax_mailto = "alice@x.test"
    first = sim.inject_received(122, faxes["g4"].data)
    h = await make_harness()
    await h.cycle()
    await h.cycle()
    await h.close()
    # A new process on the same state: the overlap lists the fax again.
    h2 = await make_harness()
    second = sim.inject_received(122, faxes["pdf"].data)
    await h2.cycle()
    await h2.cycle()
    assert sorted(by_uuid(sink.messages)) == sorted([first, second])
    assert len(sink.messages) == 2
    # Seen again in the overlap, but downloaded once: the ledger knows it.
    assert sim.count_requests("GET", f"/extension/122/fax/in/{first}") == 1
    assert sim.count_requests("GET", f"/extension/122/fax/in/{second}") == 1


async def test_window_overlap_catches_late_listed_faxes_and_first_run_looks_back(sim, sink, make_harness, faxes):
    sim.extensions[122].fax_mailto = "alice@x.test"
    now = datetime.now(sim.tz)
    ancient = sim.inject_received(122, faxes["pdf"].data, when=now - timedelta(hours=30))
    recent = sim.inject_received(122, faxes["pdf"].data, when=now - timedelta(hours=20))
    h = await make_harness()
    await h.cycle()
    assert sorted(by_uuid(sink.messages)) == [recent]  # first run: 24 h back, not 30
    hwm = float(h.store.get_meta(HWM_KEY.format(122)))
    assert abs(hwm - h.clock()) < 5
    # Listed only now, but dated five minutes before the last poll.
    late = sim.inject_received(122, faxes["pdf"].data, when=now - timedelta(minutes=5))
    await h.cycle()
    assert sorted(by_uuid(sink.messages)) == sorted([recent, late])
    assert ancient not in h.ledger()


async def test_first_lookback_is_configurable(sim, sink, make_harness, faxes):
    sim.extensions[122].fax_mailto = "alice@x.test"
    now = datetime.now(sim.tz)
    older = sim.inject_received(122, faxes["pdf"].data, when=now - timedelta(hours=2))
    newer = sim.inject_received(122, faxes["pdf"].data, when=now - timedelta(minutes=30))
    h = await make_harness(inbound={"first_lookback": "1h"})
    await h.cycle()
    assert sorted(by_uuid(sink.messages)) == [newer]
    assert older not in h.ledger()


async def test_first_lookback_zero_mails_only_what_comes_next(sim, sink, make_harness, faxes):
    """ "0s": nothing from before the first poll, but for a 10-minute margin
    (the provider's clock may be behind ours), and the overlap of later
    windows never reaches back past that point."""
    sim.extensions[122].fax_mailto = "alice@x.test"
    now = datetime.now(sim.tz)
    # 11 minutes back: below the floor (10 minutes), inside a later window's
    # overlap (2 polls of 60 s + 10 minutes).
    before = sim.inject_received(122, faxes["pdf"].data, when=now - timedelta(minutes=11))
    skewed = sim.inject_received(122, faxes["pdf"].data, when=now - timedelta(minutes=1))
    h = await make_harness(inbound={"first_lookback": "0s", "poll_interval": "60s"})
    await h.cycle()
    assert list(by_uuid(sink.messages)) == [skewed] and before not in h.ledger()
    after = sim.inject_received(122, faxes["pdf"].data)
    await h.cycle()  # this window's overlap (2 polls + 10 min) would reach `before`: the floor keeps it out
    assert sorted(by_uuid(sink.messages)) == sorted([skewed, after])
    assert before not in h.ledger()


async def test_provider_failure_loses_nothing(sim, sink, make_harness, faxes):
    sim.extensions[122].fax_mailto = "alice@x.test"
    uuid = sim.inject_received(122, faxes["g3"].data)
    h = await make_harness(inbound={"extensions": [122]})
    # Every download attempt of this poll fails (the client retries 4 times).
    sim.fail_next(10, f"/extension/122/fax/in/{uuid}", status=503)
    await h.cycle()
    assert sink.messages == [] and uuid not in h.ledger()
    assert h.store.get_meta(HWM_KEY.format(122)) is None  # window not advanced
    assert "inbound" not in h.rt.health.polls
    sim.clear_faults()
    await h.cycle()
    assert list(by_uuid(sink.messages)) == [uuid]
    assert "inbound" in h.rt.health.polls


async def test_rate_limit_backs_off(sim, sink, make_harness, faxes):
    sim.extensions[122].fax_mailto = "alice@x.test"
    h = await make_harness(inbound={"extensions": [122]})
    sim.rate_limit_next(reset=120, n=1, path="/extension/122/fax/in/")
    delay = await h.poll()
    assert delay >= 119
    assert h.rt.metrics.rate_limit_waits.labels("inbound")._value.get() == 1


async def test_extensions_are_discovered_when_not_configured(sim, sink, make_harness, faxes):
    sim.add_extension(130, fax_mailto="new@x.test")
    sim.add_extension(131, fax_mailto="blocked@x.test", status="blocked")
    sim.extensions[122].fax_mailto = "alice@x.test"
    u130 = sim.inject_received(130, faxes["pdf"].data)
    u131 = sim.inject_received(131, faxes["pdf"].data)
    h = await make_harness()
    await h.cycle()
    mails = by_uuid(sink.messages)
    assert mails[u130][0].rcpt_tos == ("new@x.test",)
    assert u131 not in mails  # blocked extensions are not polled
    assert sim.count_requests("GET", "/extension/100/fax/in/") == 0  # a phone, not a fax
    # An extension added later is found after mailto_refresh.
    sim.add_extension(140, fax_mailto="newer@x.test")
    u140 = sim.inject_received(140, faxes["pdf"].data)
    h.monotonic.advance(2)
    await h.cycle()
    assert by_uuid(sink.messages)[u140][0].rcpt_tos == ("newer@x.test",)


async def test_unsafe_caller_id_stays_out_of_headers_and_file_names(sim, sink, make_harness, faxes):
    sim.extensions[122].fax_mailto = "alice@x.test"
    uuid = sim.inject_received(122, faxes["pdf"].data, caller_id="evil\r\nBcc: victim@x.test/../x\u2028X-Sep: 1", destination="123\nX-Injected: 1")
    h = await make_harness()
    await h.cycle()
    [mail] = by_uuid(sink.messages)[uuid]
    raw = mail.data.decode("ascii", errors="replace")
    assert "\r\nBcc:" not in raw and "\r\nX-Injected" not in raw
    msg = mail.message
    assert msg["Bcc"] is None and msg["X-Injected"] is None and msg["X-Sep"] is None
    assert "\n" not in msg["Subject"] and msg["Subject"].startswith("Fax from evil")
    assert "X-Sep: 1" not in body_text(msg).splitlines()
    assert mail.rcpt_tos == ("alice@x.test",)
    [(filename, _, _)] = attachments(mail.message)
    assert NAME_RE.match(filename), filename
    assert "/" not in filename and ".." not in filename
