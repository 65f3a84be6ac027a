"""Caps on what reading one message may cost: no message holds the event loop.

The standard library's header parser is quadratic in a field's length (it
slices the rest of the value at every token) and slow per address and per
encoded word; the HTML parser behind ``bodytext.html_to_text`` is quadratic
on unclosed tags. Measured before these caps (docs/security.md, Hostile
input): a ``To:`` of 16,000 addresses took 8.4 s, a ``Subject:`` of 40,000
encoded words 24 s. Each cap below bounds one step so that the worst message
within all of them is read in well under 100 ms (bench/bench_hostile.py); a
message over a cap is refused with ``554 5.6.0 malformed message: too
complex`` (docs/smtp.md, Replies), never cut and guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass

from gatewayd.email_to_fax.errors import MessageTooComplex

__all__ = [
    "ADDRESS_FIELDS",
    "MAX_ADDRESSES",
    "MAX_ADDRESS_HEADER_CHARS",
    "MAX_COMMENTS",
    "MAX_ENCODED_WORDS",
    "MAX_HEADER_BLOCK_BYTES",
    "MAX_HEADER_CHARS",
    "MAX_HTML_CHARS",
    "MAX_PARSED_HEADER_CHARS",
    "HeaderBudget",
    "check_field",
    "check_header_block",
]

# The message's own header block, found before anything is parsed (Postfix
# cuts headers at the same size, header_size_limit; the feed parser would
# read every line of it, 40,000 folded lines of a Subject: included).
MAX_HEADER_BLOCK_BYTES = 100 * 1024
# One header field the parser reads (Subject, Content-Type, ...). Long
# fields nobody reads (Received, References, DKIM-Signature) cost nothing.
MAX_HEADER_CHARS = 4096
# An address field (To, Cc, From, ...): a hundred recipients fit.
MAX_ADDRESS_HEADER_CHARS = 8192
MAX_ADDRESSES = 100  # per address field, counted by its "@" signs
MAX_ENCODED_WORDS = 50  # "=?" sequences per field
# Comments per field: the parser recurses once per nested "(" (a RecursionError
# after a thousand) and slices the value at each.
MAX_COMMENTS = 32
# All the fields one message's parse reads together (every MIME part's
# Content-Type, Content-Disposition, ... included).
MAX_PARSED_HEADER_CHARS = 32 * 1024
# All HTML body parts together, before they are reduced to text. The cover
# page shows two pages at most; bodytext.py's pre-pass keeps the HTML parser
# linear, this bounds the constant.
MAX_HTML_CHARS = 100_000

ADDRESS_FIELDS = frozenset({
    "from", "sender", "reply-to", "to", "cc", "bcc", "delivered-to", "x-original-to",
    "resent-from", "resent-sender", "resent-to", "resent-cc", "resent-bcc",
})


@dataclass
class HeaderBudget:
    """What is left for one message's header parsing (one per message: not shared)."""

    chars_left: int = MAX_PARSED_HEADER_CHARS

    def charge(self, name: str, value: str) -> None:
        """Raise ``MessageTooComplex`` before a field over a cap is parsed."""
        check_field(name, value)
        self.chars_left -= len(value)
        if self.chars_left < 0:
            raise MessageTooComplex("header fields")


def check_header_block(raw: bytes) -> None:
    """Refuse a message whose header block (up to the first blank line) is over the cap."""
    if len(raw) > MAX_HEADER_BLOCK_BYTES and raw.find(b"\r\n\r\n", 0, MAX_HEADER_BLOCK_BYTES + 4) < 0 \
            and not raw.startswith(b"\r\n"):
        raise MessageTooComplex("header block size")


def check_field(name: str, value: str) -> None:
    """The per-field caps (size, addresses, encoded words) on a raw value."""
    lname = name.lower()
    if lname in ADDRESS_FIELDS:
        if len(value) > MAX_ADDRESS_HEADER_CHARS:
            raise MessageTooComplex(f"{name} field size")
        if value.count("@") > MAX_ADDRESSES:
            raise MessageTooComplex(f"{name} address count")
    elif len(value) > MAX_HEADER_CHARS:
        raise MessageTooComplex(f"{name} field size")
    if value.count("=?") > MAX_ENCODED_WORDS:
        raise MessageTooComplex(f"{name} encoded words")
    if value.count("(") > MAX_COMMENTS:
        raise MessageTooComplex(f"{name} comments")
