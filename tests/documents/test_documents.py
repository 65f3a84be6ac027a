"""build_document, tiff_to_pdf, the cover page and DocumentBuilder.

Page counts, sizes and text of what comes out are read with poppler
(pdfinfo, pdftotext, pdftoppm), independently of pikepdf/img2pdf.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pikepdf
import pytest
from PIL import Image

from gatewayd.documents import builder as builder_module
from gatewayd.documents import cover as cover_module
from gatewayd.documents.builder import MAX_FAX_BYTES, DocumentBuilder, FaxDocument, build_document
from gatewayd.documents.cover import CoverPage, render_cover, wants_cover
from gatewayd.documents.errors import (
    AttachmentRejected,
    ConversionError,
    DocumentTooLarge,
    NoFaxDocument,
)
from gatewayd.documents.geometry import PAGE_SIZES, is_fax_resolution
from gatewayd.documents.images import tiff_to_pdf
from gatewayd.documents.pdf import pdf_page_count
from gatewayd.email_to_fax.parse import Attachment, UnsupportedPart
from gatewayd.filekinds import sniff_kind
from gatewayd.refusal import IntakeRefused
from support.corpus import (
    PdfFacts,
    make_encrypted_pdf,
    make_fax_tiff,
    make_gs_pdf,
    make_image,
    make_multiframe_tiff,
    make_pdf,
    make_pdf_without_pages,
    make_pixel_bomb_png,
    make_tiff_bogus_dpi,
    make_truncated_pdf,
)

A4 = (595.28, 841.89)
A4_LANDSCAPE = (841.89, 595.28)
LETTER = (612.0, 792.0)

Facts = Callable[[bytes], PdfFacts]


def att(name: str, data: bytes) -> Attachment:
    kind = sniff_kind(data)
    assert kind is not None, name
    return Attachment(name, kind, data, "application/octet-stream")


def close(size: tuple[float, float], expected: tuple[float, float], tolerance: float = 1.0) -> bool:
    return abs(size[0] - expected[0]) <= tolerance and abs(size[1] - expected[1]) <= tolerance


COVER = CoverPage(
    sender="Иван Петров <ivan@example.com>",
    recipient="+7 812 309-26-31",
    date="Mon, 02 Jun 2025 10:00:00 +0300",
    subject="Счёт на оплату № 42",
    body="Добрый день!\n\nПрошу оплатить счёт до пятницы. Ελληνικά, Español.",
)


# ------------------------------------------------------------------ PDFs


def test_pdfs_are_merged_in_order(facts: Facts, text_of: Callable[[bytes], str]) -> None:
    doc = build_document([att("b.pdf", make_pdf(2, text="Beta")), att("a.pdf", make_pdf(3, text="Alpha"))], cover=None)
    assert isinstance(doc, FaxDocument)
    assert doc.pages == 5
    assert facts(doc.pdf).pages == 5
    text = text_of(doc.pdf)
    positions = [text.index(word) for word in ("Beta 1", "Beta 2", "Alpha 1", "Alpha 2", "Alpha 3")]
    assert positions == sorted(positions)
    assert doc.sha256 == hashlib.sha256(doc.pdf).hexdigest()


def test_same_input_gives_the_same_document(tmp_path: Path) -> None:
    attachments = [att("a.pdf", make_gs_pdf(tmp_path, 2)), att("b.jpg", make_image("JPEG", (400, 300)))]
    first = build_document(attachments, cover=COVER)
    second = build_document(attachments, cover=COVER)
    assert first.sha256 == second.sha256


def test_ghostscript_pdf_keeps_its_pages(tmp_path: Path, facts: Facts) -> None:
    doc = build_document([att("gs.pdf", make_gs_pdf(tmp_path, 4))], cover=None)
    found = facts(doc.pdf)
    assert found.pages == doc.pages == 4
    assert all(close(size, A4, 2) for size in found.page_sizes)


@pytest.mark.parametrize("user_password", ["", "s3cret"])
def test_encrypted_pdfs_are_refused(tmp_path: Path, user_password: str) -> None:
    data = make_encrypted_pdf(tmp_path, user_password=user_password)
    with pytest.raises(AttachmentRejected) as caught:
        build_document([att("locked.pdf", data)], cover=None)
    assert caught.value.reply == "554 5.6.0 locked.pdf: encrypted PDF"


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda tmp: make_truncated_pdf(tmp), "corrupt PDF"),
        (lambda tmp: b"%PDF-1.4\n" + b"\x00garbage" * 200, "corrupt PDF"),
        (lambda tmp: make_pdf(3)[:-200], "corrupt PDF"),
        (lambda tmp: make_pdf_without_pages(), "PDF has no pages"),
    ],
)
def test_broken_pdfs_are_refused(tmp_path: Path, make: Callable[[Path], bytes], why: str) -> None:
    with pytest.raises(AttachmentRejected) as caught:
        build_document([att("x.pdf", make(tmp_path)), att("ok.pdf", make_pdf(1))], cover=None)
    assert (caught.value.filename, caught.value.why) == ("x.pdf", why)


def test_pdf_page_count() -> None:
    assert pdf_page_count(make_pdf(7)) == 7
    with pytest.raises(ConversionError):
        pdf_page_count(b"not a pdf")


# ------------------------------------------- one plain PDF: kept as it is


def _with_revision(data: bytes) -> bytes:
    """``data`` (a PDF with a classic cross-reference table) with one incremental update appended."""
    with pikepdf.open(io.BytesIO(data)) as pdf:
        size, root = int(pdf.trailer.Size), pdf.Root.objgen
    previous = int(data.rsplit(b"startxref", 1)[1].split()[0])
    body = data if data.endswith(b"\n") else data + b"\n"
    obj = f"{size} 0 obj\n<< /Producer (second revision) >>\nendobj\n".encode()
    xref_at = len(body) + len(obj)
    tail = (f"xref\n{size} 1\n{len(body):010d} 00000 n \ntrailer\n<< /Size {size + 1} /Root {root[0]} {root[1]} R "
            f"/Info {size} 0 R /Prev {previous} >>\nstartxref\n{xref_at}\n%%EOF\n").encode()
    return body + obj + tail


def _with_bad_stream_length(data: bytes) -> bytes:
    """``data`` with its first stream's /Length wrong: qpdf opens it without a warning, reading the stream warns."""
    at = data.index(b"/Length ") + len(b"/Length ")
    end = at + len(data[at:].split(maxsplit=1)[0])
    return data[:at] + b"3".ljust(end - at) + data[end:]  # the same length: offsets stay right


