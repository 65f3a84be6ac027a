"""The fax as it is submitted: a recipient's cover joined to the shared attachments, with the page header line stamped on every page.

Intake stores the attachments once and each recipient's cover apart
(docs/architecture.md, Storage layout); the sender joins them just before
the POST. ``documents.header`` is stamped at that moment, as a fax machine
prints its TSI line when it transmits (docs/documents.md, Page header line).
Streams are copied, never decoded (gatewayd/documents/pdf.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from io import BytesIO

import pikepdf

from gatewayd.documents.pdf import save_pdf
from gatewayd.headerformat import HEADER_FIELDS, MAX_HEADER_CHARS, HeaderFormatError, check_header_format

__all__ = ["HEADER_FIELDS", "HeaderFormatError", "assemble_fax", "check_header_format", "header_line"]

_HEADER_PT = 8.0  # font size
_HEADER_TOP_PT = 10.0  # from the top edge to the text's baseline area


def header_line(fmt: str, values: Mapping[str, str], page: int, pages: int) -> str:
    """The header of page ``page`` (from 1) of ``pages``; ``fmt`` was checked at load."""
    text = fmt.format(**{**values, "page": str(page), "pages": str(pages)})
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text[:MAX_HEADER_CHARS]


def assemble_fax(parts: Sequence[bytes], *, header: str = "", values: Mapping[str, str] | None = None) -> bytes:
    """``parts`` (PDFs: the cover, then the attachments) as one PDF, ``header`` stamped on every page.

    With one part and no header the part is returned as it is.
    """
    if len(parts) == 1 and not header:
        return parts[0]
    opened: list[pikepdf.Pdf] = []
    try:
        out = pikepdf.new()
        opened.append(out)
        for data in parts:
            pdf = pikepdf.open(BytesIO(data))
            opened.append(pdf)
            out.pages.extend(pdf.pages)
        if header:
            total = len(out.pages)
            lines = [header_line(header, values or {}, n + 1, total) for n in range(total)]
            sizes = [_page_box(page) for page in out.pages]
            stamps = pikepdf.open(BytesIO(_header_pages(lines, sizes)))
            opened.append(stamps)
            for page, stamp in zip(out.pages, stamps.pages, strict=True):
                page.add_overlay(stamp, rect=pikepdf.Rectangle(*_page_box(page, corners=True)))
        return save_pdf(out)
    finally:
        for pdf in opened:
            pdf.close()


def _page_box(page: pikepdf.Page, *, corners: bool = False) -> tuple[float, ...]:
    x0, y0, x1, y1 = (float(v) for v in page.mediabox)
    if corners:
        return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    return (abs(x1 - x0), abs(y1 - y0))


def _header_pages(lines: Sequence[str], sizes: Sequence[tuple[float, ...]]) -> bytes:
    """One fpdf2 page per line, each the size of the page it goes on, the line at its top."""
    from fpdf import FPDF  # imported here: fpdf2 costs ~0.3 s to import

    from gatewayd.documents.cover import cover_fonts

    pdf = FPDF(unit="pt")
    pdf.set_auto_page_break(False)
    cover_fonts(pdf, "".join(lines))
    for line, (width, height) in zip(lines, sizes, strict=True):
        pdf.add_page(format=(width, height))
        pdf.set_font("DejaVu", size=_HEADER_PT)
        pdf.set_xy(18.0, _HEADER_TOP_PT - _HEADER_PT / 2)
        pdf.cell(width - 36.0, _HEADER_PT * 1.3, line)
        pdf.set_line_width(0.4)
        y = _HEADER_TOP_PT + _HEADER_PT
        pdf.line(18.0, y, width - 18.0, y)
    return bytes(pdf.output())
