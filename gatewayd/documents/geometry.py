"""Page and image geometry: paper sizes, fax resolutions, the pixel limit, and how an image is fitted to a page."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from gatewayd.documents.errors import BadImage

__all__ = [
    "MAX_IMAGE_PIXELS",
    "PAGE_SIZES",
    "Layout",
    "check_pixels",
    "fit_layout",
    "is_fax_resolution",
    "page_dimensions",
]

# Page sizes in PDF points (1/72 inch): A4 is 210 x 297 mm.
PAGE_SIZES: Mapping[str, tuple[float, float]] = MappingProxyType({
    "A4": (595.2756, 841.8898),
    "Letter": (612.0, 792.0),
})

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


def is_fax_resolution(xdpi: float, ydpi: float) -> bool:
    # Readers round inch/cm conversions differently (203.2 vs 204): 2 dpi slack.
    return any(abs(xdpi - x) <= 2 and abs(ydpi - y) <= 2 for x, y in _FAX_RESOLUTIONS)


def page_dimensions(page_size: str) -> tuple[float, float]:
    """Width and height in points of a ``documents.page_size``; ValueError for an unknown one."""
    try:
        return PAGE_SIZES[page_size]
    except KeyError:
        raise ValueError(f"page_size must be one of {', '.join(PAGE_SIZES)}, not {page_size!r}") from None


def check_pixels(size: tuple[int, int]) -> None:
    """Raise ``BadImage`` for an empty frame or one over ``MAX_IMAGE_PIXELS``."""
    width, height = size
    if width <= 0 or height <= 0:
        raise BadImage("corrupt image")
    if width * height > MAX_IMAGE_PIXELS:
        raise BadImage(
            f"image too large ({width}x{height} pixels, limit {MAX_IMAGE_PIXELS // 1_000_000} megapixels)"
        )


Layout = Callable[[int, int, tuple[float, float]], tuple[float, float, float, float]]


def fit_layout(page: tuple[float, float], *, keep_fax_size: bool) -> Layout:
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
