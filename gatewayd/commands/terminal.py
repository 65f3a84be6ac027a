"""Text for the administrator's terminal: what strangers wrote, made harmless.

Envelope senders, subjects and Message-IDs come from whoever sent the mail;
provider statuses, messages and caller ids from the provider. Printed as
is, an ESC sequence (``\\x1b]...``, ``\\x1b[2J``), a C1 control (``\\x9b``),
a bidi override (``\\u202e``) or a line break would reach the terminal of
the administrator running ``gatewayd jobs`` (docs/security.md, "Hardening
(issue 14, items 5-11)"). Every character Python does not call printable
(controls, format characters such as the bidi marks, line and paragraph
separators, unassigned code points) is shown as its escape instead.
"""

from __future__ import annotations

__all__ = ["safe_text"]


def _escape(c: str) -> str:
    code = ord(c)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe_text(text: str) -> str:
    """``text`` with every non-printable character escaped (``\\x1b``, ``\\u202e``); printable text unchanged."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)