def _with_catalog_entry(data: bytes) -> bytes:
    with pikepdf.open(io.BytesIO(data)) as pdf:
        pdf.Root.OpenAction = pikepdf.Array([pdf.pages[0].obj, pikepdf.Name.Fit])
        out = io.BytesIO()
        pdf.save(out)
        return out.getvalue()


def test_one_plain_pdf_without_cover_is_kept_byte_for_byte(tmp_path: Path, facts: Facts) -> None:
    for data in (make_pdf(3), make_gs_pdf(tmp_path, 2)):
        doc = build_document([att("a.pdf", data)], cover=None)
        assert doc.pdf == data
        assert doc.pages == facts(data).pages
        assert doc.sha256 == hashlib.sha256(data).hexdigest()


def test_a_pdf_with_a_cover_or_beside_another_is_rebuilt() -> None:
    data = make_pdf(2)
    assert build_document([att("a.pdf", data)], cover=COVER).pdf != data
    assert build_document([att("a.pdf", data), att("b.pdf", make_pdf(1))], cover=None).pages == 3


@pytest.mark.parametrize("change", [_with_revision, _with_catalog_entry], ids=["incremental update", "catalog action"])
def test_a_pdf_that_is_not_plain_is_rebuilt_from_its_pages(change: Callable[[bytes], bytes], facts: Facts) -> None:
    with pikepdf.open(io.BytesIO(make_pdf(2))) as pdf:  # a classic cross-reference table, no object streams
        out = io.BytesIO()
        pdf.save(out, object_stream_mode=pikepdf.ObjectStreamMode.disable)
    data = change(out.getvalue())
    with pikepdf.open(io.BytesIO(data)) as opened:
        assert not opened.get_warnings()  # a valid file: accepted, only not as it is
    doc = build_document([att("a.pdf", data)], cover=None)
    assert doc.pdf != data
    assert doc.pages == facts(doc.pdf).pages == 2
    with pikepdf.open(io.BytesIO(doc.pdf)) as rebuilt:
        assert "/OpenAction" not in rebuilt.Root
        assert b"second revision" not in doc.pdf


