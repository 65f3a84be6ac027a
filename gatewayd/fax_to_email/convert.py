"""Check a downloaded fax file and turn it into the email's attachments.

The file's type is decided by its magic bytes, never by the provider's
Content-Type (``gatewayd/filekinds.py``, ``fax_file_kind``). TIFF is converted
with ``gatewayd.documents.images.tiff_to_pdf`` (the one TIFF converter of the
project; docs/inbound.md); a PDF is checked for readable pages and kept as
is. A file that cannot be read is never dropped: it becomes the attachment
as it came, ``application/octet-stream``, and ``problem`` says why, so the
caller can add a note and tell the admin.

Synchronous and CPU-bound: the poller runs ``prepare_fax`` in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gatewayd.documents.errors import ConversionError
from gatewayd.documents.images import tiff_to_pdf
from gatewayd.documents.pdf import pdf_page_count
from gatewayd.fax_to_email.message import FaxAttachment, attachment_name
from gatewayd.filekinds import fax_file_kind
from gatewayd.logs import get_logger

log = get_logger(__name__)

ATTACH_MODES = ("pdf", "tiff", "both", "original")


@dataclass(frozen=True)
class PreparedFax:
    kind: str  # "pdf" | "tiff" | "unknown" (by magic bytes)
    pages: int | None
    attachments: tuple[FaxAttachment, ...]
    problem: str | None = None  # why it could not be converted; None = fine
    notes: tuple[str, ...] = ()  # extra lines for the body


def size_note(expected: int | None, actual: int) -> str | None:
    """A note when the download's size differs from the listing's file_size."""
    if expected and expected != actual:
        return f"Note: the provider listed this fax as {expected} bytes, the file received has {actual} bytes."
    return None


def prepare_fax(
    data: bytes,
    *,
    attach: str,
    page_size: str,
    received_at: datetime,
    caller_id: str,
    expected_size: int | None = None,
    admin_notified: bool = False,
) -> PreparedFax:
    """Check ``data`` and build the attachments ``[inbound].attach`` asks for."""
    if attach not in ATTACH_MODES:
        raise ValueError(f"attach must be one of {ATTACH_MODES}, not {attach!r}")
    kind = fax_file_kind(data)
    notes = tuple(n for n in (size_note(expected_size, len(data)),) if n)

    def name(ext: str) -> str:
        return attachment_name(received_at, caller_id, ext)

    problem: str | None
    if not data:
        problem = "the provider sent an empty file"
    elif kind == "pdf":
        try:
            pages = pdf_page_count(data)
        except ConversionError as exc:
            problem = str(exc)
        else:
            if pages > 0:
                pdf = FaxAttachment(data, name("pdf"), "application/pdf")
                return PreparedFax(kind, pages, (pdf,), None, notes)
            problem = "PDF without pages"
    elif kind == "tiff":
        try:
            converted, pages = tiff_to_pdf(data, page_size)
        except ConversionError as exc:
            problem = str(exc) or "unreadable TIFF"
        except MemoryError:
            raise
        except Exception as exc:  # image libraries raise anything on hostile input; the fax must still go out
            log.warning("inbound_tiff_conversion_crashed", error=f"{type(exc).__name__}: {exc}")
            problem = f"unreadable TIFF ({type(exc).__name__})"
        else:
            if pages > 0:
                pdf = FaxAttachment(converted, name("pdf"), "application/pdf")
                tif = FaxAttachment(data, name("tif"), "image/tiff")
                chosen = {"pdf": (pdf,), "tiff": (tif,), "both": (pdf, tif), "original": (tif,)}[attach]
                return PreparedFax(kind, pages, chosen, None, notes)
            problem = "TIFF without pages"
    else:
        head = data[:8].hex(" ")
        problem = f"neither PDF nor TIFF (file starts with {head})"

    ext = {"pdf": "pdf", "tiff": "tif"}.get(kind, "bin")
    original = FaxAttachment(data, name(ext), "application/octet-stream")
    note = (
        f"Note: this fax could not be converted ({problem}). It is attached exactly as the "
        f"provider delivered it ({len(data)} bytes)."
        + (" The gateway's administrator has been notified." if admin_notified else "")
    )
    return PreparedFax(kind, None, (original,), problem, (*notes, note))


__all__ = ["ATTACH_MODES", "PreparedFax", "prepare_fax", "size_note"]
