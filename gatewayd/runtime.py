"""What every service shares: the ``Runtime`` it is given, the ``Service``
shape the daemon runs, and the ``ProviderApi`` the services call.

A ``Runtime`` carries the collaborators (store, provider client, metrics,
health, the current configuration) and the stop/wake signalling; the daemon
builds one and passes it in, so tests wire real parts the same way.
``ProviderApi`` lists exactly what the services use of
``gatewayd.provider.client.ProviderClient`` (docs/provider.md), so a test
double or a replacement client is checked against it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from gatewayd.config import Config
from gatewayd.diskspace import FreeSpace, LowStorage, disk_free, low_storage
from gatewayd.health import Health
from gatewayd.metrics import Metrics
from gatewayd.provider.client import Extension, FaxFile, IncomingFax, SentFax
from gatewayd.provider.errors import ProviderError
from gatewayd.store import Store


class Service(Protocol):
    """A component the daemon runs: ``start()`` binds what must be bound before
    systemd is told READY (listeners), ``run()`` is its long-running loop (restarted
    by the supervisor when it crashes), ``stop()`` lets it finish in-flight work."""

    name: str

    async def start(self) -> None: ...

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


class Worker:
    """Base of a service that only loops: nothing to bind before READY
    (``start``) and nothing in flight to hand over at stop (``stop``); its
    ``run`` ends when ``rt.stopping`` is set."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class ProviderApi(Protocol):
    """The provider client as the services use it (docs/provider.md).

    Sender: ``send_fax``, ``list_sent_faxes``. Tracker: ``list_sent_faxes``,
    ``get_sent_fax``, ``retry_fax``. Inbound poller: ``list_fax_extensions``,
    ``list_received_faxes``, ``download_received_fax``, ``get_fax_mailto``,
    ``timezone``. Health and metrics: ``last_success_at``, ``last_error``,
    ``last_error_at`` (on ``time.monotonic``'s clock), ``rate_limit_remaining``,
    ``failing_paths`` (path key -> (404/405, consecutive count)).
    The daemon: ``aclose``.
    """

    last_success_at: float | None
    last_error: str | None
    last_error_at: float | None
    rate_limit_remaining: int | None
    failing_paths: dict[str, tuple[int, int]]

    @property
    def timezone(self) -> dt.tzinfo: ...

    async def aclose(self) -> None: ...

    async def send_fax(self, extension_id: int, dst_num: str, document: bytes, filename: str = ..., *,
                       fence: Callable[[], None] | None = ...) -> SentFax: ...

    async def get_sent_fax(self, extension_id: int, fax_id: int) -> SentFax: ...

    async def list_sent_faxes(self, extension_id: int, *, since: dt.datetime | None = ...) -> list[SentFax]: ...

    async def retry_fax(self, extension_id: int, fax_id: int) -> SentFax: ...

    async def list_fax_extensions(self) -> list[Extension]: ...

    async def list_received_faxes(self, extension_id: int, start: dt.datetime, end: dt.datetime) -> list[IncomingFax]: ...

    async def download_received_fax(self, extension_id: int, uuid: str) -> FaxFile: ...

    async def delete_received_fax(self, extension_id: int, uuid: str) -> None: ...

    async def get_fax_mailto(self, extension_id: int) -> list[str]: ...


