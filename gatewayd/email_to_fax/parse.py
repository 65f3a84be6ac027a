"""Parse a received email (MIME) into what the fax path needs: text, attachments, names.

The rule (docs/documents.md, Reading the message): bare LF line endings, duplicate header fields and
MIME parser defects are refused, not guessed at. Everything else about the
message is read defensively: any exception the standard library parser
raises on hostile input becomes ``MalformedMessage``, so the SMTP listener
only ever sees ``IntakeRefused`` subclasses for bad input.

Attachments are recognised by their content (magic bytes,
``gatewayd/filekinds.py``), never by their declared type or file name. File names are reduced to safe display names:
they end up in SMTP replies, reports and logs, never in a path.

Speed (docs/performance.md): the standard feed parser walks a message one
line at a time, ~18,000 lines for a 1 MB attachment, and the default policy
parses a header field again (and makes a new class) every time it is read.
So ``_parse`` feeds the parser a *skeleton* of the message in which each
large base64 leaf body is replaced by a one-line placeholder, and decodes
those bodies from their slices of the raw bytes (``skeleton.py`` finds them,
``_feed`` checks them);
and it parses each header field once per message (``_ParsePolicy``). The
result is exactly that of parsing the whole message: see ``_feed`` for why,
and for the fall-back to the plain parse whenever that cannot be shown.
"""

from __future__ import annotations

import binascii
import dataclasses
import email.policy
import mimetypes
import re
import secrets
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from email.feedparser import BytesFeedParser
from email.headerregistry import AddressHeader, HeaderRegistry
from email.message import EmailMessage, Message
from email.utils import getaddresses
from types import MappingProxyType
from typing import Any

import pybase64
from tnefparse.tnef import TNEF

from gatewayd.documents.officekinds import OFFICE_KINDS, OfficeKind, sniff_office
from gatewayd.email_to_fax import skeleton
from gatewayd.email_to_fax.bodytext import clean_plain, html_to_text, squeeze_blank_lines
from gatewayd.email_to_fax.errors import (
    AttachmentRejected,
    BareLineFeed,
    IntakeRefused,
    MalformedMessage,
    MessageTooComplex,
)
from gatewayd.email_to_fax.limits import MAX_HTML_CHARS, HeaderBudget, check_header_block
from gatewayd.filekinds import FileKind, sniff_kind

