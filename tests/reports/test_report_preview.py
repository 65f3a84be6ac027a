"""The picture of the first page inline in status reports ([mail].preview, docs/reports.md)."""

from __future__ import annotations

import io
from collections.abc import Callable
from email.message import EmailMessage

from PIL import Image
from support.reports import SENDER, Gateway, finished_job, outbox_messages

from gatewayd.documents.preview import EMAIL_WIDTH
from gatewayd.mailsink import MailSink
from gatewayd.provider.simulator import ProviderSimulator
from gatewayd.store import SENDING


def inline_preview(msg: EmailMessage) -> Image.Image:
    """The inline PNG, checked to be the one the HTML part shows (by its Content-ID), and nothing remote."""
    assert msg.get_content_type() in ("multipart/mixed", "multipart/alternative")
    html_part = msg.get_body(preferencelist=("html",))
    assert html_part is not None
    related = [p for p in msg.walk() if p.get_content_type() == "multipart/related"]
    assert len(related) == 1
    [image] = [p for p in related[0].iter_parts() if p.get_content_type() == "image/png"]
    cid = image["Content-ID"].strip("<>")
    html = html_part.get_content()
    assert f'src="cid:{cid}"' in html
    assert "http:" not in html and "https:" not in html and "<script" not in html
    png = image.get_payload(decode=True)
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG"
    return picture


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content()


async def test_report_through_the_relay_shows_the_first_page(gateway: Gateway, sim: ProviderSimulator, sink: MailSink) -> None:
    gw = gateway.start()
    job_id = await gw.submit()
    sim.clock.advance(1.5)
    await gw.wait_job(job_id, lambda j: j.state == SENDING)
    sim.clock.advance(3)
    await gw.wait_job(job_id, lambda j: j.reported_at is not None)
    (mail,) = await sink.wait_for(1)
    msg = mail.message
    picture = inline_preview(msg)
    assert picture.width == EMAIL_WIDTH and picture.height > picture.width  # a portrait page
    assert picture.mode == "L"  # greyscale
    assert [p for p in msg.iter_attachments()] == []  # attach_document = "failures": no PDF, the picture is not one
    assert "Your fax to " in text_of(msg)


async def test_failure_report_has_the_picture_and_the_pdf_and_the_same_text(offline: Callable[..., Gateway]) -> None:
    gw = offline(admin=("admin@gw.test",))
    job_id = await finished_job(gw, "failed")
    assert await gw.reporter.report_due() == 1
    shown = outbox_messages(gw)
    assert [r for r, _ in shown] == [(SENDER,), ("admin@gw.test",)]
    for _, msg in shown:
        assert inline_preview(msg).width == EMAIL_WIDTH
        [pdf] = list(msg.iter_attachments())
        assert pdf.get_filename() == f"fax-{job_id}.pdf" and pdf.get_content_type() == "application/pdf"
    # The HTML carries the same words, escaped.
    html = shown[0][1].get_body(preferencelist=("html",)).get_content()
    assert "Your fax to" in html and "-&gt; failed" in html


async def test_preview_off_gives_the_text_only_shape(offline: Callable[..., Gateway]) -> None:
    gw = offline(preview=False)
    await finished_job(gw, "failed")
    assert await gw.reporter.report_due() == 1
    shown = outbox_messages(gw)
    assert len(shown) == 2  # the sender and the administrators
    for _, msg in shown:
        assert msg.get_content_type() == "multipart/mixed"
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "application/pdf"]


async def test_a_document_that_cannot_be_drawn_still_gets_its_report(offline: Callable[..., Gateway]) -> None:
    gw = offline(attach_document="never")
    job_id = await finished_job(gw, "sent")
    job = await gw.job(job_id)
    # The stored document is damaged: the report goes, without the picture.
    gw.store.document_path(job.document).write_bytes(b"%PDF-1.4 not really")
    assert await gw.reporter.report_due() == 1
    [(_, msg)] = outbox_messages(gw)
    assert msg.get_content_type() == "text/plain"
    assert "Your fax to" in msg.get_content()


async def test_stored_document_is_drawn_when_not_attached(offline: Callable[..., Gateway]) -> None:
    gw = offline(attach_document="never")
    await finished_job(gw, "sent")
    assert await gw.reporter.report_due() == 1
    [(_, msg)] = outbox_messages(gw)
    assert inline_preview(msg).width == EMAIL_WIDTH
    assert list(msg.iter_attachments()) == []
