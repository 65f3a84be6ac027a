"""The picture of a received fax's first page inline in its email ([mail].preview, docs/inbound.md)."""

from __future__ import annotations

import io

from PIL import Image
from support.inbound import attachments, body_text, by_uuid

from gatewayd.documents.preview import EMAIL_WIDTH


def inline_png(msg) -> Image.Image:  # type: ignore[no-untyped-def]
    html_part = msg.get_body(preferencelist=("html",))
    assert html_part is not None
    [image] = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert f'src="cid:{image["Content-ID"].strip("<>")}"' in html_part.get_content()
    return Image.open(io.BytesIO(image.get_payload(decode=True)))


async def test_received_fax_email_shows_the_first_page(sim, sink, make_harness, faxes):
    sim.extensions[122].fax_mailto = "alice@x.test"
    tiff = sim.inject_received(122, faxes["g4"].data, caller_id="<b>74951234567</b>")
    pdf = sim.inject_received(122, faxes["pdf"].data)
    h = await make_harness(inbound={"attach": "tiff"})  # a TIFF only: drawn from it all the same
    await h.cycle()
    mails = by_uuid(sink.messages)
    for uuid in (tiff, pdf):
        msg = mails[uuid][0].message
        picture = inline_png(msg)
        assert picture.width == EMAIL_WIDTH and picture.mode == "L"
        assert "A fax was received." in body_text(msg)
        assert len(attachments(msg)) == 1  # the fax file as configured; the picture is not an attachment
    html = mails[tiff][0].message.get_body(preferencelist=("html",)).get_content()
    assert "&lt;b&gt;74951234567&lt;/b&gt;" in html and "<b>" not in html  # the caller id is escaped


async def test_preview_off_and_undrawable_faxes_give_the_text_only_email(sim, sink, make_harness, faxes):
    sim.extensions[122].fax_mailto = "alice@x.test"
    damaged = sim.inject_received(122, b"%PDF-1.4\n" + b"\x00 not a real PDF " * 50)
    h = await make_harness()
    await h.cycle()
    msg = by_uuid(sink.messages)[damaged][0].message
    assert msg.get_body(preferencelist=("html",)) is None  # cannot be drawn: relayed without the picture
    assert [p.get_content_type() for p in msg.iter_parts()][0] == "text/plain"
    assert len(attachments(msg)) == 1

    good = sim.inject_received(122, faxes["pdf"].data)
    h2 = await make_harness(mail={"preview": False})
    await h2.cycle()
    msg = by_uuid(sink.messages)[good][0].message
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "application/pdf"]
