"""Status reports: one email per finished job (docs/reports.md).

Service ``Reporter`` ("reports") picks up jobs whose ``finished_at`` is set
and ``reported_at`` is not, and for each queues its report email(s) in the
outbox and sets ``reported_at`` in ONE commit (``Store.queue_report``): a job
gets exactly one report per outcome, across restarts; the outbox then
delivers it (``OutboxWorker``). See docs/reports.md for the policy:

* to the job's ``report_to`` (never to an empty or null sender, nor to
  ``MAILER-DAEMON``/``postmaster``), as ``[mail].reports`` allows: ``all``;
  ``failures`` = every outcome but ``sent`` (canceled counts: the fax did not
  go); ``none``;
* a copy of every failed, error, unknown and rejected outcome to
  ``[mail].admin`` (whatever ``[mail].reports`` says: the administrators asked
  for them by setting ``admin``);
* the faxed PDF attached per ``[mail].attach_document``;
* with ``[mail].preview``, a picture of the fax's first page inline (the
  attached PDF, else the job's stored document; none when neither can be
  read or drawn), drawn off the event loop (gatewayd/documents/preview.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage

from gatewayd.config import MailConfig, is_email_address
from gatewayd.documents.assemble import assemble_fax
from gatewayd.documents.preview import email_preview
from gatewayd.email_to_fax.tracker import NO_LONGER_KNOWN, attempts_text
from gatewayd.logs import bind_context, get_logger
from gatewayd.mail.compose import bare_address, new_message, safe_header_text, to_bytes
from gatewayd.mail.inline_preview import set_body
from gatewayd.runtime import Runtime, Worker
from gatewayd.store import CANCELED, ERROR, FAILED, REJECTED, SENT, UNKNOWN, Job, JobEvent, StoreError

log = get_logger(__name__)

#: The word after "Fax to <number>" in the subject, by final state.
SUBJECT_WORDS: dict[str, str] = {
    SENT: "sent",
    FAILED: "failed",
    CANCELED: "canceled",
    ERROR: "error",
    REJECTED: "rejected",
    UNKNOWN: "status unknown",
}
#: Outcomes the administrators get a copy of.
ADMIN_COPY_STATES = frozenset({FAILED, ERROR, UNKNOWN, REJECTED})
#: Local parts that are robots: a report to them could only bounce or loop.
_NO_REPORT_LOCALS = frozenset({"mailer-daemon", "postmaster"})

ReportMail = tuple[str, str, Sequence[str], bytes, str]  # kind, mail_from, recipients, message, ref


def is_failure(state: str) -> bool:
    """Everything but "sent" counts as a failure for reports/attach_document."""
    return state != SENT


def report_recipient(report_to: str) -> str | None:
    """The address a report may go to, or None (empty, <>, robots, malformed)."""
    addr = (report_to or "").strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1].strip()
    if not addr or not is_email_address(addr):
        return None
    if addr.rpartition("@")[0].lower() in _NO_REPORT_LOCALS:
        return None
    return addr


def report_subject(job: Job) -> str:
    word = SUBJECT_WORDS.get(job.state, job.state)
    original = safe_header_text(job.subject, 180)
    head = f"Fax to {job.number} {word}"
    return f"{head}: {original}" if original else head


def status_meaning(job: Job) -> str:
    """The final status in words, stating only what the provider (or we) know."""
    n = job.attempts
    if job.state == SENT:
        return "the provider reports the fax as sent" + (" on the first attempt" if n <= 1 else f"; it took {n} attempts")
    if job.state == FAILED:
        return f"the provider could not deliver the fax after {attempts_text(n)}"
    if job.state == ERROR:
        if job.provider_id is None:  # ended here, before the provider had it
            return "the fax could not be submitted" + (f": {job.reason}" if job.reason else "")
        return "the provider reported an error while sending the fax (it gives no further detail)"
    if job.state == CANCELED:
        return "the fax was canceled and will not be sent" + (f" ({job.reason})" if job.reason else "")
    if job.state == REJECTED:
        return "the fax was not accepted for sending" + (f": {job.reason}" if job.reason else "")
    if job.state == UNKNOWN:
        return job.reason or NO_LONGER_KNOWN
    return job.reason or job.state


def headline(job: Job) -> str:
    if job.state == SENT:
        return f"Your fax to {job.number} was sent."
    if job.state == UNKNOWN:
        return f"The outcome of your fax to {job.number} is unknown."
    return f"Your fax to {job.number} was not sent."


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def _one_line(text: str, limit: int = 300) -> str:
    # Text from the original email or the provider, kept to one line so it
    # cannot fake lines (or a signature) in the report.
    return safe_header_text(text, limit)


def report_body(job: Job, events: Sequence[JobEvent], *, attachment: str | None = None, attachment_missing: bool = False, copy_note: str | None = None) -> str:
    lines: list[str] = []
    if copy_note:
        lines += [copy_note, ""]
    lines += [headline(job), ""]
    number = job.number + (f" (dialled as {job.dst_num})" if job.dst_num and job.dst_num != job.number else "")
    rows = [
        ("Job", str(job.id)),
        ("Number", number),
        ("Extension", str(job.extension)),
        ("Subject", _one_line(job.subject) or "-"),
        ("Pages", str(job.pages)),
        ("Submitted", _when(job.submitted_at)),
        ("Finished", _when(job.finished_at)),
        ("Attempts", str(job.attempts)),
        ("Provider fax id", "-" if job.provider_id is None else str(job.provider_id)),
        ("Status", f"{job.state} - {_one_line(status_meaning(job), 500)}"),
    ]
    if job.note:
        rows.append(("Note", _one_line(job.note, 1000)))  # e.g. "not faxed: logo.svg (...)"
    width = max(len(k) for k, _ in rows) + 2
    lines += [f"{k + ':':{width}}{v}" for k, v in rows]
    lines += ["", "History:"]
    for e in events:
        arrow = f"{e.from_state or '(new)'} -> {e.to_state}"
        lines.append(f"  {_when(e.at)}  {arrow:26}  {_one_line(e.reason)}")
    if attachment:
        lines += ["", f"A copy of the faxed document is attached ({attachment})."]
    elif attachment_missing:
        lines += ["", "The faxed document is no longer stored, so no copy is attached."]
    lines += ["", "-- ", "This is an automatic message from the fax gateway; replies are not read."]
    return "\n".join(lines) + "\n"


def build_report(
    job: Job,
    events: Sequence[JobEvent],
    mail_cfg: MailConfig,
    *,
    to: Sequence[str],
    document: bytes | None,
    document_missing: bool = False,
    copy_note: str | None = None,
    preview: bytes | None = None,
) -> EmailMessage:
    """One report email; ``document`` is the PDF to attach (or None), ``preview`` the first page's PNG (or None)."""
    filename = f"fax-{job.id}.pdf" if document is not None else None
    msg = new_message(
        mail_from=mail_cfg.from_,
        to=list(to),
        subject=report_subject(job),
        in_reply_to=job.message_id or None,
        extra_headers=[("X-Fax-Job-ID", str(job.id)), ("X-Fax-Status", job.state)],
    )
    body = report_body(job, events, attachment=filename, attachment_missing=document_missing, copy_note=copy_note)
    set_body(msg, body, preview, alt=f"First page of the fax to {job.number}")
    if document is not None:
        msg.add_attachment(document, maintype="application", subtype="pdf", filename=filename)
    return msg


