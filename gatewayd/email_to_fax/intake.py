"""The one way a message becomes fax jobs: SMTP, IMAP and ``gatewayd send`` all call here.

``Intake.accept`` parses the message, checks the sender's hourly budget,
builds the fax document (the attachments, stored once, and one cover page
per recipient, stored apart), writes them durably and stores one job per
destination in a single commit. Only then does it return
the job ids, so a caller that answers "250 queued" after it has kept its
promise (docs/architecture.md, Durability rules).

Refusals are ``IntakeRefused`` subclasses carrying their SMTP reply (docs/smtp.md, Replies);
less free space than ``storage.min_free`` is one (452, before anything is written).
Anything else that goes wrong (the store, the disk, a bug) is logged and
becomes ``TemporaryFailure`` (451): the client keeps the message and tries
again, which is always safe because nothing was committed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import functools
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import ParamSpec, cast

from gatewayd.config import Config
from gatewayd.documents.builder import DocumentBuilder, DocumentPart, FaxDocument, FaxParts
from gatewayd.documents.cover import CoverLook, CoverPage, wants_cover
from gatewayd.documents.errors import DocumentTooLarge
from gatewayd.documents.officekinds import OFFICE_KINDS, OFFICE_TYPES
from gatewayd.email_to_fax.errors import AttachmentRejected, InsufficientStorage, IntakeRefused, NoFaxDocument, TemporaryFailure
from gatewayd.email_to_fax.parse import Attachment, ParsedMessage, office_as_unsupported, office_part, parse_message, safe_filename
from gatewayd.email_to_fax.policy import Authorisation, Destination, RateLimiter
from gatewayd.filekinds import sniff_kind
from gatewayd.logs import get_logger
from gatewayd.runtime import Runtime
from gatewayd.store import NewJob

log = get_logger(__name__)

# A message up to this size (as much as the DATA reader keeps in memory) is
# parsed, and a document made only of PDFs this size is built, on the event
# loop, not in a thread: at most ~8 ms of work, and under the GIL the
# hand-off to a thread cost more than it saved (docs/performance.md: 1.3x
# the intake rate at 1 MB, 1.25x at 100 KB).
INLINE_BYTES = 2 * 1024 * 1024
# With such PDFs, up to this many quick cover pages (~2 ms each:
# ``documents.cover.is_quick``) are drawn on the event loop too: 1.2x the
# intake rate with the default cover page, a third less p99 (docs/performance.md, Issue 19).
INLINE_COVERS = 2

# A note longer than this is cut: it goes into a report's body, not a database dump.
_MAX_NOTE = 2000

_P = ParamSpec("_P")


def _intake_edge(fn: Callable[_P, Awaitable[list[int]]]) -> Callable[_P, Awaitable[list[int]]]:
    """The edge of intake: ``IntakeRefused`` and cancellation pass; anything else is logged and becomes 451."""

    @functools.wraps(fn)
    async def edge(*args: _P.args, **kwargs: _P.kwargs) -> list[int]:
        try:
            return await fn(*args, **kwargs)
        except IntakeRefused:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the edge: everything else is "try again"
            log.exception("intake_failed", source=kwargs.get("source"), error=f"{type(exc).__name__}: {exc}")
            raise TemporaryFailure() from exc

    return edge


class Intake:
    """Turns an authorised message into durable jobs (docs/architecture.md, Email to fax, step by step)."""

    def __init__(self, rt: Runtime, builder: DocumentBuilder | None = None, *, inline_bytes: int = INLINE_BYTES,
                 office: bool = False) -> None:
        """``office``: LibreOffice is there (the daemon checked at start); ``documents.office`` may still turn it off."""
        self.rt = rt
        self.builder = builder or DocumentBuilder(max_concurrent=2, inline_bytes=inline_bytes, inline_covers=INLINE_COVERS)
        self.inline_bytes = inline_bytes
        self.office = office

    @property
    def office_on(self) -> bool:
        """Office documents are taken (converted after the 250) here and now: LibreOffice is there and ``documents.office`` is on."""
        return self.office and self.rt.config.documents.office

    @property
    def kinds_taken(self) -> str:
        """The kinds of document taken here and now, in words for people (the console, the IMAP reply)."""
        if self.office_on:
            return "PDF, TIFF, JPEG, PNG, GIF, BMP, WEBP, Word, Excel, PowerPoint, OpenDocument, RTF, HTML or text"
        return "PDF, TIFF, JPEG, PNG, GIF, BMP or WEBP"

    @_intake_edge
    async def accept(
        self,
        raw: bytes,
        *,
        authorisation: Authorisation,
        destinations: Sequence[Destination],
        source: str,
        report_to: str,
        intake_key: str | None = None,
        parsed: ParsedMessage | None = None,
        crlf_checked: bool = False,
        every_file: bool = False,
    ) -> list[int]:
        """Store the message as one job per destination; returns the job ids.

        ``crlf_checked``: the caller has already refused bare LF line endings
        (``parse_message`` does not check again). ``every_file``: the user
        chose each file (``gatewayd send``, the web console), so one that
        would not be faxed refuses them all, in the words of the email
        path, rather than faxing the rest.

        Raises an ``IntakeRefused`` subclass; never anything else (except
        cancellation): unexpected failures are logged and become 451.
        """
        rt = self.rt
        store = rt.store
        config = rt.config
        if not destinations:
            raise ValueError("accept() needs at least one destination")
        low = rt.low_storage()
        if low is not None:
            # Refused before anything is written: better a 452 now than a
            # 451 half-way through a document (gatewayd/diskspace.py).
            log.warning("intake_low_storage", source=source, problem=str(low))
            raise InsufficientStorage(str(low))
        if intake_key:
            # IMAP may see the same message again after a crash: same answer, no new work.
            seen = await store.run(store.intake_seen, intake_key)
            if seen is not None:
                log.info("intake_duplicate", source=source, job_ids=seen)
                return list(seen)
        if parsed is None:
            if len(raw) <= self.inline_bytes:
                # A few milliseconds at most: a trip to a thread would cost
                # more than it saves (and the GIL gives threads no second core).
                parsed = parse_message(raw, crlf_checked=crlf_checked)
            else:
                # Parsing a 25 MB message is CPU work: off the event loop.
                parsed = await asyncio.to_thread(parse_message, raw, crlf_checked=crlf_checked)
        if authorisation.hourly_limits:
            # Only a limited rule or account has anything to count; the store's
            # thread is shared with every commit, so no trip there for nothing.
            limiter = RateLimiter(store, rt.clock)
            await store.run(limiter.check_all, authorisation, len(destinations))

        docs = config.documents
        if any(a.kind in OFFICE_KINDS for a in parsed.attachments) and not self.office_on:
            before = len(parsed.unsupported)
            parsed = office_as_unsupported(parsed)
            if every_file and parsed.attachments:
                # With none left, the builder refuses as for email: "no fax document: ...".
                first = parsed.unsupported[before]
                raise AttachmentRejected(first.filename, first.reason)
        covers: list[CoverPage] = []
        if wants_cover(docs.cover_page, parsed.body_text):
            # One cover per recipient, naming that recipient only (docs/documents.md, Cover page).
            look = cover_look(config)
            sender = _sender_line(parsed, report_to)
            date = parsed.date or email.utils.formatdate(rt.clock(), localtime=True)
            covers = [
                CoverPage(sender=sender, recipient=d.number, date=date, subject=parsed.subject, body=parsed.body_text,
                          recipient_name=d.name or parsed.display_names.get(d.address, ""), look=look)
                for d in destinations
            ]
        max_pages = min(authorisation.max_pages, docs.max_pages)
        if any(a.kind in OFFICE_KINDS for a in parsed.attachments):
            # Converted after the 250; the covers are made then, once the
            # attachments' page count is known (docs/documents.md, Office documents).
            jobs = self._jobs(parsed, authorisation, destinations, source, report_to, [None] * len(destinations), None)
            return await self._accept_for_conversion(parsed, covers, docs.page_size, max_pages, jobs, intake_key, source)
        parts: FaxParts = await self.builder.build_parts(
            _faxable(parsed.attachments),
            covers=covers,
            page_size=docs.page_size,
            max_pages=max_pages,
            unsupported=parsed.unsupported,
        )
        body = parts.body
        own = list(parts.covers) if parts.covers else [None] * len(destinations)
        jobs = self._jobs(parsed, authorisation, destinations, source, report_to, own, body)
        shared = (body.pdf, body.sha256, body.pages) if body is not None else None
        ids = await store.run(store.save_parts_and_enqueue, shared,
                              [(c.pdf, c.sha256) if c is not None else None for c in own], jobs, intake_key=intake_key)
        rt.wake("sender")
        log.info(
            "intake_accepted", source=source, job_ids=ids, numbers=[d.number for d in destinations],
            pages=(body.pages if body is not None else 0) + (parts.covers[0].pages if parts.covers else 0),
            doc_bytes=len(body.pdf) if body is not None else 0, covers=len(parts.covers), extension=authorisation.extension,
            user=authorisation.user, rule=jobs[0].rule_key or None, message_id=parsed.message_id,
        )
        return list(ids)

    def _jobs(self, parsed: ParsedMessage, authorisation: Authorisation, destinations: Sequence[Destination], source: str,
              report_to: str, own: Sequence[FaxDocument | None], body: FaxDocument | None) -> list[NewJob]:
        """One ``NewJob`` per destination; ``own``: each one's cover (its whole fax when ``body`` is None)."""
        note = _note(parsed)
        return [
            NewJob(
                number=d.number,
                dst_num=d.dst_num,
                extension=authorisation.extension,
                report_to=report_to,
                source=source,
                message_id=parsed.message_id or "",
                subject=parsed.subject,
                rule_key=authorisation.rule.key if authorisation.rule is not None else "",
                usage_keys=tuple(limited.key for limited in authorisation.hourly_limits),
                note=note,
                # The attachments are stored once; each cover apart (docs/architecture.md, Storage layout).
                cover=mine.sha256 if mine is not None and body is not None else "",
                document=mine.sha256 if mine is not None and body is None else "",
                cover_pages=mine.pages if mine is not None else 0,
                cover_bytes=len(mine.pdf) if mine is not None else 0,
                account=authorisation.user or "",
                node=self.rt.config.storage.node_name,  # this node took it in (gatewayd jobs shows it)
            )
            for d, mine in zip(destinations, own, strict=True)
        ]

    async def _accept_for_conversion(self, parsed: ParsedMessage, covers: Sequence[CoverPage], page_size: str, max_pages: int,
                                     jobs: list[NewJob], intake_key: str | None, source: str) -> list[int]:
        """Store the parts for the converter (docs/documents.md, Office documents); jobs start ``converting``.

        PDFs and images are checked and made into PDFs now, so they keep
        their answer at DATA time; office originals are stored as they came.
        """
        parts: list[tuple[str, str, bytes]] = []
        pages = 0
        for att in parsed.attachments:
            if att.kind in OFFICE_KINDS:
                parts.append((att.filename, att.kind, att.data))
                continue
            # One part at a time; its size is judged on the whole fax, after conversion.
            made = await self.builder.build(_faxable([att]), cover=None, page_size=page_size, max_pages=max_pages, max_bytes=_NO_SIZE_LIMIT)
            pages += made.pages
            if pages + (1 if covers else 0) > max_pages:
                raise DocumentTooLarge(f"more than {max_pages} pages")
            parts.append((att.filename, "pdf", made.pdf))
        # Each recipient's cover, in the jobs' order, made by the converter
        # once the attachments' pages are known (gatewayd/email_to_fax/converter.py).
        spec = {"covers": [dataclasses.asdict(c) for c in covers], "page_size": page_size, "max_pages": max_pages}
        store = self.rt.store
        ids = await store.run(store.save_conversion, parts, spec, jobs, intake_key=intake_key)
        self.rt.wake("converter")
        log.info("intake_accepted", source=source, job_ids=ids, numbers=[j.number for j in jobs], converting=True,
                 documents=[name for name, kind, _ in parts if kind != "pdf"], message_id=parsed.message_id)
        return list(ids)