def test_a_damaged_object_found_only_by_reading_it_is_still_refused() -> None:
    data = _with_bad_stream_length(make_pdf(1))
    with pikepdf.open(io.BytesIO(data)) as opened:
        assert not opened.get_warnings()  # opening alone does not see it
    with pytest.raises(AttachmentRejected) as caught:
        build_document([att("x.pdf", data)], cover=None)
    assert caught.value.reply == "554 5.6.0 x.pdf: corrupt PDF"


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda tmp: make_encrypted_pdf(tmp, user_password=""), "encrypted PDF"),
        (lambda tmp: make_encrypted_pdf(tmp, user_password="s3cret"), "encrypted PDF"),
        (lambda tmp: make_truncated_pdf(tmp), "corrupt PDF"),
        (lambda tmp: make_pdf(3)[:-200], "corrupt PDF"),
        (lambda tmp: make_pdf_without_pages(), "PDF has no pages"),
    ],
)
def test_one_pdf_alone_gets_the_same_refusals(tmp_path: Path, make: Callable[[Path], bytes], why: str) -> None:
    with pytest.raises(AttachmentRejected) as caught:
        build_document([att("x.pdf", make(tmp_path))], cover=None)
    assert (caught.value.filename, caught.value.why) == ("x.pdf", why)


def test_one_pdf_alone_keeps_the_page_limit() -> None:
    with pytest.raises(DocumentTooLarge) as caught:
        build_document([att("a.pdf", make_pdf(11))], cover=None, max_pages=10)
    assert caught.value.reply == "552 5.3.4 fax document too large: 11 pages, limit 10"


# ------------------------------------------------------------------ images


@pytest.mark.parametrize("page_size", ["A4", "Letter"])
def test_images_fill_the_configured_page_keeping_orientation(page_size: str, facts: Facts) -> None:
    portrait = make_image("JPEG", (600, 900))
    landscape = make_image("PNG", (1200, 500))
    doc = build_document([att("p.jpg", portrait), att("l.png", landscape)], cover=None, page_size=page_size)
    found = facts(doc.pdf)
    width, height = PAGE_SIZES[page_size]
    assert found.pages == 2
    assert close(found.page_sizes[0], (width, height))
    assert close(found.page_sizes[1], (height, width))


def test_exif_rotated_photo_is_shown_upright(facts: Facts) -> None:
    # A phone photo: landscape pixels, EXIF orientation 6 (rotate 90 to view).
    img = Image.new("RGB", (900, 600), "white")
    exif = img.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", exif=exif)
    doc = build_document([att("phone.jpg", buffer.getvalue())], cover=None)
    assert close(facts(doc.pdf).page_sizes[0], A4)


def test_tiff_with_bogus_resolution_comes_out_a4(facts: Facts) -> None:
    doc = build_document([att("scan.tif", make_tiff_bogus_dpi())], cover=None)
    assert close(facts(doc.pdf).page_sizes[0], A4)


