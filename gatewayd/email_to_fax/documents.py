"""Turn parsed attachments (and an optional cover page) into one fax PDF.

PDFs are merged page by page with pikepdf; images go through img2pdf,
which embeds JPEG and single-strip CCITT G4 data without decoding it.
Pillow is used for header-only checks (pixel limits, frame counts) and to
flatten what img2pdf cannot or should not embed as is (alpha, 16-bit,
GIF/BMP/WEBP). Every refusal names the attachment and says why, as the
SPEC's ``554 5.6.0 <file name>: <why>`` reply.

All of this is CPU-bound and synchronous; ``DocumentBuilder`` runs it in
worker threads, a bounded number at a time, so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import re
import shutil
import struct
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from types import MappingProxyType

import img2pdf
import pikepdf
from PIL import Image, TiffImagePlugin

from gatewayd.email_to_fax.errors import (
    AttachmentRejected,
    DocumentTooLarge,
    NoFaxDocument,
)
from gatewayd.email_to_fax.parse import Attachment, UnsupportedPart
from gatewayd.logs import get_logger

log = get_logger(__name__)

__all__ = [
    "FONT_PATH",
    "MAX_FAX_BYTES",
    "MAX_IMAGE_PIXELS",
    "PAGE_SIZES",
    "ConversionError",
    "CoverPage",
    "DocumentBuilder",
    "FaxDocument",
    "build_document",
    "is_fax_resolution",
    "pdf_page_count",
    "render_cover",
    "tiff_to_pdf",
    "wants_cover",
]

# Page sizes in PDF points (1/72 inch): A4 is 210 x 297 mm.
PAGE_SIZES: Mapping[str, tuple[float, float]] = MappingProxyType({
    "A4": (595.2756, 841.8898),
    "Letter": (612.0, 792.0),
})

# The provider's "10 megabytes", read the safe way (SPEC section 3).
MAX_FAX_BYTES = 10_000_000

# Pixels per image frame. A fax page is at most A4/Letter at 400 dpi
# ("superfine"), about 15.5 MP; more detail than that is thrown away by
# the fax itself. 40 MP leaves room for ordinary phone photos (12-24 MP,
# some 32+) while bounding what one decoded frame may cost: 40 MP RGBA is
# 160 MB, and DocumentBuilder runs two conversions at a time. Pillow's own
# limit (89 MP warning, 179 MP error) is process-global and far higher, so
# this is checked from the image header, before anything is decoded.
MAX_IMAGE_PIXELS = 40_000_000

# Resolutions fax devices and fax software write (ITU-T T.4/T.30 standard,
# fine, superfine, ultrafine, in the inch and the metric variants). A TIFF
# with any other resolution has no trustworthy physical size.
_FAX_RESOLUTIONS: frozenset[tuple[int, int]] = frozenset({
    (204, 98), (204, 196), (204, 391), (200, 100), (200, 200), (200, 400),
    (300, 300), (400, 400), (408, 391), (408, 392), (408, 196), (408, 98),
    (203, 98), (203, 196), (203, 391),
})

FONT_PATH = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")

_PIL_FORMATS: Mapping[str, str] = MappingProxyType({
    "tiff": "TIFF", "jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "webp": "WEBP",
})
# Modes img2pdf embeds faithfully without an alpha channel.
_PLAIN_MODES = frozenset({"1", "L", "RGB", "P", "CMYK"})
# Frames counted in one TIFF before giving up: a sanity bound on header
# walking (each frame costs a seek), far above any page limit.
_MAX_FRAMES = 10_000


class ConversionError(ValueError):
    """A received fax (or other trusted-path input) that cannot be converted.

    Not an ``IntakeRefused``: the fax-to-email path uses it, where there is
    no SMTP client to answer.
    """


@dataclass(frozen=True)
class FaxDocument:
    pdf: bytes = field(repr=False)
    pages: int
    sha256: str


@dataclass(frozen=True)
class CoverPage:
    sender: str
    recipient: str
    date: str
    subject: str
    body: str


def wants_cover(mode: str, body_text: str) -> bool:
    """``documents.cover_page``: "auto" (when the body has text), "always", "never"."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    if mode == "auto":
        return bool(body_text.strip())
    raise ValueError(f"cover_page must be auto, always or never, not {mode!r}")


def is_fax_resolution(xdpi: float, ydpi: float) -> bool:
    # Readers round inch/cm conversions differently (203.2 vs 204): 2 dpi slack.
    return any(abs(xdpi - x) <= 2 and abs(ydpi - y) <= 2 for x, y in _FAX_RESOLUTIONS)


# ------------------------------------------------------------------ building


