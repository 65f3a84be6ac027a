"""The daemon: builds every component from the configuration in one place and
runs them under a supervisor.

Each component is a ``Service``: ``start()`` binds what must be bound before
systemd is told READY (listeners), ``run()`` is its long-running loop, and
``stop()`` lets it finish in-flight work. A ``run()`` that crashes is logged
and restarted with backoff; it never takes the daemon down. Collaborators
(store, provider client, metrics, health, the current configuration) travel
in one ``Runtime`` that is passed in, so tests wire real parts the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from gatewayd.config import Config, ConfigError, load_config
from gatewayd.health import Health
from gatewayd.logs import get_logger, setup_logging
from gatewayd.metrics import Metrics
from gatewayd.sdnotify import Notifier
from gatewayd.store import Store

log = get_logger(__name__)

STOP_TIMEOUT = 8.0  # SIGTERM must end the process within 10 s


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Runtime:
    """What every component may use. ``config`` is replaced on reload."""

    config: Config
    store: Store
    provider: Any  # gatewayd.provider.client.ProviderClient
    metrics: Metrics
    health: Health
    clock: Callable[[], float] = time.time
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    reload_hooks: list[Callable[[Config], None]] = field(default_factory=list)
    wakeups: dict[str, asyncio.Event] = field(default_factory=dict)

    def wake(self, name: str) -> None:
        """Tell a worker (e.g. "sender", "reports", "outbox") there is work now."""
        self.wakeups.setdefault(name, asyncio.Event()).set()

    async def nap(self, name: str, seconds: float) -> bool:
        """Sleep until woken by ``wake(name)``, the timeout, or stop; True when stopping."""
        event = self.wakeups.setdefault(name, asyncio.Event())
        if not event.is_set():
            stop = asyncio.ensure_future(self.stopping.wait())
            woken = asyncio.ensure_future(event.wait())
            try:
                await asyncio.wait({stop, woken}, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                woken.cancel()
        event.clear()
        return self.stopping.is_set()

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless the daemon stops first; True when stopping."""
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=max(0.0, seconds))
            return True
        except asyncio.TimeoutError:
            return False


