"""Parse a received email into what the fax path needs: text, attachments, names.

The rule is the SPEC's: bare LF line endings, duplicate header fields and
MIME parser defects are refused, not guessed at. Everything else about the
message is read defensively: any exception the standard library parser
raises on hostile input becomes ``MalformedMessage``, so the SMTP listener
only ever sees ``IntakeRefused`` subclasses for bad input.

Attachments are recognised by their content (magic bytes), never by their
declared type or file name. File names are reduced to safe display names:
they end up in SMTP replies, reports and logs, never in a path.
"""

from __future__ import annotations

import binascii
import email.policy
import mimetypes
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from email.feedparser import BytesFeedParser
from email.message import Message
from email.utils import getaddresses
from html.parser import HTMLParser
from types import MappingProxyType
from typing import Literal, get_args

from gatewayd.email_to_fax.errors import (
    AttachmentRejected,
    BareLineFeed,
    IntakeRefused,
    MalformedMessage,
)

__all__ = [
    "Attachment",
    "AttachmentKind",
    "ParsedMessage",
    "UnsupportedPart",
    "parse_message",
    "safe_filename",
    "sniff_kind",
]

AttachmentKind = Literal["pdf", "tiff", "jpeg", "png", "gif", "bmp", "webp"]
ATTACHMENT_KINDS: tuple[str, ...] = get_args(AttachmentKind)

# Header fields that may appear at most once (RFC 5322 section 3.6 and the
# MIME fields, RFC 2045/2183). A second copy is how smuggling works: two
# parsers reading the same message pick different values.
_SINGLE_FIELDS = (
    "Date", "From", "Sender", "Reply-To", "To", "Cc", "Bcc", "Message-ID",
    "In-Reply-To", "References", "Subject", "MIME-Version", "Content-Type",
    "Content-Transfer-Encoding", "Content-Disposition", "Content-ID",
)
_SINGLE_FIELD_NAMES = {name.lower(): name for name in _SINGLE_FIELDS}

_ADDRESS_HEADERS = ("To", "Cc", "Delivered-To", "X-Original-To")

_KNOWN_CTE = frozenset({"7bit", "8bit", "binary", "base64", "quoted-printable"})

# token "/" token, RFC 2045 section 5.1.
_CONTENT_TYPE_RE = re.compile(r"\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+\s*(;|$)")

MAX_FILENAME_CHARS = 100
# Body text beyond this is never shown anywhere (the cover page holds two
# pages at most); cutting early bounds the cost of the text clean-up.
MAX_BODY_CHARS = 100_000

# What a part declares that would make it one of ours; a declared PDF or
# image whose bytes are not one is refused as corrupt instead of being
# listed as an unsupported type.
_CLAIMED_TYPES: Mapping[str, AttachmentKind] = MappingProxyType({
    "application/pdf": "pdf", "application/x-pdf": "pdf", "application/acrobat": "pdf",
    "image/tiff": "tiff", "image/tiff-fx": "tiff", "image/x-tiff": "tiff",
    "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/pjpeg": "jpeg",
    "image/png": "png", "image/x-png": "png", "image/gif": "gif",
    "image/bmp": "bmp", "image/x-bmp": "bmp", "image/x-ms-bmp": "bmp", "image/webp": "webp",
})
_CLAIMED_EXTENSIONS: Mapping[str, AttachmentKind] = MappingProxyType({
    "pdf": "pdf", "tif": "tiff", "tiff": "tiff", "jpg": "jpeg", "jpeg": "jpeg",
    "jpe": "jpeg", "png": "png", "gif": "gif", "bmp": "bmp", "dib": "bmp", "webp": "webp",
})
_KIND_EXTENSION: Mapping[str, str] = MappingProxyType({
    "pdf": "pdf", "tiff": "tif", "jpeg": "jpg", "png": "png", "gif": "gif",
    "bmp": "bmp", "webp": "webp",
})
# Signature parts of multipart/signed are protocol, not content the sender
# chose to attach: neither faxed nor reported.
_SIGNATURE_TYPES = frozenset({
    "application/pkcs7-signature", "application/x-pkcs7-signature",
    "application/pgp-signature",
})


