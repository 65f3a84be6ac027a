"""A quick cover is written without fpdf2 (gatewayd/documents/cover_direct.py):
poppler must render it to the same pixels and read the same text as the
cover fpdf2 draws, with the same page count, and the PDF must be sound
(pikepdf opens it without repair, qpdf --check passes). Checked with
poppler and qpdf, not with the code under test."""

from __future__ import annotations

import io
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.documents import cover, cover_direct
from gatewayd.documents.cover import CoverLook, CoverPage, is_quick, render_cover_pages

LOOK = CoverLook(
    organisation="Müller & Partner GmbH — Steuerberatung",
    phone="+49 30 1234 5678",
    notice="CONFIDENTIAL: this fax is meant for the person named above only. If you received it in error, "
           "call us at once and destroy it.\nThank you.",
)
LONG_FIELD = "A subject long enough to wrap onto a second line of the subject field, so it is wrapped " * 3
PARAGRAPH = "Please find attached the signed contract. Regards, Alice.\n"

# Every kind of quick cover the daemon draws: Latin and Cyrillic, one line
# and many, the office's letterhead and notice or not, A4 and Letter, fields
# that wrap, a word longer than the line, bodies near 2,000 characters, two pages.
COVERS = [
    (CoverPage("Alice <alice@example.com>", "+7 812 309-26-31", "Mon, 1 Jan 2024 12:00:00 +0000", "Invoice 42",
               "Please fax the attached document."), "A4", 3),
    (CoverPage("Zoë <zoe@example.com>", "+15551234567", "today", "Invoice № 42 — café", "5 € «ok»\nSecond line\n\n  indented",
               recipient_name="Bob Smith", look=LOOK), "Letter", 1),
    (CoverPage("Иван <ivan@example.com>", "+7 812 309-26-31", "сегодня", "Счёт № 42 — Ελληνικά",
               "Прошу оплатить счёт до пятницы.\nС уважением, Иван.", recipient_name="ООО «Ромашка»", look=LOOK), "A4", 0),
    (CoverPage("a@example.com" * 12, "1" * 40, "today", LONG_FIELD, "word " * 390, recipient_name=LONG_FIELD), "A4", 2),
    (CoverPage("a@example.com", "+15551234567", "", "", "x" * 1999), "Letter", 0),  # one word longer than the line
    (CoverPage("a@example.com", "+15551234567", "today", "Lines", "line\n" * 398 + "the end", look=LOOK), "A4", 5),  # two pages, cut
    (CoverPage("a@example.com", "+15551234567", "today", "Lines", PARAGRAPH * 34), "Letter", 0),  # two pages
    (CoverPage("a@example.com", "+15551234567", "today", "Spaces", "a  b   c    " * 150 + "\n\n\n  spaced   "), "A4", 0),
    (CoverPage("a@example.com", "+15551234567", "today", "Empty body", "", look=CoverLook(phone="+1 555 0100")), "A4", 1),
    (CoverPage("a@example.com", "+15551234567", "today", "Organisation only", "Hi",
               look=CoverLook(organisation="ACME", notice=("Notice line. " * 8 + "\n") * 14)), "Letter", 1),
]


@contextmanager
def fpdf2_only() -> Iterator[None]:
    """Every cover drawn by fpdf2, as before cover_direct."""
    with mock.patch.object(cover._COVER_FONT, "direct_font", lambda text: None):
        yield


@contextmanager
def counting_direct() -> Iterator[list[int]]:
    """A list that gets an item for each cover written by ``cover_direct``."""
    made: list[int] = []
    real = cover_direct.DirectCanvas

    def spy(*args: object, **kwargs: object) -> cover_direct.DirectCanvas:
        made.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    with mock.patch.object(cover_direct, "DirectCanvas", spy):
        yield made


def direct_and_fpdf2(page: CoverPage, page_size: str, attachment_pages: int) -> tuple[tuple[bytes, int], tuple[bytes, int]]:
    render_cover_pages(page, page_size=page_size)  # a process's first cover makes and parses the subset
    assert is_quick(page)
    with counting_direct() as made:
        direct = render_cover_pages(page, page_size=page_size, attachment_pages=attachment_pages)
    assert made == [1], "the quick cover was not written by cover_direct"
    with fpdf2_only():
        drawn = render_cover_pages(page, page_size=page_size, attachment_pages=attachment_pages)
    return direct, drawn


def poppler(pdf: bytes, directory: Path, name: str) -> tuple[list[bytes], str]:
    path = directory / f"{name}.pdf"
    path.write_bytes(pdf)
    subprocess.run(["pdftoppm", "-r", "150", "-gray", str(path), str(directory / name)], check=True)
    images = [p.read_bytes() for p in sorted(directory.glob(f"{name}-*.pgm"))]
    text = subprocess.run(["pdftotext", "-layout", "-enc", "UTF-8", str(path), "-"], check=True, capture_output=True).stdout
    return images, text.decode("utf-8")


def assert_same_cover(page: CoverPage, page_size: str, attachment_pages: int, directory: Path) -> None:
    (direct, direct_pages), (drawn, drawn_pages) = direct_and_fpdf2(page, page_size, attachment_pages)
    assert direct != drawn
    assert direct_pages == drawn_pages
    direct_images, direct_text = poppler(direct, directory, "direct")
    drawn_images, drawn_text = poppler(drawn, directory, "fpdf2")
    assert len(direct_images) == len(drawn_images) == direct_pages
    assert direct_images == drawn_images  # the same pixels, page by page
    assert direct_text == drawn_text


