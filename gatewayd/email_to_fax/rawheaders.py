"""A message's header block as raw fields: split and unfolded, never decoded.

What decides who sent an IMAP message (docs/imap.md, Who is believed) is read
here, before and without the full MIME parse (docs/security.md): the
``Authentication-Results`` values exactly as the MTA wrote them (RFC 2047
decoding would turn text the sender controls, such as the envelope local
part, into new statements), and the one ``From:`` address, read strictly.
Every step is linear in the header size or bounded by the caps in
``limits.py``.
"""

from __future__ import annotations

import email.policy
import re
from email.errors import ObsoleteHeaderDefect
from email.headerregistry import AddressHeader

from gatewayd.email_to_fax.limits import MAX_ADDRESS_HEADER_CHARS

__all__ = ["header_block", "fields", "values", "single_from"]

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LINE = re.compile(rb"\r?\n")
_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext


def header_block(raw: bytes) -> bytes:
    """The header block of ``raw`` (up to and with the blank line), or all of it."""
    m = _HEADER_END.search(raw)
    return raw[: m.end()] if m else raw


def fields(block: bytes) -> list[tuple[str, str]]:
    """``(name, value)`` in order; continuation lines joined, nothing decoded.

    Bytes that are not UTF-8 become U+FFFD (no ASCII statement can be made
    out of them). A line that is neither a field nor a continuation ends
    nothing and counts as nothing: the full parse refuses such a message.
    """
    out: list[tuple[str, str]] = []
    for line in _LINE.split(block):
        if not line:
            break
        text = line.decode("utf-8", "replace")
        if text[:1] in (" ", "\t"):
            if out:
                name, value = out[-1]
                out[-1] = (name, value + " " + text.strip())
            continue
        name, colon, value = text.partition(":")
        name = name.rstrip(" \t")
        if colon and _NAME.fullmatch(name):
            out.append((name, value.strip()))
    return out


def values(block: bytes, name: str) -> list[str]:
    """The raw values of every ``name`` field, top first, blanks squeezed."""
    wanted = name.lower()
    return [" ".join(v.split()) for n, v in fields(block) if n.lower() == wanted]


def single_from(value: str) -> str | None:
    """The one address of a ``From:`` value, or None when it is not exactly one.

    Strict (docs/imap.md): the email package's RFC 5322 parser must read it
    without defects (an obsolete-syntax note such as a "." in the display
    name is allowed), as a single mailbox outside any group, with a local
    part and a domain. ``boss@corp.example (x) <y@evil.example>`` is an
    invalid address list: nobody, never ``boss@corp.example``.
    """
    if not value or len(value) > MAX_ADDRESS_HEADER_CHARS:
        return None
    try:
        header = email.policy.default.header_factory("from", value)
    except Exception:
        return None
    if not isinstance(header, AddressHeader):
        return None
    if any(not isinstance(d, ObsoleteHeaderDefect) for d in getattr(header, "defects", ())):  # set by the header factory; not in typeshed
        return None
    groups = header.groups
    if len(groups) != 1 or groups[0].display_name is not None or len(groups[0].addresses) != 1:
        return None
    addr = groups[0].addresses[0]
    if not addr.username or not addr.domain:
        return None
    spec = addr.addr_spec
    return spec if spec.count("@") == 1 or spec.startswith('"') else None
