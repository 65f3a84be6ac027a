"""Helpers for the tracking/report/outbox tests: real parts on loopback.

* the provider simulator (frozen clock: faxes move only when a test advances
  it, so every state is observable),
* a MailSink as the mail relay,
* ``Gateway``: a Runtime with the real Store, ProviderClient, Tracker,
  Reporter and OutboxWorker, which can be stopped and started again on the
  same state directory (a daemon restart),
* ``submit``: puts a job at the provider the way the sender does (save the
  document, store the job, POST the fax, record "submitted").
"""

from __future__ import annotations

import asyncio
import inspect
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pikepdf
from gatewayd.config import Config, HostPort, HttpConfig, MailConfig, ProviderConfig, StorageConfig
from gatewayd.daemon import Runtime
from gatewayd.email_to_fax.tracker import Tracker
from gatewayd.mail.outbox import OutboxWorker
from gatewayd.email_to_fax.report import Reporter
from gatewayd.mailsink import MailSink
from gatewayd.provider.client import ProviderClient
from gatewayd.provider.simulator import ProviderSimulator
from gatewayd.store import SUBMITTED, Job, NewJob, Store
from support.clock import OffsetClock  # noqa: F401 (also a public name here)
from support.gateway import InProcessGateway, build_gateway

SENDER = "alice@example.test"
ADMIN = "admin@example.test"
FROM = "Fax Gateway <fax-gateway@gw.test>"
NUMBER = "+78123092631"
DST = "78123092631"


def make_pdf(pages: int = 1) -> bytes:
    pdf = pikepdf.new()
    for _ in range(pages):
        pdf.add_blank_page(page_size=(595, 842))
    buf = io.BytesIO()
    pdf.save(buf)
    return buf.getvalue()


def make_config(state_dir: Path, sim: ProviderSimulator | None, sink: MailSink | None, **mail: Any) -> Config:
    provider = ProviderConfig(
        base_url=sim.base_url if sim else "http://127.0.0.1:9/api/ver1.0",
        token_url=sim.token_url if sim else "http://127.0.0.1:9/oauth/token",
        client_id="demo",
        client_secret="demo",
        extension=122,
        timeout=5.0,
        status_poll_interval=0.05,
        auto_retries=2,
        retry_delay=0.05,
    )
    mail_cfg = MailConfig(
        relay=HostPort(sink.host, sink.port) if sink else HostPort("127.0.0.1", 9),
        from_=FROM,
        admin=(ADMIN,),
        reports="all",
        attach_document="failures",
    )
    mail_cfg = replace(mail_cfg, **mail)
    return Config(provider=provider, mail=mail_cfg, storage=StorageConfig(state_dir=str(state_dir)), http=HttpConfig(listen=None))


