"""The parts every email gatewayd writes has in common (docs/reports.md, docs/inbound.md).

``Auto-Submitted: auto-generated``, a fresh ``Message-ID`` and a ``Date``,
and header values that can never smuggle a line break: everything that came
from a received email or the provider goes through ``safe_header_text``
before it lands in a header, and the email package then encodes non-ASCII
text per RFC 2047.

Encoded words are the trap (docs/security.md): the email package decodes
``=?utf-8?q?a=0D=0ABcc:_x@y?=`` in a value it is given, and Python before
3.11.10 writes the decoded CR LF as is -- a new header line. So
``safe_header_text`` decodes every encoded word itself (repeatedly: a
double-encoded value decodes to another encoded word), then removes the
controls, and leaves no ``=?`` behind: the package is never handed an encoded
word to decode, on any Python version. ``to_bytes`` checks the result once
more: its header block holds exactly the fields that were set.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr

# C0 and C1 controls and the Unicode line/paragraph separators: str.splitlines()
# breaks on \x85, \u2028 and \u2029 too, and the email package refuses a header
# value that splits into lines, so any of them in a subject would make the
# email impossible to build (and a report stuck for ever).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


# How often an encoded word is decoded again; what is still encoded after
# that is neutralised (no sender needs three levels).
_DECODE_ROUNDS = 3


class HeaderInjection(ValueError):
    """A written message whose header block holds a field nobody set (a bug here)."""


def _decode_words(text: str) -> str:
    for _ in range(_DECODE_ROUNDS):
        if "=?" not in text:
            break
        try:
            decoded = str(make_header(decode_header(text)))
        except Exception:
            break
        if decoded == text:
            break
        text = decoded
    return text


def safe_header_text(value: str, limit: int = 200) -> str:
    """One line of text for a header: encoded words decoded, controls become
    spaces, no ``=?`` left, length bounded (the module docstring says why)."""
    # An encoded word is at most 75 characters and decodes to fewer: four
    # times the limit is more than enough to show ``limit`` characters.
    text = _decode_words((value or "")[: max(limit, 1) * 4])
    text = _CONTROL.sub(" ", text).replace("=?", "= ?").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bare_address(value: str) -> str:
    """The addr-spec of ``Name <user@host>`` (or of a bare address)."""
    return parseaddr(value)[1]


def _msgid_domain(mail_from: str) -> str:
    domain = bare_address(mail_from).rpartition("@")[2]
    return domain if re.fullmatch(r"[A-Za-z0-9.-]+", domain or "") else "gatewayd.invalid"


def new_message(
    *,
    mail_from: str,
    to: Sequence[str],
    subject: str,
    date: datetime | None = None,
    cc: Sequence[str] = (),
    in_reply_to: str | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> EmailMessage:
    """An EmailMessage with the headers every gatewayd email carries.

    ``to``/``cc`` must be validated addresses; ``subject``, ``in_reply_to``
    and extra header values may come from outside and are made safe here.
    """
    msg = EmailMessage(policy=SMTP)
    msg["From"] = mail_from
    msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = safe_header_text(subject, 250)
    msg["Date"] = format_datetime(date if date is not None else datetime.now().astimezone())
    # Short enough to stay on one header line (make_msgid's ids get folded).
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@{_msgid_domain(mail_from)}>"
    msg["Auto-Submitted"] = "auto-generated"
    # Keep vacation responders and list software from answering a robot.
    msg["X-Auto-Response-Suppress"] = "All"
    if in_reply_to:
        ref = safe_header_text(in_reply_to, 250)
        if re.fullmatch(r"<[^<>\s]+>", ref):  # only a well-formed msg-id is echoed back
            msg["In-Reply-To"] = ref
            msg["References"] = ref
    for name, value in extra_headers:
        msg[name] = safe_header_text(value)
    return msg


_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")


def to_bytes(msg: EmailMessage) -> bytes:
    """CRLF bytes ready for SMTP; raises ``HeaderInjection`` if the header
    block holds any field line other than those set on ``msg``."""
    data = msg.as_bytes(policy=SMTP)
    block = data.split(b"\r\n\r\n", 1)[0]
    written = []
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            continue
        m = _FIELD_NAME.match(line)
        if m is None:
            raise HeaderInjection(f"not a header line: {line[:60]!r}")
        written.append(m.group(1).decode("ascii").lower())
    if written != [k.lower() for k in msg.keys()]:
        raise HeaderInjection(f"header fields {written} differ from those set {list(msg.keys())}")
    return data


__all__ = ["Address", "HeaderInjection", "bare_address", "new_message", "safe_header_text", "to_bytes"]
