"""The cover page: its fields and text drawn with fpdf2 in DejaVu Sans, and the font subset that makes it fast.

Whether a message gets one is ``documents.cover_page`` (``wants_cover``);
what it shows is in docs/documents.md (Making the fax document).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from gatewayd.documents.geometry import page_dimensions
from gatewayd.logs import get_logger

log = get_logger(__name__)

__all__ = ["FONT_PATH", "CoverPage", "render_cover", "wants_cover"]

FONT_PATH = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


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
        if source not in self._made:
            with self._lock:
                if source not in self._made:
                    self._made[source] = self._make(source)
        made = self._made[source]
        if made is not None and set(text) <= made[1]:
            return made[0]
        return source

    @staticmethod
    def _make(source: Path) -> tuple[Path, frozenset[str]] | None:
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
            subsetter.populate(unicodes=[c for low, high in _COVER_SUBSET_RANGES for c in range(low, high + 1)])
            subsetter.subset(font)
            chars = frozenset(chr(c) for c in font.getBestCmap()) | {"\n"}
            directory = tempfile.mkdtemp(prefix="gatewayd-cover-font-")
            atexit.register(shutil.rmtree, directory, True)
            path = Path(directory) / f"{source.stem}-cover.ttf"
            font.save(str(path))
            return path, chars
        except Exception as exc:  # only slower: the whole font still works
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

    page_w, page_h = page_dimensions(page_size)
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
        wrapped = pdf.multi_cell(width, line_h, body, align="L", dry_run=True, output=MethodReturnValue.LINES)
        assert isinstance(wrapped, list)  # output=LINES gives the lines alone (typed as any output's union)
        lines = wrapped
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