@dataclass(frozen=True)
class Attachment:
    """A faxable attachment; ``kind`` comes from its bytes, not its labels."""

    filename: str
    kind: AttachmentKind
    data: bytes = field(repr=False)
    declared_type: str


@dataclass(frozen=True)
class UnsupportedPart:
    """An attachment that cannot be faxed; named in the report, never dropped silently."""

    filename: str
    declared_type: str
    reason: str


@dataclass(frozen=True)
class ParsedMessage:
    subject: str
    message_id: str | None
    from_addr: str | None
    from_display: str | None
    date: str | None
    body_text: str
    attachments: tuple[Attachment, ...]
    unsupported: tuple[UnsupportedPart, ...]
    skipped_inline: tuple[str, ...]
    # "To", "Cc", "Delivered-To", "X-Original-To" -> lowercased bare addresses
    header_addresses: Mapping[str, tuple[str, ...]]
    authentication_results: tuple[str, ...]


# ---------------------------------------------------------------- entry point


def parse_message(raw: bytes, *, max_parts: int = 100, max_depth: int = 10) -> ParsedMessage:
    """Parse ``raw`` (as received, CRLF line endings) or raise an ``IntakeRefused``.

    ``max_parts`` counts every MIME entity, the message itself included;
    ``max_depth`` is how deep an entity may sit below the message (its direct
    parts are at depth 1).
    """
    # Counting is two C loops over the buffer, far cheaper than a regex
    # look-behind on a 25 MB message.
    if raw.count(b"\n") != raw.count(b"\r\n"):
        raise BareLineFeed()
    try:
        return _parse(raw, max_parts=max_parts, max_depth=max_depth)
    except IntakeRefused:
        raise
    except MemoryError:
        raise  # not the message's fault: the listener answers 451
    except RecursionError as exc:
        raise MalformedMessage("too deeply nested") from exc
    except Exception as exc:  # noqa: BLE001 - hostile input must never escape as a crash
        raise MalformedMessage(f"unparsable message ({type(exc).__name__})") from exc


class _BoundedFeedParser(BytesFeedParser):
    """A feed parser that stops as soon as the message has too many or too deep parts.

    Checking after parsing would let a 25 MB message of tiny parts build
    hundreds of thousands of objects first. ``_new_message`` is where the
    standard parser creates each entity (CPython 3.11); the walk in
    ``_parse`` checks depth again, in case that internal hook ever changes.
    """

    def __init__(self, *, max_parts: int, max_depth: int) -> None:
        super().__init__(policy=email.policy.default)
        self._max_parts = max_parts
        self._max_depth = max_depth
        self._parts = 0

    def _new_message(self) -> None:
        self._parts += 1
        if self._parts > self._max_parts:
            raise MalformedMessage("too many parts")
        if len(getattr(self, "_msgstack", ())) > self._max_depth:
            raise MalformedMessage("too deeply nested")
        super()._new_message()  # type: ignore[misc]