@pytest.mark.parametrize(("compression", "resolution"), [("g4", "204x196"), ("g3", "204x98"), ("g4", "408x391")])
def test_multipage_fax_tiffs_become_one_page_per_frame(
    tmp_path: Path, facts: Facts, compression: str, resolution: str
) -> None:
    data = make_fax_tiff(tmp_path, 4, compression=compression, resolution=resolution)
    doc = build_document([att("fax.tif", data)], cover=None, page_size="Letter")
    found = facts(doc.pdf)
    assert found.pages == doc.pages == 4
    assert all(close(size, LETTER) for size in found.page_sizes)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("alpha.png", make_image("PNG", (300, 200), mode="RGBA")),
        ("grey-alpha.png", make_image("PNG", (300, 200), mode="LA")),
        ("palette.gif", make_image("GIF", (300, 200), mode="P", transparency=0)),
        ("sixteen.png", make_image("PNG", (300, 200), mode="I;16")),
        ("pic.bmp", make_image("BMP", (300, 200))),
        ("bw.bmp", make_image("BMP", (300, 200), mode="1")),
        ("lossy.webp", make_image("WEBP", (300, 200))),
        ("lossless.webp", make_image("WEBP", (300, 200), mode="RGBA", lossless=True)),
        ("cmyk.jpg", make_image("JPEG", (300, 200), mode="CMYK")),
        ("grey.jpg", make_image("JPEG", (300, 200), mode="L")),
        ("grey.png", make_image("PNG", (300, 200), mode="L")),
        ("lzw.tif", make_image("TIFF", (300, 200), compression="tiff_lzw")),
        ("rgba.tif", make_image("TIFF", (300, 200), mode="RGBA")),
    ],
)
def test_every_image_kind_converts(name: str, data: bytes, facts: Facts) -> None:
    doc = build_document([att(name, data)], cover=None)
    found = facts(doc.pdf)
    assert found.pages == 1
    assert close(found.page_sizes[0], A4_LANDSCAPE)


def _render_grey(pdf: bytes, tmp_path: Path, dpi: int = 20) -> list[Image.Image]:
    path = tmp_path / "render.pdf"
    path.write_bytes(pdf)
    subprocess.run(["pdftoppm", "-r", str(dpi), "-gray", str(path), str(tmp_path / "page")], check=True)
    return [Image.open(p).convert("L") for p in sorted(tmp_path.glob("page*.pgm"))]