@pytest.mark.parametrize("page, page_size, attachment_pages", COVERS)
def test_a_quick_cover_written_directly_is_the_cover_fpdf2_draws(
    tmp_path: Path, page: CoverPage, page_size: str, attachment_pages: int,
) -> None:
    assert_same_cover(page, page_size, attachment_pages, tmp_path)


def test_the_covers_include_one_and_two_pages_and_every_part_of_the_layout() -> None:
    # The list above must keep covering what it claims to.
    pages = {render_cover_pages(page, page_size=size, attachment_pages=n)[1] for page, size, n in COVERS}
    assert pages == {1, 2}
    assert {size for _, size, _ in COVERS} == {"A4", "Letter"}
    assert any(p.look.notice for p, _, _ in COVERS) and any(not p.look.notice for p, _, _ in COVERS)
    assert any(p.look.organisation for p, _, _ in COVERS) and any(p.look.phone and not p.look.organisation for p, _, _ in COVERS)
    assert any(1950 <= len(p.body) <= 2000 for p, _, _ in COVERS)


def _subset_characters(name: str) -> str:
    made = cover._COVER_FONT._made.get(name)
    if made is None:
        cover._COVER_FONT.path_for("Ж")  # makes both subsets (Cyrillic is only in the larger)
        made = cover._COVER_FONT._made[name]
    assert made is not None, "the cover font subset could not be made"
    return "".join(sorted(made[1] - {"\n"}))


def _covers(alphabet: str) -> st.SearchStrategy[tuple[CoverPage, str, int]]:
    field = st.text(alphabet, max_size=120)
    body = st.one_of(
        st.text(alphabet + "\n   ", max_size=700),
        st.lists(st.text(alphabet + "  ", max_size=40), max_size=160).map("\n".join),  # many short lines: two pages
    ).filter(lambda text: len(text) <= 2000)
    look = st.builds(CoverLook, organisation=st.one_of(st.just(""), field), phone=st.one_of(st.just(""), field),
                     notice=st.one_of(st.just(""), st.text(alphabet + "\n", max_size=400)))
    page = st.builds(CoverPage, sender=field, recipient=field, date=field, subject=field, body=body,
                     recipient_name=st.one_of(st.just(""), field), look=look)
    return st.tuples(page, st.sampled_from(["A4", "Letter"]), st.integers(0, 3))


# pdftoppm takes ~0.1 s a page: a few examples, each checked by poppler.
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_covers_made_of_the_subset_s_characters_are_the_covers_fpdf2_draws(data: st.DataObject) -> None:
    alphabet = _subset_characters(data.draw(st.sampled_from(["latin", "cover"])))
    page, page_size, attachment_pages = data.draw(_covers(alphabet))
    with tempfile.TemporaryDirectory() as directory:
        assert_same_cover(page, page_size, attachment_pages, Path(directory))


def test_what_is_not_quick_is_left_to_fpdf2(tmp_path: Path) -> None:
    from PIL import Image

    logo = tmp_path / "logo.png"
    Image.new("RGB", (20, 10), "white").save(logo)
    base = CoverPage("a@example.com", "+15551234567", "today", "Invoice 42", "Please fax the attached document.")
    render_cover_pages(base)
    with counting_direct() as made:
        render_cover_pages(base)
        assert made == [1]
        for page in (
            CoverPage(base.sender, base.recipient, base.date, base.subject, "x" * 2001),  # a long body
            CoverPage(base.sender, base.recipient, base.date, base.subject, base.body, look=CoverLook(logo=str(logo))),
            CoverPage(base.sender, base.recipient, base.date, base.subject, "✓"),  # the whole DejaVu
        ):
            render_cover_pages(page)
        assert made == [1]


@pytest.mark.parametrize("page, page_size, attachment_pages", [COVERS[1], COVERS[6]])
def test_a_cover_written_directly_is_a_sound_pdf(tmp_path: Path, page: CoverPage, page_size: str, attachment_pages: int) -> None:
    import pikepdf

    (data, pages), _ = direct_and_fpdf2(page, page_size, attachment_pages)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pikepdf.open(io.BytesIO(data)) as pdf:
            for obj in pdf.objects:  # every object parsed, every stream decoded: qpdf warns of anything it repairs
                if isinstance(obj, pikepdf.Stream):
                    obj.read_bytes()
            assert pdf.get_warnings() == []
            assert len(pdf.pages) == pages
            assert pdf.pages[0].MediaBox == (pikepdf.Array([0, 0, 595.28, 841.89]) if page_size == "A4"
                                             else pikepdf.Array([0, 0, 612, 792]))
            fonts = [f["/DescendantFonts"][0]["/FontDescriptor"]["/FontFile2"] for f in pdf.pages[0].Resources.Font.values()]
            assert [f.read_bytes() for f in fonts] == [cover._COVER_FONT.path_for(page.body).read_bytes()]
    path = tmp_path / "cover.pdf"
    path.write_bytes(data)
    checked = subprocess.run(["qpdf", "--check", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "No syntax or stream encoding errors found" in checked.stdout
