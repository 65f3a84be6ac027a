"""The one way to run a gateway in the test's event loop.

It wires the daemon's own way: a ``Runtime`` and ``gatewayd.daemon.build_services``
(so a test runs exactly the components the configuration asks for), then
``start()`` each service, its ``run()`` as a task, and ``stop()`` in reverse
order at the end, as ``Daemon`` does. A reload goes through the daemon's own
``Daemon.areload`` / ``Daemon._apply``.

What a test may change, and only that:
* ``only``: keep these services (by name) of what build_services made;
* ``replace``: name -> factory(rt) for a service with short test timings
  (e.g. ``{"sender": lambda rt: Sender(rt, FAST_SENDER)}``);
* ``extra``: more services (test doubles) added after those (one with the
  name of a built service takes its place);
* the SMTP listener binds 127.0.0.1:0 (the loader refuses port 0, so the
  config is changed after loading) and the test reads the bound port back
  from the listener: no port is picked before it is bound;
* ``clock``, ``store``, ``provider``: the collaborators in the Runtime;
* ``lease``: the period of the leases the one-at-a-time services run under
  (gatewayd/leadership.py; storage.lease), short for takeover tests.

Unlike the daemon's supervisor, a crashed ``run()`` is not restarted unless
``restart=True``: by default the crash fails the test at stop (``check=True``).
"""

from __future__ import annotations

import asyncio
import time
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from typing import Any

from gatewayd.config import Config, HostPort
from gatewayd.daemon import Daemon, build_services
from gatewayd.email_to_fax.smtp import SmtpListener
from gatewayd.health import Health
from gatewayd.leadership import DEFAULT_LEASE, Leased
from gatewayd.metrics import Metrics
from gatewayd.provider.client import ProviderClient
from gatewayd.runtime import ProviderApi, Runtime, Service
from gatewayd.sdnotify import Notifier
from gatewayd.store import Store

ServiceFactory = Callable[[Runtime], Service]
ProviderFactory = Callable[[Config, Metrics], ProviderApi]


def fast_provider(config: Config, metrics: Metrics) -> ProviderApi:
    """The real client; its own retries of a 5xx sleep for real, so keep them short."""
    return ProviderClient.from_config(config.provider, on_request=metrics.observe_provider_request, backoff_base=0.01, backoff_cap=0.05)


def with_port_zero(config: Config) -> Config:
    """The SMTP listener on 127.0.0.1:0 (any free port, read back once bound)."""
    return dataclasses.replace(config, smtp=dataclasses.replace(config.smtp, listen=(HostPort("127.0.0.1", 0),)))