class Supervisor:
    """Runs services' ``run()`` as tasks; restarts a crashed one with backoff."""

    def __init__(self, stopping: asyncio.Event, *, min_backoff: float = 1.0, max_backoff: float = 60.0) -> None:
        self.stopping = stopping
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.restarts: dict[str, int] = {}

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        self.tasks[name] = asyncio.create_task(self._keep_running(name, factory), name=name)

    async def _keep_running(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        backoff = self.min_backoff
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                await factory()
                if self.stopping.is_set():
                    return
                log.warning("service_returned", service=name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("service_crashed", service=name)
            self.restarts[name] = self.restarts.get(name, 0) + 1
            if time.monotonic() - started > 5 * self.max_backoff:
                backoff = self.min_backoff  # it ran fine for a long while
            delay = backoff * (0.5 + random.random() / 2)
            log.info("service_restart_scheduled", service=name, delay=round(delay, 2))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=delay)
            backoff = min(self.max_backoff, backoff * 2)

    async def wait_stopped(self, timeout: float) -> None:
        if not self.tasks:
            return
        done, pending = await asyncio.wait(self.tasks.values(), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)


def build_provider(config: Config, metrics: Metrics) -> Any:
    from gatewayd.provider.client import ProviderClient

    return ProviderClient.from_config(config.provider, on_request=metrics.observe_provider_request)


def build_services(rt: Runtime) -> list[Service]:
    """Every component the configuration asks for, in start order."""
    services: list[Service] = []
    # Each flow adds its components here; keep the order: listeners last, so
    # workers are running before the first message is accepted.
    # --- wiring: email to fax
    from gatewayd.email_to_fax.intake import Intake
    from gatewayd.email_to_fax.sender import Sender
    from gatewayd.email_to_fax.smtp import SmtpListener

    services.append(Sender(rt))
    services.append(SmtpListener(rt, Intake(rt)))
    # --- wiring: status tracking and outbox
    # --- wiring: fax to email
    if rt.config.inbound.enabled:
        from gatewayd.fax_to_email.poller import InboundPoller

        services.append(InboundPoller(rt))
        if not any(s.name == "outbox" for s in services):
            # Received faxes reach their recipients only through the outbox:
            # make sure it runs even if no other flow wired it.
            from gatewayd.mail.outbox import OutboxWorker

            services.append(OutboxWorker(rt))
    # --- wiring: imap
    # --- wiring: http
    if rt.config.http.listen is not None:
        from gatewayd.http import HttpServer

        services.append(HttpServer(rt))
    return services


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        notifier: Notifier | None = None,
        services_factory: Callable[[Runtime], list[Service]] = build_services,
        provider_factory: Callable[[Config, Metrics], Any] = build_provider,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier.from_environment()
        self.services_factory = services_factory
        self.provider_factory = provider_factory
        self.rt: Runtime | None = None
        self.services: list[Service] = []
        self._reload_requested = asyncio.Event()

    def request_stop(self) -> None:
        if self.rt is not None:
            self.rt.stopping.set()

    def request_reload(self) -> None:
        self._reload_requested.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        store = Store(self.config.state_dir)
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
        supervisor = Supervisor(rt.stopping)
        try:
            self.services = self.services_factory(rt)
            for service in self.services:
                await service.start()
                log.info("service_started", service=service.name)
            for service in self.services:
                supervisor.spawn(service.name, service.run)
            supervisor.spawn("watchdog", lambda: self._watchdog(rt))
            supervisor.spawn("reloader", lambda: self._reloader(rt))
            self.notifier.notify("READY=1", f"STATUS={self._status_line(rt)}")
            log.info("gatewayd_ready", state_dir=str(self.config.state_dir), services=[s.name for s in self.services])
            await rt.stopping.wait()
            log.info("gatewayd_stopping")
            self.notifier.notify("STOPPING=1")
            await self._stop_services(supervisor)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            with contextlib.suppress(Exception):
                await provider.aclose()
            store.close()
        log.info("gatewayd_stopped")
        return 0

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
        except asyncio.TimeoutError:
            log.warning("services_stop_timeout")
        await supervisor.wait_stopped(STOP_TIMEOUT / 2)

    def _status_line(self, rt: Runtime) -> str:
        try:
            counts = rt.store.job_counts()
            depth, _ = rt.store.outbox_stats()
        except Exception:
            return "store not answering"
        waiting = sum(counts.get(s, 0) for s in ("queued", "submitting"))
        following = sum(counts.get(s, 0) for s in ("submitted", "sending", "failed"))
        return f"{waiting} to submit, {following} at the provider, {depth} emails in the outbox"

    async def _watchdog(self, rt: Runtime) -> None:
        """WATCHDOG=1 only while the loop turns and the store answers."""
        interval = self.notifier.watchdog_interval()
        if interval is None:
            await rt.stopping.wait()
            return
        while not await rt.sleep(interval):
            try:
                ok = await asyncio.wait_for(rt.store.run(rt.store.ping), timeout=interval)
            except Exception:
                ok = False
            if ok:
                self.notifier.notify("WATCHDOG=1", f"STATUS={self._status_line(rt)}")
            else:
                log.error("watchdog_store_not_answering")

    async def _reloader(self, rt: Runtime) -> None:
        while not rt.stopping.is_set():
            waiter = asyncio.create_task(self._reload_requested.wait())
            stopper = asyncio.create_task(rt.stopping.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            if rt.stopping.is_set():
                return
            self._reload_requested.clear()
            self.reload(rt)

    def reload(self, rt: Runtime) -> bool:
        """Re-read the file; apply it when valid, keep the running one otherwise."""
        if not self.config_path:
            log.warning("reload_without_config_file")
            return False
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload_rejected", problems=exc.problems)
            self.notifier.notify("READY=1", "STATUS=reload rejected: configuration invalid, running configuration kept")
            return False
        restart_needed = restart_only_changes(rt.config, new)
        rt.config = new
        self.config = new
        setup_logging(new.log.level, new.log.format)
        for hook in rt.reload_hooks:
            try:
                hook(new)
            except Exception:
                log.exception("reload_hook_failed")
        log.info("reload_applied", needs_restart=restart_needed)
        self.notifier.notify("READY=1", f"STATUS={self._status_line(rt)}")
        return True


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """Keys whose change takes effect only after a restart (see docs/configuration.md)."""
    changed = []
    pairs = {
        "smtp.listen": (old.smtp.listen, new.smtp.listen),
        "smtp.tls_cert": (old.smtp.tls_cert, new.smtp.tls_cert),
        "smtp.tls_key": (old.smtp.tls_key, new.smtp.tls_key),
        "storage.state_dir": (old.storage.state_dir, new.storage.state_dir),
        "http.listen": (old.http.listen, new.http.listen),
        "provider.base_url": (old.provider.base_url, new.provider.base_url),
        "provider.token_url": (old.provider.token_url, new.provider.token_url),
        "provider.client_id": (old.provider.client_id, new.provider.client_id),
        "provider.client_secret": (old.provider.client_secret, new.provider.client_secret),
        "imap.enabled": (old.imap.enabled, new.imap.enabled),
        "inbound.enabled": (old.inbound.enabled, new.inbound.enabled),
    }
    for key, (a, b) in pairs.items():
        if a != b:
            changed.append(key)
    return changed
