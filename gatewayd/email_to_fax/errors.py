"""Why a message or recipient is refused, as the SMTP reply docs/smtp.md (Replies) prescribes.

Every refusal in the email-to-fax path is an ``IntakeRefused`` carrying the
exact reply (``gatewayd/refusal.py``: the base class and how a reply line is
escaped). This module holds the flow's own refusals and re-exports the base
and the document refusals (``gatewayd/documents/errors.py``), so that the
flow's code imports every refusal from one place.
"""

from __future__ import annotations

from gatewayd.documents.errors import AttachmentRejected, DocumentTooLarge, NoFaxDocument
from gatewayd.refusal import MAX_REPLY_LINE, IntakeRefused, smtp_safe

__all__ = [
    "MAX_REPLY_LINE",
    "AttachmentRejected",
    "AuthenticationRequired",
    "BareLineFeed",
    "DestinationNotAllowed",
    "DocumentTooLarge",
    "InsufficientStorage",
    "IntakeRefused",
    "MalformedMessage",
    "MessageTooBig",
    "MessageTooComplex",
    "NoFaxDocument",
    "NotAFaxNumber",
    "RateLimitReached",
    "RelayDenied",
    "SenderNotAuthorised",
    "ServiceNumberRefused",
    "TemporaryFailure",
    "smtp_safe",
]


class RelayDenied(IntakeRefused):
    code, status = 550, "5.7.1"

    def __init__(self) -> None:
        super().__init__("relaying denied")


class NotAFaxNumber(IntakeRefused):
    code, status = 553, "5.1.3"

    def __init__(self, address: str) -> None:
        super().__init__(f"<{address}>: not a fax number")
        self.address = address


class DestinationNotAllowed(IntakeRefused):
    code, status = 550, "5.7.1"

    def __init__(self, number: str) -> None:
        super().__init__(f"{number}: destination not allowed")
        self.number = number


class ServiceNumberRefused(IntakeRefused):
    """An emergency, short service or trunk number matched ``numbers.internal`` (docs/security.md, "Hardening")."""

    code, status = 550, "5.7.1"

    def __init__(self, number: str) -> None:
        super().__init__(f"{number}: emergency and service numbers are never faxed")
        self.number = number


class SenderNotAuthorised(IntakeRefused):
    code, status = 550, "5.7.1"

    def __init__(self) -> None:
        super().__init__("sender not authorised")


class AuthenticationRequired(IntakeRefused):
    code, status = 530, "5.7.0"

    def __init__(self) -> None:
        super().__init__("authentication required")


class RateLimitReached(IntakeRefused):
    code, status = 450, "4.7.1"

    def __init__(self) -> None:
        super().__init__("rate limit reached, try later")


class MessageTooBig(IntakeRefused):
    code, status = 552, "5.3.4"

    def __init__(self) -> None:
        super().__init__("message too big")


class BareLineFeed(IntakeRefused):
    code, status = 554, "5.6.0"

    def __init__(self) -> None:
        super().__init__("bare LF line endings not allowed")


class MalformedMessage(IntakeRefused):
    code, status = 554, "5.6.0"

    def __init__(self, why: str) -> None:
        super().__init__(f"malformed message: {why}")
        self.why = why


class MessageTooComplex(MalformedMessage):
    """Over one of the caps in ``limits.py``: reading it would stall the daemon."""

    def __init__(self, what: str) -> None:
        super().__init__("too complex")
        self.what = what  # which cap, for the logs; the reply does not say


class InsufficientStorage(IntakeRefused):
    """Free space below ``storage.min_free`` (gatewayd/diskspace.py): refused before anything is written."""

    code, status = 452, "4.3.1"

    def __init__(self, detail: str = "") -> None:
        super().__init__("insufficient system storage")
        self.detail = detail  # e.g. "only 120MB free in /var/lib/gatewayd (...)", for logs and the command line


class TemporaryFailure(IntakeRefused):
    """Storage or any internal failure: never a 5xx."""

    code, status = 451, "4.3.0"

    def __init__(self) -> None:
        super().__init__("temporary failure, try again")
