"""The daemon: builds every component from the configuration in one place,
runs them under a supervisor, and handles the signals (stop, reload).

Each component is a ``Service`` (gatewayd/runtime.py): ``start()`` binds what
must be bound before systemd is told READY (listeners), ``run()`` is its
long-running loop, and ``stop()`` lets it finish in-flight work. A ``run()``
that crashes is restarted with backoff (gatewayd/supervisor.py); it never
takes the daemon down. Collaborators (store, provider client, metrics,
health, the current configuration) travel in one ``Runtime`` that is passed
in, so tests wire real parts the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import ssl
import time
from collections.abc import Callable
from typing import Any

from gatewayd.config import Config, ConfigError, load_config
from gatewayd.documents.office import OfficeConverter, office_settings, office_unavailable
from gatewayd.documents.preview import Previews
from gatewayd.email_to_fax.converter import ConverterService
from gatewayd.email_to_fax.imap import ImapIntake
from gatewayd.email_to_fax.intake import Intake
from gatewayd.email_to_fax.policy import contact_problems
from gatewayd.email_to_fax.report import Reporter
from gatewayd.email_to_fax.sender import Sender
from gatewayd.email_to_fax.smtp import SmtpListener, SmtpTuning
from gatewayd.email_to_fax.smtp_processes import ListenerProcesses
from gatewayd.email_to_fax.tracker import Tracker
from gatewayd.fax_to_email.poller import InboundPoller
from gatewayd.health import Health
from gatewayd.http import HttpServer
from gatewayd.leadership import DEFAULT_LEASE, Leadership, NodeName, node_token
from gatewayd.logs import get_logger, setup_logging
from gatewayd.mail.outbox import OutboxWorker
from gatewayd.memory import freeze_startup_objects, release_periodically
from gatewayd.metrics import Metrics
from gatewayd.provider.client import ProviderClient
from gatewayd.purger import Purger
from gatewayd.runtime import ProviderApi, Runtime, Service, store_from_config
from gatewayd.sdnotify import Notifier
from gatewayd.store import Store, StoreError
from gatewayd.supervisor import Supervisor
from gatewayd.wakerelay import WakeRelay

log = get_logger(__name__)

STOP_TIMEOUT = 8.0  # SIGTERM must end the process within 10 s


def build_provider(config: Config, metrics: Metrics) -> ProviderApi:
    return ProviderClient.from_config(config.provider, on_request=metrics.observe_provider_request)


def build_smtp_listener(
    rt: Runtime, intake: Intake, *, tuning: SmtpTuning | None = None, tls_context: ssl.SSLContext | None = None
) -> SmtpListener:
    """The SMTP listener, with its other listener processes when ``smtp.processes`` > 1
    (gatewayd/email_to_fax/smtp_processes.py; the listener starts them once it is bound)."""
    tuning = tuning or SmtpTuning()
    more = rt.config.smtp.processes - 1
    processes = ListenerProcesses(rt, more, tuning) if more > 0 else None
    if processes is not None:
        processes.office = intake.office
    return SmtpListener(rt, intake, tuning=tuning, tls_context=tls_context, processes=processes)


def build_office(rt: Runtime) -> tuple[OfficeConverter | None, str]:
    """The LibreOffice converter pool, or None and why (docs/documents.md, Office documents)."""
    docs = rt.config.documents
    problem = office_unavailable(docs)
    if problem:
        if docs.office:
            log.warning("office_documents_unavailable", reason=problem)
        return None, problem
    return OfficeConverter(office_settings(docs)), ""


def build_leadership(rt: Runtime, *, ttl: float = DEFAULT_LEASE) -> Leadership:
    """This node's leases (gatewayd/leadership.py): ``gatewayd_lease_held`` follows them, and a
    service running on another node leaves nothing of its own in this node's /healthz."""
    node = rt.config.storage.node_name
    rt.metrics.node.labels(node).set(1)

    def changed(name: str, held: bool) -> None:
        rt.metrics.lease_held.labels(name).set(1 if held else 0)
        if not held:
            rt.health.forget(name)

    leadership = Leadership(rt.store, node, rt.stopping, ttl=ttl, on_change=changed)
    rt.lease_fence = leadership.fence
    return leadership