def test_transparency_is_flattened_onto_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (400, 300), (0, 0, 0, 0))  # fully transparent black
    img.paste((0, 0, 0, 255), (150, 100, 250, 200))  # an opaque black square in the middle
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    doc = build_document([att("logo.png", buffer.getvalue())], cover=None)
    [page] = _render_grey(doc.pdf, tmp_path)
    width, height = page.size
    assert page.getpixel((3, 3)) > 240  # transparent became white, not black
    assert page.getpixel((width // 2, height // 2)) < 20


@pytest.mark.parametrize(
    ("name", "data", "why"),
    [
        ("bomb.png", make_pixel_bomb_png(30_000, 30_000), "image too large (30000x30000 pixels, limit 40 megapixels)"),
        ("big.png", make_pixel_bomb_png(8_000, 6_000), "image too large (8000x6000 pixels, limit 40 megapixels)"),
        ("cut.jpg", make_image("JPEG", (800, 600))[:-300], "corrupt image"),
        ("cut.png", make_image("PNG", (800, 600))[:-40], "corrupt image"),
        ("junk.gif", b"GIF89a" + b"\x00" * 5, "corrupt image"),
        ("junk.tif", b"II*\x00\xff\xff\xff\x00", "unreadable TIFF"),
        ("cut.tif", make_multiframe_tiff(3)[:500], "unreadable TIFF"),
    ],
)
def test_bad_images_are_refused(name: str, data: bytes, why: str) -> None:
    with pytest.raises(AttachmentRejected) as caught:
        build_document([att(name, data)], cover=None)
    assert caught.value.why == why
    assert caught.value.reply == f"554 5.6.0 {name}: {why}"


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_images_in_pillows_warning_zone_are_refused_by_our_limit() -> None:
    with pytest.raises(AttachmentRejected, match=r"12000x10000 pixels"):
        build_document([att("huge.png", make_pixel_bomb_png(12_000, 10_000))], cover=None)


def test_image_just_under_the_pixel_limit_is_accepted(facts: Facts) -> None:
    doc = build_document([att("scan.png", make_pixel_bomb_png(6_000, 6_500))], cover=None)  # 39 MP, 1-bit
    assert facts(doc.pdf).pages == 1


def test_fax_resolutions() -> None:
    assert is_fax_resolution(204, 196) and is_fax_resolution(204, 98) and is_fax_resolution(203.2, 195.6)
    assert is_fax_resolution(300, 300) and is_fax_resolution(408, 391)
    assert not is_fax_resolution(72, 72) and not is_fax_resolution(1, 1) and not is_fax_resolution(96, 96)


# ------------------------------------------------------------------ tiff_to_pdf


def test_tiff_to_pdf_keeps_fax_pages_at_their_size(tmp_path: Path, facts: Facts) -> None:
    data = make_fax_tiff(tmp_path, 3, compression="g4", resolution="204x196")
    pdf, pages = tiff_to_pdf(data)
    found = facts(pdf)
    assert pages == found.pages == 3
    # ghostscript's A4 at 204x196: 1728 x 2292 pixels, i.e. 609.9 x 842 pt
    assert all(close(size, (1728 * 72 / 204, 2292 * 72 / 196)) for size in found.page_sizes)


@pytest.mark.parametrize("page_size", ["A4", "Letter"])
def test_tiff_to_pdf_forces_the_page_size_without_fax_resolution(page_size: str, facts: Facts) -> None:
    pdf, pages = tiff_to_pdf(make_tiff_bogus_dpi(), page_size)
    assert pages == 1
    assert close(facts(pdf).page_sizes[0], PAGE_SIZES[page_size])


@pytest.mark.parametrize("compression", ["g4", "g3"])
def test_tiff_to_pdf_renders_like_tiff2pdf(tmp_path: Path, compression: str) -> None:
    data = make_fax_tiff(tmp_path, 2, compression=compression, resolution="204x196")
    ours, _ = tiff_to_pdf(data)
    source = tmp_path / "fax.tif"
    source.write_bytes(data)
    subprocess.run(["tiff2pdf", "-o", str(tmp_path / "ref.pdf"), str(source)], check=True)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    mine = _render_grey(ours, tmp_path / "a")
    reference = _render_grey((tmp_path / "ref.pdf").read_bytes(), tmp_path / "b")
    assert len(mine) == len(reference) == 2
    for got, want in zip(mine, reference):
        assert got.size == want.size
        differing = sum(abs(a - b) > 64 for a, b in zip(got.tobytes(), want.tobytes()))
        assert differing <= got.width * got.height // 100  # same picture, not inverted or shifted
        assert min(got.tobytes()) < 64  # and there is ink on it


def test_tiff_to_pdf_refuses_what_it_cannot_read() -> None:
    for data in (b"", b"%PDF-1.4", b"II*\x00\x08\x00\x00\x00\x00\x00", make_multiframe_tiff(3)[:400]):
        with pytest.raises(ConversionError):
            tiff_to_pdf(data)
    assert issubclass(ConversionError, ValueError) and not issubclass(ConversionError, IntakeRefused)


def test_g4_tiff_keeps_every_page_and_its_g4_data(tmp_path: Path, facts: Facts) -> None:
    # How fast this is next to tiff2pdf is measured by bench/bench_documents.py, not here.
    data = make_fax_tiff(tmp_path, 20, compression="g4")
    pdf, pages = tiff_to_pdf(data)
    assert pages == facts(pdf).pages == 20
    with pikepdf.open(io.BytesIO(pdf)) as doc:
        for page in doc.pages:
            images = list(page.get_images().values())
            assert len(images) == 1
            assert images[0].Filter == pikepdf.Name.CCITTFaxDecode  # passed through, not re-encoded
            assert int(images[0].DecodeParms.K) < 0  # Group 4


def test_pdf_and_jpeg_build_into_one_a4_document(facts: Facts) -> None:
    # How fast this is, is measured by bench/bench_documents.py, not here.
    attachments = [att("a.pdf", make_pdf(5)), att("b.jpg", make_image("JPEG", (2480, 3508)))]
    doc = build_document(attachments, cover=None)
    found = facts(doc.pdf)
    assert doc.pages == found.pages == 6
    assert close(found.page_sizes[-1], A4)  # the 300 dpi A4 scan fills an A4 page


# ------------------------------------------------------------------ limits


def test_page_limit_counts_the_cover() -> None:
    build_document([att("a.pdf", make_pdf(9))], cover=COVER, max_pages=10)
    with pytest.raises(DocumentTooLarge) as caught:
        build_document([att("a.pdf", make_pdf(10))], cover=COVER, max_pages=10)
    assert caught.value.reply == "552 5.3.4 fax document too large: 11 pages, limit 10"


def test_page_limit_with_tiff_frames() -> None:
    with pytest.raises(DocumentTooLarge, match="12 pages, limit 10"):
        build_document([att("a.pdf", make_pdf(2)), att("f.tif", make_multiframe_tiff(10))], cover=None, max_pages=10)


def test_size_limit() -> None:
    photo = Image.effect_noise((1500, 1500), 100).convert("RGB")
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=95)
    with pytest.raises(DocumentTooLarge) as caught:
        build_document([att("noise.jpg", buffer.getvalue())], cover=None, max_bytes=100_000)
    # Re-rendered at fax resolution first (docs/documents.md, Too large): noise still does not fit.
    assert caught.value.what.endswith(" at fax resolution, limit 100000"), caught.value.what


def test_default_size_limit_is_the_providers_ten_million_bytes() -> None:
    # A valid PDF whose one page carries ~10 MB of (never decoded) stream data.
    pdf = pikepdf.new()
    pdf.add_blank_page(page_size=A4)
    filler = random.Random(7).randbytes(MAX_FAX_BYTES)
    pdf.pages[0].Contents = pdf.make_stream(filler, Filter=pikepdf.Name.FlateDecode)
    buffer = io.BytesIO()
    pdf.save(buffer)
    with pytest.raises(DocumentTooLarge) as caught:
        build_document([att("big.pdf", buffer.getvalue())], cover=None)
    # Its content cannot be rendered either (Ghostscript stops on the error), so it stays too large.
    assert caught.value.what.endswith(" bytes, limit 10000000 (Ghostscript could not render it)"), caught.value.what
    doc = build_document([att("big.pdf", buffer.getvalue())], cover=None, max_bytes=MAX_FAX_BYTES + 100_000)
    assert MAX_FAX_BYTES < len(doc.pdf) <= MAX_FAX_BYTES + 100_000


def test_nothing_to_fax() -> None:
    with pytest.raises(NoFaxDocument) as caught:
        build_document([], cover=None)
    assert caught.value.reply == "554 5.6.0 no fax document: no attachment of a supported type"
    unsupported = [UnsupportedPart("a.docx", "application/msword", "unsupported type application/msword")]
    with pytest.raises(NoFaxDocument) as caught:
        build_document([], cover=COVER, unsupported=unsupported)
    assert caught.value.why == "no attachment of a supported type (a.docx: unsupported type application/msword)"


def test_unknown_page_size_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        build_document([att("a.pdf", make_pdf(1))], cover=None, page_size="A5")


# ------------------------------------------------------------------ cover page


@pytest.mark.parametrize(
    ("mode", "body", "expected"),
    [("auto", "text", True), ("auto", "  \n ", False), ("always", "", True), ("never", "text", False)],
)
def test_wants_cover(mode: str, body: str, expected: bool) -> None:
    assert wants_cover(mode, body) is expected


def test_cover_page_comes_first_and_renders_cyrillic(facts: Facts, text_of: Callable[[bytes], str]) -> None:
    doc = build_document([att("a.pdf", make_pdf(2, text="Attachment"))], cover=COVER)
    assert doc.pages == facts(doc.pdf).pages == 3
    text = text_of(doc.pdf)
    for expected in ("FAX", "Иван Петров <ivan@example.com>", "+7 812 309-26-31", "Счёт на оплату № 42",
                     "Прошу оплатить счёт до пятницы.", "Ελληνικά", "3 including this cover"):
        assert expected in text
    assert text.index("Прошу") < text.index("Attachment 1")


def test_cover_only_fax(facts: Facts) -> None:
    doc = build_document([], cover=COVER, page_size="Letter")
    found = facts(doc.pdf)
    assert doc.pages == found.pages == 1
    assert close(found.page_sizes[0], LETTER)


def test_long_body_is_cut_to_two_cover_pages(tmp_path: Path, facts: Facts, text_of: Callable[[bytes], str]) -> None:
    body = "\n\n".join(f"Абзац {n}. " + "Длинный текст письма. " * 30 for n in range(200))
    pdf = render_cover(CoverPage("a@example.com", "123", "today", "long", body), attachment_pages=1)
    assert facts(pdf).pages == 2
    text = text_of(pdf)
    assert "Абзац 0." in text and "[… message truncated]" in text
    assert "3 including 2 cover pages" in text


def test_cover_survives_hostile_text(facts: Facts) -> None:
    hostile = CoverPage("\x00\x1b[31m<script>", "\u202e123", "", "x" * 5000, "😀 中文 \t tab \x07 bell " + "y" * 3000)
    assert facts(render_cover(hostile)).pages in (1, 2)


def test_missing_font_fails_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cover_module, "FONT_PATH", tmp_path / "missing.ttf")
    with pytest.raises(FileNotFoundError, match="fonts-dejavu-core"):
        build_document([], cover=COVER)


