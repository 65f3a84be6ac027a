"""The IMAP intake against a real Dovecot on loopback: latency with IDLE and
polling, reconnects, strangers, refusals with replies, temporary failures."""

from __future__ import annotations

import asyncio
import email
import email.policy
import io
import json
from typing import Any

import structlog
import structlog.testing

from support.imap import (
    IMAP_PASSWORD,
    NUMBER,
    NUMBER_2,
    SENDER,
    TRUSTED_ID,
    Dovecot,
    auth_results,
    fax_message,
    make_pdf,
    run_imap,
    wait_for,
)

from gatewayd.email_to_fax.errors import TemporaryFailure
from gatewayd.email_to_fax.intake import Intake
from gatewayd.logs import setup_logging


async def connected(gw: Any) -> None:
    await wait_for(lambda: gw.rt.health.listeners.get("imap"), what="the IMAP login")


async def settle(dovecot: Dovecot, *, inbox: int = 0, processed: int = 0, failed: int = 0, timeout: float = 10.0) -> None:
    want = (inbox, processed, failed)
    last: list[tuple[int, ...]] = []

    async def check() -> bool:
        last[:] = [await dovecot.counts("INBOX", "Processed", "Failed")]
        return last[0] == want

    try:
        await wait_for(check, timeout=timeout, interval=0.1, what=f"INBOX/Processed/Failed = {want}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen {last}") from None


def reply_message(gw: Any) -> email.message.EmailMessage:
    replies = gw.replies()
    assert len(replies) == 1, replies
    assert replies[0].recipients == (SENDER,)
    return email.message_from_bytes(replies[0].message, policy=email.policy.default)  # type: ignore[return-value]


# ------------------------------------------------------------------ latency


async def test_with_idle_a_message_is_queued_within_two_seconds(dovecot: Dovecot, make_config) -> None:
    config = make_config(idle=True, poll_interval="60s")
    async with run_imap(config) as gw:
        await connected(gw)
        await asyncio.sleep(0.3)  # in IDLE by now; a 60 s poll could not explain what follows
        raw = fax_message()
        await dovecot.append(raw)
        took = await wait_for(gw.jobs, timeout=2.0, what="the job")
        assert took < 2.0
        [job] = gw.jobs()
        assert (job.number, job.source, job.report_to, job.extension) == (NUMBER, "imap", SENDER, 122)
        await settle(dovecot, processed=1)
        # Moved intact, and never marked \Seen by the gateway's fetch (BODY.PEEK).
        [moved] = await asyncio.to_thread(dovecot.fetch_all_sync, "Processed")
        assert moved == raw
        assert "\\Seen" not in " ".join(await asyncio.to_thread(dovecot.flags_sync, "Processed"))
        assert gw.replies() == []


async def test_without_idle_a_message_is_queued_within_the_poll_interval(dovecot: Dovecot, make_config) -> None:
    config = make_config(idle=False, poll_interval="1s")
    seen_at: list[float] = []

    class Timed(Intake):
        async def accept(self, raw: bytes, **kw: Any) -> list[int]:
            seen_at.append(asyncio.get_running_loop().time())
            return await super().accept(raw, **kw)

    async with run_imap(config, intake=Timed) as gw:
        await connected(gw)
        await asyncio.sleep(0.3)  # between two polls
        appended = asyncio.get_running_loop().time()
        await dovecot.append(fax_message())
        await wait_for(gw.jobs, timeout=3.0, what="the job")
        # Picked up by the next poll: within one interval (plus fetching it).
        assert seen_at and seen_at[0] - appended < 1.0 + 0.3
        await settle(dovecot, processed=1)


