"""The parts every email gatewayd writes has in common (docs/reports.md, docs/inbound.md).

``Auto-Submitted: auto-generated``, a fresh ``Message-ID`` and a ``Date``,
and header values that can never smuggle a line break: everything that came
from a received email or the provider goes through ``safe_header_text``
before it lands in a header, and the email package then encodes non-ASCII
text per RFC 2047.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr

# C0 and C1 controls and the Unicode line/paragraph separators: str.splitlines()
# breaks on \x85, \u2028 and \u2029 too, and the email package refuses a header
# value that splits into lines, so any of them in a subject would make the
# email impossible to build (and a report stuck for ever).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def safe_header_text(value: str, limit: int = 200) -> str:
    """One line of text for a header: controls become spaces, length bounded."""
    text = _CONTROL.sub(" ", value or "").strip()
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


def to_bytes(msg: EmailMessage) -> bytes:
    """CRLF bytes ready for SMTP."""
    return msg.as_bytes(policy=SMTP)


__all__ = ["Address", "bare_address", "new_message", "safe_header_text", "to_bytes"]
