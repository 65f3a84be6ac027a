"""Build the fax document: a cover page (if any) and the attachments, in order, as one PDF; ``DocumentBuilder`` runs that in worker threads.

All of this is CPU-bound and synchronous; ``DocumentBuilder`` runs it in
worker threads, a bounded number at a time, so memory stays bounded. Every
refusal names the attachment and says why, as the
``554 5.6.0 <file name>: <why>`` reply (docs/smtp.md, Replies;
docs/documents.md). Inputs are anything shaped like ``DocumentPart`` and
``UnfaxablePart`` (the email parser's attachments are).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Protocol, TypeVar

import pikepdf

from gatewayd.documents.cover import CoverPage, is_quick, render_cover, render_cover_pages
from gatewayd.documents.errors import AttachmentRejected, BadImage, ConversionError, DocumentTooLarge, NoFaxDocument, TooManyPages
from gatewayd.documents.faxres import render_at_fax_resolution
from gatewayd.documents.geometry import fit_layout, page_dimensions
from gatewayd.documents.images import MAX_FRAMES, ImagePlan, image_pdf, inspect_image
from gatewayd.documents.pdf import damaged, keep_as_it_is, open_pdf, save_pdf
from gatewayd.filekinds import FileKind

__all__ = [
    "MAX_FAX_BYTES",
    "DocumentBuilder",
    "DocumentPart",
    "FaxDocument",
    "FaxParts",
    "UnfaxablePart",
    "build_document",
    "build_parts",
]

_T = TypeVar("_T")

# The provider's "10 megabytes", read the safe way (docs/provider.md, Errors;
# docs/documents.md, Making the fax document).
MAX_FAX_BYTES = 10_000_000


class DocumentPart(Protocol):
    """One input file: a display name, its kind (by magic bytes), its bytes."""

    @property
    def filename(self) -> str: ...

    @property
    def kind(self) -> FileKind: ...

    @property
    def data(self) -> bytes: ...


class UnfaxablePart(Protocol):
    """A part that could not be used: named in the refusal when nothing is faxable."""

    @property
    def filename(self) -> str: ...

    @property
    def reason(self) -> str: ...


@dataclass(frozen=True)
class FaxDocument:
    """The fax PDF as built: its bytes, its page count and its SHA-256 (hex)."""

    pdf: bytes = field(repr=False)
    pages: int
    sha256: str


def build_document(
    attachments: Sequence[DocumentPart],
    *,
    cover: CoverPage | None,
    page_size: str = "A4",
    max_pages: int = 100,
    max_bytes: int = MAX_FAX_BYTES,
    unsupported: Sequence[UnfaxablePart] = (),
) -> FaxDocument:
    """One fax PDF: the cover page (if any), then the attachments in order.

    ``unsupported`` (from the parser) only words the refusal when nothing
    is faxable. When there are attachments and none of them is supported,
    the message is refused even if a cover page could be made: faxing the
    cover alone would drop what the sender meant to send.
    """
    page = page_dimensions(page_size)
    if not attachments and (cover is None or unsupported):
        raise NoFaxDocument(_nothing_to_fax(unsupported))
    if cover is None and len(attachments) == 1 and attachments[0].kind == "pdf":
        kept = keep_as_it_is(attachments[0].data, attachments[0].filename, max_pages=max_pages, max_bytes=max_bytes)
        if kept is not None:
            return FaxDocument(pdf=attachments[0].data, pages=kept, sha256=hashlib.sha256(attachments[0].data).hexdigest())

    # First pass: open, check and count everything, converting nothing, so
    # that a bad attachment or a page limit fails before work is wasted.
    pdfs: dict[int, pikepdf.Pdf] = {}
    plans: dict[int, ImagePlan] = {}
    keep_open: list[pikepdf.Pdf] = []
    try:
        counted = 0
        for number, att in enumerate(attachments):
            if att.kind == "pdf":
                opened = open_pdf(att.data, att.filename)
                keep_open.append(opened)
                pdfs[number] = opened
                counted += len(opened.pages)
            else:
                try:
                    plan = inspect_image(att.data, att.kind, frame_limit=MAX_FRAMES)
                except BadImage as exc:
                    raise AttachmentRejected(att.filename, exc.why) from None
                except TooManyPages:
                    raise DocumentTooLarge(f"more than {MAX_FRAMES} pages, limit {max_pages}") from None
                plans[number] = plan
                counted += plan.frames

        out = pikepdf.new()
        keep_open.append(out)
        cover_pages = 0
        if cover is not None:
            if counted + 1 > max_pages:
                raise DocumentTooLarge(f"{counted + 1} pages, limit {max_pages}")
            cover_pdf = pikepdf.open(BytesIO(render_cover(cover, page_size=page_size, attachment_pages=counted)))
            keep_open.append(cover_pdf)
            cover_pages = len(cover_pdf.pages)
            out.pages.extend(cover_pdf.pages)
        total = cover_pages + counted
        if total > max_pages:
            raise DocumentTooLarge(f"{total} pages, limit {max_pages}")

        # Second pass: convert images and merge, in the sender's order.
        layout = fit_layout(page, keep_fax_size=False)
        for number, att in enumerate(attachments):
            pdf = pdfs.get(number)
            if pdf is None:
                try:
                    pdf = image_pdf(att.data, plans[number], layout)
                except BadImage as exc:
                    raise AttachmentRejected(att.filename, exc.why) from None
                keep_open.append(pdf)
            try:
                out.pages.extend(pdf.pages)
            except (pikepdf.PdfError, RuntimeError, ValueError, TypeError):
                raise AttachmentRejected(att.filename, "corrupt PDF") from None

        try:
            data = save_pdf(out)
        except (pikepdf.PdfError, RuntimeError, ValueError):
            # Writing reads every object: find whose object it was.
            for number, pdf in pdfs.items():
                try:
                    save_pdf(pdf)
                except (pikepdf.PdfError, RuntimeError, ValueError):
                    raise AttachmentRejected(attachments[number].filename, "corrupt PDF") from None
            raise
        for number, pdf in pdfs.items():
            if damaged(pdf):  # damage found only while writing still counts
                raise AttachmentRejected(attachments[number].filename, "corrupt PDF")
    finally:
        for pdf in keep_open:
            pdf.close()

    if len(data) > max_bytes:
        # Over the provider's limit: at fax resolution it may well fit (docs/documents.md, Too large).
        try:
            smaller, _ = render_at_fax_resolution(data, page_size)
        except ConversionError as exc:
            raise DocumentTooLarge(f"{len(data)} bytes, limit {max_bytes} ({exc})") from None
        if len(smaller) > max_bytes:
            raise DocumentTooLarge(f"{len(data)} bytes, {len(smaller)} at fax resolution, limit {max_bytes}")
        data = smaller
    return FaxDocument(pdf=data, pages=total, sha256=hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class FaxParts:
    """What one message becomes: the attachments once, and one cover per recipient.

    ``body`` is None when there are no attachments (each fax is its cover
    alone); ``covers`` has one entry per ``CoverPage`` asked for, in order.
    Each recipient's fax is its cover, then ``body`` (joined when it is
    submitted: gatewayd/documents/assemble.py).
    """

    body: FaxDocument | None
    covers: tuple[FaxDocument, ...]


def build_parts(
    attachments: Sequence[DocumentPart],
    *,
    covers: Sequence[CoverPage],
    page_size: str = "A4",
    max_pages: int = 100,
    max_bytes: int = MAX_FAX_BYTES,
    unsupported: Sequence[UnfaxablePart] = (),
) -> FaxParts:
    """The attachments as one PDF, and each cover as its own PDF.

    The same refusals as ``build_document``: limits count a recipient's
    cover with the attachments, so each recipient's fax stays within them.
    """
    if not attachments and (not covers or unsupported):
        raise NoFaxDocument(_nothing_to_fax(unsupported))
    body = None
    if attachments:
        body = build_document(attachments, cover=None, page_size=page_size, max_pages=max_pages,
                              max_bytes=max_bytes, unsupported=unsupported)
    body_pages = body.pages if body is not None else 0
    body_bytes = len(body.pdf) if body is not None else 0
    if covers and body_pages + 1 > max_pages:
        raise DocumentTooLarge(f"{body_pages + 1} pages, limit {max_pages}")
    made: list[FaxDocument] = []
    for cover in covers:
        data, pages = render_cover_pages(cover, page_size=page_size, attachment_pages=body_pages)
        if body_pages + pages > max_pages:
            raise DocumentTooLarge(f"{body_pages + pages} pages, limit {max_pages}")
        if body_bytes + len(data) > max_bytes:
            raise DocumentTooLarge(f"{body_bytes + len(data)} bytes, limit {max_bytes}")
        made.append(FaxDocument(pdf=data, pages=pages, sha256=hashlib.sha256(data).hexdigest()))
    return FaxParts(body=body, covers=tuple(made))


def _nothing_to_fax(unsupported: Sequence[UnfaxablePart]) -> str:
    why = "no attachment of a supported type"
    if unsupported:
        named = "; ".join(f"{u.filename}: {u.reason}" for u in unsupported[:5])
        more = f"; and {len(unsupported) - 5} more" if len(unsupported) > 5 else ""
        why = f"{why} ({named}{more})"
    return why


class DocumentBuilder:
    """Runs ``build_document`` in worker threads, at most ``max_concurrent`` at once.

    Attachments that are all PDFs, ``inline_bytes`` in all at most, with no
    cover page or at most ``inline_covers`` quick ones (``cover.is_quick``),
    are built on the calling thread: a hand-off costs more.

    Conversions hold decoded images in memory; the bound keeps a burst of
    messages from multiplying that. A slot is held until its thread really
    ends, even when the caller is cancelled (a thread cannot be stopped).
    """

    def __init__(self, max_concurrent: int = 2, *, inline_bytes: int = 0, inline_covers: int = 0) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._slots = asyncio.Semaphore(max_concurrent)
        self.inline_bytes = inline_bytes
        self.inline_covers = inline_covers

    async def build(
        self,
        attachments: Sequence[DocumentPart],
        *,
        cover: CoverPage | None,
        page_size: str = "A4",
        max_pages: int = 100,
        max_bytes: int = MAX_FAX_BYTES,
        unsupported: Sequence[UnfaxablePart] = (),
    ) -> FaxDocument:
        if (cover is None and attachments and all(a.kind == "pdf" for a in attachments)
                and sum(len(a.data) for a in attachments) <= self.inline_bytes):
            # PDFs only (~0.3 ms at 100 KB, ~2 ms at 1 MB): no cover page
            # (fpdf2 takes milliseconds) and no image (decoding may take much longer).
            return build_document(attachments, cover=None, page_size=page_size, max_pages=max_pages,
                                  max_bytes=max_bytes, unsupported=unsupported)
        return await self._bounded(build_document, attachments, cover=cover, page_size=page_size, max_pages=max_pages,
                                   max_bytes=max_bytes, unsupported=unsupported)

    async def build_parts(
        self,
        attachments: Sequence[DocumentPart],
        *,
        covers: Sequence[CoverPage],
        page_size: str = "A4",
        max_pages: int = 100,
        max_bytes: int = MAX_FAX_BYTES,
        unsupported: Sequence[UnfaxablePart] = (),
    ) -> FaxParts:
        """``build_parts`` under the same bound and the same inline rule as ``build``."""
        if not covers:
            body = await self.build(attachments, cover=None, page_size=page_size, max_pages=max_pages,
                                    max_bytes=max_bytes, unsupported=unsupported)
            return FaxParts(body=body, covers=())
        if (self.inline_covers and len(covers) <= self.inline_covers and all(a.kind == "pdf" for a in attachments)
                and sum(len(a.data) for a in attachments) <= self.inline_bytes and all(is_quick(c) for c in covers)):
            # A few quick covers (~2 ms each) and PDFs: the hand-off to a
            # thread and its GIL switches cost more than they save, and
            # the GIL gives a thread no second core (docs/performance.md, Issue 19).
            return build_parts(attachments, covers=covers, page_size=page_size, max_pages=max_pages,
                               max_bytes=max_bytes, unsupported=unsupported)
        return await self._bounded(build_parts, attachments, covers=covers, page_size=page_size, max_pages=max_pages,
                                   max_bytes=max_bytes, unsupported=unsupported)

    async def _bounded(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``fn`` in a worker thread once a slot is free; the slot is held until the thread ends, even if the caller is cancelled."""
        await self._slots.acquire()
        try:
            task = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
        except BaseException:
            self._slots.release()
            raise
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self._slots.release()
        if not task.cancelled():
            task.exception()  # retrieved: a cancelled caller must not leave a "never retrieved" warning
