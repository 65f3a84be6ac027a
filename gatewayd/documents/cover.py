"""The cover page: its fields and text drawn with fpdf2 in DejaVu Sans (CJK from a fallback font), and the font subset that makes it fast.

Whether a message gets one is ``documents.cover_page`` (``wants_cover``);
what it shows is in docs/documents.md (Cover page). Each recipient gets its
own cover, naming only that recipient.
"""

from __future__ import annotations

import atexit
import copy
import datetime as dt
import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gatewayd.documents.geometry import page_dimensions
from gatewayd.logs import get_logger

if TYPE_CHECKING:
    from gatewayd.documents.cover_direct import DirectFont

log = get_logger(__name__)

__all__ = [
    "CJK_FONT_PATH", "FONT_PATH", "CoverLook", "CoverPage", "cover_fonts", "is_quick", "render_cover", "render_cover_pages", "wants_cover",
]

FONT_PATH = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
# Chinese, Japanese and Korean glyphs (fonts-wqy-zenhei): used per
# character for what DejaVu Sans lacks. Optional: without it such characters
# have no glyph, as before (docs/documents.md, Cover page).
CJK_FONT_PATH = Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")


@dataclass(frozen=True)
class CoverLook:
    """The office's own: ``[cover]`` in the configuration (docs/configuration.md)."""

    organisation: str = ""
    phone: str = ""
    notice: str = ""
    logo: str = ""  # a PNG file, checked at load


@dataclass(frozen=True)
class CoverPage:
    """One recipient's cover: ``recipient`` is its number, ``recipient_name`` its name (or "")."""

    sender: str
    recipient: str
    date: str
    subject: str
    body: str
    recipient_name: str = ""
    look: CoverLook = CoverLook()


