"""The format of ``documents.header``, the line stamped on every fax page: its placeholders and the check made at load.

A leaf (no gatewayd imports): the configuration checks the format when it
is loaded, and gatewayd/documents/assemble.py fills it in at submission
(docs/documents.md, Page header line).
"""

from __future__ import annotations

import string

__all__ = ["HEADER_FIELDS", "MAX_HEADER_CHARS", "HeaderFormatError", "check_header_format"]

# The placeholders documents.header may use (docs/configuration.md).
HEADER_FIELDS = ("organisation", "phone", "date", "to", "page", "pages")
MAX_HEADER_CHARS = 200  # a header line longer than this is cut


class HeaderFormatError(ValueError):
    """``documents.header`` uses something other than the known placeholders."""


def check_header_format(fmt: str) -> None:
    """Raise ``HeaderFormatError`` naming the first unknown placeholder or bad brace."""
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError as exc:
        raise HeaderFormatError(f"not a valid format ({exc}); write {{{{ and }}}} for literal braces") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in HEADER_FIELDS:
            known = ", ".join("{" + f + "}" for f in HEADER_FIELDS)
            raise HeaderFormatError(f"unknown placeholder {{{name}}} (known: {known})")
        if spec or conversion:
            raise HeaderFormatError(f"{{{name}}}: format specs and conversions are not allowed")