# ------------------------------------------------------------------ DocumentBuilder


async def test_builder_builds_in_a_thread() -> None:
    builder = DocumentBuilder()
    doc = await builder.build([att("a.pdf", make_pdf(2))], cover=None, page_size="A4", max_pages=10)
    assert doc.pages == 2
    with pytest.raises(DocumentTooLarge):
        await builder.build([att("a.pdf", make_pdf(3))], cover=None, page_size="A4", max_pages=2)


async def test_builder_builds_small_pdfs_inline_and_the_rest_in_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    real = builder_module.build_document

    def spy(*args: object, **kwargs: object) -> FaxDocument:
        threads.append(threading.get_ident())
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builder_module, "build_document", spy)
    pdf = make_pdf(1)
    builder = DocumentBuilder(inline_bytes=len(pdf))
    await builder.build([att("a.pdf", pdf)], cover=None)
    assert threads[-1] == threading.get_ident()  # small PDF: on the loop's thread
    await builder.build([att("a.pdf", pdf), att("b.pdf", pdf)], cover=None)
    assert threads[-1] != threading.get_ident()  # over inline_bytes in all
    await builder.build([att("a.pdf", pdf)], cover=COVER)
    assert threads[-1] != threading.get_ident()  # a cover page takes milliseconds
    await builder.build([att("p.png", make_image("PNG", (20, 20)))], cover=None)
    assert threads[-1] != threading.get_ident()  # images: decoding may take long
    assert len(threads) == 4


