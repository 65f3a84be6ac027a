"""The converter service: makes the fax document of each message stored with office attachments, after its 250.

docs/documents.md, "Office documents". A pending conversion (stored by
``Intake``, gatewayd/store/conversions.py) has its office originals made
into PDFs by the warm LibreOffice pool (gatewayd/documents/office.py), then
merged in the sender's order with its other parts and cover page, exactly
as a message of PDFs is at DATA time. Then, in one commit, its jobs move
``converting -> queued`` with the document, or ``converting -> rejected``
with the file's name and the reason, which the sender's report states.
A conversion interrupted by a stop or crash is still pending at the next
start and is done again (the end is compare and set, so never twice).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from gatewayd.documents.builder import DocumentBuilder
from gatewayd.documents.cover import CoverPage
from gatewayd.documents.errors import AttachmentRejected
from gatewayd.documents.office import OfficeConverter, OfficeFailed
from gatewayd.logs import get_logger
from gatewayd.refusal import IntakeRefused
from gatewayd.runtime import Runtime
from gatewayd.store import Conversion

__all__ = ["ConverterService"]

log = get_logger(__name__)

POLL_INTERVAL = 30.0  # a wake-up from the intake normally comes first


@dataclass(frozen=True)
class _Part:
    filename: str
    kind: str
    data: bytes = field(repr=False)


class ConverterService:
    """Runs pending conversions, as many at once as the converter pool allows."""

    name = "converter"

    def __init__(self, rt: Runtime, office: OfficeConverter | None, *, unavailable: str = "") -> None:
        """``office`` None: LibreOffice is not available here (``unavailable`` says why); pending conversions are refused."""
        self.rt = rt
        self.office = office
        self.unavailable = unavailable or "LibreOffice is not available on this gateway"
        self.builder = DocumentBuilder(max_concurrent=2)
        self._running: dict[int, asyncio.Task[None]] = {}
        self._warmed = False

    async def start(self) -> None:
        pass

    async def run(self) -> None:
        rt = self.rt
        limit = 2 * (self.office.settings.concurrency if self.office is not None else 1)
        if self.office is not None and not self._warmed:
            # LibreOffice takes seconds to start: one is started now, not when the first document waits.
            self._warmed = True
            try:
                await self.office.warm()
            except Exception as exc:  # noqa: BLE001 - the first document will try again, and say why
                log.warning("office_converter_not_started", error=f"{type(exc).__name__}: {exc}")
        while True:
            free = limit - len(self._running)
            if free > 0:
                for conversion in await rt.store.run(rt.store.pending_conversions, limit):
                    if conversion.id in self._running or free <= 0:
                        continue
                    free -= 1
                    task = asyncio.create_task(self._convert(conversion))
                    self._running[conversion.id] = task
                    task.add_done_callback(lambda _t, cid=conversion.id: self._done(cid))
            if await rt.nap(self.name, POLL_INTERVAL):
                return

    def _done(self, conversion_id: int) -> None:
        self._running.pop(conversion_id, None)
        self.rt.wake(self.name)  # room for the next one

    async def stop(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=5)
        if self.office is not None:
            await self.office.aclose()

    async def _convert(self, conversion: Conversion) -> None:
        rt = self.rt
        store = rt.store
        try:
            try:
                document = await self._make(conversion)
            except IntakeRefused as exc:
                moved = await store.run(store.fail_conversion, conversion, str(exc))
                log.info("conversion_refused", conversion=conversion.id, job_ids=moved, reason=str(exc))
                rt.wake("reports")
                return
            moved = await store.run(store.finish_conversion, conversion, document.pdf, document.sha256, document.pages)
            log.info("conversion_done", conversion=conversion.id, job_ids=moved, pages=document.pages, doc_bytes=len(document.pdf))
            rt.wake("sender")
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the store or the disk: the conversion stays pending and is tried again
            log.exception("conversion_failed", conversion=conversion.id)

    async def _make(self, conversion: Conversion):  # type: ignore[no-untyped-def]
        store = self.rt.store
        parts: list[_Part] = []
        for part in conversion.parts:
            data = await store.run(store.read_part, part)
            if part.kind != "pdf":
                if self.office is None:
                    raise AttachmentRejected(part.filename, self.unavailable)
                try:
                    data = await self.office.convert(data, part.kind)
                except OfficeFailed as exc:
                    log.warning("office_conversion_failed", conversion=conversion.id, filename=part.filename, why=exc.why)
                    raise AttachmentRejected(part.filename, exc.why) from None
            parts.append(_Part(part.filename, "pdf", data))
        spec = conversion.spec
        cover = CoverPage(**spec["cover"]) if spec.get("cover") else None
        return await self.builder.build(parts, cover=cover, page_size=spec["page_size"], max_pages=spec["max_pages"])
