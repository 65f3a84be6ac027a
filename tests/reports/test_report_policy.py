"""Who gets a report, what it says and carries, exactly once: the Reporter
against a real store (no provider, no relay: the outbox rows are read)."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest
from support.reports import ADMIN, NUMBER, SENDER, Gateway, OffsetClock, finished_job, outbox_messages

from gatewayd.email_to_fax.report import Reporter, report_recipient
from gatewayd.store import Store


def rcpts(gw: Gateway) -> list[tuple[str, ...]]:
    return [r for r, _ in outbox_messages(gw)]


def text(msg: EmailMessage) -> str:
    return msg.get_body(preferencelist=("plain",)).get_content()


@pytest.mark.parametrize(
    ("reports", "state", "expected"),
    [
        ("all", "sent", [(SENDER,)]),
        ("all", "canceled", [(SENDER,)]),  # deliberate: no admin copy of a cancellation
        ("all", "failed", [(SENDER,), (ADMIN,)]),
        ("all", "error", [(SENDER,), (ADMIN,)]),
        ("all", "rejected", [(SENDER,), (ADMIN,)]),
        ("all", "unknown", [(SENDER,), (ADMIN,)]),
        ("failures", "sent", []),
        ("failures", "canceled", [(SENDER,)]),  # the fax did not go: counts as a failure
        ("failures", "failed", [(SENDER,), (ADMIN,)]),
        ("none", "sent", []),
        ("none", "canceled", []),
        ("none", "error", [(ADMIN,)]),  # admin copies do not depend on [mail].reports
    ],
)
async def test_who_gets_a_report(offline, reports: str, state: str, expected: list) -> None:
    gw = offline(reports=reports)
    job_id = await finished_job(gw, state)
    assert await gw.reporter.report_due() == 1
    assert rcpts(gw) == expected
    job = await gw.job(job_id)
    assert job.reported_at is not None  # settled even when nothing was sent
    assert await gw.reporter.report_due() == 0 and rcpts(gw) == expected


@pytest.mark.parametrize("report_to", ["", "<>", "MAILER-DAEMON@example.test", "<postmaster@example.test>", "Postmaster@Example.test", "not an address", "a@b\r\nBcc: x@y.test"])
async def test_never_to_null_sender_or_robots(offline, report_to: str) -> None:
    gw = offline()
    await finished_job(gw, "sent", report_to=report_to)
    await finished_job(gw, "failed", report_to=report_to, reason="the provider could not deliver the fax after 1 attempt")
    assert await gw.reporter.report_due() == 2
    rows = outbox_messages(gw)
    assert [r for r, _ in rows] == [(ADMIN,)]  # only the admin copy of the failure
    assert "gets no report" in text(rows[0][1])


def test_report_recipient() -> None:
    assert report_recipient("<alice@example.test>") == "alice@example.test"
    assert report_recipient(" bob@example.test ") == "bob@example.test"
    for bad in ("", "<>", "mailer-daemon@x.test", "POSTMASTER@x.test", "a b@x.test", "a@b@c.test", "x@y.test>, z@w.test"):
        assert report_recipient(bad) is None, bad


@pytest.mark.parametrize(
    ("attach", "state", "attached"),
    [("always", "sent", True), ("always", "failed", True), ("failures", "sent", False), ("failures", "failed", True),
     ("failures", "canceled", True), ("never", "sent", False), ("never", "failed", False)],
)
async def test_attach_document(offline, attach: str, state: str, attached: bool) -> None:
    gw = offline(attach_document=attach, preview=False)  # the picture: test_report_preview.py
    job_id = await finished_job(gw, state)
    await gw.reporter.report_due()
    for _, msg in outbox_messages(gw):
        parts = list(msg.iter_attachments())
        if attached:
            (part,) = parts
            assert part.get_filename() == f"fax-{job_id}.pdf" and part.get_content_type() == "application/pdf"
            assert part.get_payload(decode=True).startswith(b"%PDF-")
            assert f"A copy of the faxed document is attached (fax-{job_id}.pdf)." in text(msg)
        else:
            assert parts == [] and not msg.is_multipart()


async def test_missing_document_does_not_block_the_report(offline) -> None:
    gw = offline(attach_document="always")
    job_id = await finished_job(gw, "sent")
    job = await gw.job(job_id)
    gw.store.document_path(job.document).unlink()
    await gw.reporter.report_due()
    ((_, msg),) = outbox_messages(gw)
    assert "no longer stored" in text(msg) and list(msg.iter_attachments()) == []


@pytest.mark.parametrize(
    ("state", "reason", "subject_word", "status_line"),
    [
        ("rejected", "refused by the provider: File must be in tiff or pdf format", "rejected",
         "rejected - the fax was not accepted for sending: refused by the provider: File must be in tiff or pdf format"),
        ("unknown", "the provider no longer knows this fax; its outcome is unknown", "status unknown",
         "unknown - the provider no longer knows this fax; its outcome is unknown"),
        ("canceled", "canceled at the provider", "canceled", "canceled - the fax was canceled and will not be sent (canceled at the provider)"),
    ],
)
async def test_subjects_and_status_words(offline, state: str, reason: str, subject_word: str, status_line: str) -> None:
    gw = offline()
    await finished_job(gw, state, reason=reason)
    await gw.reporter.report_due()
    msg = outbox_messages(gw)[0][1]
    assert msg["Subject"] == f"Fax to {NUMBER} {subject_word}: Quarterly report"
    assert status_line in text(msg)


async def test_error_before_the_provider_says_so(offline) -> None:
    gw = offline()
    await finished_job(gw, "error", reason="the fax document is missing from the state directory", provider_id=None)
    await gw.reporter.report_due()
    msg = outbox_messages(gw)[0][1]
    assert "error - the fax could not be submitted: the fax document is missing from the state directory" in text(msg)
    assert "Provider fax id: -" in text(msg)


async def test_empty_subject_and_no_message_id(offline) -> None:
    gw = offline()
    await finished_job(gw, "sent", subject="", message_id="")
    await gw.reporter.report_due()
    msg = outbox_messages(gw)[0][1]
    assert msg["Subject"] == f"Fax to {NUMBER} sent"
    assert msg["In-Reply-To"] is None and msg["References"] is None


@pytest.mark.parametrize(
    "subject",
    [
        "Invoice\r\nBcc: victim@example.test\r\nX-Evil: 1",
        "Invoice\nBcc: victim@example.test",
        "Invoice\u2028Bcc: victim@example.test\u2029X-Evil: 1",
        "Invoice\x85Bcc: victim@example.test",
        "Счёт\r\n\r\nbody injection",
    ],
)
async def test_header_injection_from_the_original_subject(offline, subject: str) -> None:
    gw = offline()
    await finished_job(gw, "failed", subject=subject, message_id="<id@x.test>\r\nX-Evil: 2")
    assert await gw.reporter.report_due() == 1
    rows = gw.store.list_mail()
    assert len(rows) == 2
    for row in rows:
        head = row.message.split(b"\r\n\r\n", 1)[0]
        names = [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n") if line and not line[:1].isspace()]
        assert b"bcc" not in names and b"x-evil" not in names
        assert names.count(b"subject") == 1
        assert b"\r\n\r\nbody injection" not in row.message
    msg = outbox_messages(gw)[0][1]
    # (a long subject may be folded right after "Subject:"; unfolded it is one line)
    assert "\n" not in str(msg["Subject"]) and str(msg["Subject"]).strip().startswith(f"Fax to {NUMBER} failed: {subject[:4]}")
    assert msg["In-Reply-To"] is None  # a malformed Message-ID is not echoed
    # the subject line in the body is one line too
    line = next(line for line in text(msg).splitlines() if line.startswith("Subject:"))
    assert "victim@example.test" in line or "body injection" in line


async def test_exactly_once_across_restarts(offline, state_dir: Path, clock: OffsetClock) -> None:
    gw = offline()
    job_id = await finished_job(gw, "sent")
    assert await gw.reporter.report_due() == 1
    gw.rt.stopping.set()
    gw.store.close()
    again = offline()  # a new daemon run on the same state directory
    assert await again.reporter.report_due() == 0
    assert len(again.store.list_mail()) == 1
    assert (await again.job(job_id)).reported_at is not None


async def test_report_is_not_queued_for_a_job_reopened_meanwhile(offline) -> None:
    """queue_report is compare-and-set on finished_at: a `gatewayd retry`
    between planning and committing wins, and no stale report goes out."""
    gw = offline()
    job_id = await finished_job(gw, "failed")
    job = await gw.job(job_id)
    await gw.store.run(gw.store.transition, job_id, "submitted", "retried", expect=("failed",), finished_at=None, reported_at=None)
    assert await gw.store.run(gw.store.queue_report, job_id, job.finished_at, [("report", "a@b.test", ["c@d.test"], b"x", "")]) is False
    assert gw.store.list_mail() == []
    assert (await gw.job(job_id)).reported_at is None


async def test_two_stores_race_for_one_report(offline, state_dir: Path, clock: OffsetClock) -> None:
    """Two processes (two Store instances) settle the same job: one wins."""
    gw = offline()
    job_id = await finished_job(gw, "sent")
    job = await gw.job(job_id)
    other = Store(state_dir, clock=clock)
    try:
        mail = [("report", "a@b.test", ["c@d.test"], b"x", "")]
        first = other.queue_report(job_id, job.finished_at, mail)
        second = gw.store.queue_report(job_id, job.finished_at, mail)
    finally:
        other.close()
    assert (first, second) == (True, False)
    assert len(gw.store.list_mail()) == 1


async def test_one_bad_job_does_not_hold_up_the_others(offline, monkeypatch: pytest.MonkeyPatch) -> None:
    gw = offline()
    bad = await finished_job(gw, "sent")
    good = await finished_job(gw, "sent")
    real = Reporter._plan

    def plan(self: Reporter, job):  # type: ignore[no-untyped-def]
        if job.id == bad:
            raise RuntimeError("boom")
        return real(self, job)

    monkeypatch.setattr(Reporter, "_plan", plan)
    assert await gw.reporter.report_due() == 1
    assert (await gw.job(good)).reported_at is not None
    assert (await gw.job(bad)).reported_at is None  # tried again next time


async def test_the_attached_copy_has_the_recipients_own_cover(offline, tmp_path: Path) -> None:
    # What was faxed: this recipient's cover, then the shared attachments.
    import subprocess

    from support.reports import DST

    from gatewayd.documents.cover import CoverPage, render_cover
    from gatewayd.store import NewJob

    gw = offline(attach_document="always")
    store = gw.store
    body = render_cover(CoverPage("x@example.com", "shared", "today", "Attachment text", ""))
    cover = render_cover(CoverPage("alice@example.com", NUMBER, "today", "Cover subject", "", recipient_name="City Lab"), attachment_pages=1)
    body_sha = await store.run(store.save_document, body)
    cover_sha = await store.run(store.save_document, cover)
    new = NewJob(number=NUMBER, dst_num=DST, extension=122, report_to=SENDER, source="smtp", subject="Cover subject",
                 cover=cover_sha, cover_pages=1, cover_bytes=len(cover))
    (job_id,) = await store.run(store.enqueue_jobs, body_sha, 1, len(body), [new])
    await store.run(store.transition, job_id, "rejected", "refused by the provider: test")
    await gw.reporter.report_due()
    msg = next(m for r, m in outbox_messages(gw) if SENDER in r)
    (part,) = list(msg.iter_attachments())
    path = tmp_path / "attached.pdf"
    path.write_bytes(part.get_payload(decode=True))
    pages = subprocess.run(["pdftotext", "-enc", "UTF-8", str(path), "-"], check=True, capture_output=True).stdout.decode().split("\f")
    assert "City Lab" in pages[0] and NUMBER in pages[0] and "2 including this cover" in pages[0]
    assert "Attachment text" in pages[1]