def _faxable(attachments: Sequence[Attachment]) -> Sequence[DocumentPart]:
    """``attachments`` as the builder takes them: no office kind is left (those go to the converter)."""
    if any(a.kind in OFFICE_KINDS for a in attachments):
        raise ValueError("office documents are converted before they are built")
    return cast("Sequence[DocumentPart]", attachments)


def cover_look(config: Config) -> CoverLook:
    """The office's ``[cover]`` settings, as the cover page draws them."""
    c = config.cover
    return CoverLook(organisation=c.organisation, phone=c.phone, notice=c.notice, logo=c.logo)


# Parts are checked one by one at DATA time; the size limit applies to the whole fax, later.
_NO_SIZE_LIMIT = 1 << 62


def _sender_line(parsed: ParsedMessage, report_to: str) -> str:
    if parsed.from_display and parsed.from_addr:
        return f"{parsed.from_display} <{parsed.from_addr}>"
    return parsed.from_addr or report_to or ""


def _note(parsed: ParsedMessage) -> str:
    """What was not faxed, in words for the report (docs/documents.md, Reading the message: never silently dropped)."""
    parts = []
    if parsed.unsupported:
        parts.append("not faxed: " + "; ".join(f"{u.filename} ({u.reason})" for u in parsed.unsupported))
    if parsed.skipped_inline:
        parts.append("inline images of the message body not faxed: " + ", ".join(parsed.skipped_inline))
    note = ". ".join(parts)
    return note if len(note) <= _MAX_NOTE else note[: _MAX_NOTE - 3] + "..."