async def test_builder_draws_a_few_quick_covers_inline_and_the_rest_in_threads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Quick covers (cover.is_quick: per-process font subset, no logo, short
    # body) beside small PDFs are drawn on the loop's thread; anything else
    # with a cover (the CJK fallback font takes up to a second) in a thread.
    threads: list[int] = []
    real = builder_module.build_parts

    def spy(*args: object, **kwargs: object) -> object:
        threads.append(threading.get_ident())
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builder_module, "build_parts", spy)
    pdf = make_pdf(1)
    builder = DocumentBuilder(inline_bytes=len(pdf), inline_covers=2)
    latin = CoverPage("a@example.com", "+15551234567", "today", "Invoice 42", "Please fax the attached document.")
    render_cover(latin)  # the process's first cover makes and parses the subset (is_quick is False until then)
    parts = await builder.build_parts([att("a.pdf", pdf)], covers=[latin, latin])
    assert threads[-1] == threading.get_ident() and len(parts.covers) == 2  # quick: on the loop's thread
    await builder.build_parts([att("a.pdf", pdf)], covers=[latin] * 3)
    assert threads[-1] != threading.get_ident()  # more than inline_covers
    await builder.build_parts([att("a.pdf", pdf), att("b.pdf", pdf)], covers=[latin])
    assert threads[-1] != threading.get_ident()  # over inline_bytes in all
    await builder.build_parts([att("p.png", make_image("PNG", (20, 20)))], covers=[latin])
    assert threads[-1] != threading.get_ident()  # images: decoding may take long
    cjk = CoverPage("a@example.com", "+15551234567", "today", "請求書", "請求書を添付します。")
    await builder.build_parts([att("a.pdf", pdf)], covers=[cjk])
    assert threads[-1] != threading.get_ident()  # the CJK fallback font
    await DocumentBuilder(inline_bytes=len(pdf)).build_parts([att("a.pdf", pdf)], covers=[latin])
    assert threads[-1] != threading.get_ident()  # inline_covers is 0 unless asked for
    assert len(threads) == 6


