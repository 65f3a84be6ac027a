"""fpdf2's PDF writer for cover pages, embedding a font subset made once per process as it is.

fpdf2 subsets every TrueType font again for each document it writes
(``OutputProducer._add_fonts``: fontTools subsets, then compiles the font):
4.5 of a cover's ~7 ms (docs/performance.md, Issue 19). The cover's DejaVu
font is already a small subset made once per process (``cover._CoverFont``),
so this writer embeds that file whole instead: its bytes compressed once,
and a CIDToGIDMap from the glyph ids fpdf2 already read from it. Same
outlines and hints, so the same pixels; only the PDF grows by the glyphs a
cover does not use. Any other font (the CJK fallback, the whole DejaVu when
a cover needs characters outside the subsets) is written by fpdf2 as before.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fpdf.output import CIDSystemInfo, OutputProducer, PDFFont, PDFFontStream, _build_cmap_blocks, _tt_font_widths
from fpdf.syntax import Name, PDFArray, PDFContentStream

__all__ = ["EmbeddedFonts", "make_writer"]


class EmbeddedFonts:
    """Font files to embed whole, each read and compressed once per process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[Path, tuple[bytes, int]] = {}

    def stream(self, path: Path) -> tuple[bytes, int]:
        """The file's bytes compressed as a PDF FlateDecode stream, and its length before."""
        found = self._streams.get(path)
        if found is None:
            with self._lock:
                found = self._streams.get(path)
                if found is None:
                    raw = path.read_bytes()
                    found = (zlib.compress(raw), len(raw))
                    self._streams[path] = found
        return found


def make_writer(embedded: EmbeddedFonts, whole: Callable[[Path], bool]) -> type[OutputProducer]:
    """An ``output_producer_class`` for ``FPDF.output`` that embeds the font files ``whole`` says yes to as they are."""

    class _CoverWriter(OutputProducer):
        # Fonts it embeds whole are only read, never subset in place: ``cover._CoverFont.add_to`` may share them.
        embeds_whole = True

        def _add_fonts(self, *args: Any, **kwargs: Any) -> Any:
            fonts = self.fpdf.fonts
            ours = {
                key: font for key, font in fonts.items()
                if whole(Path(str(getattr(font, "ttffile", ""))))
                and not getattr(font, "color_font", None) and not getattr(font, "is_cff", False)
            }
            if not ours:
                return super()._add_fonts(*args, **kwargs)
            # Ours first (the lowest ``i``: DejaVu is added before the
            # fallback), then fpdf2's own for the rest, so the object order is fixed.
            objs: dict[int, Any] = {}
            for font in sorted(ours.values(), key=lambda font: font.i):
                objs[font.i] = self._add_whole_font(font)
            everything = dict(fonts)  # this document's own registry: no other thread sees it
            for key in ours:
                del fonts[key]
            try:
                objs.update(super()._add_fonts(*args, **kwargs))
            finally:
                fonts.clear()
                fonts.update(everything)
            return objs

        def _add_whole_font(self, font: Any) -> PDFFont:
            # What fpdf2's ``_add_fonts`` writes for a TrueType font, with the
            # file embedded as it is: glyph ids are the file's own.
            fontname = f"MPDFAA+{font.name}"
            composite = PDFFont(subtype="Type0", base_font=fontname, encoding="Identity-H")
            self._add_pdf_obj(composite, "fonts")
            cid_font = PDFFont(subtype="CIDFontType2", base_font=fontname, d_w=font.desc.missing_width,
                               w=_tt_font_widths(font))
            self._add_pdf_obj(cid_font, "fonts")
            composite.descendant_fonts = PDFArray([cid_font])
            bf_char = [
                f'<{code:04X}> <{"".join(_utf16(u) for u in glyph.unicode)}>\n'
                for glyph, code in font.subset.items()
                if glyph is not None and isinstance(glyph.unicode, tuple) and glyph.unicode
            ]
            to_unicode = PDFContentStream(
                (
                    "/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n/CIDSystemInfo\n"
                    "<</Registry (Adobe)\n/Ordering (UCS)\n/Supplement 0\n>> def\n"
                    "/CMapName /Adobe-Identity-UCS def\n/CMapType 2 def\n"
                    "1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n"
                    f"{_build_cmap_blocks(bf_char, 'bfchar')}"
                    "endcmap\nCMapName currentdict /CMap defineresource pop\nend\nend"
                ).encode("latin-1")
            )
            self._add_pdf_obj(to_unicode, "fonts")
            composite.to_unicode = to_unicode
            system_info = CIDSystemInfo()
            self._add_pdf_obj(system_info, "fonts")
            cid_font.c_i_d_system_info = system_info
            descriptor = font.desc
            descriptor.font_name = Name(fontname)
            self._add_pdf_obj(descriptor, "fonts")
            cid_font.font_descriptor = descriptor
            gid_map = bytearray(256 * 256 * 2)
            for glyph, code in font.subset.items():
                if glyph is not None:
                    gid_map[code * 2] = glyph.glyph_id >> 8
                    gid_map[code * 2 + 1] = glyph.glyph_id & 0xFF
            gid_map_obj = PDFContentStream(contents=bytes(gid_map), compress=True)
            self._add_pdf_obj(gid_map_obj, "fonts")
            cid_font.c_i_d_to_g_i_d_map = gid_map_obj
            compressed, length = embedded.stream(Path(str(font.ttffile)))
            stream = PDFFontStream(contents=b"")
            stream._contents = compressed  # already FlateDecode (the filter PDFFontStream sets)
            stream.length = len(compressed)
            stream.length1 = length
            self._add_pdf_obj(stream, "fonts")
            descriptor.font_file2 = stream
            font.subset.pick.cache_clear()
            font.subset.get_glyph.cache_clear()
            font.close()
            return composite

    return _CoverWriter


def _utf16(code: int) -> str:
    if code > 0xFFFF:
        return f"{0xD800 | (code - 0x10000) >> 10:04X}{0xDC00 | (code & 0x3FF):04X}"
    return f"{code:04X}"
