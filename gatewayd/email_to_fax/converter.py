"""The converter service: makes the fax document of each message stored with office attachments, after its 250.

docs/documents.md, "Office documents". A pending conversion (stored by
``Intake``, gatewayd/store/conversions.py) has its office originals made
into PDFs by the warm LibreOffice pool (gatewayd/documents/office.py), then
merged in the sender's order with its other parts into the shared
attachments, and each recipient's cover page is made, exactly as a message
of PDFs is at DATA time (``build_parts``). Everything is written durably,
then, in one commit, its jobs move ``converting -> queued`` with the
attachments and each its own cover, or ``converting -> rejected``
with the file's name and the reason, which the sender's report states.
A conversion interrupted by a stop or crash is still pending at the next
start and is done again (the end is compare and set, so never twice).
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from typing import Any

from gatewayd.documents.builder import DocumentBuilder, FaxParts
from gatewayd.documents.cover import CoverLook, CoverPage
from gatewayd.documents.errors import AttachmentRejected
from gatewayd.documents.office import OfficeConverter, OfficeFailed
from gatewayd.filekinds import FileKind
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
    kind: FileKind
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

    async def start(self) -> None:
        pass

    async def run(self) -> None:
        rt = self.rt
        limit = 2 * (self.office.settings.concurrency if self.office is not None else 1)
        # No soffice is started here: the pool starts one when the first
        # office document waits (a gateway that never gets one never runs
        # LibreOffice; docs/documents.md, Office documents).
        while True:
            free = limit - len(self._running)
            if free > 0:
                for conversion in await rt.store.run(rt.store.pending_conversions, limit):
                    if conversion.id in self._running or free <= 0:
                        continue
                    free -= 1
                    task = asyncio.create_task(self._convert(conversion))
                    self._running[conversion.id] = task
                    task.add_done_callback(functools.partial(self._done, conversion.id))
            if await rt.nap(self.name, POLL_INTERVAL):
                return

    def _done(self, conversion_id: int, _task: asyncio.Task[None] | None = None) -> None:
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
                made = await self._make(conversion)
            except IntakeRefused as exc:
                moved = await store.run(store.fail_conversion, conversion, str(exc))
                log.info("conversion_refused", conversion=conversion.id, job_ids=moved, reason=str(exc))
                rt.wake("reports")
                return
            body = made.body
            assert body is not None  # a conversion always has an office attachment
            own = list(made.covers) if made.covers else [None] * len(conversion.job_ids)
            moved = await store.run(store.finish_conversion, conversion, (body.pdf, body.sha256, body.pages),
                                    [(c.pdf, c.sha256, c.pages) if c is not None else None for c in own])
            log.info("conversion_done", conversion=conversion.id, job_ids=moved, pages=body.pages, doc_bytes=len(body.pdf),
                     covers=len(made.covers))
            rt.wake("sender")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("conversion_failed", conversion=conversion.id)

    async def _make(self, conversion: Conversion) -> FaxParts:
        """The attachments as one PDF (office parts converted, the others as stored, in order) and each job's cover."""
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
        covers = [_cover(fields) for fields in spec.get("covers") or ()]
        if covers and len(covers) != len(conversion.job_ids):
            raise ValueError(f"conversion {conversion.id}: {len(covers)} covers for {len(conversion.job_ids)} jobs")
        # The same builder, limits and refusals as the intake's (gatewayd/documents/builder.py).
        return await self.builder.build_parts(parts, covers=covers, page_size=spec["page_size"], max_pages=spec["max_pages"])


def _cover(fields: dict[str, Any]) -> CoverPage:
    """A recipient's ``CoverPage`` from its stored fields (``dataclasses.asdict``, the look nested)."""
    look = fields.get("look") or {}
    return CoverPage(**{**fields, "look": CoverLook(**look)})
