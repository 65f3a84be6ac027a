"""Images as fax pages: checks from the headers, flattening, img2pdf, and ``tiff_to_pdf`` for received faxes.

img2pdf embeds JPEG and single-strip CCITT G4 data without decoding it.
Pillow is used for header-only checks (pixel limits, frame counts) and to
flatten what img2pdf cannot or should not embed as is (alpha, 16-bit,
GIF/BMP/WEBP). A refusal is ``BadImage`` with the reason the reply gives
(docs/documents.md). Synchronous and CPU-bound.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from io import BytesIO
from types import MappingProxyType

import img2pdf
import pikepdf
from PIL import Image, ImageFile, TiffImagePlugin

from gatewayd.documents.errors import BadImage, ConversionError, TooManyPages
from gatewayd.documents.geometry import MAX_IMAGE_PIXELS, Layout, check_pixels, fit_layout, page_dimensions
from gatewayd.documents.tiff import TIFF_MAGICS, G4Frame, g4_frames, g4_pdf, tiff_ifds
from gatewayd.filekinds import FileKind

__all__ = ["MAX_FRAMES", "ImagePlan", "image_pdf", "inspect_image", "tiff_to_pdf"]

_PIL_FORMATS: Mapping[FileKind, str] = MappingProxyType({
    "tiff": "TIFF", "jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "webp": "WEBP",
})
# Modes img2pdf embeds faithfully without an alpha channel.
_PLAIN_MODES = frozenset({"1", "L", "RGB", "P", "CMYK"})
# Frames counted in one TIFF before giving up: a sanity bound on header
# walking (each frame costs a seek), far above any page limit.
MAX_FRAMES = 10_000


@dataclass(frozen=True)
class ImagePlan:
    """What the header check found: how many pages, and how to make them."""

    kind: FileKind
    frames: int
    direct: bool  # the file goes to img2pdf as is
    jpeg: bool = False  # when flattened: encode as JPEG (lossy source), else PNG
    g4: tuple[G4Frame, ...] = ()  # set when every frame is single-strip G4


def _open_image(data: bytes, kind: FileKind) -> ImageFile.ImageFile:
    try:
        # formats=: only the decoder the magic bytes chose; no format guessing.
        return Image.open(BytesIO(data), formats=[_PIL_FORMATS[kind]])
    except Image.DecompressionBombError as exc:
        raise BadImage(_bomb(exc)) from None
    except Exception:  # Pillow raises anything on hostile headers
        raise BadImage(_corrupt(kind)) from None


def _bomb(exc: Exception) -> str:
    # Pillow refused at open (over twice its own limit); say how big.
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1))} pixels" if found else "decompression bomb"
    return f"image too large ({size}, limit {MAX_IMAGE_PIXELS // 1_000_000} megapixels)"


def _corrupt(kind: FileKind) -> str:
    return "unreadable TIFF" if kind == "tiff" else "corrupt image"


def inspect_image(data: bytes, kind: FileKind, *, frame_limit: int) -> ImagePlan:
    """Check an image from its headers (pixel counts, frames, integrity).

    Raises ``BadImage`` (with the reason) or ``TooManyPages``.
    """
    declared_frames = 0
    if kind == "tiff":
        # Our own reading of the IFD chain comes first: Pillow reads a
        # truncated chain as "no more frames" (with a warning), which would
        # fax a cut-off TIFF short; and fax TIFFs (all single-strip G4) need
        # nothing more than this.
        ifds = tiff_ifds(data, frame_limit)
        g4 = g4_frames(data, ifds)
        if g4:
            return ImagePlan("tiff", len(g4), direct=True, g4=g4)
        declared_frames = len(ifds)
    else:
        size = _header_size(data, kind)
        if size is not None:
            check_pixels(size)  # before Pillow sees it: no bomb warning, a precise reply
    img = _open_image(data, kind)
    try:
        with img:
            if kind == "tiff":
                return _inspect_tiff(img, data, declared_frames, frame_limit)
            check_pixels(img.size)
            if kind == "jpeg":
                _verify_jpeg(img, data)
                return ImagePlan(kind, 1, direct=True)
            if kind == "png" and _png_embeddable(img, data):
                img.verify()  # chunk CRCs up to IEND, without decoding pixels
                return ImagePlan(kind, 1, direct=True)
            # GIF, BMP, WEBP, PNG with alpha or 16 bits: flattened by Pillow.
            # GIF and WEBP: the first frame only (an animation is not a document).
            return ImagePlan(kind, 1, direct=False, jpeg=kind == "webp" and data[12:16] == b"VP8 ")
    except (BadImage, TooManyPages, MemoryError):
        raise
    except Image.DecompressionBombError as exc:
        raise BadImage(_bomb(exc)) from None
    except Exception:
        raise BadImage(_corrupt(kind)) from None


def _header_size(data: bytes, kind: FileKind) -> tuple[int, int] | None:
    """Width and height at fixed header offsets (PNG, GIF, BMP); None for other kinds."""
    if kind == "png" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if kind == "gif" and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if kind == "bmp" and len(data) >= 26 and int.from_bytes(data[14:18], "little") >= 40:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)  # negative height: a top-down bitmap
    return None


def _encode_image(data: bytes, plan: ImagePlan) -> list[bytes]:
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
    except (BadImage, MemoryError):
        raise
    except Exception:
        raise BadImage(_corrupt(plan.kind)) from None


def image_pdf(data: bytes, plan: ImagePlan, layout: Layout) -> pikepdf.Pdf:
    """The pages of an inspected image, as an open PDF to copy pages from."""
    if plan.g4:
        return pikepdf.open(BytesIO(g4_pdf(plan.g4, layout)))
    inputs = [BytesIO(item) for item in _encode_image(data, plan)]
    try:
        # img2pdf's pikepdf document object: its pages are copied without
        # writing and re-reading the (possibly megabytes of) image data.
        document = img2pdf.convert_to_docobject(*inputs, engine=img2pdf.Engine.pikepdf, **_img2pdf_options(layout))
        writer = document.writer
    except MemoryError:
        raise
    except Exception as exc:  # img2pdf and Pillow raise many types
        raise BadImage(_corrupt(plan.kind)) from exc
    if not isinstance(writer, pikepdf.Pdf):  # pragma: no cover - a changed img2pdf
        return pikepdf.open(BytesIO(_images_to_pdf(_encode_image(data, plan), layout)))
    return writer


def _img2pdf_options(layout: Layout) -> dict[str, object]:
    return {"layout_fun": layout, "rotation": img2pdf.Rotation.ifvalid, "nodate": True}


def _inspect_tiff(img: ImageFile.ImageFile, data: bytes, declared_frames: int, frame_limit: int) -> ImagePlan:
    if not isinstance(img, TiffImagePlugin.TiffImageFile):  # formats=["TIFF"] makes it one
        raise BadImage("unreadable TIFF")
    direct = True
    frames = 0
    while True:
        try:
            img.seek(frames)
        except EOFError:
            break
        frames += 1
        if frames > frame_limit:
            raise TooManyPages(frames)
        check_pixels(img.size)
        if not _tiff_frame_embeddable(img, len(data)):
            direct = False
    if frames == 0 or frames != declared_frames:
        raise BadImage("unreadable TIFF")
    # Direct: img2pdf decodes non-G4 frames itself (1-bit ones become G4).
    return ImagePlan("tiff", frames, direct=direct)


def _tiff_frame_embeddable(img: TiffImagePlugin.TiffImageFile, file_size: int) -> bool:
    tags = img.tag_v2
    # Data copied without decoding (G4) must be inside the file, so that a
    # truncated TIFF is refused rather than faxed half blank.
    tiled = TiffImagePlugin.TILEOFFSETS in tags
    offsets = _tuple(tags.get(TiffImagePlugin.TILEOFFSETS if tiled else TiffImagePlugin.STRIPOFFSETS, ()))
    counts = _tuple(tags.get(TiffImagePlugin.TILEBYTECOUNTS if tiled else TiffImagePlugin.STRIPBYTECOUNTS, ()))
    if not offsets or len(offsets) != len(counts):
        raise BadImage("unreadable TIFF")
    if any(o + c > file_size for o, c in zip(offsets, counts, strict=True)):
        raise BadImage("unreadable TIFF")
    bits = _tuple(tags.get(TiffImagePlugin.BITSPERSAMPLE, (1,)))
    return max(bits, default=1) <= 8 and img.mode in _PLAIN_MODES and "transparency" not in img.info


def _tuple(value: object) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,)


def _verify_jpeg(img: ImageFile.ImageFile, data: bytes) -> None:
    if img.mode not in ("L", "RGB", "CMYK"):
        raise BadImage("corrupt image")
    # img2pdf embeds JPEG data undecoded, and decoding it only to check it
    # would cost more than everything else together. Pillow has parsed the
    # headers up to the scan data; a file cut off in transit (the common
    # damage) has no end-of-image marker after it.
    scan_start = img.tile[0][2] if img.tile else len(data)
    if data.rfind(b"\xff\xd9") < scan_start:
        raise BadImage("corrupt image")


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


def _images_to_pdf(inputs: Iterable[bytes], layout: Layout) -> bytes:
    try:
        # File objects: given bytes, img2pdf would first try them as a path.
        return img2pdf.convert(*[BytesIO(item) for item in inputs], **_img2pdf_options(layout))
    except MemoryError:
        raise
    except Exception as exc:  # img2pdf and Pillow raise many types
        raise BadImage("corrupt image") from exc


def tiff_to_pdf(data: bytes, page_size: str = "A4") -> tuple[bytes, int]:
    """A (received) TIFF as PDF, one page per frame: ``(pdf, pages)``.

    Frames with a fax resolution keep their size; others are fitted to
    ``page_size``. Raises ``ConversionError`` for anything unreadable.
    """
    page = page_dimensions(page_size)
    if not data.startswith(TIFF_MAGICS):
        raise ConversionError("not a TIFF file")
    try:
        plan = inspect_image(data, "tiff", frame_limit=MAX_FRAMES)
        layout = fit_layout(page, keep_fax_size=True)
        pdf = g4_pdf(plan.g4, layout) if plan.g4 else _images_to_pdf(_encode_image(data, plan), layout)
    except BadImage as exc:
        raise ConversionError(exc.why) from None
    except TooManyPages:
        raise ConversionError(f"TIFF with more than {MAX_FRAMES} frames") from None
    return pdf, plan.frames
