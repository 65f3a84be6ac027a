"""The text a sender wrote: quoted replies and signatures dropped, HTML reduced to plain text.

What is left goes on the cover page (docs/documents.md, Reading the
message). Pure functions on ``str``; no MIME here.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

__all__ = ["clean_plain", "html_to_text", "squeeze_blank_lines"]

_ATTRIBUTION_RE = re.compile(
    r"^(on\b.*\bwrote|am\b.*\bschrieb\b.*|le\b.*\ba écrit|el\b.*\bescribió|.*\bнаписал\(?а?\)?|.*\bwrote)\s*:\s*$",
    re.IGNORECASE,
)
_ORIGINAL_MESSAGE_RE = re.compile(r"^\s*-{2,}\s*(original message|ursprüngliche nachricht|исходное сообщение)\s*-{2,}\s*$", re.IGNORECASE)
_OUTLOOK_RULE_RE = re.compile(r"^_{20,}\s*$")
_OUTLOOK_HEADER_RE = re.compile(r"^(from|von|от|de)\s*:", re.IGNORECASE)


def clean_plain(text: str) -> str:
    """Drop quoted replies and the signature: the cover page shows what was written."""
    lines = [line.rstrip() for line in text.split("\n")]
    kept: list[str] = []
    n = len(lines)
    i = 0
    while i < n:
        line = lines[i]
        if line in ("--", "-- "):  # RFC 3676 signature separator, trailing space often lost
            break
        if _ORIGINAL_MESSAGE_RE.match(line):
            break
        if _OUTLOOK_RULE_RE.match(line) and i + 1 < n and _OUTLOOK_HEADER_RE.match(lines[i + 1]):
            break
        if line.lstrip().startswith(">"):
            i += 1
            continue
        # "On <date>, <someone> wrote:" - possibly wrapped over two lines -
        # introducing a quote (or ending the text) is part of the quote.
        span = 0
        if _ATTRIBUTION_RE.match(line):
            span = 1
        elif i + 1 < n and lines[i + 1] and _ATTRIBUTION_RE.match(f"{line} {lines[i + 1]}") and re.match(r"^(on|am|le|el)\b", line, re.IGNORECASE):
            span = 2
        if span:
            j = i + span
            while j < n and not lines[j].strip():
                j += 1
            if j == n or lines[j].lstrip().startswith(">"):
                i += span
                continue
        kept.append(line)
        i += 1
    return "\n".join(kept).strip()


def squeeze_blank_lines(text: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", text)


# Line breaks an element stands for: paragraphs are set apart by a blank
# line, other blocks start on a line of their own (Outlook writes every
# line as a <div>).
_PARAGRAPH_TAGS = frozenset({"p", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "dl", "address"})
_BLOCK_TAGS = frozenset({"div", "tr", "li", "hr", "section", "article", "header", "footer", "dt", "dd", "center"})
_INVISIBLE_TAGS = frozenset({"script", "style", "head", "title", "template", "noscript", "xml"})
_VOID_TAGS = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
    "param", "source", "track", "wbr",
})
# Quoted originals and signatures as Gmail, Outlook, Thunderbird and Apple
# Mail mark them.
_QUOTE_CLASSES = frozenset({"gmail_quote", "gmail_signature", "moz-signature", "moz-cite-prefix", "yahoo_quoted"})
_QUOTE_IDS = frozenset({"signature", "signature_bookmark", "ms-outlook-mobile-signature"})
# Outlook puts the quoted original after these markers, as siblings: all
# that follows is quote.
_STOP_IDS = frozenset({"divrplyfwdmsg", "appendonsend", "mail-editor-reference-message-container"})


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._breaks = 0  # line breaks owed before the next text
        self._skip_tag: str | None = None
        self._skip_depth = 0
        self._invisible = 0
        self.stopped = False

    def _block(self, breaks: int) -> None:
        self._breaks = max(self._breaks, breaks)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.stopped:
            return
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth += 1
            return
        if tag == "br":
            self._breaks += 1
            return
        if tag in _VOID_TAGS:
            return
        attributes = {k: (v or "") for k, v in attrs}
        element_id = attributes.get("id", "").lower()
        classes = set(attributes.get("class", "").lower().split())
        if element_id in _STOP_IDS:
            self.stopped = True
            return
        if tag == "blockquote" or classes & _QUOTE_CLASSES or element_id in _QUOTE_IDS:
            self._skip_tag, self._skip_depth = tag, 1
            return
        if tag in _INVISIBLE_TAGS:
            self._invisible += 1
        elif tag in _PARAGRAPH_TAGS:
            self._block(2)
        elif tag in _BLOCK_TAGS:
            self._block(1)
        if tag == "li":
            self._text("- ")
        elif tag in ("td", "th") and self.chunks and not self._breaks:
            self.chunks.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if self.stopped:
            return
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth -= 1
                if self._skip_depth == 0:
                    self._skip_tag = None
            return
        if tag in _INVISIBLE_TAGS:
            self._invisible = max(self._invisible - 1, 0)
        elif tag in _PARAGRAPH_TAGS:
            self._block(2)
        elif tag in _BLOCK_TAGS:
            self._block(1)

    def handle_data(self, data: str) -> None:
        if self.stopped or self._skip_tag is not None or self._invisible:
            return
        # HTML whitespace collapses; line structure comes from the tags.
        text = re.sub(r"\s+", " ", data)
        if text.strip():
            self._text(text)
        elif self.chunks and not self._breaks and not self.chunks[-1].endswith(" "):
            self.chunks.append(" ")

    def _text(self, text: str) -> None:
        if self._breaks and self.chunks:
            self.chunks.append("\n" * self._breaks)
            text = text.lstrip()
        self._breaks = 0
        self.chunks.append(text)


# A "<" that does not open a tag closed before the next "<". The standard
# HTML parser rescans from such a "<" to the end of the input for every one
# of them: 100 KB of "<a<a<a..." took 5 s, of "<a <a <a ..." 79 s
# (docs/security.md, Hostile input). Replaced by a stand-in the parser takes
# as text (and put back afterwards; a character reference "&lt;" would cost
# a Python call each to resolve), every "<" left has its ">" before the next
# "<", and the parser is linear. The
# lookahead stops at the next "<" or ">", so this pass is linear too. What
# it changes in real mail: a "<" inside a quoted attribute value or a
# comment ends that tag early, so a few characters of markup may show as
# text; never anything hidden.
_UNCLOSED_LT = re.compile(r"<(?![^<>]*>)")
# A noncharacter: never in text meant for interchange (one that is shows as "<").
_LT_STAND_IN = "\uffff"


def _drop_comments_and_declarations(markup: str) -> str:
    """Markup without ``<!-- ... -->`` and ``<!...>``, in one forward pass.

    The standard parser searches for the end of every unterminated comment
    to the end of the input (2 s for 100 KB of ``<!-- a>``) and raises on
    some ``<![``. Comments, doctypes and CDATA show nothing in a mail body;
    an unterminated one hides the rest, as a browser would.
    """
    out: list[str] = []
    pos = 0
    while (start := markup.find("<!", pos)) >= 0:
        out.append(markup[pos:start])
        if markup.startswith("<!--", start):
            end = markup.find("-->", start + 4)
            pos = len(markup) if end < 0 else end + 3
        else:
            end = markup.find(">", start + 2)
            pos = len(markup) if end < 0 else end + 1
        if end < 0:
            break
    out.append(markup[pos:])
    return "".join(out)


def html_to_text(markup: str) -> str:
    """Reduce an HTML body to plain text, without quoted originals and signatures."""
    extractor = _TextExtractor()
    extractor.feed(_UNCLOSED_LT.sub(_LT_STAND_IN, _drop_comments_and_declarations(markup)))
    extractor.close()
    # Character references are already resolved (convert_charrefs).
    text = "".join(extractor.chunks).replace("\xa0", " ").replace(_LT_STAND_IN, "<")
    lines = [line.strip() for line in text.split("\n")]
    return squeeze_blank_lines("\n".join(lines)).strip()