# ------------------------------------------------------------ from files (CLI)

_KIND_TYPES = MappingProxyType({
    "pdf": "application/pdf", "tiff": "image/tiff", "jpeg": "image/jpeg", "png": "image/png",
    "gif": "image/gif", "bmp": "image/bmp", "webp": "image/webp",
})


def attachment_from_bytes(filename: str, data: bytes) -> Attachment:
    """An attachment recognised by its bytes, as the email path does (HTML and text also by the name's extension).

    An office document is declared as its kind's media type; ``Intake``
    takes it for the converter, or refuses it where that is off.
    """
    name = safe_filename(filename, "document")
    if not data:
        raise AttachmentRejected(name, "empty file")
    kind = sniff_kind(data)
    if kind is not None:
        return Attachment(filename=name, kind=kind, data=data, declared_type=_KIND_TYPES[kind])
    found = office_part(data, "", name, None)
    if found is None:
        raise AttachmentRejected(name, "not a PDF, TIFF, JPEG, PNG, GIF, BMP, WEBP, office or text document")
    office, data = found
    return Attachment(filename=name, kind=office, data=data, declared_type=OFFICE_TYPES[office])


def message_from_files(paths: Sequence[str | Path], *, sender: str = "", subject: str = "", body: str = "") -> ParsedMessage:
    """The ``ParsedMessage`` ``gatewayd send`` hands to ``Intake.accept``.

    Raises OSError for a file that cannot be read, ``AttachmentRejected`` for
    one that is empty or none of the kinds the email path takes, ``NoFaxDocument`` for no files.
    """
    if not paths:
        raise NoFaxDocument("no files given")
    attachments = tuple(attachment_from_bytes(Path(p).name, Path(p).read_bytes()) for p in paths)
    return ParsedMessage(
        subject=subject,
        message_id=None,
        from_addr=sender or None,
        from_display=None,
        date=None,
        body_text=body,
        attachments=attachments,
        unsupported=(),
        skipped_inline=(),
        header_addresses=MappingProxyType({}),
        authentication_results=(),
    )


__all__ = ["Intake", "attachment_from_bytes", "message_from_files"]
