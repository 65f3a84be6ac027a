"""Why a message or recipient is refused, as the SMTP reply docs/smtp.md prescribes (Replies).

Every refusal in the email-to-fax path is an ``IntakeRefused`` carrying the
exact reply. The SMTP listener sends ``exc.smtp_reply``; the IMAP intake and
the CLI turn the same exception into words for a reply email or stderr
(``exc.reply``, ``exc.text``).

An SMTP reply line is ASCII without CR or LF, at most 512 octets with its
CRLF (RFC 5321 sections 2.4 and 4.5.3.1.5), but the text may name an
attachment or an address in any script ("счет.pdf"). ``smtp_reply``
therefore escapes what is not printable ASCII the way Python's
``unicode_escape`` codec does (``\\u0441\\u0447\\u0435\\u0442.pdf``; a
backslash becomes ``\\\\``, CR and LF ``\\r`` and ``\\n``): printable ASCII
stays as it is, the line is exactly reversible, and a refusal is never
turned into a ``451`` for want of an encoding. ``reply`` keeps the text as
it is, for humans (reply emails, reports, logs).
"""

from __future__ import annotations

# RFC 5321 section 4.5.3.1.5: a reply line is at most 512 octets with its CRLF.
MAX_REPLY_LINE = 510


def smtp_safe(line: str, limit: int = MAX_REPLY_LINE) -> str:
    """``line`` as one SMTP reply line: printable ASCII, no CR/LF, at most ``limit`` characters.

    Printable ASCII (space to ``~``) is kept, except the backslash, which is
    doubled; anything else is escaped as ``unicode_escape`` does (``\\r``,
    ``\\n``, ``\\t``, ``\\xNN``, ``\\uNNNN``, ``\\UNNNNNNNN``), so
    ``codecs.decode(line, "unicode_escape")`` gives the original back. A line
    that would be longer than ``limit`` is cut between two characters and
    ends with ``...``.
    """
    if line.isascii() and line.isprintable() and "\\" not in line and len(line) <= limit:
        return line  # the common case: nothing to do
    out: list[str] = []
    used = 0
    for ch in line:
        piece = ch if (" " <= ch <= "~" and ch != "\\") else ch.encode("unicode_escape").decode("ascii")
        if used + len(piece) > limit:
            while out and used + 3 > limit:
                used -= len(out.pop())
            out.append("...")
            break
        out.append(piece)
        used += len(piece)
    return "".join(out)


class IntakeRefused(Exception):
    """A message, sender or recipient refused with a definite SMTP reply."""

    code: int = 554
    status: str = "5.6.0"

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    @property
    def reply(self) -> str:
        """The reply of docs/smtp.md with ``text`` as it is (any script): for humans."""
        return f"{self.code} {self.status} {self.text}"

    @property
    def smtp_reply(self) -> str:
        """The reply as an SMTP reply line: ASCII, one line, at most 510 characters (``smtp_safe``)."""
        return smtp_safe(self.reply)

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
