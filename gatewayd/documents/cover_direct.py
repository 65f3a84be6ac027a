"""Quick cover pages written as PDF bytes directly: the calls ``cover.render_cover_pages`` makes on fpdf2, replayed without it.

A quick cover (``cover.is_quick``: all its text in a font subset made and
parsed once per process, no logo, a short body) spent ~1 ms of Python in
fpdf2 (layout, then its writer), most of a cover's cost in the daemon
(docs/performance.md, "Issue 19, session 5"). ``DirectCanvas`` answers the
same calls (``cell``, ``multi_cell``, ``ln``, ``set_xy``, ``line``,
``set_font``...) with fpdf2's own arithmetic: its text widths (the font's
advance widths rounded to 1/1000 em, summed), its word wrap
(``fpdf.line_break.MultiLineBreak``: break at the last space that fits,
else before the character that does not), its text positions and the same
two-decimal numbers in the content stream. So the layout code is the one
in ``cover.py``, run against either, and the pixels are fpdf2's (the tests
render both with poppler and compare bytes: tests/documents/test_cover_direct.py).

The font is the subset file embedded whole, as ``cover_writer`` does for
fpdf2, but every object of it (the file, its descriptor, the CID font with
the widths of every character, the CIDToGIDMap and the ToUnicode CMap) is
serialised once per process (``DirectFont``): a cover writes only its
catalog, pages, page content streams (zlib) and the cross-reference table.
Written by hand because it is measured (docs/performance.md).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DirectCanvas", "DirectFont", "direct_font"]

# fpdf2's constants for unit="mm" (fpdf.util.get_scale_factor, FPDF.__init__):
# written the same way so every float comes out bit for bit the same.
_K = 72 / 25.4
_DEFAULT_MARGIN = (7200 / 254) / _K
_TOLERANCE = 1e-9  # fpdf.util.FloatTolerance

# Object numbers: fixed, so the font's objects are serialised once per process.
_CATALOG, _PAGES, _TYPE0, _CIDFONT, _TOUNICODE, _DESCRIPTOR, _GIDMAP, _FONTFILE, _INFO = range(1, 10)
_FIRST_PAGE = 10  # then each page's content stream, then the next page
_HEADER = b"%PDF-1.3\n%\xe2\xe3\xcf\xd3\n"


@dataclass(frozen=True)
class DirectFont:
    """A font subset ready to draw with: each character's width and code, and its PDF objects already serialised.

    ``codes`` maps each character of the subset to its 2-byte code in hex
    (its CID: one per character, so the ToUnicode CMap gives back the very
    character, even where two share a glyph); ``head`` is the file's start:
    header, catalog, info and the font's objects, at ``offsets``.
    """

    widths: Mapping[str, int]
    codes: Mapping[str, str]
    head: bytes
    offsets: Mapping[int, int]


def direct_font(template: Any, compressed_file: bytes, file_length: int) -> DirectFont:
    """A ``DirectFont`` from fpdf2's parse of a subset (its ``TTFFont``, only read) and the subset file, compressed.

    The widths are fpdf2's own (``TTFFont.cw``: the advance width rounded
    to 1/1000 em), so lines wrap where fpdf2 wraps them and the viewer
    advances each glyph as far as fpdf2's /W said.
    """
    chars = sorted(template.glyph_ids)
    widths = {chr(code): int(template.cw[code]) for code in chars}
    codes = {chr(code): f"{cid:04X}" for cid, code in enumerate(chars, start=1)}
    glyphs = [0] + [template.glyph_ids[code] for code in chars]  # CID 0: .notdef
    desc = template.desc
    name = f"/MPDFAA+{template.name}"

    to_unicode = [
        "/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n"
        "/CIDSystemInfo\n<</Registry (Adobe)\n/Ordering (UCS)\n/Supplement 0\n>> def\n"
        "/CMapName /Adobe-Identity-UCS def\n/CMapType 2 def\n"
        "1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n"
    ]
    for start in range(0, len(chars), 100):
        block = chars[start:start + 100]
        to_unicode.append(f"{len(block)} beginbfchar\n")
        to_unicode.extend(f"<{codes[chr(code)]}> <{chr(code).encode('utf-16-be').hex().upper()}>\n" for code in block)
        to_unicode.append("endbfchar\n")
    to_unicode.append("endcmap\nCMapName currentdict /CMap defineresource pop\nend\nend")
    gid_map = b"".join(gid.to_bytes(2, "big") for gid in glyphs)

    objects = {
        _CATALOG: b"<< /Type /Catalog /Pages 2 0 R >>",
        _INFO: b"<< /CreationDate (D:20000101000000Z) >>",
        _TYPE0: (f"<< /Type /Font /Subtype /Type0 /BaseFont {name} /Encoding /Identity-H"
                 f" /DescendantFonts [{_CIDFONT} 0 R] /ToUnicode {_TOUNICODE} 0 R >>").encode(),
        _CIDFONT: (f"<< /Type /Font /Subtype /CIDFontType2 /BaseFont {name}"
                   " /CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >>"
                   f" /FontDescriptor {_DESCRIPTOR} 0 R /DW {int(desc.missing_width)}"
                   f" /W [1 [{' '.join(str(widths[chr(code)]) for code in chars)}]]"
                   f" /CIDToGIDMap {_GIDMAP} 0 R >>").encode(),
        _TOUNICODE: _stream("".join(to_unicode).encode("ascii")),
        _DESCRIPTOR: (f"<< /Type /FontDescriptor /FontName {name} /Ascent {int(desc.ascent)} /Descent {int(desc.descent)}"
                      f" /CapHeight {int(desc.cap_height)} /Flags {int(getattr(desc.flags, 'value', desc.flags))}"
                      f" /FontBBox [{' '.join(str(int(v)) for v in str(desc.font_b_box).strip('[]').split())}]"
                      f" /ItalicAngle {int(desc.italic_angle)} /StemV {int(desc.stem_v)} /MissingWidth {int(desc.missing_width)}"
                      f" /FontFile2 {_FONTFILE} 0 R >>").encode(),
        _GIDMAP: _stream(gid_map),
        _FONTFILE: (b"<< /Filter /FlateDecode /Length %d /Length1 %d >>\nstream\n" % (len(compressed_file), file_length)
                    + compressed_file + b"\nendstream"),
    }
    head = bytearray(_HEADER)
    offsets: dict[int, int] = {}
    for number in sorted(objects):
        offsets[number] = len(head)
        head += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    return DirectFont(widths=widths, codes=codes, head=bytes(head), offsets=offsets)


def _stream(data: bytes) -> bytes:
    packed = zlib.compress(data)
    return b"<< /Filter /FlateDecode /Length %d >>\nstream\n%s\nendstream" % (len(packed), packed)


class DirectCanvas:
    """The part of ``fpdf.FPDF`` that ``cover.render_cover_pages`` calls, for one font, writing the PDF itself.

    Same arguments, same state (position, margins, font size, line width,
    whether the size is set on the page) and same results as fpdf2 with
    ``unit="mm"``, no automatic page break and no text shaping; each method
    says which fpdf2 method it follows. Text must be in ``font`` (the
    caller checks: ``cover._CoverFont.direct_font``).
    """

    def __init__(self, font: DirectFont, *, orientation: str = "P", unit: str = "mm", format: tuple[float, float]) -> None:
        if orientation != "P" or unit != "mm":
            raise ValueError("DirectCanvas draws portrait pages in mm only")
        self._font = font
        self.k = _K
        self.w_pt, self.h_pt = format[0] * _K, format[1] * _K  # fpdf.fpdf.get_page_format
        self.w, self.h = self.w_pt / _K, self.h_pt / _K
        self.l_margin = self.t_margin = self.r_margin = _DEFAULT_MARGIN
        self.c_margin = _DEFAULT_MARGIN / 10.0
        self.x, self.y = self.l_margin, self.t_margin
        self.line_width = 0.567 / _K
        self.font_size_pt = 12.0
        self._font_chosen = False
        self._font_on_page = False  # fpdf2's current_font_is_set_on_page
        self._lasth = 0.0
        self._pages: list[list[str]] = []

    # Settings render_cover_pages makes that change nothing drawn here.
    def set_auto_page_break(self, auto: bool, margin: float = 0) -> None:
        if auto:
            raise ValueError("DirectCanvas has no automatic page break")

    def set_creation_date(self, date: Any) -> None:
        """The date is fixed (2000-01-01, as ``cover._FIXED_DATE``): the same cover gives the same bytes."""

    def set_draw_color(self, r: int, g: int = -1, b: int = -1) -> None:
        if (r, g, b) != (0, 0, 0):
            raise ValueError("DirectCanvas draws in black only")

    def set_margins(self, left: float, top: float, right: float = -1) -> None:
        if self.y < top or self.y == self.t_margin:
            self.y = top
        self.l_margin, self.t_margin, self.r_margin = left, top, left if right == -1 else right

    @property
    def epw(self) -> float:
        return self.w - self.l_margin - self.r_margin

    @property
    def pages_count(self) -> int:
        return len(self._pages)

    def get_y(self) -> float:
        return self.y

    def set_x(self, x: float) -> None:
        self.x = x if x >= 0 else self.w + x

    def set_y(self, y: float) -> None:
        self.x = self.l_margin
        self.y = y if y >= 0 else self.h + y

    def set_xy(self, x: float, y: float) -> None:
        self.set_y(y)
        self.set_x(x)

    def ln(self, h: float | None = None) -> None:
        self.x = self.l_margin
        self.y += h if h is not None else (self._lasth or self.font_size_pt / _K)

    def add_page(self) -> None:
        """``FPDF.add_page``: line cap and width first; the font is set again by the page's first text."""
        self._pages.append([])
        self._font_on_page = False
        self._out("2 J")
        self._out(f"{self.line_width * _K:.2f} w")
        self.x, self.y = self.l_margin, self.t_margin

    def set_font(self, family: str | None = None, style: str = "", size: float = 0) -> None:
        """``FPDF.set_font`` for the one family: a new size is written before the next text."""
        if style:
            raise ValueError("DirectCanvas has no styles")
        size = size or self.font_size_pt
        if self._font_chosen and abs(self.font_size_pt - size) <= _TOLERANCE:
            return
        self._font_chosen = True
        self.font_size_pt = size
        self._font_on_page = False

    def set_line_width(self, width: float) -> None:
        if width != self.line_width:
            self.line_width = width
            if self._pages:
                self._out(f"{width * _K:.2f} w")

    def line(self, x1: float, y1: float, x2: float, y2: float) -> None:
        self._out(f"{x1 * _K:.2f} {(self.h - y1) * _K:.2f} m {x2 * _K:.2f} {(self.h - y2) * _K:.2f} l S")

    def get_string_width(self, text: str) -> float:
        """``FPDF.get_string_width``: the widths (1/1000 em) summed, times the size, in mm."""
        widths = self._font.widths
        return sum(widths[c] for c in text) * self.font_size_pt * 0.001 / _K

    def cell(self, w: float, h: float, text: str = "", *, align: Any = "L", new_x: Any = "RIGHT", new_y: Any = "TOP") -> None:
        """``FPDF.cell`` (``_render_styled_text_line``): the text on its baseline, inside the cell's margins."""
        if w == 0:
            w = self.w - self.r_margin - self.x
        if text:
            if not self._font_on_page:
                self._out(f"BT /F1 {self.font_size_pt:.2f} Tf ET")
                self._font_on_page = True
            if _name(align) == "R":
                dx = w - self.c_margin - self.get_string_width(text)
            elif _name(align) == "L":
                dx = self.c_margin
            else:
                raise ValueError(f"DirectCanvas aligns left or right, not {align!r}")
            codes = self._font.codes
            self._out(
                f"BT {(self.x + dx) * _K:.2f} "
                f"{(self.h - self.y - 0.5 * h - 0.3 * (self.font_size_pt / _K)) * _K:.2f} Td "
                f"<{''.join([codes[c] for c in text])}> Tj ET"
            )
        self._lasth = h
        self._move(w, h, new_x, new_y)

    def multi_cell(self, w: float, h: float, text: str = "", *, align: Any = "L", new_x: Any = "RIGHT", new_y: Any = "NEXT",
                   dry_run: bool = False, output: Any = None) -> list[str] | None:
        """``FPDF.multi_cell``, left aligned: the lines of ``_wrap``, each a cell; with ``dry_run``, only the lines."""
        if _name(align) != "L":
            raise ValueError(f"DirectCanvas wraps left-aligned text only, not {align!r}")
        lines = self._wrap(text.replace("\r", ""), w)
        if dry_run:
            if output is None or _name(output) != "LINES":
                raise ValueError("DirectCanvas's dry run gives the lines only")
            return [line for line, _ in lines]
        if not lines:
            lines = [("", False)]
        for index, (line, _) in enumerate(lines):
            last = index == len(lines) - 1
            self.cell(w, h, line, new_x=new_x if last else "LEFT", new_y=new_y if last else "NEXT")
        if lines[-1][1] and _name(new_y) in ("LAST", "NEXT"):
            self.ln()
        return None

    def _wrap(self, text: str, w: float) -> list[tuple[str, bool]]:
        """fpdf2's word wrap (``MultiLineBreak.get_line``) for one font and no soft hyphens: each line and whether a newline ended it.

        A line takes characters while its width fits ``w`` less the cell's
        two margins; at the first that does not fit, a space is dropped and
        ends the line, else the line ends at its last space (dropped, the
        text resumes after it), else before that character. A text's last
        line of zero width is dropped, as fpdf2 drops it.
        """
        widths = self._font.widths
        scale = self.font_size_pt
        limit = w - self.c_margin - self.c_margin
        lines: list[tuple[str, bool]] = []
        i, n = 0, len(text)
        forced = -1
        while i < n:
            start = i
            total = 0  # the line's width in 1/1000 em: its float is fpdf2's, computed the same way
            space = -1  # index in text of the line's last space
            ended = False
            while i < n:
                c = text[i]
                if c == "\n":
                    lines.append((text[start:i], True))
                    i += 1
                    ended = True
                    break
                width = widths[c]
                if (total * scale * 0.001 / _K if i > start else 0) + width * scale * 0.001 / _K - limit > _TOLERANCE:
                    if c == " ":
                        lines.append((text[start:i], False))
                        i += 1
                    elif space >= 0:
                        lines.append((text[start:space], False))
                        i = space + 1
                    else:
                        if forced == i:
                            raise ValueError("not enough horizontal space to draw a single character")
                        forced = i
                        lines.append((text[start:i], False))
                    ended = True
                    break
                if c == " ":
                    space = i
                total += width
                i += 1
            if not ended and total:
                lines.append((text[start:i], False))
        return lines

    def _move(self, w: float, h: float, new_x: Any, new_y: Any) -> None:
        x_to, y_to = _name(new_x), _name(new_y)
        if x_to == "RIGHT":
            self.x += w
        elif x_to == "LMARGIN":
            self.x = self.l_margin
        elif x_to != "LEFT":
            raise ValueError(f"DirectCanvas moves to RIGHT, LMARGIN or LEFT, not {new_x!r}")
        if y_to == "NEXT":
            self.y += h
        elif y_to != "TOP":
            raise ValueError(f"DirectCanvas moves to NEXT or TOP, not {new_y!r}")

    def _out(self, op: str) -> None:
        self._pages[-1].append(op)

    def output(self) -> bytes:
        """The PDF: the font's objects as made once, then the pages, each content stream compressed, and the xref."""
        font = self._font
        out = bytearray(font.head)
        offsets = dict(font.offsets)
        count = len(self._pages)
        kids = " ".join(f"{_FIRST_PAGE + 2 * p} 0 R" for p in range(count))
        offsets[_PAGES] = len(out)
        out += b"%d 0 obj\n<< /Type /Pages /Kids [%s] /Count %d >>\nendobj\n" % (_PAGES, kids.encode(), count)
        media_box = f"[0 0 {self.w_pt:.2f} {self.h_pt:.2f}]".encode()
        for p, ops in enumerate(self._pages):
            page, contents = _FIRST_PAGE + 2 * p, _FIRST_PAGE + 2 * p + 1
            offsets[page] = len(out)
            out += (b"%d 0 obj\n<< /Type /Page /Parent %d 0 R /MediaBox %s /Resources << /Font << /F1 %d 0 R >>"
                    b" /ProcSet [/PDF /Text] >> /Contents %d 0 R >>\nendobj\n" % (page, _PAGES, media_box, _TYPE0, contents))
            offsets[contents] = len(out)
            out += b"%d 0 obj\n%s\nendobj\n" % (contents, _stream("\n".join(ops).encode("ascii")))
        size = max(offsets) + 1
        xref = len(out)
        out += b"xref\n0 %d\n0000000000 65535 f \n" % size
        out += b"".join(b"%010d 00000 n \n" % offsets[number] for number in range(1, size))
        out += b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, _CATALOG, _INFO, xref)
        return bytes(out)


def _name(value: Any) -> str:
    """An fpdf2 enum member's name (``Align.R``, ``XPos.LMARGIN``) or the same name as a string."""
    return str(getattr(value, "name", value))
