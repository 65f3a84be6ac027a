"""Why a message or recipient is refused, as the SMTP reply the SPEC prescribes.

Every refusal in the email-to-fax path is an ``IntakeRefused`` carrying the
exact reply line. The SMTP listener sends ``exc.reply``; the IMAP intake and
the CLI turn the same exception into words for a reply email or stderr.
"""

from __future__ import annotations


class IntakeRefused(Exception):
    """A message, sender or recipient refused with a definite SMTP reply."""

    code: int = 554
    status: str = "5.6.0"

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    @property
    def reply(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    @property
    def permanent(self) -> bool:
        return self.code >= 500


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


class NoFaxDocument(IntakeRefused):
    code, status = 554, "5.6.0"

    def __init__(self, why: str) -> None:
        super().__init__(f"no fax document: {why}")
        self.why = why


class AttachmentRejected(IntakeRefused):
    """An attachment that is encrypted, corrupt, unsupported or a pixel bomb."""

    code, status = 554, "5.6.0"

    def __init__(self, filename: str, why: str) -> None:
        super().__init__(f"{filename}: {why}")
        self.filename = filename
        self.why = why


class DocumentTooLarge(IntakeRefused):
    code, status = 552, "5.3.4"

    def __init__(self, what: str) -> None:
        super().__init__(f"fax document too large: {what}")
        self.what = what


class BareLineFeed(IntakeRefused):
    code, status = 554, "5.6.0"

    def __init__(self) -> None:
        super().__init__("bare LF line endings not allowed")


class MalformedMessage(IntakeRefused):
    code, status = 554, "5.6.0"

    def __init__(self, why: str) -> None:
        super().__init__(f"malformed message: {why}")
        self.why = why


class TemporaryFailure(IntakeRefused):
    """Storage or any internal failure: never a 5xx."""

    code, status = 451, "4.3.0"

    def __init__(self) -> None:
        super().__init__("temporary failure, try again")
