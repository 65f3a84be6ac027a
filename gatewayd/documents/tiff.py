"""Read TIFF structure without decoding: the IFD chain, and fax frames (single-strip CCITT G4) written straight into a PDF.

Received faxes and most scanner TIFFs are single-strip G4: their data goes
into the PDF as is (docs/documents.md, docs/inbound.md). Anything else is
left to Pillow and img2pdf (``gatewayd/documents/images.py``). Every byte
read must lie inside the file; what does not raises ``BadImage``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from gatewayd.documents.errors import BadImage, TooManyPages
from gatewayd.documents.geometry import Layout, check_pixels

__all__ = ["TIFF_MAGICS", "G4Frame", "Ifd", "g4_frames", "g4_pdf", "tiff_ifds"]

# Classic and Big TIFF, little- and big-endian.
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass(frozen=True)
class G4Frame:
    """A TIFF frame that is one CCITT G4 strip: its data goes into the PDF as is."""

    width: int
    height: int
    dpi: tuple[float, float]
    strip: bytes = field(repr=False)
    black_is_1: bool


# TIFF tags read by tiff_ifds; anything else is left to Pillow.
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
Ifd = Mapping[int, tuple[float, ...]]


def tiff_ifds(data: bytes, frame_limit: int) -> list[Ifd]:
    """The IFDs of a TIFF (only the tags we use); every byte read must lie inside the file."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    count_fmt, entry_size, offset_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
    inline = 8 if big else 4
    ifds: list[Ifd] = []
    seen: set[int] = set()
    try:
        (offset,) = struct.unpack_from(order + offset_fmt, data, 8 if big else 4)
        while offset:
            if offset in seen or offset >= len(data):
                raise BadImage("unreadable TIFF")  # a loop, or cut off
            seen.add(offset)
            if len(seen) > frame_limit:
                raise TooManyPages(len(seen))
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
                    raise BadImage("unreadable TIFF")
                if typ == 5:
                    raw = struct.unpack_from(f"{order}{2 * count}I", data, where)
                    ifd[tag] = tuple(n / d if d else 0.0 for n, d in zip(raw[::2], raw[1::2], strict=True))
                else:
                    ifd[tag] = struct.unpack_from(f"{order}{count}{code}", data, where)
            ifds.append(ifd)
            (offset,) = struct.unpack_from(order + offset_fmt, data, base + entries * entry_size)
    except struct.error:
        raise BadImage("unreadable TIFF") from None
    if not ifds:
        raise BadImage("unreadable TIFF")
    return ifds


def g4_frames(data: bytes, ifds: Sequence[Ifd]) -> tuple[G4Frame, ...]:
    """Every frame as a G4 strip ready for the PDF, or () when any frame is not one."""
    frames = []
    for ifd in ifds:
        def one(tag: int, default: float, ifd: Ifd = ifd) -> float:
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
        check_pixels((width, height))
        start, length = int(offsets[0]), int(counts[0])
        if start + length > len(data) or length == 0:
            raise BadImage("unreadable TIFF")
        strip = data[start:start + length]
        if one(_FILL_ORDER, 1) == 2:
            strip = strip.translate(_BIT_REVERSED)
        scale = {2: 1.0, 3: 2.54}.get(int(one(_RES_UNIT, 2)), 0.0)  # per inch, per cm, none
        dpi = (one(_XRES, 0) * scale, one(_YRES, 0) * scale)
        frames.append(G4Frame(width, height, dpi, strip, black_is_1=one(_PHOTOMETRIC, 0) == 1))
    return tuple(frames)


_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def g4_pdf(frames: Sequence[G4Frame], layout: Layout) -> bytes:
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