async def test_polls_when_the_server_has_no_idle_and_copies_when_it_has_no_move(make_config) -> None:
    server = Dovecot.create()
    server.extra_config = 'imap_capability = IMAP4rev1 LITERAL+ SASL-IR ENABLE UIDPLUS NAMESPACE'
    server.start()
    try:
        config = make_config(idle=True, poll_interval="1s")
        config = _point_at(config, server)
        with structlog.testing.capture_logs() as events:
            async with run_imap(config) as gw:
                await connected(gw)
                await server.append(fax_message())
                await wait_for(gw.jobs, timeout=3.0, what="the job")
                await settle(server, processed=1)
        [hello] = [e for e in events if e["event"] == "imap_connected"]
        assert (hello["idle"], hello["move"]) == (False, False)
        assert await server.count("INBOX") == 0  # COPY, \Deleted, UID EXPUNGE
    finally:
        server.remove()


# ---------------------------------------------------------------- reconnect


async def test_reconnects_after_the_server_restarts_while_idling(dovecot: Dovecot, make_config) -> None:
    config = make_config(idle=True, poll_interval="60s")
    async with run_imap(config) as gw:
        await connected(gw)
        await dovecot.append(fax_message(subject="before"))
        await wait_for(lambda: len(gw.jobs()) == 1, what="the first job")
        await settle(dovecot, processed=1)
        await asyncio.sleep(0.3)  # idling again
        seen: list[bool] = []
        record = gw.rt.health.listener
        gw.rt.health.listener = lambda name, up: (seen.append(up), record(name, up))  # type: ignore[method-assign]
        await asyncio.to_thread(dovecot.restart)
        await dovecot.append(fax_message(subject="after"))
        await wait_for(lambda: len(gw.jobs()) == 2, timeout=10, what="the job after the restart")
        assert seen[:1] == [False] and seen[-1] is True  # it noticed the drop and logged in again
        await settle(dovecot, processed=2)
        assert [j.subject for j in gw.jobs()] == ["before", "after"]


async def test_a_server_that_is_down_at_start_is_retried(dovecot: Dovecot, make_config) -> None:
    config = make_config(idle=True)
    await asyncio.to_thread(dovecot.stop)
    async with run_imap(config) as gw:
        await asyncio.sleep(0.5)
        assert gw.rt.health.listeners["imap"] is False
        await asyncio.to_thread(dovecot.start)
        await connected(gw)
        await dovecot.append(fax_message())
        await wait_for(gw.jobs, what="the job")


async def test_wrong_password_keeps_retrying_and_never_logs_it(dovecot: Dovecot, make_config) -> None:
    buf = io.StringIO()
    # Debug level: aioimaplib logs every line it sends, LOGIN included.
    setup_logging("debug", "json", stream=buf)
    try:
        async with run_imap(make_config()) as gw:
            await connected(gw)
        # A wrong password last: Dovecot delays logins from an address that
        # just failed one, which would slow a login after it.
        config = make_config(overrides={"imap": {"password": IMAP_PASSWORD + "-wrong"}})
        async with run_imap(config) as gw:
            await wait_for(lambda: buf.getvalue().count("imap_connection_failed") >= 1, timeout=10, what="a failed login")
            assert gw.rt.health.listeners["imap"] is False
    finally:
        setup_logging("warning", "json")
    out = buf.getvalue()
    assert "imap_connected" in out and "AUTHENTICATIONFAILED" in out
    assert "S3cr" not in out and "pw-imap" not in out  # no form of it at all
    for form in (IMAP_PASSWORD, IMAP_PASSWORD.replace("\\", "\\\\").replace('"', '\\"'), json.dumps(IMAP_PASSWORD)[1:-1]):
        assert form not in out


# ---------------------------------------------------------------- strangers


async def test_spoofed_senders_are_moved_to_failed_without_reply(dovecot: Dovecot, make_config) -> None:
    spoofs = [
        fax_message(subject="no results", authentication_results=[]),
        fax_message(subject="other id", authentication_results=[auth_results(authserv_id="evil.test")]),
        fax_message(subject="forged below", authentication_results=[
            auth_results(dmarc="fail"), auth_results(dmarc="pass"),
        ]),
        fax_message(subject="unaligned spf", authentication_results=[
            f"{TRUSTED_ID}; spf=pass smtp.mailfrom=bounce@esp.example.net; dmarc=fail header.from=example.com",
        ]),
        fax_message(subject="no rule", sender="mallory@evil.test",
                    authentication_results=[auth_results(domain="evil.test")]),
        fax_message(subject="bounce", sender="MAILER-DAEMON@example.com"),
    ]
    async with run_imap(make_config(idle=True)) as gw:
        await connected(gw)
        for raw in spoofs:
            await dovecot.append(raw)
        await settle(dovecot, failed=len(spoofs))
        assert gw.jobs() == []
        assert gw.store.list_mail() == []  # nothing at all to a stranger