@dataclass(frozen=True)
class ReportInputs:
    """What one finished job's reports are made from, read from the store (``gather_report``)."""

    job: Job
    events: Sequence[JobEvent]
    sender: str | None
    to_sender: bool
    admins: list[str]
    document: bytes | None  # to attach
    missing: bool  # attach_document wanted it, but it is no longer stored
    preview_pdf: bytes | None  # to draw the first page of ([mail].preview)


def gather_report(job: Job, events: Sequence[JobEvent], mail_cfg: MailConfig, read_document: Callable[[str], bytes]) -> ReportInputs | None:
    """Who gets a report and the documents it needs; None when nobody does."""
    failure = is_failure(job.state)
    sender = report_recipient(job.report_to)
    to_sender = sender is not None and (mail_cfg.reports == "all" or (mail_cfg.reports == "failures" and failure))
    admins = list(mail_cfg.admin) if job.state in ADMIN_COPY_STATES else []
    if not to_sender and not admins:
        return None
    document: bytes | None = None
    missing = False
    # No document (""): an office document that could not be converted was never made into one.
    if job.document and (mail_cfg.attach_document == "always" or (mail_cfg.attach_document == "failures" and failure)):
        try:
            document = read_document(job.document)
        except StoreError:
            missing = True
    preview_pdf = document
    if mail_cfg.preview and document is None and not missing:
        try:  # not attached: the job's stored document, if it still is
            preview_pdf = read_document(job.document)
        except StoreError:
            preview_pdf = None
    return ReportInputs(job, events, sender, to_sender, admins, document, missing, preview_pdf if mail_cfg.preview else None)


