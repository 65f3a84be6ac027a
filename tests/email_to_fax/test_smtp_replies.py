"""Every reply of the SPEC section 4 table, at its stage, over a real socket
against the SmtpListener running in this loop with a real Store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.corpus import good_message, make_garbage_pdf, make_pdf
from support.e2f import DOMAIN, NUMBER_1, NUMBER_2, SENDER, RawSMTP, load, merge, run_gateway, wait_for

from gatewayd.store import StoreError

PDF2 = make_pdf(2, text="Invoice")


def message(**kw: object) -> bytes:
    attachments = kw.pop("attachments", [("invoice.pdf", "application/pdf", PDF2)])
    return good_message(attachments, **kw)  # type: ignore[arg-type]


async def test_accepted_two_recipients_share_one_document(tmp_path: Path, data: dict) -> None:
    async with run_gateway(load(tmp_path, data)) as gw:
        c = await RawSMTP.connect(gw.port)
        assert c.greeting == "220 gw.test ESMTP gatewayd"
        mail, rcpts, reply = await c.send(message(body="Please see attached."), recipients=(f"{NUMBER_1}@{DOMAIN}", f"+7-495-123-45-67@{DOMAIN}"))
        await c.close()
        assert mail == "250 2.1.0 sender ok"
        assert rcpts == ["250 2.1.5 recipient ok"] * 2
        jobs = gw.jobs()
        assert reply == f"250 2.0.0 queued as {jobs[0].id} {jobs[1].id}"
        assert [j.number for j in jobs] == [NUMBER_1, NUMBER_2]
        assert [j.dst_num for j in jobs] == [NUMBER_1[1:], NUMBER_2[1:]]
        assert {j.document for j in jobs} == {jobs[0].document}
        assert all(j.state == "queued" and j.report_to == SENDER and j.source == "smtp" and j.extension == 122 for j in jobs)
        assert jobs[0].pages == 3  # cover page (the body has text) + 2 pages
        assert gw.store.document_path(jobs[0].document).read_bytes().startswith(b"%PDF-")
        assert gw.replies("250") == 1  # the reply to DATA only (docs/operations.md, Metrics)


async def test_refused_recipients_do_not_affect_the_others(tmp_path: Path, data: dict) -> None:
    data = merge(data, {"numbers": {"deny": ["+7495"]}})
    async with run_gateway(load(tmp_path, data)) as gw:
        c = await RawSMTP.connect(gw.port)
        _, rcpts, reply = await c.send(message(), recipients=(
            "someone@other.example", f"{NUMBER_1}@{DOMAIN}", f"sales@{DOMAIN}", f"{NUMBER_2}@{DOMAIN}", f"88095551234@{DOMAIN}",
        ))
        await c.close()
        assert rcpts == [
            "550 5.7.1 relaying denied",
            "250 2.1.5 recipient ok",
            f"553 5.1.3 <sales@{DOMAIN}>: not a fax number",
            f"550 5.7.1 {NUMBER_2}: destination not allowed",
            "550 5.7.1 +78095551234: destination not allowed",  # premium rate
        ]
        jobs = gw.jobs()
        assert reply == f"250 2.0.0 queued as {jobs[0].id}"
        assert [j.number for j in jobs] == [NUMBER_1]


async def test_no_valid_recipient_means_no_data(tmp_path: Path, data: dict) -> None:
    async with run_gateway(load(tmp_path, data)) as gw:
        c = await RawSMTP.connect(gw.port)
        assert await c.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 sender ok"
        assert await c.cmd("RCPT TO:<x@elsewhere.example>") == "550 5.7.1 relaying denied"
        assert await c.cmd("DATA") == "554 5.5.1 no valid recipients"
        await c.close()
        assert gw.jobs() == []


async def test_sender_not_authorised_at_mail(tmp_path: Path, data: dict) -> None:
    async with run_gateway(load(tmp_path, data)) as gw:
        c = await RawSMTP.connect(gw.port)
        assert await c.cmd("MAIL FROM:<mallory@evil.example>") == "550 5.7.1 sender not authorised"
        assert await c.cmd("MAIL FROM:<>") == "550 5.7.1 sender not authorised"  # a bounce never faxes
        assert await c.cmd(f"RCPT TO:<{NUMBER_1}@{DOMAIN}>") == "503 Error: need MAIL command"
        # The session goes on: an authorised sender is accepted next.
        _, _, reply = await c.send(message())
        await c.close()
        assert reply.startswith("250 2.0.0 queued as ")


async def test_sender_not_authorised_at_rcpt_after_reload(tmp_path: Path, data: dict) -> None:
    async with run_gateway(load(tmp_path, data)) as gw:
        c = await RawSMTP.connect(gw.port)
        assert await c.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 sender ok"
        # SIGHUP replaces the configuration: the rule that allowed the sender is gone.
        gw.rt.config = load(tmp_path, merge(data, {"senders": [{"match": ["*@other.example"]}]}), "reloaded.toml")
        assert await c.cmd(f"RCPT TO:<{NUMBER_1}@{DOMAIN}>") == "550 5.7.1 sender not authorised"
        await c.close()
        assert gw.jobs() == []


async def test_authentication_required(tmp_path: Path, data: dict) -> None:
    # The test client (127.0.0.1) is not in the trusted networks here.
    data = merge(data, {"smtp": {"trusted_networks": ["192.0.2.0/24"]}})
    async with run_gateway(load(tmp_path, data)) as gw:
        c = await RawSMTP.connect(gw.port)
        assert await c.cmd(f"MAIL FROM:<{SENDER}>") == "530 5.7.0 authentication required"
        await c.close()
        assert gw.replies("530") == 1


async def test_hourly_limit_at_rcpt(tmp_path: Path, data: dict) -> None:
    data = merge(data, {"senders": [{"match": ["*@example.com"], "max_per_hour": 2}]})
    async with run_gateway(load(tmp_path, data)) as gw:
        c = await RawSMTP.connect(gw.port)
        _, rcpts, reply = await c.send(message(), recipients=(f"{NUMBER_1}@{DOMAIN}", f"{NUMBER_2}@{DOMAIN}", f"+78123092632@{DOMAIN}"))
        assert rcpts == ["250 2.1.5 recipient ok", "250 2.1.5 recipient ok", "450 4.7.1 rate limit reached, try later"]
        assert reply.startswith("250 2.0.0 queued as ")
        _, rcpts, reply = await c.send(message())
        assert rcpts == ["450 4.7.1 rate limit reached, try later"]
        assert reply == ""
        await c.close()
        assert len(gw.jobs()) == 2


async def test_message_too_big_at_mail_and_at_data(tmp_path: Path, data: dict) -> None:
    data = merge(data, {"smtp": {"max_message_size": "20KB"}})
    async with run_gateway(load(tmp_path, data)) as gw:
        c = await RawSMTP.connect(gw.port)
        assert "250-SIZE 20000" in c.lines
        assert await c.cmd(f"MAIL FROM:<{SENDER}> SIZE=20001") == "552 5.3.4 message too big"
        big = message(attachments=[("big.pdf", "application/pdf", b"%PDF-1.4\n" + b"x" * 30_000)])
        _, _, reply = await c.send(big)
        assert reply == "552 5.3.4 message too big"
        # The connection is still in step: the next message is answered normally.
        _, _, reply = await c.send(message())
        await c.close()
        assert reply.startswith("250 2.0.0 queued as ")
        assert len(gw.jobs()) == 1


async def test_no_fax_document(tmp_path: Path, data: dict) -> None:
    data = merge(data, {"documents": {"cover_page": "never"}})
    async with run_gateway(load(tmp_path, data)) as gw:
        c = await RawSMTP.connect(gw.port)
        _, _, reply = await c.send(message(attachments=[], body="just words"))
        await c.close()
        assert reply.startswith("554 5.6.0 no fax document: "), reply
        assert gw.jobs() == []


async def test_attachment_refused_with_its_name(tmp_path: Path, data: dict) -> None:
    async with run_gateway(load(tmp_path, data)) as gw:
        c = await RawSMTP.connect(gw.port)
        _, _, reply = await c.send(message(attachments=[("broken.pdf", "application/pdf", make_garbage_pdf())]))
        await c.close()
        assert reply.startswith("554 5.6.0 broken.pdf: "), reply
        assert gw.jobs() == []


async def test_fax_document_too_large(tmp_path: Path, data: dict) -> None:
    data = merge(data, {"senders": [{"match": ["*@example.com"], "max_pages": 2}]})
    async with run_gateway(load(tmp_path, data)) as gw:
        c = await RawSMTP.connect(gw.port)
        _, _, reply = await c.send(message(attachments=[("three.pdf", "application/pdf", make_pdf(3))]))
        await c.close()
        assert reply.startswith("552 5.3.4 fax document too large: "), reply
        assert gw.jobs() == []


async def test_bare_lf_refused(tmp_path: Path, data: dict) -> None:
    async with run_gateway(load(tmp_path, data)) as gw:
        c = await RawSMTP.connect(gw.port)
        raw = message()
        # One bare LF in an otherwise CRLF message, and a message with nothing but LFs.
        for bad in (raw.replace(b"Subject: Fax\r\n", b"Subject: Fax\n", 1), raw.replace(b"\r\n", b"\n")):
            _, _, reply = await c.send(bad)
            assert reply == "554 5.6.0 bare LF line endings not allowed"
        await c.close()
        assert gw.jobs() == []


async def test_malformed_message(tmp_path: Path, data: dict) -> None:
    async with run_gateway(load(tmp_path, data)) as gw:
        c = await RawSMTP.connect(gw.port)
        raw = message().replace(b"Subject: Fax\r\n", b"Subject: Fax\r\nSubject: Other\r\n", 1)
        _, _, reply = await c.send(raw)
        await c.close()
        assert reply == "554 5.6.0 malformed message: duplicate Subject header"


async def test_storage_failure_is_451_and_nothing_is_kept(tmp_path: Path, data: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    async with run_gateway(load(tmp_path, data)) as gw:
        def broken(*args: object, **kw: object) -> None:
            raise StoreError("disk full")

        monkeypatch.setattr(gw.store, "enqueue_jobs", broken)
        c = await RawSMTP.connect(gw.port)
        _, _, reply = await c.send(message())
        assert reply == "451 4.3.0 temporary failure, try again"
        monkeypatch.undo()
        _, _, reply = await c.send(message())  # the same connection recovers
        await c.close()
        assert reply.startswith("250 2.0.0 queued as ")
        assert len(gw.jobs()) == 1


async def test_exception_in_a_hook_answers_451_not_500(tmp_path: Path, data: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    data = merge(data, {"senders": [{"match": ["*@example.com"], "max_per_hour": 10}]})
    async with run_gateway(load(tmp_path, data)) as gw:
        c = await RawSMTP.connect(gw.port)

        def usage_boom(*args: object, **kw: object) -> int:
            raise RuntimeError("a bug in the store")

        # RCPT hook: the hourly count comes from the store.
        monkeypatch.setattr(gw.store, "usage_since", usage_boom)
        assert await c.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 sender ok"
        assert await c.cmd(f"RCPT TO:<{NUMBER_1}@{DOMAIN}>") == "451 4.3.0 temporary failure, try again"
        assert await c.cmd("RSET") == "250 OK"
        monkeypatch.undo()

        # DATA: the intake itself blows up with something that is not a refusal.
        async def accept_boom(*args: object, **kw: object) -> list[int]:
            raise KeyError("bug")

        monkeypatch.setattr(gw.intake, "accept", accept_boom)
        _, _, reply = await c.send(message())
        assert reply == "451 4.3.0 temporary failure, try again"

        # MAIL hook: the sender policy raises.
        def policy_boom() -> object:
            raise ValueError("bug")

        monkeypatch.setattr(gw.listener, "sender_policy", policy_boom)
        assert await c.cmd(f"MAIL FROM:<{SENDER}>") == "451 4.3.0 temporary failure, try again"
        await c.close()
        assert gw.replies("500") == 0
        assert gw.replies("451") == 3


async def test_too_many_connections(tmp_path: Path, data: dict) -> None:
    data = merge(data, {"smtp": {"max_connections": 2}})
    async with run_gateway(load(tmp_path, data)) as gw:
        first = await RawSMTP.connect(gw.port)
        second = await RawSMTP.connect(gw.port)
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        assert await asyncio.wait_for(reader.readline(), 5) == b"421 4.7.0 too many connections\r\n"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and closed
        writer.close()
        await first.close()
        await wait_for(lambda: len(gw.listener.sessions) < 2, what="a slot to free up")
        third = await RawSMTP.connect(gw.port)
        assert third.greeting.startswith("220 ")
        await second.close()
        await third.close()


async def test_duplicate_recipient_is_one_job(tmp_path: Path, data: dict) -> None:
    async with run_gateway(load(tmp_path, data)) as gw:
        c = await RawSMTP.connect(gw.port)
        _, rcpts, reply = await c.send(message(), recipients=(f"{NUMBER_1}@{DOMAIN}", f"8-812-309-26-31@{DOMAIN.upper()}"))
        await c.close()
        assert rcpts[1].startswith("250 2.1.5 ")
        assert reply == f"250 2.0.0 queued as {gw.jobs()[0].id}"
        assert len(gw.jobs()) == 1


async def test_stop_lets_a_transaction_finish_and_tells_idle_clients(tmp_path: Path, data: dict) -> None:
    async with run_gateway(load(tmp_path, data)) as gw:
        port = gw.port
        idle = await RawSMTP.connect(port)
        busy = await RawSMTP.connect(port)
        assert await busy.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 sender ok"
        assert await busy.cmd(f"RCPT TO:<{NUMBER_1}@{DOMAIN}>") == "250 2.1.5 recipient ok"
        stopping = asyncio.create_task(gw.listener.stop())
        assert await idle.reply() == "421 4.3.2 service shutting down, try again later"
        reply = await busy.data(message())  # finishes within the grace
        assert reply.startswith("250 2.0.0 queued as ")
        assert await busy.reply() == "421 4.3.2 service shutting down, try again later"
        await stopping
        await idle.close()
        await busy.close()
        assert gw.rt.health.listeners["smtp"] is False
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        assert len(gw.jobs()) == 1


async def test_idle_and_stalled_clients_time_out(tmp_path: Path, data: dict) -> None:
    from gatewayd.email_to_fax.smtp import SmtpTuning

    async with run_gateway(load(tmp_path, data), smtp_tuning=SmtpTuning(command_timeout=0.5, data_timeout=0.5, stop_grace=0.5)) as gw:
        idle = await RawSMTP.connect(gw.port)
        assert await idle.reply(timeout=5) == "421 4.4.2 gw.test timeout, closing connection"
        stalled = await RawSMTP.connect(gw.port)
        assert await stalled.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 sender ok"
        assert await stalled.cmd(f"RCPT TO:<{NUMBER_1}@{DOMAIN}>") == "250 2.1.5 recipient ok"
        assert await stalled.cmd("DATA") == "354 end data with <CR><LF>.<CR><LF>"
        stalled.writer.write(b"Subject: half a message\r\n")  # ... and nothing more
        assert await stalled.reply(timeout=5) == "421 4.4.2 gw.test timeout, closing connection"
        assert await asyncio.wait_for(stalled.reader.read(), 5) == b""
        await wait_for(lambda: not gw.listener.sessions, what="sessions to be gone")
        await idle.close()
        await stalled.close()
        assert gw.jobs() == []


async def test_emergency_and_service_numbers_are_refused_even_as_internal_numbers(tmp_path: Path, data: dict) -> None:
    # issue 14, item 6: the default numbers.internal = "^[0-9]{2,5}$" matches them.
    async with run_gateway(load(tmp_path, data)) as gw:
        c = await RawSMTP.connect(gw.port)
        _, rcpts, reply = await c.send(message(), recipients=(f"112@{DOMAIN}", f"8-800@{DOMAIN}", f"1234@{DOMAIN}"))
        await c.close()
        assert rcpts == [
            "550 5.7.1 112: emergency and service numbers are never faxed",
            "550 5.7.1 8800: emergency and service numbers are never faxed",
            "250 2.1.5 recipient ok",
        ]
        jobs = gw.jobs()
        assert reply == f"250 2.0.0 queued as {jobs[0].id}"
        assert [j.number for j in jobs] == ["1234"]