# ---------------------------------------------------------------- refusals


async def test_authorised_sender_gets_a_reply_for_a_number_that_is_not_one(dovecot: Dovecot, make_config) -> None:
    raw = fax_message(to=["fax+call-me@example.com"], subject="Order 42", message_id="<order-42@example.com>")
    async with run_imap(make_config()) as gw:
        await connected(gw)
        await dovecot.append(raw)
        await settle(dovecot, failed=1)
        assert gw.jobs() == []
        reply = reply_message(gw)
        assert reply["To"] == SENDER
        assert reply["Subject"] == "Fax not sent: Order 42"
        assert reply["In-Reply-To"] == "<order-42@example.com>"
        assert reply["Auto-Submitted"] == "auto-generated"
        body = reply.get_content()
        assert "553 5.1.3 <fax+call-me@example.com>: not a fax number" in body
        assert '"Failed"' in body


async def test_authorised_sender_gets_a_reply_for_an_encrypted_pdf(dovecot: Dovecot, make_config) -> None:
    async with run_imap(make_config()) as gw:
        await connected(gw)
        await dovecot.append(fax_message(pdf=make_pdf(1, encrypted=True)))
        await settle(dovecot, failed=1)
        assert gw.jobs() == []
        body = reply_message(gw).get_content()
        assert "554 5.6.0 invoice.pdf:" in body and "encrypt" in body.lower()
        # What to attach instead: the kinds this gateway takes now (no LibreOffice here).
        assert "attach\r\nPDF, TIFF, JPEG, PNG, GIF, BMP or WEBP files." in body


async def test_the_reply_names_office_documents_where_they_are_taken(dovecot: Dovecot, make_config) -> None:
    async with run_imap(make_config(), intake=lambda rt: Intake(rt, office=True)) as gw:
        await connected(gw)
        await dovecot.append(fax_message(pdf=make_pdf(1, encrypted=True)))
        await settle(dovecot, failed=1)
        body = reply_message(gw).get_content()
        assert "attach\r\nPDF, TIFF, JPEG, PNG, GIF, BMP, WEBP, Word, Excel, PowerPoint, OpenDocument, RTF, HTML or text files." in body


async def test_no_fax_address_among_the_recipients(dovecot: Dovecot, make_config) -> None:
    async with run_imap(make_config()) as gw:
        await connected(gw)
        await dovecot.append(fax_message(to=["fax@example.com", "fax+123@other.example.org"]))
        await settle(dovecot, failed=1)
        assert "no fax number among the recipients (write to fax+<number>@example.com)" in reply_message(gw).get_content()


async def test_a_message_too_big_is_refused_from_its_header_alone(dovecot: Dovecot, make_config) -> None:
    config = make_config(overrides={"smtp": {"max_message_size": "20KB"}})
    big = fax_message(pdf=make_pdf(1) + b"%" + b"x" * 40_000)
    async with run_imap(config) as gw:
        await connected(gw)
        await dovecot.append(big)
        await dovecot.append(fax_message(pdf=make_pdf(1) + b"%" + b"x" * 40_000, sender="mallory@evil.test",
                                         authentication_results=[auth_results(domain="evil.test")]))
        await settle(dovecot, failed=2)
        assert "552 5.3.4 message too big" in reply_message(gw).get_content()  # one reply: not to mallory


