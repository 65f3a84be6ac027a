"""Outlook's winmail.dat and forwarded messages: the files inside are faxed as if attached directly, in order (docs/documents.md)."""

from __future__ import annotations

import io
import struct
from email.message import EmailMessage
from pathlib import Path

import pikepdf
import pytest
from support.e2f import DOMAIN, NUMBER_1, SENDER, RawSMTP, load
from support.office import WORDS, pdftotext, run_office_gateway
from support.office import _sent

from gatewayd.documents.cover import CoverPage, render_cover
from gatewayd.email_to_fax.errors import AttachmentRejected
from gatewayd.email_to_fax.parse import parse_message

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


def _tnef_object(level: int, attr_id: int, attr_type: int, data: bytes) -> bytes:
    """One TNEF attribute ([MS-OXTNEF] 2.1.3.1): level, id, type, length, data, checksum (sum of the data bytes mod 65536)."""
    return struct.pack("<BHHI", level, attr_id, attr_type, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)


def make_tnef(files: list[tuple[str, bytes]], *, rtf_body: bytes = b"{\\rtf1 body that must not be faxed}") -> bytes:
    """A minimal winmail.dat, written by hand from the spec: version, code page, an RTF-ish body, then each attachment."""
    out = struct.pack("<IH", 0x223E9F78, 0x0001)  # signature, legacy key
    out += _tnef_object(1, 0x9006, 0x0008, struct.pack("<I", 0x00010000))  # attTnefVersion
    out += _tnef_object(1, 0x9007, 0x0006, struct.pack("<II", 1252, 0))  # attOemCodepage
    out += _tnef_object(1, 0x800C, 0x0002, rtf_body)  # attBody (text): the message body, not a file
    for name, data in files:
        out += _tnef_object(2, 0x9002, 0x0006, struct.pack("<HIHHI", 1, 0xFFFFFFFF, 0, 0, 0))  # attAttachRendData
        out += _tnef_object(2, 0x8010, 0x0001, name.encode("cp1252") + b"\x00")  # attAttachTitle
        out += _tnef_object(2, 0x800F, 0x0006, data)  # attAttachData
    return out


def _pdf(words: str, pages: int = 1) -> bytes:
    data = render_cover(CoverPage("a", "b", "c", words, ""), page_size="A4", attachment_pages=1)
    if pages == 1:
        return data
    with pikepdf.open(io.BytesIO(data)) as one:
        out = pikepdf.new()
        for _ in range(pages):
            out.pages.extend(one.pages)
        buf = io.BytesIO()
        out.save(buf)
        return buf.getvalue()


def _message(build) -> bytes:  # type: ignore[no-untyped-def]
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = f"{NUMBER_1}@{DOMAIN}"
    msg["Subject"] = "outlook"
    msg.set_content("\n")
    build(msg)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def test_winmail_dat_files_become_attachments_in_order() -> None:
    first, second = _pdf("Tnef first giraffe"), _pdf("Tnef second okapi", pages=2)
    raw = _message(lambda m: m.add_attachment(make_tnef([("first.pdf", first), ("notes.xyz", b"\x00\x01binary"), ("second.pdf", second)]),
                                              maintype="application", subtype="ms-tnef", filename="winmail.dat"))
    parsed = parse_message(raw)
    assert [(a.filename, a.kind, a.data) for a in parsed.attachments] == [("first.pdf", "pdf", first), ("second.pdf", "pdf", second)]
    assert [u.filename for u in parsed.unsupported] == ["notes.xyz"]
    assert parsed.body_text == ""  # the RTF body is not the message's text


def test_a_broken_winmail_dat_is_refused_by_name() -> None:
    raw = _message(lambda m: m.add_attachment(b"\x78\x9f\x3e\x22garbage", maintype="application", subtype="ms-tnef", filename="winmail.dat"))
    with pytest.raises(AttachmentRejected, match="winmail.dat: unreadable winmail.dat|winmail.dat: winmail.dat without attachments"):
        parse_message(raw)


def _forward(inner_files: list[tuple[str, bytes]], *, nested: bytes | None = None) -> bytes:
    inner = EmailMessage()
    inner["From"] = "bob@example.org"
    inner["Subject"] = "the original"
    inner.set_content("inner text is not faxed\n")
    for name, data in inner_files:
        inner.add_attachment(data, maintype="application", subtype="pdf", filename=name)
    if nested is not None:
        inner.add_attachment(_inner_eml(nested), filename="deeper.eml")
    return _message(lambda m: m.add_attachment(inner, filename="fwd.eml"))


def _inner_eml(pdf: bytes) -> EmailMessage:
    deeper = EmailMessage()
    deeper["Subject"] = "two levels down"
    deeper.set_content("x\n")
    deeper.add_attachment(pdf, maintype="application", subtype="pdf", filename="deep.pdf")
    return deeper


def test_a_forwarded_message_gives_its_attachments_one_level_deep() -> None:
    a, b, deep = _pdf("Forward alpha"), _pdf("Forward beta"), _pdf("Too deep")
    parsed = parse_message(_forward([("a.pdf", a), ("b.pdf", b)], nested=deep))
    assert [(x.filename, x.data) for x in parsed.attachments] == [("a.pdf", a), ("b.pdf", b)]
    assert [(u.filename, u.declared_type) for u in parsed.unsupported] == [("deeper.eml", "message/rfc822")]
    assert "inner text" not in parsed.body_text


async def test_a_winmail_dat_holding_a_pdf_arrives_as_that_pdfs_pages(tmp_path: Path, sim, sim_data, documents) -> None:
    pdf = _pdf("Tnef walrus pages", pages=2)
    raw = _message(lambda m: m.add_attachment(make_tnef([("scan.pdf", pdf), ("letter.rtf", documents["rtf"])]),
                                              maintype="application", subtype="ms-tnef", filename="winmail.dat"))
    config = load(tmp_path, sim_data)
    async with run_office_gateway(config, sim=sim) as (gw, _converter):
        client = await RawSMTP.connect(gw.port)
        try:
            _, _, reply = await client.send(raw)
        finally:
            await client.close()
        assert reply.startswith("250"), reply
        (fax,) = await _sent(sim, gw, [int(reply.rsplit(" ", 1)[-1])])
    with pikepdf.open(io.BytesIO(fax.document)) as out:
        assert len(out.pages) == 3  # the PDF's two pages, then the RTF's one
    text = " ".join(pdftotext(fax.document, tmp_path).split())
    assert text.index("Tnef walrus pages") < text.index(WORDS["rtf"]), text
    assert "must not be faxed" not in text
