"""Recognise office and text documents (Word, Excel, PowerPoint, OpenDocument, RTF, HTML, plain text) by their bytes.

docs/documents.md, "Office documents", lists the kinds. Containers are
looked into (the OLE2 directory's stream names, the ZIP's entries), never
trusted by file name; only HTML and plain text, which have no magic
number, go by their declared type as well. No gatewayd imports.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal, get_args

__all__ = ["OFFICE_KINDS", "OFFICE_TYPES", "OfficeKind", "sniff_office"]

OfficeKind = Literal["doc", "xls", "ppt", "docx", "xlsx", "pptx", "odt", "ods", "odp", "rtf", "html", "txt"]
OFFICE_KINDS: tuple[str, ...] = get_args(OfficeKind)
# Each kind's registered media type: what a file given without one
# (``gatewayd send``, the console) is declared as, and so named when refused.
OFFICE_TYPES: Mapping[OfficeKind, str] = MappingProxyType({
    "doc": "application/msword",
    "xls": "application/vnd.ms-excel",
    "ppt": "application/vnd.ms-powerpoint",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "odt": "application/vnd.oasis.opendocument.text",
    "ods": "application/vnd.oasis.opendocument.spreadsheet",
    "odp": "application/vnd.oasis.opendocument.presentation",
    "rtf": "application/rtf",
    "html": "text/html",
    "txt": "text/plain",
})

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# Stream names in the OLE2 directory (UTF-16LE), one per application.
_OLE_STREAMS: tuple[tuple[bytes, OfficeKind], ...] = (
    ("WordDocument".encode("utf-16-le"), "doc"),
    ("Workbook".encode("utf-16-le"), "xls"),
    ("Book".encode("utf-16-le"), "xls"),
    ("PowerPoint Document".encode("utf-16-le"), "ppt"),
)
_ODF_TYPES: dict[bytes, OfficeKind] = {
    b"application/vnd.oasis.opendocument.text": "odt",
    b"application/vnd.oasis.opendocument.spreadsheet": "ods",
    b"application/vnd.oasis.opendocument.presentation": "odp",
}
_OOXML_DIRS: tuple[tuple[str, OfficeKind], ...] = (("word/", "docx"), ("xl/", "xlsx"), ("ppt/", "pptx"))
_TEXT_TYPES = {"text/plain": "txt", "text/html": "html", "application/xhtml+xml": "html", "text/csv": "txt"}


def sniff_office(data: bytes, declared_type: str = "", filename: str = "") -> OfficeKind | None:
    """The office kind of ``data``, or None. ``declared_type``/``filename`` only matter for HTML and text."""
    head = data[:64]
    if head.startswith(_OLE_MAGIC):
        for name, kind in _OLE_STREAMS:
            if name in data[:4 * 1024 * 1024]:
                return kind
        return None
    if head.startswith(b"{\\rtf"):
        return "rtf"
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(data)
    lowered = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    declared = _TEXT_TYPES.get(declared_type.lower())
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if declared == "html" or ext in ("html", "htm") or lowered.startswith((b"<!doctype html", b"<html")):
        return "html" if _texty(data) else None
    if declared == "txt" or ext in ("txt", "text", "csv"):
        return "txt" if _texty(data) else None
    return None


def _zip_kind(data: bytes) -> OfficeKind | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
            if "mimetype" in names:
                info = zf.getinfo("mimetype")
                if info.file_size <= 100:
                    return _ODF_TYPES.get(zf.read(info).strip())
                return None
            if "[Content_Types].xml" in names:
                for prefix, kind in _OOXML_DIRS:
                    if any(n.startswith(prefix) for n in names):
                        return kind
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError):
        return None
    return None


def _texty(data: bytes) -> bool:
    """No NUL bytes in the first 64 KiB: text, not a binary file with a text label."""
    return b"\x00" not in data[:65536]
