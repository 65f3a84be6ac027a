"""The cover page draws with a subset of DejaVu Sans made once per process
(Latin, Greek, Cyrillic, punctuation); a cover with any other character
draws with the whole font, so nothing the sender wrote is lost to the
subset. Checked with poppler's pdftotext, not with the code under test."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.corpus import pdftotext

from gatewayd.documents import cover
from gatewayd.documents.cover import CoverPage, render_cover


def test_cyrillic_and_greek_draw_with_the_subset(tmp_path: Path) -> None:
    text = "Счёт № 42 — Ελληνικά, «ćšž» 5 €"
    assert cover._COVER_FONT.path_for(text) != cover.FONT_PATH
    pdf = render_cover(CoverPage("Иван <ivan@example.com>", "+7 812 309-26-31", "today", text, "Прошу оплатить."))
    found = pdftotext(pdf, tmp_path)
    assert text in found and "Иван <ivan@example.com>" in found and "Прошу оплатить." in found


@pytest.mark.parametrize("extra", ["", " ✓", " " + "x" * 2001], ids=["quick", "whole font", "long body"])
def test_the_text_nb_is_shown_as_written(tmp_path: Path, extra: str) -> None:
    # fpdf2 replaces "{nb}" with the page count by default: a cover shows what the sender wrote.
    found = pdftotext(render_cover(CoverPage("a@example.com", "123", "today", "see {nb} pages", "{nb} copies" + extra)), tmp_path)
    assert "see {nb} pages" in found and "{nb} copies" in found


def test_a_character_outside_the_subset_draws_with_the_whole_font(tmp_path: Path) -> None:
    text = "Armenian Բարեւ, Georgian გამარჯობა"
    assert cover._COVER_FONT.path_for(text) == cover.FONT_PATH
    found = pdftotext(render_cover(CoverPage("a@example.com", "123", "today", text, "")), tmp_path)
    assert "Բարեւ" in found and "გამარჯობა" in found


def test_latin_text_draws_with_the_smallest_subset(tmp_path: Path) -> None:
    latin = cover._COVER_FONT.path_for("Invoice № 42 — café, 5 € «ok»")
    cyrillic = cover._COVER_FONT.path_for("Счёт № 42")
    assert latin.name.endswith("-latin.ttf") and cyrillic.name.endswith("-cover.ttf")
    assert latin.stat().st_size < cyrillic.stat().st_size < cover.FONT_PATH.stat().st_size
    found = pdftotext(render_cover(CoverPage("Zoë <zoe@example.com>", "+1 555 0100", "today", "Invoice № 42 — café", "5 € «ok»")), tmp_path)
    assert "Zoë <zoe@example.com>" in found and "Invoice № 42 — café" in found and "5 € «ok»" in found


def test_cjk_characters_come_from_the_fallback_font(tmp_path: Path) -> None:
    assert cover.CJK_FONT_PATH.is_file(), f"{cover.CJK_FONT_PATH} is missing: install fonts-wqy-zenhei (make test-deps)"
    found = pdftotext(render_cover(CoverPage("李雷 <li@example.com>", "+86 10 1234 5678", "today", "請求書 Счёт", "안녕하세요, こんにちは")), tmp_path)
    assert "李雷 <li@example.com>" in found and "請求書 Счёт" in found and "안녕하세요, こんにちは" in found


def test_glyph_boxes_kept_from_the_font_draw_the_same_cover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # cover_fonts tells fontTools not to recompute each glyph's box when the
    # subset is written (a third of a cover's time): the pages must come out
    # pixel for pixel as with the boxes recomputed (rendered by poppler).
    page = CoverPage("Zoë <zoe@example.com>", "+7 812 309-26-31", "today", "Счёт № 42 — Ελληνικά", "Please fax the attached document.\nБЁЖ ÆØÅ ß € ™ ﬁ")
    kept = render_cover(page)
    fonts = []
    real = cover.cover_fonts

    def recomputing(pdf: Any, text: str) -> None:
        real(pdf, text)
        for font in pdf.fonts.values():
            fonts.append(font.ttfont.recalcBBoxes)
            font.ttfont.recalcBBoxes = True

    monkeypatch.setattr(cover, "cover_fonts", recomputing)
    recomputed = render_cover(page)
    assert fonts == [False]  # what cover_fonts set
    images = []
    for name, pdf in (("kept", kept), ("recomputed", recomputed)):
        (tmp_path / f"{name}.pdf").write_bytes(pdf)
        subprocess.run(["pdftoppm", "-r", "150", "-gray", str(tmp_path / f"{name}.pdf"), str(tmp_path / name)], check=True)
        images.append(sorted(tmp_path.glob(f"{name}-*.pgm")))
    assert len(images[0]) == len(images[1]) == 1
    assert images[0][0].read_bytes() == images[1][0].read_bytes()


@pytest.mark.parametrize("subject, body", [
    ("Invoice № 42 — café", "Please fax the attached document.\n5 € «ok»"),
    ("Счёт № 42 — Ελληνικά", "Прошу оплатить счёт до пятницы.\n" + "С уважением, Иван. " * 300),  # two pages
])
def test_the_subset_embedded_whole_draws_what_fpdf2_s_own_subset_draws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, subject: str, body: str,
) -> None:
    # cover_writer embeds the subset file as it is instead of letting fpdf2
    # subset it again per cover (docs/performance.md, Issue 19): poppler must
    # render the same pixels and read the same text as from fpdf2's own writer.
    import pikepdf
    from fpdf.output import OutputProducer

    # fpdf2 draws both (a quick cover is otherwise written by cover_direct: tests/documents/test_cover_direct.py).
    monkeypatch.setattr(cover._COVER_FONT, "direct_font", lambda text: None)
    page = CoverPage("Zoë <zoe@example.com>", "+7 812 309-26-31", "today", subject, body)
    ours = render_cover(page)
    assert render_cover(page) == ours  # deterministic
    subset = cover._COVER_FONT.path_for(subject + body)
    assert subset != cover.FONT_PATH
    with pikepdf.open(io.BytesIO(ours)) as doc:
        files = [f["/DescendantFonts"][0]["/FontDescriptor"]["/FontFile2"] for f in doc.pages[0].Resources.Font.values()]
        assert [f.read_bytes() for f in files] == [subset.read_bytes()]  # the file itself, not a new subset
    monkeypatch.setattr(cover._COVER_FONT, "_writer", OutputProducer)
    theirs = render_cover(page)
    assert len(theirs) < len(ours)  # fpdf2's own: a fresh subset of the glyphs used
    images = []
    for name, pdf in (("ours", ours), ("theirs", theirs)):
        (tmp_path / f"{name}.pdf").write_bytes(pdf)
        subprocess.run(["pdftoppm", "-r", "150", "-gray", str(tmp_path / f"{name}.pdf"), str(tmp_path / name)], check=True)
        images.append([p.read_bytes() for p in sorted(tmp_path.glob(f"{name}-*.pgm"))])
    assert len(images[0]) == (1 if "café" in subject else 2)
    assert images[0] == images[1]
    assert pdftotext(ours, tmp_path) == pdftotext(theirs, tmp_path)


def test_covers_drawn_at_once_in_threads_are_the_covers_drawn_one_at_a_time() -> None:
    # Each cover copies one parsed font per process and renews what a
    # document changes (_CoverFont.add_to); covers are drawn in worker
    # threads, so two at once must not see each other's glyphs or streams.
    # A tiny switch interval makes the threads interleave inside fpdf2.
    import sys
    from concurrent.futures import ThreadPoolExecutor

    pages = [
        CoverPage("Zoë <zoe@example.com>", f"+7 812 309-26-{i:02d}", "today", subject, body * (1 + i % 3))
        for i, (subject, body) in enumerate([
            ("Invoice 42", "Please fax the attached document."),
            ("Счёт № 42", "Прошу оплатить счёт до пятницы."),
            ("Ελληνικά", "Καλημέρα, ορίστε το έγγραφο."),
            ("Quote", "Kind regards, ÆØÅ ß € ™ «ok»\n" * 40),
        ] * 4)
    ]
    alone = [render_cover(page) for page in pages]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(render_cover, pages * 3))
    finally:
        sys.setswitchinterval(interval)
    assert together == alone * 3


@pytest.mark.parametrize("subject, body", [
    ("Invoice 42", "Please fax the attached document."),
    ("A subject long enough to wrap onto a second line of the subject field, so it is wrapped by fpdf2", "x" * 95),
    ("Ärger → ok ✓ Ω Ж", "Ärger → ok ✓ Ω Ж"),  # the whole font, through fpdf2's own writer
])
def test_one_line_fields_drawn_as_cells_draw_what_fpdf2_s_line_breaking_draws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, subject: str, body: str,
) -> None:
    # A field or body that fits on one line is drawn as one cell, without
    # fpdf2's line breaking (docs/performance.md, Issue 19): poppler must
    # render the same pixels and read the same text as through multi_cell.
    # Through fpdf2 (quick covers are otherwise written by cover_direct).
    monkeypatch.setattr(cover._COVER_FONT, "direct_font", lambda text: None)
    page = CoverPage("Zoë <zoe@example.com>", "+7 812 309-26-31", "today", subject, body)
    cells = render_cover(page)
    monkeypatch.setattr(cover, "_one_line", lambda *args: False)
    broken = render_cover(page)
    images = []
    for name, pdf in (("cells", cells), ("broken", broken)):
        (tmp_path / f"{name}.pdf").write_bytes(pdf)
        subprocess.run(["pdftoppm", "-r", "150", "-gray", str(tmp_path / f"{name}.pdf"), str(tmp_path / name)], check=True)
        images.append([p.read_bytes() for p in sorted(tmp_path.glob(f"{name}-*.pgm"))])
    assert images[0] == images[1]
    assert pdftotext(cells, tmp_path) == pdftotext(broken, tmp_path)


@pytest.mark.parametrize("body, pages", [("Please fax the attached document.", 1), ("A long body line. " * 700, 2)])
def test_the_page_count_of_a_cover_is_the_count_of_its_pdf(body: str, pages: int) -> None:
    # build_parts takes a cover's page count from its layout instead of
    # opening the PDF again: it must be what the PDF holds.
    import pikepdf

    from gatewayd.documents.cover import render_cover_pages

    data, counted = render_cover_pages(CoverPage("a@example.com", "+15551234567", "today", "Subject", body))
    with pikepdf.open(io.BytesIO(data)) as pdf:
        assert counted == len(pdf.pages) == pages