__all__ = [
    "Attachment",
    "ParsedMessage",
    "UnsupportedPart",
    "office_as_unsupported",
    "office_part",
    "parse_message",
    "safe_filename",
]

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
_CLAIMED_TYPES: Mapping[str, FileKind] = MappingProxyType({
    "application/pdf": "pdf", "application/x-pdf": "pdf", "application/acrobat": "pdf",
    "image/tiff": "tiff", "image/tiff-fx": "tiff", "image/x-tiff": "tiff",
    "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/pjpeg": "jpeg",
    "image/png": "png", "image/x-png": "png", "image/gif": "gif",
    "image/bmp": "bmp", "image/x-bmp": "bmp", "image/x-ms-bmp": "bmp", "image/webp": "webp",
})
_CLAIMED_EXTENSIONS: Mapping[str, FileKind] = MappingProxyType({
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
    """A faxable attachment; ``kind`` comes from its bytes, not its labels.

    An office kind (``gatewayd/documents/officekinds.py``) becomes pages
    through LibreOffice after the 250, or is refused as unsupported where
    that is off (``Intake``).
    """

    filename: str
    kind: FileKind | OfficeKind
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
    # lowercased bare address -> its display name in To: or Cc: (the first one
    # given), for each recipient's cover page
    display_names: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


# ---------------------------------------------------------------- entry point


def parse_message(raw: bytes, *, max_parts: int = 100, max_depth: int = 10, crlf_checked: bool = False) -> ParsedMessage:
    """Parse ``raw`` (as received, CRLF line endings) or raise an ``IntakeRefused``.

    ``max_parts`` counts every MIME entity, the message itself included;
    ``max_depth`` is how deep an entity may sit below the message (its direct
    parts are at depth 1). ``crlf_checked``: the caller has already refused
    bare LF line endings (the SMTP DATA reader does, while reading), so the
    check is not made twice.
    """
    # Counting is two C loops over the buffer, far cheaper than a regex
    # look-behind on a 25 MB message.
    if not crlf_checked and raw.count(b"\n") != raw.count(b"\r\n"):
        raise BareLineFeed()
    check_header_block(raw)
    try:
        return _parse(raw, max_parts=max_parts, max_depth=max_depth)
    except IntakeRefused:
        raise
    except MemoryError:
        raise  # not the message's fault: the listener answers 451
    except RecursionError as exc:
        raise MalformedMessage("too deeply nested") from exc
    except Exception as exc:  # hostile input must never escape as a crash
        raise MalformedMessage(f"unparsable message ({type(exc).__name__})") from exc


class _BoundedFeedParser(BytesFeedParser):
    """A feed parser that stops as soon as the message has too many or too deep parts.

    Checking after parsing would let a 25 MB message of tiny parts build
    hundreds of thousands of objects first. ``_new_message`` is where the
    standard parser creates each entity (CPython 3.11); the walk in
    ``_parse`` checks depth again, in case that internal hook ever changes.
    """

    def __init__(self, *, max_parts: int, max_depth: int) -> None:
        super().__init__(policy=_ParsePolicy())
        self._max_parts = max_parts
        self._max_depth = max_depth
        self._parts = 0

    def _new_message(self) -> None:
        self._parts += 1
        if self._parts > self._max_parts:
            raise MessageTooComplex("parts")
        if len(getattr(self, "_msgstack", ())) > self._max_depth:
            raise MalformedMessage("too deeply nested")
        super()._new_message()  # type: ignore[misc]  # a private hook, not in typeshed: tests/foundation/test_private_hooks.py


class _HeaderClasses(HeaderRegistry):
    """The standard registry, but each header class is made once, not on every lookup."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[type, type] = {}

    def __getitem__(self, name: str) -> type:
        base = self.registry.get(name.lower(), self.default_class)
        made = self._made.get(base)
        if made is None:
            made = self._made[base] = type("_" + base.__name__, (base, self.base_class), {})
        return made


_HEADER_CLASSES = _HeaderClasses()


class _ParsePolicy(email.policy.EmailPolicy):
    """``email.policy.default`` that parses each header field once per message.

    The default policy parses a field every time it is read (``get``,
    ``get_content_type``, ``get_filename``, ...). Header objects are
    immutable, so the walk can share them. One instance per message (the
    cache dies with it); messages are parsed in several threads at once.

    It also holds the message's ``HeaderBudget`` (``limits.py``): a field
    over a cap is refused before the slow header parser sees it.
    """

    _fetched: dict[tuple[str, str], Any]  # set once in __init__ (a policy is immutable)

    def __init__(self) -> None:
        super().__init__(header_factory=_HEADER_CLASSES, message_factory=EmailMessage)
        object.__setattr__(self, "_fetched", {})
        object.__setattr__(self, "_budget", HeaderBudget())

    def header_fetch_parse(self, name: str, value: str) -> Any:
        fetched = self._fetched
        key = (name, value)
        header = fetched.get(key)
        if header is None:
            self._budget.charge(name, value)  # type: ignore[attr-defined]
            header = fetched[key] = super().header_fetch_parse(name, value)
        return header


def _feed_all(raw: bytes, *, max_parts: int, max_depth: int) -> Message:
    parser = _BoundedFeedParser(max_parts=max_parts, max_depth=max_depth)
    parser.feed(raw)
    return parser.close()


def _feed(raw: bytes, *, max_parts: int, max_depth: int) -> tuple[Message, list[tuple[Message, str, bool]], dict[int, tuple[int, int]]]:
    """Parse ``raw``: the message, its entities, and the raw slices of skipped bodies.

    The bodies ``skeleton.find_regions`` found are replaced by placeholders (a random
    token: a sender cannot forge one), the skeleton is parsed, and the
    result is kept only if every placeholder is, exactly, the whole payload
    of a leaf entity of the walk that has no defects and is neither a
    multipart nor a message/*. Then the parse of ``raw`` would have been the
    same but for those payloads: the feed parser reads line by line; up to a
    placeholder both inputs are the same lines, so it reaches the region's
    first line in the state in which it took the placeholder, collecting a
    leaf body (not reading headers: that would have left a defect on the
    leaf). In that state a line only matters if it matches the boundary of
    an enclosing multipart, and no line of a region starts with ``--``. So
    it takes all of the region's lines into the same payload and goes on
    from the same line in the same state. Anything else (the skeleton
    refused, a placeholder elsewhere) parses ``raw`` the plain way.
    """
    regions = skeleton.find_regions(raw, max_parts=max_parts, max_depth=max_depth) if len(raw) >= skeleton.SLICE_MIN else []
    if regions:
        token = secrets.token_hex(12)
        names: list[str] = []
        pieces: list[bytes] = []
        pos = 0
        for number, (start, end) in enumerate(regions):
            names.append(f"gatewayd-body-{token}-{number}")
            pieces += [raw[pos:start], names[-1].encode("ascii")]
            pos = end
        pieces.append(raw[pos:])
        try:
            msg = _feed_all(b"".join(pieces), max_parts=max_parts, max_depth=max_depth)
            entities = list(_walk(msg, "", 0, max_depth))
        except MemoryError:
            raise
        except Exception:  # whatever it is, the plain parse decides
            pass
        else:
            wanted = dict(zip(names, regions, strict=True))
            bodies: dict[int, tuple[int, int]] = {}
            for part, _, _ in entities:
                payload = part.get_payload(decode=False)  # the placeholder name, undecoded
                if isinstance(payload, str) and payload in wanted and not part.defects \
                        and part.get_content_maintype() not in ("multipart", "message"):
                    bodies[id(part)] = wanted.pop(payload)
            if not wanted:
                return msg, entities, bodies
    msg = _feed_all(raw, max_parts=max_parts, max_depth=max_depth)
    return msg, list(_walk(msg, "", 0, max_depth)), {}


def _parse(raw: bytes, *, max_parts: int, max_depth: int) -> ParsedMessage:
    msg, entities, bodies = _feed(raw, max_parts=max_parts, max_depth=max_depth)
    if len(entities) > max_parts:
        raise MessageTooComplex("parts")
    for part, section, _ in entities:
        _check_entity(part, section)

    plain: list[str] = []
    htmls: list[str] = []
    attachments: list[Attachment] = []
    unsupported: list[UnsupportedPart] = []
    skipped: list[str] = []
    index = 0
    counted = len(entities)

    def visit(walked: list[tuple[Message, str, bool]], *, forwarded: bool) -> None:
        nonlocal index, counted
        for part, section, is_signature in walked:
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
                if not forwarded:  # a forwarded message's own text is not this message's body
                    (plain if ctype == "text/plain" else htmls).append(_decode_text(part, label, _slice(raw, bodies, part)))
                continue
            if disposition != "attachment" and part.get("content-id") is not None:
                # An image the HTML body shows (a signature logo): not faxed.
                cid = str(part.get("content-id")).strip().strip("<>")
                skipped.append(safe_filename(raw_name, cid or f"inline-{section}"))
                continue
            index += 1
            if _is_message_type(part):
                name = safe_filename(raw_name, f"attachment-{index}.eml")
                inner = part.get_payload()
                if not forwarded and ctype == "message/rfc822" and isinstance(inner, list) and len(inner) == 1 \
                        and isinstance(inner[0], Message):
                    # A forwarded message: its attachments are faxed in order,
                    # one level deep (docs/documents.md, Reading the message).
                    found = len(attachments) + len(unsupported)
                    nested = list(_walk(inner[0], f"{section}.1", 0, max_depth))
                    counted += len(nested)
                    if counted > max_parts:
                        raise MalformedMessage("too many parts")
                    for child, child_section, _ in nested:
                        _check_entity(child, child_section)
                    visit(nested, forwarded=True)  # noqa: F821 - bound while the walk runs (deleted after it: see below)
                    if len(attachments) + len(unsupported) > found:
                        continue
                unsupported.append(UnsupportedPart(name, ctype, f"unsupported type {ctype}"))
                continue
            data = _decode_payload(part, label, _slice(raw, bodies, part))
            if ctype in _TNEF_TYPES or (raw_name or "").lower() == "winmail.dat":
                name = safe_filename(raw_name, f"attachment-{index}.dat")
                for inner_name, inner_data in _tnef_files(name, data):
                    counted += 1
                    if counted > max_parts:
                        raise MalformedMessage("too many parts")
                    take(inner_name, inner_data, "application/octet-stream", None, index)
                continue
            take(raw_name, data, ctype, part, index)

    def take(raw_name: str | None, data: bytes, ctype: str, part: Message | None, number: int) -> None:
        kind = sniff_kind(data)
        fallback_ext = _KIND_EXTENSION[kind] if kind else _guess_extension(ctype)
        name = safe_filename(raw_name, f"attachment-{number}.{fallback_ext}")
        if not data:
            raise AttachmentRejected(name, "empty file")
        if kind is not None:
            attachments.append(Attachment(name, kind, data, ctype))
            return
        found = office_part(data, ctype, raw_name or "", part.get_content_charset() if part is not None else None)
        if found is not None:
            office, data = found
            if raw_name is None:
                name = safe_filename(None, f"attachment-{number}.{office}")
            attachments.append(Attachment(name, office, data, ctype))
            return
        claimed = _CLAIMED_TYPES.get(ctype) or _CLAIMED_EXTENSIONS.get(_extension(raw_name))
        if claimed == "pdf":
            raise AttachmentRejected(name, "corrupt PDF")
        if claimed == "tiff":
            raise AttachmentRejected(name, "unreadable TIFF")
        if claimed is not None:
            raise AttachmentRejected(name, "corrupt image")
        unsupported.append(UnsupportedPart(name, ctype, f"unsupported type {ctype}"))

    try:
        visit(entities, forwarded=False)
    finally:
        # visit calls itself, so it refers to itself through its closure: a
        # reference cycle holding the raw message and every decoded
        # attachment until the cyclic GC runs. 20 messages of 10 MB at once
        # then peaked at ~550 MiB instead of ~200 (docs/performance.md, (b)).
        del visit

    if plain:
        body = "\n\n".join(clean_plain(t) for t in plain)
    else:
        body = "\n\n".join(clean_plain(html_to_text(t)) for t in _bounded(htmls, MAX_HTML_CHARS))

    from_addr, from_display = _from(msg)
    return ParsedMessage(
        subject=_clean_line(_header_str(msg, "subject") or ""),
        message_id=_clean_line(_header_str(msg, "message-id") or "") or None,
        from_addr=from_addr,
        from_display=from_display,
        date=_clean_line(_header_str(msg, "date") or "") or None,
        body_text=squeeze_blank_lines(body).strip(),
        attachments=tuple(attachments),
        unsupported=tuple(unsupported),
        skipped_inline=tuple(skipped),
        header_addresses=MappingProxyType(
            {name: _addresses(msg, name) for name in _ADDRESS_HEADERS}
        ),
        # Raw, never RFC 2047 decoded (gatewayd/email_to_fax/authresults.py says why).
        authentication_results=tuple(
            _clean_line(_unescape_8bit(v)) for k, v in msg.raw_items() if k.lower() == "authentication-results"
        ),
        display_names=MappingProxyType(_display_names(msg)),
    )


def _bounded(texts: list[str], limit: int) -> list[str]:
    """The texts, cut so that together they hold at most ``limit`` characters
    (what lies beyond is never shown: see MAX_BODY_CHARS; limits.py)."""
    out: list[str] = []
    for text in texts:
        if limit <= 0:
            break
        out.append(text[:limit])
        limit -= len(out[-1])
    return out


def office_part(data: bytes, declared_type: str, filename: str, charset: str | None) -> tuple[OfficeKind, bytes] | None:
    """The office kind of an attachment and the bytes the converter gets (text as UTF-8), or None.

    The email path's recognition (``sniff_office``), also used for the files
    ``gatewayd send`` and the web console are given.
    """
    office = sniff_office(data, declared_type, filename)
    if office is None:
        return None
    return office, _utf8_text(data, charset) if office == "txt" else data


def office_as_unsupported(parsed: ParsedMessage) -> ParsedMessage:
    """The message as where LibreOffice is off or missing: office attachments unsupported, as any unknown type."""
    office = [a for a in parsed.attachments if a.kind in OFFICE_KINDS]
    if not office:
        return parsed
    return dataclasses.replace(
        parsed,
        attachments=tuple(a for a in parsed.attachments if a.kind not in OFFICE_KINDS),
        unsupported=parsed.unsupported + tuple(
            UnsupportedPart(a.filename, a.declared_type, f"unsupported type {a.declared_type}") for a in office),
    )


_TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})


def _tnef_files(name: str, data: bytes) -> list[tuple[str, bytes]]:
    """The files inside Outlook's winmail.dat, in order; its RTF body is not one (docs/documents.md)."""
    try:
        tnef = TNEF(data, do_checksum=False)
        files = [(att.long_filename() or att.name or None, att.data) for att in tnef.attachments]
    except Exception:
        raise AttachmentRejected(name, "unreadable winmail.dat") from None
    if not files:
        raise AttachmentRejected(name, "winmail.dat without attachments")
    return [(n if isinstance(n, str) else None, bytes(d)) for n, d in files]  # type: ignore[misc]


# ------------------------------------------------------------ structure walk


def _walk(part: Message, section: str, depth: int, max_depth: int) -> Iterator[tuple[Message, str, bool]]:
    """Yield (entity, IMAP-style section number, is-signature) in message order.

    message/* parts are leaves here: ``_parse`` walks a forwarded message's
    insides itself, one level deep, or reports it as unsupported.
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


def _slice(raw: bytes, bodies: Mapping[int, tuple[int, int]], part: Message) -> bytes | None:
    """The raw bytes of ``part``'s body when ``_feed`` left it out of the parse."""
    where = bodies.get(id(part))
    return None if where is None else raw[where[0]:where[1]]


def _decode_payload(part: Message, label: str, body: bytes | None = None) -> bytes:
    """The decoded content; ``body`` is the raw base64 body when the parser did not see it."""
    cte = str(part.get("content-transfer-encoding", "7bit")).strip().lower()
    if cte == "base64":
        # The library decoder repairs bad padding and skips junk silently;
        # a repaired attachment is a guess, so decode strictly ourselves.
        if body is not None:
            encoded = body  # a byte outside the base64 alphabet fails below, as in the text
        else:
            text = part.get_payload(decode=False)
            if not isinstance(text, str):
                raise MalformedMessage(f"invalid base64 in {label}")
            try:
                encoded = text.encode("ascii")
            except UnicodeEncodeError:
                raise MalformedMessage(f"invalid base64 in {label}") from None
        encoded = encoded.translate(None, b" \t\r\n")
        try:
            # pybase64 (SIMD): ~35x faster than binascii; validate=True is as
            # strict as a2b_base64(strict_mode=True) on what is left here
            # (tests/documents/test_parse_base64.py compares them).
            return pybase64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedMessage(f"invalid base64 in {label}") from None
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        raise MalformedMessage(f"undecodable content in {label}")
    return data


def _decode_text(part: Message, label: str, body: bytes | None = None) -> str:
    data = _decode_payload(part, label, body)[: MAX_BODY_CHARS * 4]
    charset = part.get_content_charset() or "us-ascii"
    try:
        text = data.decode(charset)
    except LookupError:
        text = data.decode("utf-8", "replace")  # unknown charset: best effort for display only
    except UnicodeDecodeError:
        # us-ascii declared with 8-bit bytes is common; UTF-8 is the likely truth.
        text = data.decode("utf-8" if charset in ("us-ascii", "ascii") else charset, "replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")[:MAX_BODY_CHARS]


def _utf8_text(data: bytes, charset: str | None) -> bytes:
    """A text attachment as UTF-8 with a byte order mark, which LibreOffice's text import reads as such."""
    try:
        text = data.decode(charset or "utf-8")
    except (LookupError, UnicodeDecodeError):
        text = data.decode("utf-8", "replace")
    return b"\xef\xbb\xbf" + text.lstrip("\ufeff").encode("utf-8")


# ------------------------------------------------------------------ content


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
    if not isinstance(header, AddressHeader):  # absent (what the header policy makes of From: otherwise)
        return None, None
    addresses = header.addresses
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


def _display_names(msg: Message) -> dict[str, str]:
    names: dict[str, str] = {}
    for header in ("to", "cc"):
        for value in msg.get_all(header) or ():
            parsed = getattr(value, "addresses", None)
            pairs = ([(a.display_name, a.addr_spec) for a in parsed] if parsed is not None
                     else getaddresses([str(value)]))
            for display, spec in pairs:
                spec = _unescape_8bit(spec).strip().lower()
                display = _clean_line(_unescape_8bit(display or ""))
                if "@" in spec and display and spec not in names:
                    names[spec] = display
    return names


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