def compose_reports(inputs: ReportInputs | None, mail_cfg: MailConfig, preview: bytes | None = None) -> list[ReportMail]:
    """The outbox rows for ``inputs``; ``preview`` is the first page's PNG (or None)."""
    if inputs is None:
        return []
    job, events, sender, to_sender, admins = inputs.job, inputs.events, inputs.sender, inputs.to_sender, inputs.admins
    document, missing = inputs.document, inputs.missing
    envelope_from = bare_address(mail_cfg.from_)
    mails: list[ReportMail] = []
    if to_sender and sender is not None:
        msg = build_report(job, events, mail_cfg, to=[sender], document=document, document_missing=missing, preview=preview)
        mails.append(("report", envelope_from, [sender], to_bytes(msg), f"job:{job.id}"))
    if admins:
        if to_sender:
            note = f"Copy for the fax gateway's administrators; the report went to {sender}."
        elif sender is None:
            note = f"Copy for the fax gateway's administrators; the sender ({_one_line(job.report_to, 200) or 'none'}) gets no report."
        else:
            note = f"Copy for the fax gateway's administrators; [mail].reports = \"{mail_cfg.reports}\" sends {sender} no report."
        msg = build_report(job, events, mail_cfg, to=admins, document=document, document_missing=missing, copy_note=note, preview=preview)
        mails.append(("report", envelope_from, admins, to_bytes(msg), f"job:{job.id}:admin"))
    return mails


class Reporter(Worker):
    """Service "reports": queues the report of every finished job, once."""

    name = "reports"

    def __init__(self, rt: Runtime, *, poll_interval: float = 10.0, batch: int = 50) -> None:
        self.rt = rt
        # The tracker wakes us; the poll catches what other processes (the
        # CLI) finished.
        self.poll_interval = poll_interval
        self.batch = batch

    async def run(self) -> None:
        await self.rt.repeat("reports", self.report_due, batch=self.batch, interval=self.poll_interval)

    async def report_due(self) -> int:
        """Queue the reports of finished, unreported jobs; returns how many jobs were settled."""
        store = self.rt.store
        jobs = await store.run(store.unreported_jobs, self.batch)
        settled = 0
        queued_mail = False
        for job in jobs:
            with bind_context(job_id=job.id):
                try:
                    inputs = await store.run(self._plan, job)
                    # pdfium in a thread of its own: neither the loop nor the store's thread waits for it.
                    png = await asyncio.to_thread(email_preview, inputs.preview_pdf) if inputs and inputs.preview_pdf else None
                    mails = compose_reports(inputs, self.rt.config.mail, png)
                except Exception:
                    # One job whose report cannot be built must not hold up the others.
                    log.exception("report_build_failed", state=job.state)
                    continue
                assert job.finished_at is not None
                if not await store.run(store.queue_report, job.id, job.finished_at, mails):
                    log.info("report_skipped_job_changed")  # reopened by `gatewayd retry`, or reported already
                    continue
                settled += 1
                if mails:
                    queued_mail = True
                    self.rt.metrics.reports.labels(job.state).inc()
                log.info("report_queued", state=job.state, emails=len(mails), recipients=sum(len(m[2]) for m in mails))
        if queued_mail:
            self.rt.wake("outbox")
        return settled

    def _plan(self, job: Job) -> ReportInputs | None:
        # Runs on the store thread: reads the history and the document.
        store = self.rt.store

        def read_document(sha: str) -> bytes:
            # The fax as sent: the recipient's own cover, then the shared attachments.
            if job.cover and sha == job.document:
                parts = [store.read_document(job.cover), store.read_document(sha)]
                try:
                    return assemble_fax(parts)
                except Exception as exc:
                    raise StoreError(f"cannot join the cover and document {sha}: {type(exc).__name__}") from exc
            return store.read_document(sha)

        return gather_report(job, store.job_events(job.id), self.rt.config.mail, read_document)


__all__ = [
    "ADMIN_COPY_STATES", "ReportInputs", "Reporter", "SUBJECT_WORDS", "build_report", "compose_reports", "gather_report",
    "is_failure",
    "report_body", "report_recipient", "report_subject", "status_meaning",
]