def build_services(rt: Runtime, *, lease: float | None = None) -> list[Service]:
    """Every component the configuration asks for, in start order.

    Every node takes mail in (SMTP, and the web console's and `gatewayd send`'s
    intake) and serves /metrics and the console; the sender claims jobs one by
    one. The other workers run on one node at a time, each under its own lease
    (docs/deployment.md, Several nodes): ``lead(...)`` below. ``lease``: their
    period; storage.lease (30 s by default) when not given.
    """
    ttl = rt.config.storage.lease if lease is None else lease
    # First: this node's name is its own (two nodes with one name would both hold its leases).
    services: list[Service] = [NodeName(rt.store, rt.config.storage.node_name, node_token(rt.config.state_dir), rt.stopping, ttl=ttl)]
    lead = build_leadership(rt, ttl=ttl).lead
    if rt.store.postgres is not None:
        # Wakes reach the other nodes and `gatewayd send`'s reach this one
        # (gatewayd/wakerelay.py); before the workers, so their first wake is relayed.
        services.append(WakeRelay(rt))
    # Each flow adds its components here; keep the order: listeners last, so
    # workers are running before the first message is accepted.
    # --- wiring: email to fax
    services.append(Sender(rt))
    office, unavailable = build_office(rt)
    # Always there: conversions stored before a restart are finished (or refused) after it.
    services.append(lead(ConverterService(rt, office, unavailable=unavailable)))
    services.append(build_smtp_listener(rt, Intake(rt, office=office is not None)))
    # --- wiring: status tracking and outbox
    services.extend([lead(Tracker(rt)), lead(Reporter(rt)), lead(OutboxWorker(rt))])
    # --- wiring: fax to email
    if rt.config.inbound.enabled:
        services.append(lead(InboundPoller(rt)))  # its emails go out through the OutboxWorker above
    # --- wiring: imap
    if rt.config.imap.enabled:
        # Its own Intake (same code path as SMTP, own document-build slots):
        # a slow mailbox never holds up an SMTP client waiting for its 250.
        services.append(lead(ImapIntake(rt, Intake(rt, office=office is not None))))
    # --- wiring: retention (purge rounds every retention.interval)
    services.append(lead(Purger(rt, previews=Previews(rt.config.state_dir))))  # the console's preview cache follows the documents
    # --- wiring: http
    if rt.config.http.listen is not None:
        services.append(HttpServer(rt))
    # --- wiring: web console (docs/web.md)
    if rt.config.web.listen is not None:
        from gatewayd.web.console import WebConsole  # Jinja2 and pdfium load only when the console is on

        # It takes office documents where the SMTP intake does (the same decision).
        services.append(WebConsole(rt, office=office is not None))
    return services


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        notifier: Notifier | None = None,
        services_factory: Callable[[Runtime], list[Service]] = build_services,
        provider_factory: Callable[[Config, Metrics], ProviderApi] = build_provider,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier.from_environment()
        self.services_factory = services_factory
        self.provider_factory = provider_factory
        self.rt: Runtime | None = None
        self.services: list[Service] = []
        self._reload_requested = asyncio.Event()
        self._retired_providers: list[ProviderApi] = []
        self._background: set[asyncio.Task[None]] = set()
        self._last_status = ""

    def request_stop(self) -> None:
        if self.rt is not None:
            self.rt.stopping.set()

    def request_reload(self) -> None:
        self._reload_requested.set()

    async def run(self) -> int:
        """Start everything, tell systemd READY, serve until SIGTERM/SIGINT."""
        loop = asyncio.get_running_loop()
        store = store_from_config(self.config)
        restored = store.apply_restore_mark()
        if restored is not None:
            # docs/operations.md, "Backup and restore": nothing is sent before the provider's list is checked.
            log.warning("restored_from_backup", backup_id=restored.backup_id, taken_at=restored.taken_at,
                        jobs_to_reconcile=restored.queued + restored.submitting)
        try:
            # Once for a database made before gatewayd purged anything: one
            # VACUUM puts it in incremental mode (gatewayd/store/retention.py).
            # SQLite's alone: PostgreSQL's autovacuum looks after its own files.
            began = time.monotonic()
            if store.dialect == "sqlite" and store.ensure_incremental_vacuum():
                log.info("store_vacuumed_once", seconds=round(time.monotonic() - began, 1), why="auto_vacuum = INCREMENTAL")
        except StoreError as exc:  # e.g. locked by a long command: the next start tries again
            log.warning("store_vacuum_mode_unchanged", error=str(exc))
        removed = store.clean_documents()
        if removed:
            log.info("documents_cleaned", removed=removed)
        metrics = Metrics()
        health = Health()
        provider = self.provider_factory(self.config, metrics)
        rt = Runtime(config=self.config, store=store, provider=provider, metrics=metrics, health=health)
        self.rt = rt
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        supervisor = Supervisor(rt.stopping, on_restart=lambda name: metrics.service_restarts.labels(name).inc())
        try:
            self.services = self.services_factory(rt)
            await self._start_services(rt, supervisor)
            for service in self.services:
                supervisor.spawn(service.name, service.run)
            supervisor.spawn("watchdog", lambda: self._watchdog(rt))
            supervisor.spawn("reloader", lambda: self._reloader(rt))
            supervisor.spawn("status", lambda: self._status_reporter(rt))
            supervisor.spawn("memory", lambda: release_periodically(rt.sleep))
            # Every listener is bound and the store is open: systemd may now
            # send traffic (and start units ordered after us).
            self._last_status = await self._status(rt)
            self.notifier.ready(self._last_status)
            freeze_startup_objects()  # gatewayd/memory.py: shorter collector pauses from here on
            log.info(
                "gatewayd_ready", state_dir=str(self.config.state_dir), services=[s.name for s in self.services],
                watchdog_interval=self.notifier.watchdog_interval(), notify=self.notifier.enabled,
            )
            await rt.stopping.wait()
            log.info("gatewayd_stopping")
            self.notifier.stopping()
            await self._stop_services(supervisor)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            rt.stopping.set()
            if self._background:
                await asyncio.wait(self._background, timeout=2.0)
            for client in [rt.provider, *self._retired_providers]:
                with contextlib.suppress(Exception):
                    await client.aclose()
            store.close()
        log.info("gatewayd_stopped")
        return 0

    async def _start_services(self, rt: Runtime, supervisor: Supervisor) -> None:
        """``start()`` each service in order; on a failure, stop those started and raise."""
        started: list[Service] = []
        for service in self.services:
            try:
                await service.start()
            except BaseException as exc:
                log.error("service_start_failed", service=service.name, error=f"{type(exc).__name__}: {exc}")
                self.notifier.status(f"start failed: {service.name}: {exc}")
                rt.stopping.set()
                self.services = started
                await self._stop_services(supervisor)
                raise
            started.append(service)
            log.info("service_started", service=service.name)

    async def _stop_services(self, supervisor: Supervisor) -> None:
        async def stop_all() -> None:
            # Listeners first (reverse start order): no new work while workers finish.
            for service in reversed(self.services):
                try:
                    await service.stop()
                except Exception:
                    log.exception("service_stop_failed", service=service.name)

        try:
            await asyncio.wait_for(stop_all(), timeout=STOP_TIMEOUT / 2)
        except TimeoutError:
            log.warning("services_stop_timeout")
        await supervisor.wait_stopped(STOP_TIMEOUT / 2)

    # ------------------------------------------------------------ status

    @staticmethod
    def _store_status(store: Store) -> str:
        """The STATUS= line; runs on the store's thread and raises when the store does not answer."""
        if not store.ping():
            raise RuntimeError("store ping failed")
        # "failed" jobs count only while they wait for an automatic retry.
        retrying = len(store.jobs_in_states(("failed",)))
        return format_status(store.job_counts(), *store.outbox_stats(), retrying=retrying)

    async def _status(self, rt: Runtime, timeout: float = 5.0) -> str:
        try:
            return await asyncio.wait_for(rt.store.run(self._store_status, rt.store), timeout=timeout)
        except Exception:
            return "store not answering"

    async def _status_reporter(self, rt: Runtime) -> None:
        """STATUS= when the queues change (``systemctl status`` shows it)."""
        if not self.notifier.enabled:
            await rt.stopping.wait()
            return
        while not await rt.sleep(STATUS_EVERY):
            status = await self._status(rt)
            if status != self._last_status:
                self._last_status = status
                self.notifier.status(status)

    async def _watchdog(self, rt: Runtime) -> None:
        """WATCHDOG=1 only while the loop turns and the store answers.

        Every ``interval`` (half of WatchdogSec) the store is asked for the
        status line on its own thread; the ping goes out only when that
        answer arrives in time, from this loop. A blocked loop sends nothing
        (this coroutine does not run), and neither does a store that raises
        or hangs: systemd then kills and restarts the service.
        """
        interval = self.notifier.watchdog_interval()
        if interval is None:
            await rt.stopping.wait()
            return
        log.info("watchdog_enabled", interval=interval)
        missed = 0
        while not rt.stopping.is_set():
            began = time.monotonic()
            try:
                status = await asyncio.wait_for(rt.store.run(self._store_status, rt.store), timeout=interval)
            except Exception as exc:
                missed += 1
                if missed == 1 or missed % 20 == 0:
                    log.error("watchdog_store_not_answering", error=f"{type(exc).__name__}: {exc}", missed_pings=missed)
            else:
                if missed:
                    log.info("watchdog_store_answering_again", missed_pings=missed)
                    missed = 0
                self._last_status = status
                self.notifier.watchdog(status)
            if await rt.sleep(interval - (time.monotonic() - began)):
                return

    # ------------------------------------------------------------ reload

    async def _reloader(self, rt: Runtime) -> None:
        while not rt.stopping.is_set():
            waiter = asyncio.create_task(self._reload_requested.wait())
            stopper = asyncio.create_task(rt.stopping.wait())
            try:
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopper.cancel()
            if rt.stopping.is_set():
                return
            self._reload_requested.clear()
            await self.areload(rt)

    async def areload(self, rt: Runtime) -> bool:
        """SIGHUP: re-read the file off the loop; apply it when valid, keep the running one otherwise."""
        if not self.config_path:
            log.warning("reload_without_config_file")
            return False
        self.notifier.reloading()
        log.info("reload_requested", path=str(self.config_path))
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            return await self._reject(rt, exc.problems)
        except Exception as exc:  # a bug in the loader must not take the daemon down
            log.exception("reload_failed")
            return await self._reject(rt, [f"{type(exc).__name__}: {exc}"])
        problems = contact_problems(new)
        if problems:
            return await self._reject(rt, problems)
        try:
            applied = self._apply(rt, new)
        except Exception:  # systemd waits for READY=1 after RELOADING=1: always answer
            log.exception("reload_failed")
            applied = False
        status = await self._status(rt)
        self._last_status = status
        self.notifier.ready(status if applied else f"reload rejected, running configuration kept; {status}")
        return applied

    async def _reject(self, rt: Runtime, problems: list[str]) -> bool:
        log.error("reload_rejected", path=str(self.config_path), problems=problems)
        status = await self._status(rt)
        self.notifier.ready(f"reload rejected ({len(problems)} problem(s) in {self.config_path}), running configuration kept; {status}")
        return False

    def _apply(self, rt: Runtime, loaded: Config) -> bool:
        """Make ``loaded`` the running configuration; keys that need a restart keep their running values."""
        old = rt.config
        pending = restart_only_changes(old, loaded)
        new = keep_restart_only(old, loaded)
        if provider_changed(old, new):
            try:
                client = self.provider_factory(new, rt.metrics)
            except Exception as exc:
                log.error("reload_rejected", path=str(self.config_path), problems=[f"provider: {exc}"])
                return False
            self._retire_provider(rt, rt.provider, old.provider.timeout)
            rt.provider = client
            log.info("provider_client_replaced", base_url=new.provider.base_url, client_id=new.provider.client_id)
        rt.config = new
        self.config = new
        setup_logging(new.log.level, new.log.format)
        for hook in rt.reload_hooks:
            try:
                hook(new)
            except Exception:
                log.exception("reload_hook_failed")
        if pending:
            log.warning("reload_needs_restart", keys=pending, hint="these keep their running values until `systemctl restart gatewayd`")
        log.info("reload_applied", path=str(self.config_path), changed=changed_sections(old, new), needs_restart=pending)
        return True

    def _retire_provider(self, rt: Runtime, client: ProviderApi, timeout: float) -> None:
        """Close a replaced provider client once calls already running on it are surely over."""
        self._retired_providers.append(client)

        async def close_later() -> None:
            await rt.sleep(4 * timeout + 120)  # attempts x timeout, plus backoff
            with contextlib.suppress(Exception):
                await client.aclose()
            with contextlib.suppress(ValueError):
                self._retired_providers.remove(client)

        try:
            task = asyncio.get_running_loop().create_task(close_later(), name="provider-retire")
        except RuntimeError:  # no running loop: closed at stop
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)