@dataclasses.dataclass
class InProcessGateway:
    """A running gateway: its Runtime, services and tasks, and the Daemon that reloads it."""

    rt: Runtime
    services: list[Service]
    daemon: Daemon
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    crashes: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def store(self) -> Store:
        return self.rt.store

    @property
    def config(self) -> Config:
        return self.rt.config

    def service(self, name: str) -> Any:
        """The running service called ``name`` ("sender", "smtp", "tracker", ...); a leased one's own object, not its lease wrapper."""
        for s in self.services:
            if s.name == name:
                return s.service if isinstance(s, Leased) else s
        raise KeyError(f"no service {name!r} running (have {[s.name for s in self.services]})")

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.services)

    @property
    def port(self) -> int:
        """The SMTP listener's bound port."""
        listener = self.service("smtp")
        assert isinstance(listener, SmtpListener)
        return listener.addresses[0][1]

    def wake_all(self) -> None:
        for s in self.services:
            self.rt.wake(s.name)

    def reload(self, config: Config) -> bool:
        """Apply ``config`` as a SIGHUP with a valid file would (Daemon._apply)."""
        return self.daemon._apply(self.rt, config)

    async def reload_file(self, path: str) -> bool:
        """SIGHUP: re-read ``path`` (Daemon.areload)."""
        self.daemon.config_path = path
        return await self.daemon.areload(self.rt)

    async def start(self, *, restart: bool = False) -> None:
        """``start()`` every service in order (listeners bind here), then their ``run()``."""
        started: list[Service] = []
        try:
            for s in self.services:
                await s.start()
                started.append(s)
        except BaseException:
            self.rt.stopping.set()
            for s in reversed(started):
                with contextlib.suppress(Exception):
                    await s.stop()
            raise
        self.tasks = [asyncio.create_task(self._run(s, restart), name=s.name) for s in self.services]

    async def _run(self, service: Service, restart: bool) -> None:
        while True:
            try:
                await service.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.crashes.setdefault(service.name, []).append(repr(exc))
                if not restart:
                    raise
                await asyncio.sleep(0.2)  # like the daemon's supervisor, without its backoff

    async def stop(self, *, timeout: float = 10.0, check: bool = True) -> None:
        """Stop as the daemon does (listeners first); with ``check``, a crashed or hung service fails the test."""
        self.rt.stopping.set()
        for s in reversed(self.services):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.stop(), timeout / 2)
        problems: list[str] = []
        if self.tasks:
            done, pending = await asyncio.wait(self.tasks, timeout=timeout)
            for task in pending:
                task.cancel()
                problems.append(f"service {task.get_name()} did not stop within {timeout} s")
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    problems.append(f"service {task.get_name()} crashed: {task.exception()!r}")
        for client in [self.rt.provider, *self.daemon._retired_providers]:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        self.rt.store.close()
        if check and problems:
            raise AssertionError("; ".join(problems))


def build_gateway(
    config: Config,
    *,
    only: Collection[str] | None = None,
    replace: Mapping[str, ServiceFactory] | None = None,
    extra: Callable[[Runtime], Sequence[Service]] | None = None,
    clock: Callable[[], float] | None = None,
    store: Store | None = None,
    provider: ProviderApi | None | ProviderFactory = fast_provider,
    port_zero: bool = True,
    config_path: str | None = None,
    lease: float = DEFAULT_LEASE,
) -> InProcessGateway:
    """The gateway's parts, wired as the daemon wires them, not yet started."""
    if port_zero and config.smtp.listen:
        config = with_port_zero(config)
    if store is None:
        # The store the configuration names (SQLite, or storage.database_url), on the test's clock if it has one.
        store = Store(config.state_dir, database_url=config.storage.database_url,
                      database_password=config.storage.database_password or None, clock=clock or time.time)
    metrics = Metrics()
    factory: ProviderFactory = provider if callable(provider) else (lambda c, m: provider)  # type: ignore[assignment,return-value]
    client = factory(config, metrics)
    kw: dict[str, Any] = {"clock": clock} if clock else {}
    rt = Runtime(config=config, store=store, provider=client, metrics=metrics, health=Health(), **kw)
    services: list[Service] = []
    for s in build_services(rt, lease=lease):
        if only is not None and s.name not in only:
            continue
        if replace and s.name in replace:
            # A replaced leased service keeps its lease, as the daemon would run it.
            s = s.leadership.lead(replace[s.name](rt)) if isinstance(s, Leased) else replace[s.name](rt)
        services.append(s)
    for s in extra(rt) if extra is not None else ():
        # an extra service of a name build_services made takes its place
        services = [s if old.name == s.name else old for old in services] if any(o.name == s.name for o in services) else [*services, s]
    daemon = Daemon(config, config_path=config_path, notifier=Notifier(None), services_factory=lambda _rt: services, provider_factory=factory)
    daemon.rt = rt
    daemon.services = services
    return InProcessGateway(rt, services, daemon)


@contextlib.asynccontextmanager
async def in_process(config: Config, *, restart: bool = False, check: bool = True, **kw: Any) -> AsyncIterator[InProcessGateway]:
    """``build_gateway(config, **kw)`` started; stopped (and checked) at the end."""
    gw = build_gateway(config, **kw)
    await gw.start(restart=restart)
    try:
        yield gw
    finally:
        await gw.stop(check=check)