def build_document(
    attachments: Sequence[Attachment],
    *,
    cover: CoverPage | None,
    page_size: str = "A4",
    max_pages: int = 100,
    max_bytes: int = MAX_FAX_BYTES,
    unsupported: Sequence[UnsupportedPart] = (),
) -> FaxDocument:
    """One fax PDF: the cover page (if any), then the attachments in order.

    ``unsupported`` (from the parser) only words the refusal when nothing
    is faxable. When there are attachments and none of them is supported,
    the message is refused even if a cover page could be made: faxing the
    cover alone would drop what the sender meant to send.
    """
    page = _page(page_size)
    if not attachments and (cover is None or unsupported):
        raise NoFaxDocument(_nothing_to_fax(unsupported))

    # First pass: open, check and count everything, converting nothing, so
    # that a bad attachment or a page limit fails before work is wasted.
    pdfs: dict[int, pikepdf.Pdf] = {}
    plans: dict[int, _ImagePlan] = {}
    keep_open: list[pikepdf.Pdf] = []
    try:
        counted = 0
        for number, att in enumerate(attachments):
            if att.kind == "pdf":
                pdf = _open_pdf(att)
                keep_open.append(pdf)
                pdfs[number] = pdf
                counted += len(pdf.pages)
            else:
                try:
                    plan = _inspect_image(att.data, att.kind, frame_limit=_MAX_FRAMES)
                except _BadImage as exc:
                    raise AttachmentRejected(att.filename, exc.why) from None
                except _TooManyPages:
                    raise DocumentTooLarge(f"more than {_MAX_FRAMES} pages, limit {max_pages}") from None
                plans[number] = plan
                counted += plan.frames

        out = pikepdf.new()
        keep_open.append(out)
        cover_pages = 0
        if cover is not None:
            if counted + 1 > max_pages:
                raise DocumentTooLarge(f"{counted + 1} pages, limit {max_pages}")
            cover_pdf = pikepdf.open(BytesIO(render_cover(cover, page_size=page_size, attachment_pages=counted)))
            keep_open.append(cover_pdf)
            cover_pages = len(cover_pdf.pages)
            out.pages.extend(cover_pdf.pages)
        total = cover_pages + counted
        if total > max_pages:
            raise DocumentTooLarge(f"{total} pages, limit {max_pages}")

        # Second pass: convert images and merge, in the sender's order.
        layout = _layout(page, keep_fax_size=False)
        for number, att in enumerate(attachments):
            pdf = pdfs.get(number)
            if pdf is None:
                try:
                    pdf = _image_pdf(att.data, plans[number], layout)
                except _BadImage as exc:
                    raise AttachmentRejected(att.filename, exc.why) from None
                keep_open.append(pdf)
            try:
                out.pages.extend(pdf.pages)
            except (pikepdf.PdfError, RuntimeError, ValueError, TypeError):
                raise AttachmentRejected(att.filename, "corrupt PDF") from None

        try:
            data = _save(out)
        except (pikepdf.PdfError, RuntimeError, ValueError):
            # Writing reads every object: find whose object it was.
            for number, pdf in pdfs.items():
                try:
                    _save(pdf)
                except (pikepdf.PdfError, RuntimeError, ValueError):
                    raise AttachmentRejected(attachments[number].filename, "corrupt PDF") from None
            raise
        for number, pdf in pdfs.items():
            if _damaged(pdf):  # damage found only while writing still counts
                raise AttachmentRejected(attachments[number].filename, "corrupt PDF")
    finally:
        for pdf in keep_open:
            pdf.close()

    if len(data) > max_bytes:
        raise DocumentTooLarge(f"{len(data)} bytes, limit {max_bytes}")
    return FaxDocument(pdf=data, pages=total, sha256=hashlib.sha256(data).hexdigest())


def _save(pdf: pikepdf.Pdf) -> bytes:
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


def _nothing_to_fax(unsupported: Sequence[UnsupportedPart]) -> str:
    why = "no attachment of a supported type"
    if unsupported:
        named = "; ".join(f"{u.filename}: {u.reason}" for u in unsupported[:5])
        more = f"; and {len(unsupported) - 5} more" if len(unsupported) > 5 else ""
        why = f"{why} ({named}{more})"
    return why


def _page(page_size: str) -> tuple[float, float]:
    try:
        return PAGE_SIZES[page_size]
    except KeyError:
        raise ValueError(f"page_size must be one of {', '.join(PAGE_SIZES)}, not {page_size!r}") from None


# ------------------------------------------------------------------ PDF


def _open_pdf(att: Attachment) -> pikepdf.Pdf:
    try:
        pdf = pikepdf.open(BytesIO(att.data))
    except pikepdf.PasswordError:
        raise AttachmentRejected(att.filename, "encrypted PDF") from None
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - qpdf reports hostile input in several ways
        raise AttachmentRejected(att.filename, "corrupt PDF") from None
    try:
        # pikepdf opens PDFs with an empty user password without asking: an
        # owner password still forbids printing, and a fax is a print.
        if pdf.is_encrypted:
            raise AttachmentRejected(att.filename, "encrypted PDF")
        # qpdf rebuilds a damaged (e.g. truncated) file from what it can
        # find; pages may be silently missing, so that is a guess we refuse.
        try:
            pages = len(pdf.pages)
        except (pikepdf.PdfError, RuntimeError, ValueError):
            raise AttachmentRejected(att.filename, "corrupt PDF") from None
        if _damaged(pdf):
            raise AttachmentRejected(att.filename, "corrupt PDF")
        if pages == 0:
            raise AttachmentRejected(att.filename, "PDF has no pages")
    except BaseException:
        pdf.close()
        raise
    return pdf


