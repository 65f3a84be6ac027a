"""PDFs with pikepdf: open and check an attached PDF, count a received one's pages, write the merged document.

A PDF that is encrypted, damaged (anything qpdf had to repair) or without
pages is refused by name (docs/documents.md); streams are copied, never
decoded.
"""

from __future__ import annotations

from io import BytesIO

import pikepdf

from gatewayd.documents.errors import AttachmentRejected, ConversionError

__all__ = ["damaged", "open_pdf", "pdf_page_count", "save_pdf"]


def open_pdf(data: bytes, filename: str) -> pikepdf.Pdf:
    """Open an attached PDF and check it can be faxed as it is; ``AttachmentRejected`` (naming ``filename``) if not."""
    try:
        pdf = pikepdf.open(BytesIO(data))
    except pikepdf.PasswordError:
        raise AttachmentRejected(filename, "encrypted PDF") from None
    except MemoryError:
        raise
    except Exception:  # qpdf reports hostile input in several ways
        raise AttachmentRejected(filename, "corrupt PDF") from None
    try:
        # pikepdf opens PDFs with an empty user password without asking: an
        # owner password still forbids printing, and a fax is a print.
        if pdf.is_encrypted:
            raise AttachmentRejected(filename, "encrypted PDF")
        # qpdf rebuilds a damaged (e.g. truncated) file from what it can
        # find; pages may be silently missing, so that is a guess we refuse.
        try:
            pages = len(pdf.pages)
        except (pikepdf.PdfError, RuntimeError, ValueError):
            raise AttachmentRejected(filename, "corrupt PDF") from None
        if damaged(pdf):
            raise AttachmentRejected(filename, "corrupt PDF")
        if pages == 0:
            raise AttachmentRejected(filename, "PDF has no pages")
    except BaseException:
        pdf.close()
        raise
    return pdf


def damaged(pdf: pikepdf.Pdf) -> bool:
    # Every qpdf warning is about something it repaired or skipped (a
    # rebuilt cross-reference table, a page-tree node ignored): the pages
    # would be qpdf's guess at the document, so any warning is refusal.
    return bool(pdf.get_warnings())


def pdf_page_count(data: bytes) -> int:
    """Number of pages of a PDF; ``ConversionError`` when it cannot be read."""
    try:
        with pikepdf.open(BytesIO(data)) as pdf:
            return len(pdf.pages)
    except (pikepdf.PdfError, ValueError, RuntimeError, OverflowError) as exc:
        raise ConversionError(f"unreadable PDF: {exc}") from exc


def save_pdf(pdf: pikepdf.Pdf) -> bytes:
    """The PDF's bytes: streams copied undecoded, the same input giving the same bytes."""
    buffer = BytesIO()
    pdf.save(
        buffer,
        # Stream data is copied, never decoded: a small LZW or RunLength
        # stream can expand to gigabytes, and re-encoding costs time.
        stream_decode_level=pikepdf.StreamDecodeLevel.none,
        object_stream_mode=pikepdf.ObjectStreamMode.generate,
        # The same message gives the same bytes, hence the same hash.
        deterministic_id=True,
    )
    return buffer.getvalue()