def _parse(raw: bytes, *, max_parts: int, max_depth: int) -> ParsedMessage:
    parser = _BoundedFeedParser(max_parts=max_parts, max_depth=max_depth)
    parser.feed(raw)
    msg = parser.close()

    entities = list(_walk(msg, "", 0, max_depth))
    if len(entities) > max_parts:
        raise MalformedMessage("too many parts")
    for part, section, _ in entities:
        _check_entity(part, section)

    plain: list[str] = []
    htmls: list[str] = []
    attachments: list[Attachment] = []
    unsupported: list[UnsupportedPart] = []
    skipped: list[str] = []
    index = 0
    for part, section, is_signature in entities:
        if part.is_multipart() and not _is_message_type(part):
            continue
        if is_signature:
            continue
        ctype = part.get_content_type()
        disposition = part.get_content_disposition()
        raw_name = part.get_filename()
        if raw_name is not None:
            raw_name = _unescape_8bit(raw_name)
        label = _label(section)
        if ctype in ("text/plain", "text/html") and disposition != "attachment" and raw_name is None:
            (plain if ctype == "text/plain" else htmls).append(_decode_text(part, label))
            continue
        if disposition != "attachment" and part.get("content-id") is not None:
            # An image the HTML body shows (a signature logo): not faxed.
            cid = str(part.get("content-id")).strip().strip("<>")
            skipped.append(safe_filename(raw_name, cid or f"inline-{section}"))
            continue
        index += 1
        if _is_message_type(part):
            name = safe_filename(raw_name, f"attachment-{index}.eml")
            unsupported.append(UnsupportedPart(name, ctype, f"unsupported type {ctype}"))
            continue
        data = _decode_payload(part, label)
        kind = sniff_kind(data)
        fallback_ext = _KIND_EXTENSION[kind] if kind else _guess_extension(ctype)
        name = safe_filename(raw_name, f"attachment-{index}.{fallback_ext}")
        if not data:
            raise AttachmentRejected(name, "empty file")
        if kind is not None:
            attachments.append(Attachment(name, kind, data, ctype))
            continue
        claimed = _CLAIMED_TYPES.get(ctype) or _CLAIMED_EXTENSIONS.get(_extension(raw_name))
        if claimed == "pdf":
            raise AttachmentRejected(name, "corrupt PDF")
        if claimed == "tiff":
            raise AttachmentRejected(name, "unreadable TIFF")
        if claimed is not None:
            raise AttachmentRejected(name, "corrupt image")
        unsupported.append(UnsupportedPart(name, ctype, f"unsupported type {ctype}"))

    if plain:
        body = "\n\n".join(_clean_plain(t) for t in plain)
    else:
        body = "\n\n".join(_clean_plain(html_to_text(t)) for t in htmls)

    from_addr, from_display = _from(msg)
    return ParsedMessage(
        subject=_clean_line(_header_str(msg, "subject") or ""),
        message_id=_clean_line(_header_str(msg, "message-id") or "") or None,
        from_addr=from_addr,
        from_display=from_display,
        date=_clean_line(_header_str(msg, "date") or "") or None,
        body_text=_squeeze_blank_lines(body).strip(),
        attachments=tuple(attachments),
        unsupported=tuple(unsupported),
        skipped_inline=tuple(skipped),
        header_addresses=MappingProxyType(
            {name: _addresses(msg, name) for name in _ADDRESS_HEADERS}
        ),
        authentication_results=tuple(
            _clean_line(_unescape_8bit(str(v))) for v in (msg.get_all("authentication-results") or ())
        ),
    )


# ------------------------------------------------------------ structure walk


def _walk(part: Message, section: str, depth: int, max_depth: int) -> Iterator[tuple[Message, str, bool]]:
    """Yield (entity, IMAP-style section number, is-signature) in message order.

    message/* parts are leaves here: an attached email is reported as an
    unsupported attachment, its insides are not ours to judge.
    """
    if depth > max_depth:
        raise MalformedMessage("too deeply nested")
    yield part, section, False
    if not part.is_multipart() or _is_message_type(part):
        return
    children = part.get_payload()
    if not isinstance(children, list):
        raise MalformedMessage(f"multipart without parts in {_label(section)}")
    signed = part.get_content_subtype() == "signed"
    for number, child in enumerate(children, start=1):
        child_section = f"{section}.{number}" if section else str(number)
        if signed and number == 2 and child.get_content_type() in _SIGNATURE_TYPES:
            yield child, child_section, True
            continue
        yield from _walk(child, child_section, depth + 1, max_depth)


def _is_message_type(part: Message) -> bool:
    return part.get_content_maintype() == "message"


def _label(section: str) -> str:
    return f"part {section}" if section else "message"