async def test_some_recipients_refused_others_faxed(dovecot: Dovecot, make_config) -> None:
    raw = fax_message(
        to=[f"fax+{NUMBER}@example.com", "Fax+not-a-number@Example.com", f"fax+{NUMBER_2}@example.com"],
        extra_headers=[("Delivered-To", f"fax+{NUMBER}@example.com"), ("X-Original-To", f"FAX+{NUMBER_2}@EXAMPLE.COM")],
    )
    async with run_imap(make_config()) as gw:
        await connected(gw)
        await dovecot.append(raw)
        await settle(dovecot, processed=1)
        assert sorted(j.number for j in gw.jobs()) == sorted([NUMBER, NUMBER_2])  # each number once
        reply = reply_message(gw)
        assert reply["Subject"].startswith("Fax partly not sent")
        assert "fax+not-a-number@example.com>: not a fax number" in reply.get_content()


# -------------------------------------------------------- temporary failure


class FlakyIntake(Intake):
    """The real Intake, answering 451 until ``healthy`` is set."""

    healthy = False
    calls = 0

    async def accept(self, raw: bytes, **kw: Any) -> list[int]:
        self.calls += 1
        if not self.healthy:
            raise TemporaryFailure()
        return await super().accept(raw, **kw)


async def test_a_temporary_failure_leaves_the_message_for_a_later_round(dovecot: Dovecot, make_config) -> None:
    async with run_imap(make_config(), intake=FlakyIntake) as gw:
        flaky = gw.intake
        await connected(gw)
        await dovecot.append(fax_message())
        await wait_for(lambda: flaky.calls >= 2, timeout=5, what="a retry")
        assert await dovecot.counts("INBOX", "Processed", "Failed") == (1, 0, 0)
        assert gw.jobs() == [] and gw.replies() == []
        flaky.healthy = True
        await wait_for(gw.jobs, timeout=5, what="the job")
        await settle(dovecot, processed=1)
        assert gw.replies() == []


# ------------------------------------------------------ move fails: no repeat


async def test_a_failing_move_never_repeats_the_reply_or_the_job(dovecot: Dovecot, make_config) -> None:
    # Dovecot refuses to put anything into Failed and Processed (ACL); the
    # outcomes are durable, so each later round only tries the move again.
    await asyncio.to_thread(dovecot.restart, deny_insert=("Failed", "Processed"), graceful=False)
    async with run_imap(make_config(idle=False, poll_interval="1s")) as gw:
        await connected(gw)
        await dovecot.append(fax_message(to=["fax+nope@example.com"], subject="refused"))
        await dovecot.append(fax_message(subject="accepted"))
        await wait_for(lambda: gw.jobs() and gw.replies(), what="job and reply")
        await asyncio.sleep(1.5)  # more rounds with FAST retries (0.5 s, 1 s ...)
        assert await dovecot.counts("INBOX", "Processed", "Failed") == (2, 0, 0)
        assert len(gw.jobs()) == 1 and len(gw.replies()) == 1
    await asyncio.to_thread(dovecot.restart, deny_insert=(), graceful=False)
    async with run_imap(make_config()) as gw:
        await settle(dovecot, processed=1, failed=1)
        assert len(gw.jobs()) == 1 and len(gw.replies()) == 1


# ---------------------------------------------------------- folder names


async def test_non_ascii_folder_names_are_created_and_used(dovecot: Dovecot, make_config) -> None:
    config = make_config(overrides={"imap": {"processed_mailbox": "Факсы/Отправлено", "failed_mailbox": "Fax & Co"}})
    async with run_imap(config) as gw:
        await connected(gw)
        await dovecot.append(fax_message())
        await dovecot.append(fax_message(authentication_results=[]))
        # modified UTF-7 names as the stdlib client must write them
        await wait_for(lambda: dovecot.count("&BCQEMAQ6BEEESw-/&BB4EQgQ,BEAEMAQyBDsENQQ9BD4-"), what="processed")
        await wait_for(lambda: dovecot.count("Fax &- Co"), what="failed")
        assert await dovecot.count("INBOX") == 0


def _point_at(config: Any, server: Dovecot) -> Any:
    import dataclasses

    imap = dataclasses.replace(config.imap, port=server.tls_port, password=server.password, tls_ca_file=str(server.ca_file))
    return dataclasses.replace(config, imap=imap)