def wants_cover(mode: str, body_text: str) -> bool:
    """``documents.cover_page``: "auto" (when the body has text), "always", "never"."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    if mode == "auto":
        return bool(body_text.strip())
    raise ValueError(f"cover_page must be auto, always or never, not {mode!r}")


_MM = 72 / 25.4
_MAX_FIELD_CHARS = 300
_MAX_BODY_CHARS = 12_000
_TRUNCATED = "[… message truncated]"
_MAX_NOTICE_CHARS = 1500
_MAX_NOTICE_LINES = 12
_LOGO_H = 18.0  # mm
_FIXED_DATE = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def _printable(text: str, *, keep_newlines: bool) -> str:
    text = text.replace("\r\n", "\n").replace("\t", "    ")
    allowed = "\n" if keep_newlines else ""
    out = "".join(
        ch if (ch.isprintable() or ch in allowed) else " " for ch in text
    )
    return out if keep_newlines else " ".join(out.split())


# The characters of the subsets of FONT_PATH, smallest first: a cover uses
# the first that holds all its text (fpdf2's parse grows with the font's
# glyphs; the gain of the Latin-1 subset, ~230 glyphs, over the larger one
# is measured in docs/performance.md). "latin": Basic Latin, Latin-1,
# general punctuation, currency signs, № and U+FFFD. "cover": Latin
# (Basic, Latin-1, Extended-A and B), Greek, Cyrillic, general punctuation,
# currency signs, letterlike symbols (№) and U+FFFD.
_LATIN_SUBSET_RANGES = (
    (0x0020, 0x007E), (0x00A0, 0x00FF), (0x2000, 0x206F), (0x20A0, 0x20CF), (0x2116, 0x2116), (0xFFFD, 0xFFFD),
)
_COVER_SUBSET_RANGES = (
    (0x0020, 0x007E), (0x00A0, 0x024F), (0x0370, 0x03FF), (0x0400, 0x04FF),
    (0x2000, 0x206F), (0x20A0, 0x20CF), (0x2100, 0x214F), (0xFFFD, 0xFFFD),
)
# Every fixed text render_cover draws besides the sender's (labels, "Pages:" row).
_COVER_FIXED_TEXT = "FAX To: From: Date: Subject: Pages: 0123456789 including this cover pages —"


class _CoverFont:
    """Subsets of ``FONT_PATH`` for cover pages, each made once per process.

    fpdf2 parses the whole font with fontTools for every document (DejaVu
    Sans: 760 KB, ~6,000 characters) and subsets it again at output, so its
    work grows with the font: the "cover" subset (~140 KB, ~900 characters)
    makes a cover about twice as fast as the whole font; the "latin" one
    (~56 KB, ~230 characters) saves a little more (docs/performance.md).
    fpdf2 would subset the file again for every cover at output; the
    subsets are embedded as they are instead (``cover_writer``).
    fpdf2 changes the font it loaded while writing the PDF, so a parsed font
    cannot be shared between documents: the subset is a file, in a private
    temporary directory removed at exit (systemd's PrivateTmp also cleans
    it). A cover with a character outside both subsets uses ``FONT_PATH``
    itself, so what is drawn never depends on the subset; so does every
    cover when the subset cannot be made.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: dict[str, tuple[Path, frozenset[str]] | None] = {}
        self._whole: frozenset[str] | None = None
        self._writer: Any = None
        self._embedded: Any = None  # cover_writer.EmbeddedFonts: each subset compressed once, for both writers
        self._parsed: dict[Path, Any] = {}
        self._direct: dict[Path, DirectFont] = {}

    def writer(self) -> Any:
        """fpdf2's writer for covers: it embeds the subsets made here as they are (``cover_writer``)."""
        if self._writer is None:
            with self._lock:
                if self._writer is None:
                    from gatewayd.documents.cover_writer import EmbeddedFonts, make_writer

                    self._embedded = EmbeddedFonts()
                    self._writer = make_writer(self._embedded, self.is_subset)
        return self._writer

    def is_subset(self, path: Path) -> bool:
        """Whether ``path`` is one of the subsets made here (embedded whole, never ``FONT_PATH``)."""
        return any(made is not None and made[0] == path for made in list(self._made.values()))

    def lacks(self, text: str) -> bool:
        """Whether ``text`` has a character ``FONT_PATH`` has no glyph for (read once per process)."""
        if self._whole is None:
            with self._lock:
                if self._whole is None:
                    from fontTools.ttLib import TTFont

                    with TTFont(str(FONT_PATH), lazy=True) as font:
                        self._whole = frozenset(chr(c) for c in font.getBestCmap()) | {"\n"}
        return not set(text) <= self._whole

    def path_for(self, text: str) -> Path:
        """The font file to draw ``text`` with: the smallest subset that holds it, else ``FONT_PATH``."""
        wanted = set(text)
        for name, ranges in (("latin", _LATIN_SUBSET_RANGES), ("cover", _COVER_SUBSET_RANGES)):
            if name not in self._made:
                with self._lock:
                    if name not in self._made:
                        self._made[name] = self._make(FONT_PATH, name, ranges)
            made = self._made[name]
            if made is not None and wanted <= made[1]:
                return made[0]
        return FONT_PATH

    def ready_for(self, text: str) -> bool:
        """Whether ``text`` draws with a subset already made and parsed: nothing slow is left to do once per process.

        Making the subsets (~0.3 s) and parsing one (~0.1 s) happen at a
        process's first covers, in a build thread (``is_quick`` is False until then).
        """
        wanted = set(text)
        for name in ("latin", "cover"):  # path_for's order
            if name not in self._made:
                return False
            made = self._made[name]
            if made is not None and wanted <= made[1]:
                return self._parsed.get(made[0]) not in (None, False)
        return False

    def direct_font(self, text: str) -> DirectFont | None:
        """The subset that draws ``text``, ready for ``cover_direct`` (made once per process), or None.

        None when ``text`` needs the whole font, when its subset is not
        parsed yet (a process's first covers parse it, through fpdf2), or
        when covers are written by fpdf2's own writer (the tests compare
        against it): then fpdf2 draws the cover.
        """
        path = self.path_for(text)
        template = self._parsed.get(path)
        if template is None or template is False or self._embedded is None or not getattr(self._writer, "embeds_whole", False):
            return None
        if not FONT_PATH.is_file():
            return None  # an installation error: fpdf2's path (cover_fonts) says so, the listener answers 451
        found = self._direct.get(path)
        if found is None:
            stream, length = self._embedded.stream(path)  # made with the writer above
            with self._lock:
                found = self._direct.get(path)
                if found is None:
                    from gatewayd.documents.cover_direct import direct_font

                    found = direct_font(template, stream, length)
                    self._direct[path] = found
        return found

    def add_to(self, pdf: Any, family: str, path: Path) -> None:
        """Add ``path`` to ``pdf`` as ``family``: a subset made here from its font parsed once per process, else ``add_font``.

        fpdf2's ``add_font`` parses the file with fontTools for every
        document (~1.3 ms of a Latin cover's ~4.6, docs/performance.md,
        Issue 19). For a subset made here, each cover gets a shallow copy of
        one parsed ``TTFFont`` instead, with fresh per-document state: its
        number in this document, the glyphs it uses (``SubsetMap``), the
        characters it lacks, the widths map (a defaultdict: reading fills
        it) and the descriptor (the writer sets the embedded stream on it).
        What stays shared is only read: the cmap, the glyph ids and the
        fontTools font, every table it needs decompiled at parse time and
        its file closed. fpdf2's own ``TTFFont.__deepcopy__`` shares the
        same attributes (tests/foundation/test_private_hooks.py guards them).
        """
        if not self.is_subset(path) or not getattr(self.writer(), "embeds_whole", False):
            # fpdf2's own writer subsets the parsed font in place: never share it then.
            pdf.add_font(family, fname=str(path))
            return
        template = self._parsed.get(path)
        if template is None:
            with self._lock:
                template = self._parsed.get(path)
                if template is None:
                    template = self._parse(path, family)
                    self._parsed[path] = template
        if template is False:
            pdf.add_font(family, fname=str(path))
            return
        from fpdf.fonts import SubsetMap

        font = copy.copy(template)
        font.i = len(pdf.fonts) + 1
        font.cw = copy.copy(template.cw)
        font.missing_glyphs = []
        font.biggest_size_pt = 0
        font.desc = copy.copy(template.desc)
        font.subset = SubsetMap(font)
        pdf.fonts[font.fontkey] = font

    @staticmethod
    def _parse(path: Path, family: str) -> Any:
        """``path`` parsed by fpdf2 once, for ``add_to``; False when it cannot be shared (then each cover parses it)."""
        from fpdf import FPDF
        from fpdf.fonts import TTFFont

        scratch = FPDF()
        scratch.add_font(family, fname=str(path))
        font = scratch.fonts[family.lower()]
        if not isinstance(font, TTFFont) or font.color_font is not None or font.is_cff:
            return False
        font.ttfont.ensureDecompiled()
        font.ttfont.recalcBBoxes = False
        font.ttfont.close()  # every table is read: no file is held, nothing is read later
        return font

    @staticmethod
    def _make(source: Path, name: str, ranges: tuple[tuple[int, int], ...]) -> tuple[Path, frozenset[str]] | None:
        directory = None
        try:
            # Imported here: needed once per process, and fontTools is slow to import.
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
            subsetter.populate(unicodes=[c for low, high in ranges for c in range(low, high + 1)])
            subsetter.subset(font)
            chars = frozenset(chr(c) for c in font.getBestCmap()) | {"\n"}
            directory = tempfile.mkdtemp(prefix="gatewayd-cover-font-")
            atexit.register(shutil.rmtree, directory, True)
            path = Path(directory) / f"{source.stem}-{name}.ttf"
            font.save(str(path))
            return path, chars
        except Exception as exc:  # only slower: the whole font still works
            log.warning("cover_font_subset_failed", font=str(source), error=f"{type(exc).__name__}: {exc}")
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
            return None