_DEFECT_WORDS: Mapping[str, str] = MappingProxyType({
    "StartBoundaryNotFoundDefect": "missing MIME boundary",
    "CloseBoundaryNotFoundDefect": "missing closing MIME boundary",
    "NoBoundaryInMultipartDefect": "multipart without boundary parameter",
    "MultipartInvariantViolationDefect": "multipart without parts",
    "FirstHeaderLineIsContinuationDefect": "header block starts with a continuation line",
    "MisplacedEnvelopeHeaderDefect": "misplaced envelope From line",
    "MissingHeaderBodySeparatorDefect": "invalid header line",
    "InvalidMultipartContentTransferEncodingDefect": "invalid transfer encoding on a multipart",
    "InvalidBase64PaddingDefect": "invalid base64",
    "InvalidBase64CharactersDefect": "invalid base64",
    "InvalidBase64LengthDefect": "invalid base64",
    "UndecodableBytesDefect": "undecodable bytes",
})


def _check_entity(part: Message, section: str) -> None:
    where = "" if not section else f" in part {section}"
    if part.defects:
        defect = part.defects[0]
        words = _DEFECT_WORDS.get(type(defect).__name__, "MIME parser defect")
        raise MalformedMessage(f"{words}{where}")
    counts = Counter(key.lower() for key in part.keys())
    for key, number in counts.items():
        if number > 1 and key in _SINGLE_FIELD_NAMES:
            raise MalformedMessage(f"duplicate {_SINGLE_FIELD_NAMES[key]} header{where}")
    ctype = part.get("content-type")
    if ctype is not None and not _CONTENT_TYPE_RE.match(str(ctype)):
        raise MalformedMessage(f"invalid Content-Type header{where}")
    cte = part.get("content-transfer-encoding")
    if cte is not None and str(cte).strip().lower() not in _KNOWN_CTE:
        raise MalformedMessage(f"unknown Content-Transfer-Encoding{where}")


# ------------------------------------------------------------------ payloads


def _decode_payload(part: Message, label: str) -> bytes:
    cte = str(part.get("content-transfer-encoding", "7bit")).strip().lower()
    if cte == "base64":
        # The library decoder repairs bad padding and skips junk silently;
        # a repaired attachment is a guess, so decode strictly ourselves.
        text = part.get_payload(decode=False)
        if not isinstance(text, str):
            raise MalformedMessage(f"invalid base64 in {label}")
        try:
            encoded = text.encode("ascii")
        except UnicodeEncodeError:
            raise MalformedMessage(f"invalid base64 in {label}") from None
        encoded = encoded.translate(None, b" \t\r\n")
        try:
            return binascii.a2b_base64(encoded, strict_mode=True)
        except binascii.Error:
            raise MalformedMessage(f"invalid base64 in {label}") from None
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        raise MalformedMessage(f"undecodable content in {label}")
    return data


def _decode_text(part: Message, label: str) -> str:
    data = _decode_payload(part, label)[: MAX_BODY_CHARS * 4]
    charset = part.get_content_charset() or "us-ascii"
    try:
        text = data.decode(charset)
    except LookupError:
        text = data.decode("utf-8", "replace")  # unknown charset: best effort for display only
    except UnicodeDecodeError:
        # us-ascii declared with 8-bit bytes is common; UTF-8 is the likely truth.
        text = data.decode("utf-8" if charset in ("us-ascii", "ascii") else charset, "replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")[:MAX_BODY_CHARS]


# ------------------------------------------------------------------ content


def sniff_kind(data: bytes) -> AttachmentKind | None:
    """What the bytes are, by their magic numbers; None when not a kind we fax."""
    head = data[:32]
    if head.startswith(b"%PDF-") or b"%PDF-" in data[:1024]:
        # Readers accept up to 1 KiB of junk before the header; so do we.
        return "pdf"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "tiff"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    # "BM" alone is too weak; the DIB header size must be one of the known ones.
    if head.startswith(b"BM") and len(head) >= 18 and int.from_bytes(head[14:18], "little") in (12, 40, 52, 56, 64, 108, 124):
        return "bmp"
    return None