STATUS_EVERY = 5.0  # seconds between STATUS= checks when no watchdog pings carry it


def format_status(counts: dict[str, int], outbox_depth: int, outbox_oldest: float | None, *, retrying: int = 0) -> str:
    """The STATUS= line: jobs not yet at the provider, jobs it is working on
    (including failed ones awaiting an automatic retry), emails not yet relayed."""
    waiting = sum(counts.get(s, 0) for s in ("queued", "submitting"))
    following = sum(counts.get(s, 0) for s in ("submitted", "sending")) + retrying
    line = f"{waiting} to submit, {following} at the provider, {outbox_depth} emails in the outbox"
    if outbox_depth and outbox_oldest is not None:
        line += f" (oldest {_age(outbox_oldest)})"
    return line


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


# Keys read once at start: a reload keeps their running values (and says so).
RESTART_ONLY: tuple[tuple[str, str], ...] = (
    ("smtp", "listen"),
    ("smtp", "processes"),
    ("smtp", "tls_cert"),
    ("smtp", "tls_key"),
    ("storage", "state_dir"),
    ("storage", "database_url"),
    ("storage", "database_password"),
    ("storage", "lease"),
    ("storage", "node_name"),
    ("http", "listen"),
    ("web", "listen"),
    ("web", "tls_cert"),
    ("web", "tls_key"),
    ("imap", "enabled"),
    ("inbound", "enabled"),
)

