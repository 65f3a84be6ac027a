"""The picture of a fax's first page inline in an email: text and HTML alternatives, the PNG related to the HTML.

docs/reports.md and docs/inbound.md show the shape::

    multipart/mixed
      multipart/alternative
        text/plain                  the text, exactly as without the picture
        multipart/related
          text/html                 the same text (escaped), then <img src="cid:...">
          image/png                 Content-ID, inline
      application/pdf ...           the attachments, as configured

The HTML is made only from ``html.escape``d text and one ``cid:`` reference:
nothing remote, no script, no style from outside.
"""

from __future__ import annotations

import html
import uuid
from email.message import EmailMessage

__all__ = ["set_body"]


def set_body(msg: EmailMessage, text: str, preview: bytes | None, *, alt: str, domain: str = "gatewayd.invalid") -> None:
    """Set ``msg``'s body to ``text``, with ``preview`` (a PNG) as an inline picture when given.

    Call before adding attachments (they then wrap the body in multipart/mixed).
    """
    msg.set_content(text)
    if preview is None:
        return
    cid = f"{uuid.uuid4().hex}@{domain}"
    page = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head><body>\n'
        f'<pre style="font-family: monospace; white-space: pre-wrap">{html.escape(text)}</pre>\n'
        f'<p><img src="cid:{html.escape(cid)}" alt="{html.escape(alt)}" style="max-width: 100%; border: 1px solid #ccc"></p>\n'
        "</body></html>\n"
    )
    msg.add_alternative(page, subtype="html")
    html_part = msg.get_body(preferencelist=("html",))
    assert html_part is not None  # just added
    html_part.add_related(preview, maintype="image", subtype="png", cid=f"<{cid}>", disposition="inline", filename="first-page.png")