_COVER_FONT = _CoverFont()


def cover_fonts(pdf: Any, text: str) -> None:
    """Add the font "DejaVu" to an ``FPDF`` for ``text``, with the CJK font as per-character fallback when needed."""
    if not FONT_PATH.is_file():
        raise FileNotFoundError(f"cover page font {FONT_PATH} is missing (install fonts-dejavu-core)")
    _COVER_FONT.add_to(pdf, "DejaVu", _COVER_FONT.path_for(text))
    if CJK_FONT_PATH.is_file() and _COVER_FONT.lacks(text):
        # fontTools warns that the collection's bitmap strikes are not subset
        # (they are dropped, the outlines are kept): noise on every such cover.
        logging.getLogger("fontTools.subset").setLevel(logging.ERROR)
        pdf.add_font("Fallback", fname=str(CJK_FONT_PATH), collection_font_number=0)
        pdf.set_fallback_fonts(["Fallback"], exact_match=False)
    for font in pdf.fonts.values():
        # fontTools would recompute every kept glyph's bounding box when
        # fpdf2 writes the subset (~15 % of a cover, docs/performance.md);
        # the outlines are not changed, so the font's own boxes are right, and
        # the font-wide maxima it keeps (head, hhea, maxp) still bound the subset.
        if hasattr(font, "ttfont"):
            font.ttfont.recalcBBoxes = False


