"""Recognise a file's kind by its magic bytes; labels and file names are never trusted.

The magic numbers are defined once, here. ``sniff_kind`` is what the
email-to-fax parser and ``gatewayd send`` accept (docs/documents.md);
``fax_file_kind`` is the stricter reading the provider client and the
received-fax conversion use: only what the provider sends and takes
(docs/provider.md, docs/inbound.md).
No gatewayd imports: both flows and the provider client use this module.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["FILE_KINDS", "FaxFileKind", "FileKind", "fax_file_kind", "sniff_kind"]

# The kinds a fax document can be made from (docs/documents.md).
FileKind = Literal["pdf", "tiff", "jpeg", "png", "gif", "bmp", "webp"]
FILE_KINDS: tuple[str, ...] = get_args(FileKind)

# What the provider sends and takes: a PDF or a classic TIFF, by the first bytes.
FaxFileKind = Literal["pdf", "tiff", "unknown"]

_PDF_MAGIC = b"%PDF-"
# Readers accept up to 1 KiB of junk before the PDF header; so does sniff_kind.
_PDF_PREAMBLE = 1024
_CLASSIC_TIFF_MAGICS = (b"II*\x00", b"MM\x00*")
_BIG_TIFF_MAGICS = (b"II+\x00", b"MM\x00+")
# "BM" alone is too weak; the DIB header size must be one of the known ones.
_BMP_DIB_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})


def sniff_kind(data: bytes) -> FileKind | None:
    """What the bytes are, by their magic numbers; None when not a kind we fax.

    A PDF header may follow up to 1 KiB of junk; BigTIFF counts as TIFF.
    """
    head = data[:32]
    if head.startswith(_PDF_MAGIC) or _PDF_MAGIC in data[:_PDF_PREAMBLE]:
        return "pdf"
    if head.startswith(_CLASSIC_TIFF_MAGICS + _BIG_TIFF_MAGICS):
        return "tiff"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM") and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_DIB_HEADER_SIZES:
        return "bmp"
    return None


def fax_file_kind(data: bytes) -> FaxFileKind:
    """The same magic bytes, narrowed to what the provider sends and takes.

    A PDF only when ``%PDF-`` is the first thing in the file (no preamble),
    a TIFF only when it is a classic (not Big) TIFF; anything else is
    "unknown". Stricter than ``sniff_kind``: what the provider is given or
    gives back is never a guess.
    """
    if data.startswith(_PDF_MAGIC):
        return "pdf"
    if data.startswith(_CLASSIC_TIFF_MAGICS):
        return "tiff"
    return "unknown"