# Keys the provider client is built from: a reload that changes one builds a new client.
PROVIDER_CLIENT_KEYS = ("base_url", "token_url", "client_id", "client_secret", "timeout", "paths")


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """Keys whose change takes effect only after a restart (see docs/configuration.md)."""
    return [f"{section}.{key}" for section, key in RESTART_ONLY if getattr(getattr(old, section), key) != getattr(getattr(new, section), key)]


def keep_restart_only(old: Config, new: Config) -> Config:
    """``new`` with the restart-only keys set back to their running values."""
    sections: dict[str, Any] = {}
    for section, key in RESTART_ONLY:
        current = sections.get(section, getattr(new, section))
        sections[section] = dataclasses.replace(current, **{key: getattr(getattr(old, section), key)})
    return dataclasses.replace(new, **sections)


def provider_changed(old: Config, new: Config) -> bool:
    return any(getattr(old.provider, k) != getattr(new.provider, k) for k in PROVIDER_CLIENT_KEYS)


def changed_sections(old: Config, new: Config) -> list[str]:
    """Top-level sections that differ (for the reload log line; never values, which may be secrets)."""
    names = [f.name for f in dataclasses.fields(Config) if f.name != "source"]
    return [name for name in names if getattr(old, name) != getattr(new, name)]