def _one_line(pdf: Any, text: str, width: float) -> bool:
    """Whether ``text`` is one line that fits ``width`` (mm) in the current font, inside fpdf2's cell margins."""
    return "\n" not in text and pdf.get_string_width(text) <= width - 2 * pdf.c_margin


# A cover is "quick" (~2 ms, docs/performance.md, Issue 19) when all its
# text is in a per-process subset already made and parsed (no whole font, no
# CJK fallback: those take from 10 ms to a second), it has no logo to decode
# and a short body.
_QUICK_BODY_CHARS = 2000


def is_quick(cover: CoverPage) -> bool:
    """Whether ``cover`` draws in a couple of milliseconds: short, no logo, every character in a per-process font subset."""
    look = cover.look
    if look.logo or len(cover.body) > _QUICK_BODY_CHARS or len(look.notice) > _MAX_NOTICE_CHARS:
        return False
    text = "".join((cover.sender, cover.recipient, cover.recipient_name, cover.date, cover.subject, cover.body,
                    look.organisation, look.phone, look.notice, _COVER_FIXED_TEXT, _TRUNCATED))
    return _COVER_FONT.ready_for(text)


def render_cover(cover: CoverPage, *, page_size: str = "A4", attachment_pages: int = 0) -> bytes:
    """The cover page PDF: ``render_cover_pages`` without the page count."""
    return render_cover_pages(cover, page_size=page_size, attachment_pages=attachment_pages)[0]