def _damaged(pdf: pikepdf.Pdf) -> bool:
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


# ------------------------------------------------------------------ images


class _BadImage(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class _TooManyPages(Exception):
    def __init__(self, pages: int) -> None:
        super().__init__(pages)
        self.pages = pages


def _check_pixels(size: tuple[int, int]) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise _BadImage("corrupt image")
    if width * height > MAX_IMAGE_PIXELS:
        raise _BadImage(
            f"image too large ({width}x{height} pixels, limit {MAX_IMAGE_PIXELS // 1_000_000} megapixels)"
        )


@dataclass(frozen=True)
class _G4Frame:
    """A TIFF frame that is one CCITT G4 strip: its data goes into the PDF as is."""

    width: int
    height: int
    dpi: tuple[float, float]
    strip: bytes = field(repr=False)
    black_is_1: bool


@dataclass(frozen=True)
class _ImagePlan:
    """What the header check found: how many pages, and how to make them."""

    kind: str
    frames: int
    direct: bool  # the file goes to img2pdf as is
    jpeg: bool = False  # when flattened: encode as JPEG (lossy source), else PNG
    g4: tuple[_G4Frame, ...] = ()  # set when every frame is single-strip G4


def _open_image(data: bytes, kind: str) -> Image.Image:
    try:
        # formats=: only the decoder the magic bytes chose; no format guessing.
        return Image.open(BytesIO(data), formats=[_PIL_FORMATS[kind]])
    except Image.DecompressionBombError as exc:
        raise _BadImage(_bomb(exc)) from None
    except Exception:  # noqa: BLE001 - Pillow raises anything on hostile headers
        raise _BadImage(_corrupt(kind)) from None


def _bomb(exc: Exception) -> str:
    # Pillow refused at open (over twice its own limit); say how big.
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1))} pixels" if found else "decompression bomb"
    return f"image too large ({size}, limit {MAX_IMAGE_PIXELS // 1_000_000} megapixels)"


def _corrupt(kind: str) -> str:
    return "unreadable TIFF" if kind == "tiff" else "corrupt image"


def _inspect_image(data: bytes, kind: str, *, frame_limit: int) -> _ImagePlan:
    """Check an image from its headers (pixel counts, frames, integrity).

    Raises ``_BadImage`` (with the reason) or ``_TooManyPages``.
    """
    declared_frames = 0
    if kind == "tiff":
        # Our own reading of the IFD chain comes first: Pillow reads a
        # truncated chain as "no more frames" (with a warning), which would
        # fax a cut-off TIFF short; and fax TIFFs (all single-strip G4) need
        # nothing more than this.
        ifds = _tiff_ifds(data, frame_limit)
        g4 = _g4_frames(data, ifds)
        if g4:
            return _ImagePlan("tiff", len(g4), direct=True, g4=g4)
        declared_frames = len(ifds)
    else:
        size = _header_size(data, kind)
        if size is not None:
            _check_pixels(size)  # before Pillow sees it: no bomb warning, a precise reply
    img = _open_image(data, kind)
    try:
        with img:
            if kind == "tiff":
                return _inspect_tiff(img, data, declared_frames, frame_limit)
            _check_pixels(img.size)
            if kind == "jpeg":
                _verify_jpeg(img, data)
                return _ImagePlan(kind, 1, direct=True)
            if kind == "png" and _png_embeddable(img, data):
                img.verify()  # chunk CRCs up to IEND, without decoding pixels
                return _ImagePlan(kind, 1, direct=True)
            # GIF, BMP, WEBP, PNG with alpha or 16 bits: flattened by Pillow.
            # GIF and WEBP: the first frame only (an animation is not a document).
            return _ImagePlan(kind, 1, direct=False, jpeg=kind == "webp" and data[12:16] == b"VP8 ")
    except (_BadImage, _TooManyPages, MemoryError):
        raise
    except Image.DecompressionBombError as exc:
        raise _BadImage(_bomb(exc)) from None
    except Exception:  # noqa: BLE001
        raise _BadImage(_corrupt(kind)) from None


def _header_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """Width and height at fixed header offsets (PNG, GIF, BMP); None for other kinds."""
    if kind == "png" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])  # type: ignore[return-value]
    if kind == "gif" and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])  # type: ignore[return-value]
    if kind == "bmp" and len(data) >= 26 and int.from_bytes(data[14:18], "little") >= 40:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)  # negative height: a top-down bitmap
    return None


def _encode_image(data: bytes, plan: _ImagePlan) -> list[bytes]:
    """The img2pdf inputs for an inspected image: the file itself, or flattened frames."""
    if plan.direct:
        return [data]
    img = _open_image(data, plan.kind)
    try:
        with img:
            inputs = []
            for number in range(plan.frames):
                img.seek(number)
                inputs.append(_flatten_encoded(img, jpeg=plan.jpeg))
            return inputs
    except (_BadImage, MemoryError):
        raise
    except Exception:  # noqa: BLE001
        raise _BadImage(_corrupt(plan.kind)) from None