class NoProvider:
    """The ``ProviderApi`` of a process that never calls the provider: a listener
    worker (the main process's sender sends) and ``gatewayd send`` (it only
    queues). Every call raises ``ProviderError`` naming the call, so a wrong
    use is a clear error instead of a ``None`` attribute error."""

    last_success_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    rate_limit_remaining: int | None = None

    def __init__(self) -> None:
        self.failing_paths: dict[str, tuple[int, int]] = {}  # a client's failing provider paths (health): none here

    def _refuse(self, call: str) -> ProviderError:
        return ProviderError(f"{call}: this process has no provider client")

    @property
    def timezone(self) -> dt.tzinfo:
        raise self._refuse("timezone")

    async def aclose(self) -> None:
        return None

    async def send_fax(self, extension_id: int, dst_num: str, document: bytes, filename: str = "fax.pdf", *,
                       fence: Callable[[], None] | None = None) -> SentFax:
        raise self._refuse("send_fax")

    async def get_sent_fax(self, extension_id: int, fax_id: int) -> SentFax:
        raise self._refuse("get_sent_fax")

    async def list_sent_faxes(self, extension_id: int, *, since: dt.datetime | None = None) -> list[SentFax]:
        raise self._refuse("list_sent_faxes")

    async def retry_fax(self, extension_id: int, fax_id: int) -> SentFax:
        raise self._refuse("retry_fax")

    async def list_fax_extensions(self) -> list[Extension]:
        raise self._refuse("list_fax_extensions")

    async def list_received_faxes(self, extension_id: int, start: dt.datetime, end: dt.datetime) -> list[IncomingFax]:
        raise self._refuse("list_received_faxes")

    async def download_received_fax(self, extension_id: int, uuid: str) -> FaxFile:
        raise self._refuse("download_received_fax")

    async def get_fax_mailto(self, extension_id: int) -> list[str]:
        raise self._refuse("get_fax_mailto")

    async def delete_received_fax(self, extension_id: int, uuid: str) -> None:
        raise self._refuse("delete_received_fax")



def store_from_config(config: Config) -> Store:
    """The store ``config`` names: SQLite in ``state_dir``, or PostgreSQL at
    ``storage.database_url``; the password goes to the store beside the URL,
    never pasted into it (it must not show up where the URL is shown)."""
    return Store(config.state_dir, database_url=config.storage.database_url,
                 database_password=config.storage.database_password or None)

@dataclass
class Runtime:
    """What every component may use. ``config`` is replaced on reload (and
    ``provider`` too when a reload changes its keys): read them each time."""

    config: Config
    store: Store
    provider: ProviderApi
    metrics: Metrics
    health: Health
    clock: Callable[[], float] = time.time
    free_space: FreeSpace = disk_free  # gatewayd/diskspace.py; tests make a disk look full with it
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    reload_hooks: list[Callable[[Config], None]] = field(default_factory=list)
    wakeups: dict[str, asyncio.Event] = field(default_factory=dict)
    # False once this node's hold on a leader lease ran out (gatewayd/leadership.py
    # sets it); a leased service asks before a step with an effect outside the store.
    lease_fence: Callable[[str], bool] = field(default=lambda _name: True)
    # Set by the wake relay on PostgreSQL (gatewayd/wakerelay.py): hands each
    # wake to the other processes and nodes too. None: wakes stay in this process.
    relay_wake: Callable[[str], None] | None = None

    def low_storage(self) -> LowStorage | None:
        """Free space in the state directory below ``storage.min_free`` (None: enough, or the check is off)."""
        return low_storage(self.config.state_dir, self.config.storage.min_free, self.free_space)

    def wake(self, name: str) -> None:
        """Tell a worker (e.g. "sender", "reports", "outbox") there is work now,
        here and, through ``relay_wake``, on the other nodes."""
        self.wake_here(name)
        if self.relay_wake is not None:
            self.relay_wake(name)

    def wake_here(self, name: str) -> None:
        """``wake`` for this process's worker only (what a wake relayed from another process does)."""
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

    async def repeat(self, name: str, turn: Callable[[], Awaitable[int]], *, batch: int, interval: float) -> None:
        """Run ``turn`` until stopping: again at once while it handled a full
        ``batch`` (more may be waiting), else after ``interval`` or ``wake(name)``."""
        while not self.stopping.is_set():
            if await turn() >= batch:
                continue
            if await self.nap(name, interval):
                return

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless the daemon stops first; True when stopping."""
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=max(0.0, seconds))
            return True
        except TimeoutError:
            return False
