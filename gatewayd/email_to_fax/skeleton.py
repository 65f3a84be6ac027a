"""A quick pre-scan of a raw message's MIME structure: where its large base64 leaf bodies are.

Only a hint for the parser's fast path (``gatewayd/email_to_fax/parse.py``,
``_feed``): the parser feeds a *skeleton* of the message, in which each
region found here is a one-line placeholder, and decodes those bodies from
their slices of the raw bytes; it checks with the real parser that each
region really is one leaf's whole body, and parses the whole message the
plain way whenever that cannot be shown. No refusal is made here.
"""

from __future__ import annotations

import itertools
import re

__all__ = ["SLICE_MIN", "find_regions"]

# A base64 leaf body at least this long is decoded from its slice of the raw
# message instead of going through the feed parser line by line.
SLICE_MIN = 4096
_CRLF2 = b"\r\n\r\n"
_FIELD_RE = re.compile(rb"^(content-type|content-transfer-encoding)[ \t]*:(.*)$", re.IGNORECASE | re.MULTILINE)
_TYPE_RE = re.compile(rb"\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)/([!#$%&'*+.^_`|~0-9A-Za-z-]+)")
_BOUNDARY_RE = re.compile(rb';\s*boundary\s*=\s*(?:"([^"\\\r\n]*)"|([^\s;"]+))', re.IGNORECASE)


def find_regions(raw: bytes, *, max_parts: int, max_depth: int) -> list[tuple[int, int]]:
    """Where the large base64 leaf bodies are: ``(start, end)`` offsets in ``raw``.

    A quick look at the MIME structure (header blocks, Content-Type,
    boundaries, Content-Transfer-Encoding); only a hint: ``parse._feed`` checks
    with the real parser that each region really is one leaf's whole body,
    and a region is never offered if it holds a ``-`` (so no line in it
    starts with ``--``: it cannot hold a boundary of any multipart, whatever
    its boundary) or a byte that is not ASCII.
    """
    scan = _Scan(raw, max_parts=max_parts, max_depth=max_depth)
    try:
        scan.entity(0, len(raw), 0)
    except _GiveUp:
        return []
    return scan.regions


class _Scan:
    """The walk of ``find_regions``. A class, not nested functions: two closures
    calling each other are a reference cycle, and it would keep the message
    alive until the next full garbage collection."""

    def __init__(self, raw: bytes, *, max_parts: int, max_depth: int) -> None:
        self.raw = raw
        self.budget = max_parts
        self.max_depth = max_depth
        self.regions: list[tuple[int, int]] = []

    def entity(self, start: int, end: int, depth: int) -> None:
        raw = self.raw
        self.budget -= 1
        if self.budget < 0 or depth > self.max_depth:
            raise _GiveUp
        if raw.startswith(b"\r\n", start):
            header, body = b"", start + 2
        else:
            cut = raw.find(_CRLF2, start, end)
            if cut < 0:
                return  # headers only: nothing to skip
            header, body = raw[start:cut + 2], cut + 4
        fields: dict[bytes, bytes] = {}
        for name, value in _FIELD_RE.findall(header.replace(b"\r\n ", b" ").replace(b"\r\n\t", b"\t")):
            name = name.lower()
            if name in fields:
                raise _GiveUp  # duplicate: refused anyway, by the parser
            fields[name] = value
        ctype = _TYPE_RE.match(fields.get(b"content-type", b"text/plain"))
        if ctype is None:
            raise _GiveUp
        main = ctype.group(1).lower()
        if main == b"multipart":
            found = _BOUNDARY_RE.search(fields[b"content-type"], ctype.end())
            if found is None:
                raise _GiveUp
            self.parts(found.group(1) if found.group(1) is not None else found.group(2), body, end, depth)
        elif main != b"message" and fields.get(b"content-transfer-encoding", b"").strip().lower() == b"base64":
            if end - body >= SLICE_MIN:
                # Not base64 (a "-", so also no line starting with "--"; not
                # ASCII): the plain parse words that refusal.
                if raw.find(b"-", body, end) >= 0 or not raw[body:end].isascii():
                    raise _GiveUp
                self.regions.append((body, end))

    def parts(self, boundary: bytes, start: int, end: int, depth: int) -> None:
        raw = self.raw
        delimiter = b"--" + boundary
        # Delimiter lines: at the body's start or after a CRLF, then "--"?, blanks, CRLF or the end.
        lines: list[tuple[int, int, bool]] = []  # (line start, after its CRLF, is the close delimiter)
        at = start if raw.startswith(delimiter, start) else raw.find(b"\r\n" + delimiter, start, end)
        while at >= 0:
            line = at if at == start and raw.startswith(delimiter, start) else at + 2
            tail = line + len(delimiter)
            closing = raw.startswith(b"--", tail, end)
            after = tail + 2 if closing else tail
            while after < end and raw[after] in b" \t":
                after += 1
            if after == end or raw.startswith(b"\r\n", after, end):
                lines.append((line, min(after + 2, end), closing))
                if closing:
                    break
            at = raw.find(b"\r\n" + delimiter, tail, end)
        if not lines or not lines[-1][2]:
            raise _GiveUp  # no close delimiter: the parser's business
        for (_, part_start, _), (next_line, _, _) in itertools.pairwise(lines):
            # The CRLF before a delimiter belongs to the delimiter (RFC 2046 5.1.1).
            self.entity(part_start, max(next_line - 2, part_start), depth + 1)


class _GiveUp(Exception):
    """The quick look does not understand the structure: parse it all the plain way."""