@dataclass
class Gateway:
    """The tracking, report and outbox services of one daemon run."""

    config: Config
    clock: OffsetClock
    store: Store = field(init=False)
    provider: ProviderClient = field(init=False)
    rt: Runtime = field(init=False)
    tracker: Tracker = field(init=False)
    reporter: Reporter = field(init=False)
    outbox: OutboxWorker = field(init=False)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    gw: InProcessGateway = field(init=False)

    def __post_init__(self) -> None:
        # The one in-process gateway (support.gateway), with only these services and short polls.
        def provider(config: Config, metrics: Any) -> ProviderClient:
            # backoff_base: the client's own retries of a 5xx sleep for real; keep them short.
            return ProviderClient.from_config(config.provider, on_request=metrics.observe_provider_request, backoff_base=0.01)

        self.gw = build_gateway(
            self.config, only={"tracker", "reports", "outbox"}, clock=self.clock, provider=provider, port_zero=False,
            replace={"reports": lambda rt: Reporter(rt, poll_interval=0.05), "outbox": lambda rt: OutboxWorker(rt, poll_interval=0.05)},
        )
        self.rt = self.gw.rt
        self.store = self.rt.store
        self.provider = self.rt.provider  # type: ignore[assignment]
        self.tracker = self.gw.service("tracker")
        self.reporter = self.gw.service("reports")
        self.outbox = self.gw.service("outbox")

    def start(self, *services: str) -> "Gateway":
        chosen = [s for s in (self.tracker, self.reporter, self.outbox) if not services or s.name in services]
        for service in chosen:
            self.tasks.append(asyncio.create_task(service.run(), name=service.name))
        self.gw.tasks = self.tasks
        return self

    async def stop(self) -> None:
        """Stop as the daemon does; a crashed service fails the test loudly."""
        await self.gw.stop(timeout=5)

    def set_config(self, **provider: Any) -> None:
        self.config = replace(self.config, provider=replace(self.config.provider, **provider))
        self.rt.config = self.config

    def set_mail(self, **mail: Any) -> None:
        self.config = replace(self.config, mail=replace(self.config.mail, **mail))
        self.rt.config = self.config

    async def submit(
        self,
        number: str = NUMBER,
        *,
        dst: str = DST,
        subject: str = "Quarterly report",
        message_id: str = "<orig-1@example.test>",
        report_to: str = SENDER,
        pages: int = 2,
        extension: int = 122,
        note: str = "",
    ) -> int:
        """A job at the provider, as the sender leaves it (submitted, attempts=1)."""
        pdf = make_pdf(pages)
        store = self.store
        sha = await store.run(store.save_document, pdf)
        new = NewJob(number=number, dst_num=dst, extension=extension, report_to=report_to, source="smtp",
                     message_id=message_id, subject=subject, note=note)
        (job_id,) = await store.run(store.enqueue_jobs, sha, pages, len(pdf), [new])
        fax = await self.provider.send_fax(extension, dst, pdf)
        await store.run(store.transition, job_id, SUBMITTED, f"submitted to the provider as fax {fax.id}",
                        provider_id=fax.id, provider_status=fax.status, submitted_at=self.clock(), attempts=1)
        return job_id

    async def job(self, job_id: int) -> Job:
        return await self.store.run(self.store.get_job, job_id)

    async def wait_job(self, job_id: int, pred: Callable[[Job], bool], timeout: float = 10.0) -> Job:
        async def check() -> Job | None:
            job = await self.job(job_id)
            return job if pred(job) else None

        return await wait_for(check, timeout, f"job {job_id}")


async def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``check`` (sync or async) until it returns something true."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def finished_job(
    gw: Gateway,
    state: str,
    *,
    reason: str = "",
    subject: str = "Quarterly report",
    message_id: str = "<orig-1@example.test>",
    report_to: str = SENDER,
    attempts: int = 1,
    provider_id: int | None = 500,
) -> int:
    """A job that ended in ``state`` without any provider (report policy tests)."""
    store = gw.store
    pdf = make_pdf(1)
    sha = await store.run(store.save_document, pdf)
    new = NewJob(number=NUMBER, dst_num=DST, extension=122, report_to=report_to, source="smtp",
                 message_id=message_id, subject=subject)
    (job_id,) = await store.run(store.enqueue_jobs, sha, 1, len(pdf), [new])
    if provider_id is not None:
        await store.run(store.transition, job_id, SUBMITTED, "submitted", provider_id=provider_id + job_id,
                        provider_status="ready_to_send", submitted_at=gw.clock(), attempts=attempts)
    extra = {"finished_at": gw.clock()} if state == "failed" else {}
    await store.run(store.transition, job_id, state, reason or f"ended {state}", **extra)
    return job_id


def outbox_messages(gw: Gateway) -> list[tuple[tuple[str, ...], Any]]:
    """(recipients, parsed message) of every outbox row, in order."""
    from email import message_from_bytes, policy

    return [(m.recipients, message_from_bytes(m.message, policy=policy.default)) for m in gw.store.list_mail()]
