"""First-page previews (PNG) of PDF documents with pypdfium2: the web console's cache and the emails' inline picture.

The console's previews are made once and cached under ``state_dir/previews``
(docs/web.md): named by what they show (a document's SHA-256, or a received
fax's uuid) and their width, written to a temporary name and renamed, so a
reader never sees half a file. The purge rounds remove those whose document
is gone (``prune``, called by gatewayd/purger.py). The picture in status
reports and received-fax emails (``email_preview``, docs/reports.md and
docs/inbound.md) is drawn for each email and never cached. pdfium is not
thread-safe: one lock.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gatewayd.logs import get_logger

__all__ = ["EMAIL_MAX_HEIGHT", "EMAIL_WIDTH", "PreviewError", "Previews", "email_preview", "render_first_page"]

log = get_logger(__name__)

#: The inline picture in emails: wide enough to read a letterhead, small
#: enough (a greyscale PNG, tens of KiB) not to weigh on every report.
EMAIL_WIDTH = 600
EMAIL_MAX_HEIGHT = 1200  # a freakishly tall page is drawn smaller, never taller than this
TMP_GRACE = 3600.0  # a temporary file this young may still be written by a render in flight

_LOCK = threading.Lock()  # pdfium is one library per process: one render at a time
_SAFE_KEY = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class PreviewError(Exception):
    """The document has no page that can be drawn."""


def render_first_page(pdf: bytes, width: int, max_height: int | None = None) -> bytes:
    """The first page as a PNG ``width`` pixels wide (greyscale: faxes are black and white), at most ``max_height`` tall."""
    import pypdfium2 as pdfium

    with _LOCK:
        try:
            doc = pdfium.PdfDocument(pdf)
        except pdfium.PdfiumError as exc:
            raise PreviewError(f"not a readable PDF: {exc}") from None
        try:
            if len(doc) == 0:
                raise PreviewError("the document has no pages")
            page = doc[0]
            page_width = page.get_width() or 1
            scale = width / page_width
            if max_height is not None:
                scale = min(scale, max_height / (page.get_height() or 1))
            bitmap = page.render(scale=scale, grayscale=True)
            image = bitmap.to_pil()
            if image.width > width:  # pdfium rounds the scaled size up: exactly ``width`` wide
                image = image.resize((width, max(1, round(image.height * width / image.width))))
        finally:
            doc.close()
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def email_preview(pdf: bytes | None) -> bytes | None:
    """The inline picture for an email, or None: a document that cannot be drawn never stops the email.

    Blocking (pdfium): call it off the event loop (``asyncio.to_thread``).
    """
    if not pdf:
        return None
    try:
        return render_first_page(pdf, EMAIL_WIDTH, EMAIL_MAX_HEIGHT)
    except Exception as exc:  # anything pdfium or Pillow raise: the email goes without the picture
        log.warning("email_preview_failed", error=f"{type(exc).__name__}: {exc}"[:300])
        return None


class Previews:
    """The preview cache of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "previews"

    def path(self, key: str, width: int) -> Path:
        if not _SAFE_KEY.match(key):
            raise ValueError(f"bad preview key {key!r}")
        return self.dir / f"{key}-{width}.png"

    def get(self, key: str, width: int, pdf: bytes | None) -> bytes:
        """The cached preview, made now from ``pdf`` when missing (``pdf`` None: only the cache)."""
        path = self.path(key, width)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            if pdf is None:
                raise PreviewError("no preview") from None
        png = render_first_page(pdf, width)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}-{threading.get_ident()}")
        tmp.write_bytes(png)
        os.replace(tmp, path)
        return png

    async def aget(self, key: str, width: int, pdf_loader: Callable[[], bytes]) -> bytes:
        """``get`` off the event loop; ``pdf_loader()`` is called (in the thread) only when the cache misses."""
        def work() -> bytes:
            try:
                return self.get(key, width, None)
            except PreviewError:
                return self.get(key, width, pdf_loader())
        return await asyncio.to_thread(work)

    def prune(self, keep: set[str]) -> int:
        """Remove previews whose key is not in ``keep`` (documents that are gone); returns how many.

        An interrupted write (``.tmp-``) goes too once it is old enough not
        to be a render in flight.
        """
        removed = 0
        if not self.dir.is_dir():
            return 0
        now = time.time()
        for entry in self.dir.iterdir():
            try:
                if entry.name.startswith(".tmp-"):
                    if now - entry.stat().st_mtime < TMP_GRACE:
                        continue
                elif entry.name.rsplit("-", 1)[0] in keep:
                    continue
                entry.unlink()
            except FileNotFoundError:
                continue
            removed += 1
        return removed