def test_quick_covers_are_short_without_a_logo_and_drawn_with_a_subset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gatewayd.documents.cover import CoverLook, is_quick

    logo = tmp_path / "logo.png"
    Image.new("RGB", (20, 10), "white").save(logo)
    base = CoverPage("Zoë <zoe@example.com>", "+15551234567", "today", "Счёт № 42 — café", "Please fax it.")
    fresh = cover_module._CoverFont()
    monkeypatch.setattr(cover_module, "_COVER_FONT", fresh)
    assert not is_quick(base)  # a process's first cover makes and parses the subset (~0.4 s): in a thread
    fresh.path_for(base.subject)  # the subsets made, not yet parsed
    assert not is_quick(base)
    render_cover(base)
    assert is_quick(base)
    assert not is_quick(CoverPage(base.sender, base.recipient, base.date, base.subject, "x" * 2001))
    assert not is_quick(CoverPage(base.sender, base.recipient, base.date, base.subject, base.body, look=CoverLook(logo=str(logo))))
    assert not is_quick(CoverPage(base.sender, base.recipient, base.date, base.subject, "請求書"))  # CJK fallback
    assert not is_quick(CoverPage(base.sender, base.recipient, base.date, base.subject, "✓"))  # the whole DejaVu
    assert not is_quick(CoverPage(base.sender, base.recipient, base.date, base.subject, base.body,
                                  look=CoverLook(organisation="ACME ✓")))


async def test_builder_bounds_concurrency_even_when_callers_give_up(monkeypatch: pytest.MonkeyPatch) -> None:
    lock = threading.Lock()
    running = 0
    peak = 0
    release = threading.Event()

    def slow_build(*args: object, **kwargs: object) -> FaxDocument:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(5)
        with lock:
            running -= 1
        return FaxDocument(b"%PDF", 1, "0" * 64)

    monkeypatch.setattr(builder_module, "build_document", slow_build)
    builder = DocumentBuilder(max_concurrent=2)
    tasks = [asyncio.create_task(builder.build([], cover=None, page_size="A4", max_pages=1)) for _ in range(5)]
    await asyncio.sleep(0.2)
    assert peak == 2
    # Cancelled callers do not free their slot while their thread still runs.
    tasks[0].cancel()
    tasks[1].cancel()
    await asyncio.sleep(0.2)
    assert peak == 2
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, FaxDocument) for r in results) == 3
    assert peak == 2
