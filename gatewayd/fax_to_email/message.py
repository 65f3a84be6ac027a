"""The email for a received fax (docs/inbound.md, The email).

Everything about the fax comes from the provider (caller id, destination)
and is therefore untrusted: header values go through ``compose``'s
``safe_header_text`` (via ``extra_headers``/``subject``), file names are
reduced to a small safe alphabet, and the body is plain text with control
characters removed. With ``[mail].preview`` a picture of the first page
goes inline beside the text (gatewayd/mail/inline_preview.py; the text is the
same either way).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage

from gatewayd.documents.images import tiff_to_pdf
from gatewayd.documents.preview import email_preview
from gatewayd.mail.compose import new_message
from gatewayd.mail.inline_preview import set_body

# C0/C1 controls and Unicode line separators (str.splitlines() breaks on them).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9+_-]+")
_MAX_CALLER_IN_NAME = 40


@dataclass(frozen=True)
class FaxFacts:
    """What the email says about one received fax."""

    uuid: str
    extension_id: int
    caller_id: str
    destination: str
    received_at: datetime  # aware, in the provider client's time zone
    pages: int | None  # None when the file could not be read


@dataclass(frozen=True)
class FaxAttachment:
    data: bytes
    filename: str
    content_type: str  # "application/pdf", "image/tiff", "application/octet-stream"


def caller_for_filename(caller_id: str) -> str:
    """The caller id reduced to characters safe in any file system and MUA."""
    text = _UNSAFE_NAME.sub("_", caller_id or "").strip("_")[:_MAX_CALLER_IN_NAME].strip("_")
    return text or "unknown"


def attachment_name(received_at: datetime, caller_id: str, extension: str = "pdf") -> str:
    """``fax-<YYYYmmdd-HHMMSS>-<caller>.<extension>``."""
    return f"fax-{received_at.strftime('%Y%m%d-%H%M%S')}-{caller_for_filename(caller_id)}.{extension}"


def _plain(text: str, limit: int = 200) -> str:
    # Body text from the provider: no control characters, bounded length.
    cleaned = _CONTROL.sub(" ", text or "").strip()
    return cleaned[:limit]


def _shown(value: str) -> str:
    return _plain(value) or "unknown"


def received_subject(caller_id: str, destination: str) -> str:
    return f"Fax from {_shown(caller_id)} to {_shown(destination)}"


def _facts_lines(facts: FaxFacts) -> list[str]:
    return [
        f"From:       {_shown(facts.caller_id)}",
        f"To:         {_shown(facts.destination)}",
        f"Extension:  {facts.extension_id}",
        f"Received:   {facts.received_at.strftime('%Y-%m-%d %H:%M:%S %z')}",
        f"Pages:      {facts.pages if facts.pages is not None else 'unknown'}",
        f"Fax id:     {_plain(facts.uuid)}",
    ]


def build_received_email(
    *,
    mail_from: str,
    to: Sequence[str],
    facts: FaxFacts,
    attachments: Sequence[FaxAttachment],
    notes: Sequence[str] = (),
    preview: bytes | None = None,
) -> EmailMessage:
    """The email to the fax's recipients: short text body (with ``preview``, the first page's PNG, inline) plus the fax file(s)."""
    msg = new_message(
        mail_from=mail_from,
        to=list(to),
        subject=received_subject(facts.caller_id, facts.destination),
        date=facts.received_at,
        extra_headers=[
            ("X-Fax-Caller-ID", facts.caller_id or "unknown"),
            ("X-Fax-Destination", facts.destination or "unknown"),
            ("X-Fax-Extension", str(facts.extension_id)),
            ("X-Fax-UUID", facts.uuid),
        ],
    )
    body = ["A fax was received.", "", *_facts_lines(facts)]
    if notes:
        body += ["", *notes]
    set_body(msg, "\n".join(body) + "\n", preview, alt="First page of the fax")
    for att in attachments:
        maintype, _, subtype = att.content_type.partition("/")
        msg.add_attachment(att.data, maintype=maintype, subtype=subtype, filename=att.filename)
    return msg


def received_preview(attachments: Sequence[FaxAttachment], page_size: str) -> bytes | None:
    """The first page's PNG from the fax as attached (its PDF, else its TIFF), or None; blocking (pdfium)."""
    for att in attachments:
        if att.content_type == "application/pdf":
            return email_preview(att.data)
    for att in attachments:
        if att.content_type == "image/tiff":
            try:
                pdf = tiff_to_pdf(att.data, page_size)[0]
            except Exception:  # a TIFF that cannot be converted was sent as it is: no picture then
                return None
            return email_preview(pdf)
    return None


def build_admin_notice(*, mail_from: str, to: Sequence[str], facts: FaxFacts, problem: str, recipients: Sequence[str]) -> EmailMessage:
    """A notice to ``[mail].admin``: a received fax could not be converted."""
    msg = new_message(
        mail_from=mail_from,
        to=list(to),
        subject=f"Fax gateway: received fax {_plain(facts.uuid, 80)} could not be converted",
        extra_headers=[("X-Fax-UUID", facts.uuid)],
    )
    msg.set_content(
        "A received fax could not be converted. It was delivered to its\n"
        "recipients as the original file, unchanged, with a note.\n\n"
        + "\n".join(_facts_lines(facts))
        + f"\nRecipients: {', '.join(recipients)}\n"
        f"Problem:    {_plain(problem, 500)}\n\n"
        "The file is still at the provider (gatewayd never deletes received faxes).\n"
    )
    return msg


__all__ = [
    "FaxAttachment",
    "FaxFacts",
    "attachment_name",
    "build_admin_notice",
    "build_received_email",
    "caller_for_filename",
    "received_preview",
    "received_subject",
]