def render_cover_pages(cover: CoverPage, *, page_size: str = "A4", attachment_pages: int = 0) -> tuple[bytes, int]:
    """The cover page PDF (one page, two when the body is long; never more) and its page count.

    The layout: the office's logo, name and phone (``CoverLook``), "FAX",
    To, From, Date, Pages and Subject, the body, and the office's notice at
    the foot of the first page. DejaVu Sans covers Latin, Greek, Cyrillic,
    Armenian, Georgian, Hebrew and Arabic letters (drawn with a subset of it
    made once, see ``_CoverFont``); characters it lacks come from
    ``CJK_FONT_PATH``, per character, when that font is installed. A missing
    DejaVu file is an installation error and raises ``FileNotFoundError``
    (the listener answers 451, never a fax without a readable cover).
    """
    from fpdf import FPDF  # imported here: fpdf2 costs ~0.3 s to import
    from fpdf.enums import Align, MethodReturnValue, XPos, YPos

    look = cover.look

    def line(text: str) -> str:
        return _printable(text, keep_newlines=False)[:_MAX_FIELD_CHARS]

    number = line(cover.recipient)
    name = line(cover.recipient_name)
    to = f"{name}\n{number}" if name and name != number else (number or "—")
    fields = [
        ("To:", to),
        ("From:", line(cover.sender) or "—"),
        ("Date:", line(cover.date) or "—"),
        ("Pages:", ""),  # drawn once the cover's own length is known
        ("Subject:", line(cover.subject) or "—"),
    ]
    organisation, phone = line(look.organisation), line(look.phone)
    notice = _printable(look.notice, keep_newlines=True).strip()[:_MAX_NOTICE_CHARS]
    body = _printable(cover.body, keep_newlines=True).strip()
    text = _COVER_FIXED_TEXT + _TRUNCATED + organisation + phone + notice + "".join(v for _, v in fields) + body[:_MAX_BODY_CHARS]

    page_w, page_h = page_dimensions(page_size)
    page_h_mm = page_h / _MM
    margin, line_h, field_h, notice_h = 20.0, 5.6, 6.5, 3.8
    # A quick cover is written without fpdf2, by a canvas that answers the
    # same calls with fpdf2's arithmetic: same pixels, ~1 ms less
    # (cover_direct; docs/performance.md, Issue 19, session 5).
    direct = _COVER_FONT.direct_font(text) if is_quick(cover) else None
    pdf: Any
    if direct is not None:
        from gatewayd.documents.cover_direct import DirectCanvas

        pdf = DirectCanvas(direct, orientation="P", unit="mm", format=(page_w / _MM, page_h_mm))
    else:
        pdf = FPDF(orientation="P", unit="mm", format=(page_w / _MM, page_h_mm))
        # fpdf2 would put the page count wherever the sender's text says
        # "{nb}"; a cover shows what was written (its own count is drawn as text).
        pdf.alias_nb_pages("")
    pdf.set_auto_page_break(False)
    pdf.set_margins(margin, margin, margin)
    pdf.set_creation_date(_FIXED_DATE)  # the same cover gives the same bytes
    if direct is None:
        cover_fonts(pdf, text)
    pdf.add_page()
    width = pdf.epw

    # The letterhead: logo on the left, the office's name and phone on the right.
    top = margin
    if look.logo:
        pdf.image(look.logo, x=margin, y=top, h=_LOGO_H, keep_aspect_ratio=True)
    if organisation or phone:
        pdf.set_xy(margin, top)
        if organisation:
            pdf.set_font("DejaVu", size=14)
            pdf.cell(width, 7, organisation, align=Align.R, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        if phone:
            pdf.set_font("DejaVu", size=10)
            pdf.cell(width, 5.5, phone, align=Align.R, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    if look.logo or organisation or phone:
        pdf.set_y(max(pdf.get_y(), top + (_LOGO_H if look.logo else 0)) + 4)

    pdf.set_font("DejaVu", size=28)
    pdf.cell(0, 14, "FAX", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_draw_color(0, 0, 0)
    pdf.set_line_width(0.6)
    pdf.line(margin, pdf.get_y() + 2, margin + width, pdf.get_y() + 2)
    pdf.ln(6)

    pdf.set_font("DejaVu", size=11)
    label_w = 28.0
    pages_y = 0.0
    for label, value in fields:
        pdf.set_x(margin)
        if label == "Pages:":
            pages_y = pdf.get_y()
            pdf.ln(field_h)
            continue
        pdf.cell(label_w, field_h, label)
        if _one_line(pdf, value, width - label_w):
            # fpdf2's line breaking measures each line again per character
            # added (~0.2 ms a field); a value that fits is one cell, the same line.
            pdf.cell(width - label_w, field_h, value, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        else:
            pdf.multi_cell(width - label_w, field_h, value, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2)
    pdf.set_line_width(0.3)
    pdf.line(margin, pdf.get_y(), margin + width, pdf.get_y())
    pdf.ln(5)

    # The notice sits at the foot of the first page: the body stops above it.
    notice_lines: list[str] = []
    if notice:
        pdf.set_font("DejaVu", size=8)
        wrapped = pdf.multi_cell(width, notice_h, notice, align="L", dry_run=True, output=MethodReturnValue.LINES)
        assert isinstance(wrapped, list)  # output=LINES gives the lines alone (typed as any output's union)
        notice_lines = wrapped[:_MAX_NOTICE_LINES]
        pdf.set_font("DejaVu", size=11)
    notice_top = page_h_mm - margin - len(notice_lines) * notice_h - (3 if notice_lines else 0)

    lines: list[str] = []
    if body:
        truncated = len(body) > _MAX_BODY_CHARS
        body = body[:_MAX_BODY_CHARS]
        if _one_line(pdf, body, width):
            lines = [body]
        else:
            wrapped = pdf.multi_cell(width, line_h, body, align="L", dry_run=True, output=MethodReturnValue.LINES)
            assert isinstance(wrapped, list)  # output=LINES gives the lines alone (typed as any output's union)
            lines = wrapped
        first = max(0, int((notice_top - pdf.get_y()) // line_h))
        second = int((page_h_mm - 2 * margin) // line_h)
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

    for text_line in lines[:first]:
        pdf.set_x(margin)
        pdf.cell(width, line_h, text_line, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    if notice_lines:
        pdf.set_line_width(0.2)
        pdf.line(margin, notice_top, margin + width, notice_top)
        pdf.set_xy(margin, notice_top + 2)
        pdf.set_font("DejaVu", size=8)
        for text_line in notice_lines:
            pdf.cell(width, notice_h, text_line, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_font("DejaVu", size=11)
    if len(lines) > first:
        pdf.add_page()
        for text_line in lines[first:]:
            pdf.set_x(margin)
            pdf.cell(width, line_h, text_line, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    # The count is the layout's own (the cover's "Pages:" line says it too):
    # no need to open the PDF again to count (docs/performance.md, Issue 19).
    if direct is not None:
        return pdf.output(), pdf.pages_count
    return bytes(pdf.output(output_producer_class=_COVER_FONT.writer())), pdf.pages_count
