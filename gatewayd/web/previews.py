"""First-page previews (PNG) of PDF documents, made once with pypdfium2 and cached under ``state_dir/previews``.

A preview is named by what it shows (a document's SHA-256, or a received
fax's uuid) and its width, written to a temporary name and renamed, so a
reader never sees half a file. pdfium is not thread-safe: one lock. The
cache is kept in step with the documents by ``prune`` (docs/web.md).
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["PreviewError", "Previews", "render_first_page"]

_LOCK = threading.Lock()  # pdfium is one library per process: one render at a time
_SAFE_KEY = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class PreviewError(Exception):
    """The document has no page that can be drawn."""


def render_first_page(pdf: bytes, width: int) -> bytes:
    """The first page as a PNG ``width`` pixels wide (greyscale: faxes are black and white)."""
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
            bitmap = page.render(scale=width / page_width, grayscale=True)
            image = bitmap.to_pil()
        finally:
            doc.close()
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


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
        """Remove previews whose key is not in ``keep`` (documents that are gone); returns how many."""
        removed = 0
        if not self.dir.is_dir():
            return 0
        for entry in self.dir.iterdir():
            key = entry.name.rsplit("-", 1)[0]
            if key not in keep or entry.name.startswith(".tmp-"):
                entry.unlink(missing_ok=True)
                removed += 1
        return removed
