"""PDFs with pikepdf: open and check an attached PDF, count a received one's pages, write the merged document.

A PDF that is encrypted, damaged (anything qpdf had to repair) or without
pages is refused by name (docs/documents.md); streams are copied, never
decoded.
"""

from __future__ import annotations

from io import BytesIO

import pikepdf

from gatewayd.documents.errors import AttachmentRejected, ConversionError

__all__ = ["damaged", "keep_as_it_is", "open_pdf", "pdf_page_count", "save_pdf"]


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


# What a document catalog may hold for the original bytes to be faxed as they
# are (anything else, e.g. forms, embedded files, scripts, actions: rebuilt
# from its pages, which drops it).
_PLAIN_CATALOG_KEYS = frozenset({
    "/Type", "/Pages", "/Metadata", "/PageLayout", "/PageMode", "/ViewerPreferences", "/Lang", "/MarkInfo",
    "/Outlines", "/StructTreeRoot",
})


def keep_as_it_is(data: bytes, filename: str, *, max_pages: int, max_bytes: int) -> int | None:
    """The page count when the attached PDF ``data`` can be faxed byte for byte, None when it must be rebuilt.

    A message whose only document is one PDF and that needs no cover page
    would otherwise be opened, copied page by page and written again (with
    an MD5 for its deterministic /ID) for the same pages (docs/documents.md,
    PDF attachments; docs/performance.md). The same refusals as the rebuild
    (``open_pdf``: encrypted, corrupt or repaired, no pages) are raised
    here. Kept only when it is plain: one revision (no incremental update,
    whose earlier content would travel too; a linearized file's two sections are one revision), a catalog of ``_PLAIN_CATALOG_KEYS``
    only, PDF 1.0-1.7 starting at its first byte, within ``max_pages`` and
    ``max_bytes``, and every object in the file readable without a warning
    (what writing a rebuilt copy would read, and more); anything else is
    rebuilt, which decides as before.
    """
    if len(data) > max_bytes or not data.startswith(b"%PDF-1."):
        return None
    pdf = open_pdf(data, filename)
    try:
        pages = len(pdf.pages)
        # One revision: each update appended to a PDF adds a cross-reference
        # section and its "startxref"; a linearized file has two sections of
        # its own. (The word inside stream data only costs a rebuild.)
        sections = 2 if pdf.is_linearized else 1
        if pages > max_pages or data.count(b"startxref") > sections or not set(pdf.Root.keys()) <= _PLAIN_CATALOG_KEYS:
            return None
        for _ in pdf.objects:  # parses every object: a damaged one warns
            pass
        if damaged(pdf):
            return None
        return pages
    except (pikepdf.PdfError, RuntimeError, ValueError, TypeError):
        return None  # the rebuild words the refusal
    finally:
        pdf.close()


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