def safe_filename(name: str | None, fallback: str) -> str:
    """A display name: base name only, no control or format characters, bounded.

    Never a path: the name is shown in replies, reports and logs only.
    """
    if not name:
        return fallback
    name = unicodedata.normalize("NFC", name)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    # Category C covers control characters, bidi overrides (Cf), surrogates
    # and unassigned code points: all of them can disguise a name.
    name = "".join(
        " " if ch in "\t\r\n" else ch for ch in name if ch in "\t\r\n" or not unicodedata.category(ch).startswith("C")
    )
    name = " ".join(name.split()).strip(" .")
    if not name:
        return fallback
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 10 and stem:
            name = stem[: MAX_FILENAME_CHARS - len(ext) - 2].rstrip() + "…." + ext
        else:
            name = name[: MAX_FILENAME_CHARS - 1] + "…"
    return name


def _extension(name: str | None) -> str:
    if not name or "." not in name:
        return ""
    return name.rsplit(".", 1)[-1].strip().lower()


def _guess_extension(ctype: str) -> str:
    ext = mimetypes.guess_extension(ctype, strict=False)
    return ext.lstrip(".") if ext else "bin"


# ------------------------------------------------------------------ headers


def _header_str(msg: Message, name: str) -> str | None:
    value = msg.get(name)
    if value is None:
        return None
    return _unescape_8bit(str(value))


def _unescape_8bit(text: str) -> str:
    # Raw UTF-8 in headers (SMTPUTF8) arrives as surrogate escapes.
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _clean_line(text: str) -> str:
    text = "".join(ch if not unicodedata.category(ch).startswith("C") else " " for ch in text)
    return " ".join(text.split())


def _from(msg: Message) -> tuple[str | None, str | None]:
    header = msg.get("from")
    if header is None:
        return None, None
    addresses = getattr(header, "addresses", ())
    # Several From addresses is legal but ambiguous for authorisation
    # (DMARC refuses it too): no single sender then.
    if len(addresses) != 1:
        return None, None
    addr = addresses[0]
    spec = _unescape_8bit(addr.addr_spec)
    display = _clean_line(_unescape_8bit(addr.display_name)) or None
    if "@" not in spec or not addr.username or not addr.domain:
        return None, display
    return spec, display


def _addresses(msg: Message, name: str) -> tuple[str, ...]:
    found: list[str] = []
    for value in msg.get_all(name) or ():
        parsed = getattr(value, "addresses", None)
        if parsed is not None:
            specs = [a.addr_spec for a in parsed]
        else:
            specs = [addr for _, addr in getaddresses([str(value)])]
        for spec in specs:
            spec = _unescape_8bit(spec).strip().lower()
            if "@" in spec and spec not in found:
                found.append(spec)
    return tuple(found)


# ------------------------------------------------------------------ body text


_ATTRIBUTION_RE = re.compile(
    r"^(on\b.*\bwrote|am\b.*\bschrieb\b.*|le\b.*\ba écrit|el\b.*\bescribió|.*\bнаписал\(?а?\)?|.*\bwrote)\s*:\s*$",
    re.IGNORECASE,
)
_ORIGINAL_MESSAGE_RE = re.compile(r"^\s*-{2,}\s*(original message|ursprüngliche nachricht|исходное сообщение)\s*-{2,}\s*$", re.IGNORECASE)
_OUTLOOK_RULE_RE = re.compile(r"^_{20,}\s*$")
_OUTLOOK_HEADER_RE = re.compile(r"^(from|von|от|de)\s*:", re.IGNORECASE)


def _clean_plain(text: str) -> str:
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


def _squeeze_blank_lines(text: str) -> str:
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


def html_to_text(markup: str) -> str:
    """Reduce an HTML body to plain text, without quoted originals and signatures."""
    extractor = _TextExtractor()
    extractor.feed(markup)
    extractor.close()
    # Character references are already resolved (convert_charrefs).
    text = "".join(extractor.chunks).replace("\xa0", " ")
    lines = [line.strip() for line in text.split("\n")]
    return _squeeze_blank_lines("\n".join(lines)).strip()