def _image_pdf(data: bytes, plan: _ImagePlan, layout: Layout) -> pikepdf.Pdf:
    """The pages of an inspected image, as an open PDF to copy pages from."""
    if plan.g4:
        return pikepdf.open(BytesIO(_g4_pdf(plan.g4, layout)))
    inputs = [BytesIO(item) for item in _encode_image(data, plan)]
    try:
        # img2pdf's pikepdf document object: its pages are copied without
        # writing and re-reading the (possibly megabytes of) image data.
        document = img2pdf.convert_to_docobject(*inputs, engine=img2pdf.Engine.pikepdf, **_img2pdf_options(layout))
        writer = document.writer
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - img2pdf and Pillow raise many types
        raise _BadImage(_corrupt(plan.kind)) from exc
    if not isinstance(writer, pikepdf.Pdf):  # pragma: no cover - a changed img2pdf
        return pikepdf.open(BytesIO(_images_to_pdf(_encode_image(data, plan), layout)))
    return writer


def _img2pdf_options(layout: Layout) -> dict[str, object]:
    return {"layout_fun": layout, "rotation": img2pdf.Rotation.ifvalid, "nodate": True}


def _inspect_tiff(img: Image.Image, data: bytes, declared_frames: int, frame_limit: int) -> _ImagePlan:
    direct = True
    frames = 0
    while True:
        try:
            img.seek(frames)
        except EOFError:
            break
        frames += 1
        if frames > frame_limit:
            raise _TooManyPages(frames)
        _check_pixels(img.size)
        if not _tiff_frame_embeddable(img, len(data)):
            direct = False
    if frames == 0 or frames != declared_frames:
        raise _BadImage("unreadable TIFF")
    # Direct: img2pdf decodes non-G4 frames itself (1-bit ones become G4).
    return _ImagePlan("tiff", frames, direct=direct)


# TIFF tags read by _tiff_ifds; anything else is left to Pillow.
_NEW_SUBFILE_TYPE, _WIDTH, _LENGTH, _BITS, _COMPRESSION, _PHOTOMETRIC = 254, 256, 257, 258, 259, 262
_FILL_ORDER, _STRIP_OFFSETS, _ORIENTATION, _SAMPLES, _ROWS_PER_STRIP, _STRIP_COUNTS = 266, 273, 274, 277, 278, 279
_XRES, _YRES, _T6_OPTIONS, _RES_UNIT, _TILE_OFFSETS = 282, 283, 293, 296, 324
_WANTED_TAGS = frozenset({
    _NEW_SUBFILE_TYPE, _WIDTH, _LENGTH, _BITS, _COMPRESSION, _PHOTOMETRIC, _FILL_ORDER,
    _STRIP_OFFSETS, _ORIENTATION, _SAMPLES, _ROWS_PER_STRIP, _STRIP_COUNTS, _XRES, _YRES,
    _T6_OPTIONS, _RES_UNIT, _TILE_OFFSETS,
})
# type -> (struct code, size); RATIONAL is read as two LONGs.
_TIFF_TYPES: Mapping[int, tuple[str, int]] = MappingProxyType({
    1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 5: ("I", 8), 16: ("Q", 8), 13: ("I", 4),
})
_Ifd = Mapping[int, tuple[float, ...]]


