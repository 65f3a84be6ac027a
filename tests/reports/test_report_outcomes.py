"""One report per outcome, end to end: the provider simulator moves the fax,
the tracker follows it, the reporter queues the report, the outbox delivers it
to the MailSink over real SMTP."""

from __future__ import annotations

import asyncio
import os
import sys
from email.message import EmailMessage
from pathlib import Path

from support.reports import ADMIN, DST, NUMBER, SENDER, Gateway

from gatewayd.commands.control import retry_job
from gatewayd.email_to_fax.tracker import NO_LONGER_KNOWN
from gatewayd.mailsink import MailSink, SunkMail
from gatewayd.provider.client import ProviderClient
from gatewayd.provider.simulator import ProviderSimulator
from gatewayd.store import FAILED, SENDING, SUBMITTED

REPO = Path(__file__).resolve().parents[2]


def attachments(msg: EmailMessage) -> list[tuple[str | None, str, bytes]]:
    return [(p.get_filename(), p.get_content_type(), p.get_payload(decode=True)) for p in msg.iter_attachments()]


def body(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content()


def check_common(mail: SunkMail, *, to: str, subject: str) -> EmailMessage:
    msg = mail.message
    assert mail.mail_from == "fax-gateway@gw.test"  # the bare address of [mail].from
    assert mail.rcpt_tos == (to,)
    assert msg["Subject"] == subject
    assert msg["In-Reply-To"] == "<orig-1@example.test>"
    assert msg["References"] == "<orig-1@example.test>"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Message-ID"] and msg["Message-ID"] != "<orig-1@example.test>"
    assert msg["Date"]
    return msg


async def quiet(sink: MailSink, count: int, seconds: float = 0.4) -> list[SunkMail]:
    """Nothing more arrives: exactly ``count`` messages."""
    await asyncio.sleep(seconds)
    assert len(sink.messages) == count, [m.message["Subject"] for m in sink.messages]
    return sink.messages


async def test_sent(gateway: Gateway, sim: ProviderSimulator, sink: MailSink) -> None:
    gw = gateway.start()
    job_id = await gw.submit(note="not faxed: logo.svg (image/svg+xml is not supported)")
    sim.clock.advance(1.5)  # ready_to_send -> sending
    await gw.wait_job(job_id, lambda j: j.state == SENDING)
    sim.clock.advance(3)  # -> sent
    job = await gw.wait_job(job_id, lambda j: j.reported_at is not None)
    (mail,) = await sink.wait_for(1)
    msg = check_common(mail, to=SENDER, subject=f"Fax to {NUMBER} sent: Quarterly report")
    text = body(msg)
    for fact in (
        f"Your fax to {NUMBER} was sent.",
        f"Job:             {job_id}",
        f"Number:          {NUMBER} (dialled as {DST})",
        "Extension:       122",
        "Pages:           2",
        "Attempts:        1",
        f"Provider fax id: {job.provider_id}",
        "Status:          sent - the provider reports the fax as sent on the first attempt",
        "Note:            not faxed: logo.svg (image/svg+xml is not supported)",
        "submitted -> sending",
        "sending -> sent",
    ):
        assert fact in text, (fact, text)
    assert "Submitted:       20" in text and "Finished:        20" in text
    assert attachments(msg) == []  # attach_document = "failures"
    assert msg["X-Fax-Job-ID"] == str(job_id)
    await quiet(sink, 1)  # no admin copy of a success
    assert gw.rt.metrics.reports.labels("sent")._value.get() == 1


async def test_failed_then_retried_then_sent_gets_one_report(gateway: Gateway, sim: ProviderSimulator, sink: MailSink) -> None:
    sim.set_outcome(DST, ["failed", "sent"])
    gw = gateway.start()
    job_id = await gw.submit()
    sim.clock.advance(5)  # attempt 1 fails
    # the tracker waits retry_delay, then asks the provider to retry
    job = await gw.wait_job(job_id, lambda j: j.state == SUBMITTED and j.attempts == 2)
    assert job.auto_retries_used == 1 and job.finished_at is None
    sim.clock.advance(5)  # attempt 2 is sent
    await gw.wait_job(job_id, lambda j: j.reported_at is not None)
    (mail,) = await quiet(sink, 1)
    msg = check_common(mail, to=SENDER, subject=f"Fax to {NUMBER} sent: Quarterly report")
    text = body(msg)
    assert "Attempts:        2" in text
    assert "the provider reports the fax as sent; it took 2 attempts" in text
    assert "submitted -> failed" in text and "automatic retry 1 of 2" in text
    assert "failed -> submitted" in text
    events = await gw.store.run(gw.store.job_events, job_id)
    assert [e.to_state for e in events] == ["queued", "submitted", "failed", "submitted", "sent"]
    assert sim.count_requests("PUT", "/extension/122/fax/out/*") == 1  # exactly one retry action


async def test_failed_after_every_retry(gateway: Gateway, sim: ProviderSimulator, sink: MailSink) -> None:
    sim.set_outcome(DST, ["failed"])
    gw = gateway.start()
    job_id = await gw.submit()
    for attempt in (1, 2, 3):
        await gw.wait_job(job_id, lambda j, a=attempt: j.state == SUBMITTED and j.attempts == a)
        sim.clock.advance(5)
        await gw.wait_job(job_id, lambda j: j.state == FAILED)
    job = await gw.wait_job(job_id, lambda j: j.reported_at is not None)
    assert job.finished_at is not None and job.auto_retries_used == 2 and job.attempts == 3
    mails = await sink.wait_for(2)
    await quiet(sink, 2)
    to_sender = next(m for m in mails if m.rcpt_tos == (SENDER,))
    to_admin = next(m for m in mails if m.rcpt_tos == (ADMIN,))
    msg = check_common(to_sender, to=SENDER, subject=f"Fax to {NUMBER} failed: Quarterly report")
    text = body(msg)
    assert "Status:          failed - the provider could not deliver the fax after 3 attempts" in text
    assert "no automatic retries left" in text
    (att,) = attachments(msg)
    assert att[0] == f"fax-{job_id}.pdf" and att[1] == "application/pdf" and att[2].startswith(b"%PDF-")
    admin = check_common(to_admin, to=ADMIN, subject=f"Fax to {NUMBER} failed: Quarterly report")
    assert f"the report went to {SENDER}" in body(admin)
    assert len(attachments(admin)) == 1
    assert sim.count_requests("PUT", "/extension/122/fax/out/*") == 2  # auto_retries = 2


async def test_error(gateway: Gateway, sim: ProviderSimulator, sink: MailSink) -> None:
    sim.set_outcome(DST, ["error"])
    gw = gateway.start()
    job_id = await gw.submit()
    sim.clock.advance(5)
    await gw.wait_job(job_id, lambda j: j.reported_at is not None)
    mails = await sink.wait_for(2)
    await quiet(sink, 2)
    assert sorted(m.rcpt_tos for m in mails) == [(ADMIN,), (SENDER,)]
    for mail in mails:
        msg = check_common(mail, to=mail.rcpt_tos[0], subject=f"Fax to {NUMBER} error: Quarterly report")
        assert "Status:          error - the provider reported an error while sending the fax" in body(msg)
    assert sim.count_requests("PUT") == 0  # an error is not retried


async def test_provider_forgets_the_fax(gateway: Gateway, sim: ProviderSimulator, sink: MailSink) -> None:
    gw = gateway.start()
    job_id = await gw.submit()
    job = await gw.job(job_id)
    del sim.sent[job.provider_id]  # gone from the list and from GET
    job = await gw.wait_job(job_id, lambda j: j.reported_at is not None)
    assert job.state == "unknown" and job.reason == NO_LONGER_KNOWN
    mails = await sink.wait_for(2)
    sender = next(m for m in mails if m.rcpt_tos == (SENDER,))
    msg = check_common(sender, to=SENDER, subject=f"Fax to {NUMBER} status unknown: Quarterly report")
    assert f"Status:          unknown - {NO_LONGER_KNOWN}" in body(msg)


async def _gatewayd(*args: str) -> tuple[int, str, str]:
    """The real command line, as a subprocess (the simulator keeps serving)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd", *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


def write_config(path: Path, gw: Gateway, sim: ProviderSimulator, sink: MailSink) -> Path:
    path.write_text(
        f"""
[provider]
base_url = "{sim.base_url}"
token_url = "{sim.token_url}"
client_id = "demo"
client_secret = "demo"
extension = 122

[mail]
relay = "{sink.host}:{sink.port}"
from = "Fax Gateway <fax-gateway@gw.test>"
admin = ["{ADMIN}"]

[storage]
state_dir = "{gw.config.state_dir}"

[http]
listen = ""
"""
    )
    return path


async def test_canceled_from_the_command_line(gateway: Gateway, sim: ProviderSimulator, sink: MailSink, tmp_path: Path) -> None:
    gw = gateway.start()
    job_id = await gw.submit()
    config = write_config(tmp_path / "gatewayd.toml", gw, sim, sink)

    rc, out, err = await _gatewayd("cancel", str(job_id), "-c", str(config))
    assert rc == 0, err
    assert out.startswith(f"job {job_id}: canceled (canceled from the command line (the provider confirmed))")
    assert sim.sent_faxes()[0].status == "canceled"

    job = await gw.wait_job(job_id, lambda j: j.reported_at is not None)
    assert job.state == "canceled"
    (mail,) = await quiet(sink, 1)  # no admin copy of a cancellation
    msg = check_common(mail, to=SENDER, subject=f"Fax to {NUMBER} canceled: Quarterly report")
    text = body(msg)
    # (the tracker may see the provider's "canceled" before the command line records it)
    assert "Status:          canceled - the fax was canceled and will not be sent (canceled " in text
    assert "submitted -> canceled" in text
    events = await gw.store.run(gw.store.job_events, job_id)
    assert "canceled from the command line (the provider confirmed)" in [e.reason for e in events]
    assert len(attachments(msg)) == 1  # a canceled fax counts as not sent: the document comes back

    # Nothing left to cancel or retry: exit 1 with the reason on stderr.
    rc, out, err = await _gatewayd("cancel", str(job_id), "-c", str(config))
    assert rc == 1 and out == ""
    assert f"job {job_id} is already canceled" in err
    rc, out, err = await _gatewayd("retry", str(job_id), "-c", str(config))
    assert rc == 1 and "the provider allows retrying only a failed fax" in err
    rc, out, err = await _gatewayd("cancel", "999", "-c", str(config))
    assert rc == 1 and "no job 999" in err
    await quiet(sink, 1)


async def test_retry_of_a_job_failed_for_good_is_reported_again(gateway: Gateway, sim: ProviderSimulator, sink: MailSink) -> None:
    """Documented choice: the sender had the failure report; after `gatewayd
    retry` the job is followed again and its new outcome gets a new report."""
    sim.set_outcome(DST, ["failed", "sent"])
    gw = gateway
    gw.set_config(auto_retries=0)
    gw.start()
    job_id = await gw.submit()
    sim.clock.advance(5)
    job = await gw.wait_job(job_id, lambda j: j.reported_at is not None)
    assert job.state == FAILED and job.finished_at is not None
    mails = await sink.wait_for(2)  # the report and the admin copy
    (first,) = [m for m in mails if m.rcpt_tos == (SENDER,)]
    assert first.message["Subject"] == f"Fax to {NUMBER} failed: Quarterly report"
    assert "no automatic retries are configured" in body(first.message)

    line = await retry_job(gw.store, job_id, lambda: ProviderClient.from_config(gw.config.provider))
    assert line.startswith(f"job {job_id}: submitted (retried from the command line")
    job = await gw.job(job_id)
    assert (job.state, job.attempts, job.finished_at, job.reported_at) == (SUBMITTED, 2, None, None)

    sim.clock.advance(5)
    await gw.wait_job(job_id, lambda j: j.state == "sent" and j.reported_at is not None)
    await sink.wait_for(3)
    await quiet(sink, 3)  # failed report + admin copy, then the new outcome
    second = sink.messages[-1]
    assert second.rcpt_tos == (SENDER,)
    assert second.message["Subject"] == f"Fax to {NUMBER} sent: Quarterly report"
    assert "it took 2 attempts" in body(second.message)


async def test_header_injection_through_the_relay(gateway: Gateway, sim: ProviderSimulator, sink: MailSink) -> None:
    """CR/LF in the original subject (and a forged Message-ID) do not become
    headers or recipients in the report as the relay receives it."""
    gw = gateway.start()
    job_id = await gw.submit(subject="Hi\r\nBcc: victim@evil.test\r\nX-Injected: yes", message_id="<a@b.test>\r\nBcc: victim2@evil.test")
    sim.clock.advance(5)
    await gw.wait_job(job_id, lambda j: j.reported_at is not None)
    (mail,) = await quiet(sink, 1)
    assert mail.rcpt_tos == (SENDER,)
    msg = mail.message
    assert msg["Bcc"] is None and msg["X-Injected"] is None and msg["In-Reply-To"] is None
    assert str(msg["Subject"]).strip() == f"Fax to {NUMBER} sent: Hi Bcc: victim@evil.test X-Injected: yes"
    head = mail.data.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in head and b"\r\nX-Injected:" not in head
