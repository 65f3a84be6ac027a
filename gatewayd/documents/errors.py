"""Why a document cannot be made: the refusals (with their SMTP replies) and the conversion errors.

``NoFaxDocument``, ``AttachmentRejected`` and ``DocumentTooLarge`` are
``IntakeRefused`` replies of the email-to-fax path (docs/smtp.md, Replies;
docs/documents.md); ``gatewayd/email_to_fax/errors.py`` re-exports them.
``ConversionError`` is for received faxes, where there is no SMTP client to
answer (docs/inbound.md). ``BadImage`` and ``TooManyPages`` are internal to
this package: the builder and ``tiff_to_pdf`` turn them into the above.
"""

from __future__ import annotations

from gatewayd.refusal import IntakeRefused

__all__ = [
    "AttachmentRejected",
    "BadImage",
    "ConversionError",
    "DocumentTooLarge",
    "NoFaxDocument",
    "TooManyPages",
]


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


class ConversionError(ValueError):
    """A received fax (or other trusted-path input) that cannot be converted.

    Not an ``IntakeRefused``: the fax-to-email path uses it, where there is
    no SMTP client to answer.
    """


class BadImage(Exception):
    """An image that cannot be faxed; ``why`` words the refusal."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class TooManyPages(Exception):
    """An image with more frames than the sanity bound on header walking."""

    def __init__(self, pages: int) -> None:
        super().__init__(pages)
        self.pages = pages