def _tiff_ifds(data: bytes, frame_limit: int) -> list[_Ifd]:
    """The IFDs of a TIFF (only the tags we use); every byte read must lie inside the file."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    count_fmt, entry_size, offset_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
    inline = 8 if big else 4
    ifds: list[_Ifd] = []
    seen: set[int] = set()
    try:
        (offset,) = struct.unpack_from(order + offset_fmt, data, 8 if big else 4)
        while offset:
            if offset in seen or offset >= len(data):
                raise _BadImage("unreadable TIFF")  # a loop, or cut off
            seen.add(offset)
            if len(seen) > frame_limit:
                raise _TooManyPages(len(seen))
            (entries,) = struct.unpack_from(order + count_fmt, data, offset)
            base = offset + struct.calcsize(count_fmt)
            ifd: dict[int, tuple[float, ...]] = {}
            for number in range(entries):
                entry = base + number * entry_size
                tag, typ = struct.unpack_from(order + "HH", data, entry)
                if tag not in _WANTED_TAGS or typ not in _TIFF_TYPES:
                    continue
                (count,) = struct.unpack_from(order + ("Q" if big else "I"), data, entry + 4)
                code, size = _TIFF_TYPES[typ]
                where = entry + (12 if big else 8)
                if count * size > inline:
                    (where,) = struct.unpack_from(order + offset_fmt, data, where)
                if count > len(data) or where + count * size > len(data):
                    raise _BadImage("unreadable TIFF")
                if typ == 5:
                    raw = struct.unpack_from(f"{order}{2 * count}I", data, where)
                    ifd[tag] = tuple(n / d if d else 0.0 for n, d in zip(raw[::2], raw[1::2]))
                else:
                    ifd[tag] = struct.unpack_from(f"{order}{count}{code}", data, where)
            ifds.append(ifd)
            (offset,) = struct.unpack_from(order + offset_fmt, data, base + entries * entry_size)
    except struct.error:
        raise _BadImage("unreadable TIFF") from None
    if not ifds:
        raise _BadImage("unreadable TIFF")
    return ifds


def _g4_frames(data: bytes, ifds: Sequence[_Ifd]) -> tuple[_G4Frame, ...]:
    """Every frame as a G4 strip ready for the PDF, or () when any frame is not one."""
    frames = []
    for ifd in ifds:
        def one(tag: int, default: float) -> float:
            values = ifd.get(tag)
            return values[0] if values else default

        offsets, counts = ifd.get(_STRIP_OFFSETS, ()), ifd.get(_STRIP_COUNTS, ())
        if (
            one(_COMPRESSION, 1) != 4 or one(_BITS, 1) != 1 or one(_SAMPLES, 1) != 1
            or one(_PHOTOMETRIC, -1) not in (0, 1) or one(_FILL_ORDER, 1) not in (1, 2)
            or one(_ORIENTATION, 1) != 1 or int(one(_NEW_SUBFILE_TYPE, 0)) & 1
            or int(one(_T6_OPTIONS, 0)) & 2  # uncompressed mode: leave it to libtiff
            or _TILE_OFFSETS in ifd or len(offsets) != 1 or len(counts) != 1
        ):
            return ()
        width, height = int(one(_WIDTH, 0)), int(one(_LENGTH, 0))
        _check_pixels((width, height))
        start, length = int(offsets[0]), int(counts[0])
        if start + length > len(data) or length == 0:
            raise _BadImage("unreadable TIFF")
        strip = data[start:start + length]
        if one(_FILL_ORDER, 1) == 2:
            strip = strip.translate(_BIT_REVERSED)
        scale = {2: 1.0, 3: 2.54}.get(int(one(_RES_UNIT, 2)), 0.0)  # per inch, per cm, none
        dpi = (one(_XRES, 0) * scale, one(_YRES, 0) * scale)
        frames.append(_G4Frame(width, height, dpi, strip, black_is_1=one(_PHOTOMETRIC, 0) == 1))
    return tuple(frames)


_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _g4_pdf(frames: Sequence[_G4Frame], layout: Layout) -> bytes:
    """A PDF with one page per G4 frame, the CCITT data embedded as is.

    Written directly (as tiff2pdf does): this is the received-fax path and
    the common scanner case, and going through Pillow and img2pdf costs
    several times more for the same bytes.
    """
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: list[int] = []

    def obj(body: bytes, stream: bytes | None = None) -> int:
        offsets.append(len(out))
        out.extend(b"%d 0 obj\n" % len(offsets))
        out.extend(body)
        if stream is not None:
            out.extend(b"\nstream\n")
            out.extend(stream)
            out.extend(b"\nendstream")
        out.extend(b"\nendobj\n")
        return len(offsets)

    obj(b"<< /Type /Catalog /Pages 2 0 R >>")
    offsets.append(0)  # object 2, the page tree: written once the pages are known
    kids = []
    for frame in frames:
        page_w, page_h, img_w, img_h = layout(frame.width, frame.height, frame.dpi)
        image = obj(
            b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray"
            b" /BitsPerComponent 1 /Filter /CCITTFaxDecode /DecodeParms << /K -1 /Columns %d"
            b" /Rows %d /BlackIs1 %s >> /Length %d >>"
            % (frame.width, frame.height, frame.width, frame.height,
               b"true" if frame.black_is_1 else b"false", len(frame.strip)),
            frame.strip,
        )
        content = b"q %s 0 0 %s %s %s cm /Im0 Do Q" % (
            _num(img_w), _num(img_h), _num((page_w - img_w) / 2), _num((page_h - img_h) / 2))
        contents = obj(b"<< /Length %d >>" % len(content), content)
        kids.append(obj(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %s %s] /Resources << /XObject << /Im0 %d 0 R >> >>"
            b" /Contents %d 0 R >>" % (_num(page_w), _num(page_h), image, contents)
        ))
    pages = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    offsets[1] = len(out)
    out.extend(b"2 0 obj\n" + pages + b"\nendobj\n")
    xref = len(out)
    out.extend(b"xref\n0 %d\n0000000000 65535 f \n" % (len(offsets) + 1))
    for offset in offsets:
        out.extend(b"%010d 00000 n \n" % offset)
    out.extend(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(offsets) + 1, xref))
    return bytes(out)


def _num(value: float) -> bytes:
    return (b"%.4f" % value).rstrip(b"0").rstrip(b".")


def _tiff_frame_embeddable(img: Image.Image, file_size: int) -> bool:
    tags = img.tag_v2
    # Data copied without decoding (G4) must be inside the file, so that a
    # truncated TIFF is refused rather than faxed half blank.
    tiled = TiffImagePlugin.TILEOFFSETS in tags
    offsets = _tuple(tags.get(TiffImagePlugin.TILEOFFSETS if tiled else TiffImagePlugin.STRIPOFFSETS, ()))
    counts = _tuple(tags.get(TiffImagePlugin.TILEBYTECOUNTS if tiled else TiffImagePlugin.STRIPBYTECOUNTS, ()))
    if not offsets or len(offsets) != len(counts):
        raise _BadImage("unreadable TIFF")
    if any(o + c > file_size for o, c in zip(offsets, counts)):
        raise _BadImage("unreadable TIFF")
    bits = _tuple(tags.get(TiffImagePlugin.BITSPERSAMPLE, (1,)))
    return max(bits, default=1) <= 8 and img.mode in _PLAIN_MODES and "transparency" not in img.info


def _tuple(value: object) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,)  # type: ignore[return-value]


def _verify_jpeg(img: Image.Image, data: bytes) -> None:
    if img.mode not in ("L", "RGB", "CMYK"):
        raise _BadImage("corrupt image")
    # img2pdf embeds JPEG data undecoded, and decoding it only to check it
    # would cost more than everything else together. Pillow has parsed the
    # headers up to the scan data; a file cut off in transit (the common
    # damage) has no end-of-image marker after it.
    scan_start = img.tile[0][2] if img.tile else len(data)
    if data.rfind(b"\xff\xd9") < scan_start:
        raise _BadImage("corrupt image")


def _png_embeddable(img: Image.Image, data: bytes) -> bool:
    # IHDR: bit depth at byte 24, colour type at 25. img2pdf copies 8-bit
    # and lower PNG data as is; alpha and 16-bit need flattening first.
    bit_depth, colour_type = data[24], data[25]
    return (
        bit_depth <= 8
        and colour_type in (0, 2, 3)
        and "transparency" not in img.info
        and img.mode in _PLAIN_MODES
    )


def _flatten_encoded(img: Image.Image, *, jpeg: bool) -> bytes:
    """Flatten a frame onto white (fax has no transparency) and encode it for img2pdf."""
    img.load()
    mode = img.mode
    grey = mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", img.size, "white")
        flat.paste(rgba, mask=rgba.getchannel("A"))
        out = flat.convert("L") if grey else flat
    elif mode in _PLAIN_MODES - {"CMYK"}:
        out = img
    elif mode.startswith("I;16") or mode == "I":
        out = img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    elif mode == "F":
        out = img.convert("L")
    else:
        out = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    buffer = BytesIO()
    if jpeg and out.mode in ("L", "RGB"):
        out.save(buffer, format="JPEG", quality=90)
    else:
        out.save(buffer, format="PNG")
    return buffer.getvalue()


Layout = Callable[[int, int, tuple[float, float]], tuple[float, float, float, float]]


def _layout(page: tuple[float, float], *, keep_fax_size: bool) -> Layout:
    """An img2pdf layout function: each image fitted into the page, aspect kept.

    A landscape image gets the landscape page of the same paper (as printers
    and img2pdf's auto-orient do); JPEG EXIF rotation is applied by img2pdf
    as /Rotate on top, which then shows it upright. With ``keep_fax_size``
    (received faxes), a frame with a fax resolution keeps its own physical
    size; anything else (no resolution, 1x1 dpi, 72 dpi scans) is fitted.
    """
    page_w, page_h = page

    def layout(width_px: int, height_px: int, ndpi: tuple[float, float]) -> tuple[float, float, float, float]:
        xdpi, ydpi = ndpi
        if is_fax_resolution(xdpi, ydpi):
            # Physical size: also right for 204x98 "standard" faxes, whose
            # pixels are twice as high as wide.
            width, height = width_px * 72.0 / xdpi, height_px * 72.0 / ydpi
            if keep_fax_size:
                return width, height, width, height
        else:
            width, height = float(width_px), float(height_px)
        pw, ph = (page_w, page_h) if width <= height else (page_h, page_w)
        scale = min(pw / width, ph / height)
        return pw, ph, width * scale, height * scale

    return layout


def _images_to_pdf(inputs: Iterable[bytes], layout: Layout) -> bytes:
    try:
        # File objects: given bytes, img2pdf would first try them as a path.
        return img2pdf.convert(*[BytesIO(item) for item in inputs], **_img2pdf_options(layout))
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - img2pdf and Pillow raise many types
        raise _BadImage("corrupt image") from exc


def tiff_to_pdf(data: bytes, page_size: str = "A4") -> tuple[bytes, int]:
    """A (received) TIFF as PDF, one page per frame: ``(pdf, pages)``.

    Frames with a fax resolution keep their size; others are fitted to
    ``page_size``. Raises ``ConversionError`` for anything unreadable.
    """
    page = _page(page_size)
    if not data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        raise ConversionError("not a TIFF file")
    try:
        plan = _inspect_image(data, "tiff", frame_limit=_MAX_FRAMES)
        layout = _layout(page, keep_fax_size=True)
        pdf = _g4_pdf(plan.g4, layout) if plan.g4 else _images_to_pdf(_encode_image(data, plan), layout)
    except _BadImage as exc:
        raise ConversionError(exc.why) from None
    except _TooManyPages:
        raise ConversionError(f"TIFF with more than {_MAX_FRAMES} frames") from None
    return pdf, plan.frames


# ------------------------------------------------------------------ cover page

_MM = 72 / 25.4
_MAX_FIELD_CHARS = 300
_MAX_BODY_CHARS = 12_000
_TRUNCATED = "[… message truncated]"


def _printable(text: str, *, keep_newlines: bool) -> str:
    text = text.replace("\r\n", "\n").replace("\t", "    ")
    allowed = "\n" if keep_newlines else ""
    out = "".join(
        ch if (ch.isprintable() or ch in allowed) else " " for ch in text
    )
    return out if keep_newlines else " ".join(out.split())


# The cover page's characters that a subset of FONT_PATH holds: Latin
# (Basic, Latin-1, Extended-A and B), Greek, Cyrillic, general punctuation,
# currency signs, letterlike symbols (№) and U+FFFD.
_COVER_SUBSET_RANGES = (
    (0x0020, 0x007E), (0x00A0, 0x024F), (0x0370, 0x03FF), (0x0400, 0x04FF),
    (0x2000, 0x206F), (0x20A0, 0x20CF), (0x2100, 0x214F), (0xFFFD, 0xFFFD),
)
# Every fixed text render_cover draws besides the sender's (labels, "Pages:" row).
_COVER_FIXED_TEXT = "FAX To: From: Date: Subject: Pages: 0123456789 including this cover pages —"


class _CoverFont:
    """A subset of ``FONT_PATH`` for cover pages, made once per process.

    fpdf2 parses the whole font with fontTools for every document (DejaVu
    Sans: 760 KB, ~6,000 characters) and subsets it again at output; the
    subset (~140 KB, ~900 characters) makes a cover about twice as fast.
    fpdf2 changes the font it loaded while writing the PDF, so a parsed font
    cannot be shared between documents: the subset is a file, in a private
    temporary directory removed at exit (systemd's PrivateTmp also cleans
    it). A cover with a character outside the subset uses ``FONT_PATH``
    itself, so what is drawn never depends on the subset; so does every
    cover when the subset cannot be made.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: dict[Path, tuple[Path, frozenset[str]] | None] = {}

    def path_for(self, text: str) -> Path:
        """The font file to draw ``text`` with."""
        source = FONT_PATH
        made = self._made.get(source, False)
        if made is False:
            with self._lock:
                made = self._made.get(source, False)
                if made is False:
                    made = self._made[source] = self._make(source)
        if made is not None and set(text) <= made[1]:
            return made[0]
        return source

    @staticmethod
    def _make(source: Path) -> tuple[Path, frozenset[str]] | None:
        directory = None
        try:
            from fontTools import subset
            from fontTools.ttLib import TTFont

            font = TTFont(str(source), recalcTimestamp=False)
            options = subset.Options()
            options.notdef_outline = True
            options.recommended_glyphs = True
            options.glyph_names = True
            options.name_IDs = ["*"]
            options.name_languages = ["*"]
            options.layout_features = []  # fpdf2 draws without shaping
            options.drop_tables += ["FFTM"]  # FontForge's timestamps: fontTools does not know them
            subsetter = subset.Subsetter(options)
            subsetter.populate(unicodes=[c for low, high in _COVER_SUBSET_RANGES for c in range(low, high + 1)])
            subsetter.subset(font)
            chars = frozenset(chr(c) for c in font.getBestCmap()) | {"\n"}
            directory = tempfile.mkdtemp(prefix="gatewayd-cover-font-")
            atexit.register(shutil.rmtree, directory, True)
            path = Path(directory) / f"{source.stem}-cover.ttf"
            font.save(str(path))
            return path, chars
        except Exception as exc:  # noqa: BLE001 - only slower: the whole font still works
            log.warning("cover_font_subset_failed", font=str(source), error=f"{type(exc).__name__}: {exc}")
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
            return None


_COVER_FONT = _CoverFont()


def render_cover(cover: CoverPage, *, page_size: str = "A4", attachment_pages: int = 0) -> bytes:
    """The cover page PDF (one page, two when the body is long; never more).

    DejaVu Sans covers Latin, Greek and Cyrillic (drawn with a subset of it
    made once, see ``_CoverFont``). A missing font file is an installation
    error and raises ``FileNotFoundError`` (the listener answers 451, never a
    fax without a readable cover).
    """
    from fpdf import FPDF  # imported here: fpdf2 costs ~0.3 s to import
    from fpdf.enums import MethodReturnValue, XPos, YPos

    if not FONT_PATH.is_file():
        raise FileNotFoundError(f"cover page font {FONT_PATH} is missing (install fonts-dejavu-core)")
    fields = [
        ("To:", _printable(cover.recipient, keep_newlines=False)[:_MAX_FIELD_CHARS] or "—"),
        ("From:", _printable(cover.sender, keep_newlines=False)[:_MAX_FIELD_CHARS] or "—"),
        ("Date:", _printable(cover.date, keep_newlines=False)[:_MAX_FIELD_CHARS] or "—"),
        ("Subject:", _printable(cover.subject, keep_newlines=False)[:_MAX_FIELD_CHARS] or "—"),
    ]
    body = _printable(cover.body, keep_newlines=True).strip()
    font_path = _COVER_FONT.path_for(_COVER_FIXED_TEXT + _TRUNCATED + "".join(v for _, v in fields) + body[:_MAX_BODY_CHARS])

    page_w, page_h = _page(page_size)
    margin, line_h, field_h = 20.0, 5.6, 6.5
    pdf = FPDF(orientation="P", unit="mm", format=(page_w / _MM, page_h / _MM))
    pdf.set_auto_page_break(False)
    pdf.set_margins(margin, margin, margin)
    pdf.add_font("DejaVu", fname=str(font_path))
    pdf.add_page()
    width = pdf.epw

    pdf.set_font("DejaVu", size=28)
    pdf.cell(0, 14, "FAX", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_draw_color(0, 0, 0)
    pdf.set_line_width(0.6)
    pdf.line(margin, pdf.get_y() + 2, margin + width, pdf.get_y() + 2)
    pdf.ln(6)

    pdf.set_font("DejaVu", size=11)
    label_w = 28.0
    for label, value in fields:
        pdf.set_x(margin)
        pdf.cell(label_w, field_h, label)
        pdf.multi_cell(width - label_w, field_h, value, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pages_y = pdf.get_y()  # the "Pages:" row is drawn once the cover's own length is known
    pdf.ln(field_h + 2)
    pdf.set_line_width(0.3)
    pdf.line(margin, pdf.get_y(), margin + width, pdf.get_y())
    pdf.ln(5)

    lines: list[str] = []
    if body:
        truncated = len(body) > _MAX_BODY_CHARS
        body = body[:_MAX_BODY_CHARS]
        lines = pdf.multi_cell(width, line_h, body, align="L", dry_run=True, output=MethodReturnValue.LINES)
        first = int((page_h / _MM - margin - pdf.get_y()) // line_h)
        second = int((page_h / _MM - 2 * margin) // line_h)
        if truncated or len(lines) > first + second:
            lines = lines[: first + second - 2] + ["", _TRUNCATED]
    else:
        first = 0
    cover_pages = 1 if len(lines) <= first else 2

    total = cover_pages + attachment_pages
    body_y = pdf.get_y()
    pdf.set_xy(margin, pages_y)
    pdf.cell(label_w, field_h, "Pages:")
    pdf.cell(width - label_w, field_h, f"{total} including this cover" if cover_pages == 1
             else f"{total} including {cover_pages} cover pages")
    pdf.set_xy(margin, body_y)

    for number, line in enumerate(lines):
        if number == first:
            pdf.add_page()
        pdf.set_x(margin)
        pdf.cell(width, line_h, line, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    return bytes(pdf.output())


# ------------------------------------------------------------------ async


class DocumentBuilder:
    """Runs ``build_document`` in worker threads, at most ``max_concurrent`` at once.

    Attachments that are all PDFs, ``inline_bytes`` in all at most, with no
    cover page, are built on the calling thread: a hand-off costs more.

    Conversions hold decoded images in memory; the bound keeps a burst of
    messages from multiplying that. A slot is held until its thread really
    ends, even when the caller is cancelled (a thread cannot be stopped).
    """

    def __init__(self, max_concurrent: int = 2, *, inline_bytes: int = 0) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._slots = asyncio.Semaphore(max_concurrent)
        self.inline_bytes = inline_bytes

    async def build(
        self,
        attachments: Sequence[Attachment],
        *,
        cover: CoverPage | None,
        page_size: str = "A4",
        max_pages: int = 100,
        max_bytes: int = MAX_FAX_BYTES,
        unsupported: Sequence[UnsupportedPart] = (),
    ) -> FaxDocument:
        if (cover is None and attachments and all(a.kind == "pdf" for a in attachments)
                and sum(len(a.data) for a in attachments) <= self.inline_bytes):
            # PDFs only (~0.3 ms at 100 KB, ~2 ms at 1 MB): no cover page
            # (fpdf2 takes milliseconds) and no image (decoding may take much longer).
            return build_document(attachments, cover=None, page_size=page_size, max_pages=max_pages,
                                  max_bytes=max_bytes, unsupported=unsupported)
        await self._slots.acquire()
        try:
            task = asyncio.ensure_future(asyncio.to_thread(
                build_document,
                attachments,
                cover=cover,
                page_size=page_size,
                max_pages=max_pages,
                max_bytes=max_bytes,
                unsupported=unsupported,
            ))
        except BaseException:
            self._slots.release()
            raise
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Future[FaxDocument]) -> None:
        self._slots.release()
        if not task.cancelled():
            task.exception()  # retrieved: a cancelled caller must not leave a "never retrieved" warning

