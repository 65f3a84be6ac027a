"""The wake relay: on PostgreSQL, a worker's wake-up reaches the other processes and nodes (LISTEN/NOTIFY).

``Runtime.wake`` is local to a process. With several nodes on one
PostgreSQL database (docs/deployment.md, Several nodes on PostgreSQL), a
job node B takes in may be for an extension whose sender lease node A
holds, and the converter, outbox, reports and tracker run on whichever node
holds their lease; a job queued by ``gatewayd send`` is in another process
altogether. Without a relay each waits for the idle poll of the process
that does the work (the sender's 5 s, the outbox's 15 s, the converter's 30 s).

- **Out.** ``rt.wake(name)`` of a name in ``RELAYED`` also goes to
  ``WakePublisher``: one ``pg_notify`` on channel ``CHANNEL`` with the
  payload ``<origin>:<name>[,<name>...]``, sent through the store's pool on a
  thread of its own (never on the event loop, never holding a store thread),
  coalesced: at most one NOTIFY per ``COALESCE`` seconds, carrying every name
  woken meanwhile, so intake at 500 messages a second sends at most 20 a
  second. A failed NOTIFY is logged at debug and dropped.
- **In.** ``WakeRelay.run`` LISTENs on ``CHANNEL`` on a connection of its own
  (not one of the pool's: a listening connection is held for as long as the
  daemon runs) and wakes the named workers of this process for each
  notification from another process (``rt.wake_here``: not published again;
  its own come back to it too and are ignored). When the database goes away
  it connects again with backoff, and then wakes every relayed worker here
  once, for what was notified while it was not listening.

Wake-ups are only a shortcut: every worker still polls the store as it did
(docs/deployment.md, Several nodes on PostgreSQL), so a notification lost to
an outage delays work by at most that poll, it never loses it. SQLite has no
relay: one node, and ``gatewayd send``'s jobs wait for the sender's idle poll.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import psycopg

from gatewayd.backoff import backoff_delay
from gatewayd.logs import get_logger
from gatewayd.runtime import Runtime, Worker
from gatewayd.store import Store, StoreError
from gatewayd.store.postgres import PostgresSettings, connection_kwargs

log = get_logger(__name__)

CHANNEL = "gatewayd_wake"
# The nap names worth waking in another process: each is a worker's
# ``rt.nap`` / ``rt.repeat`` name (sender.py, converter.py, mail/outbox.py,
# report.py, tracker.py, fax_to_email/poller.py).
RELAYED = frozenset({"sender", "converter", "outbox", "reports", "tracker", "inbound"})
COALESCE = 0.05  # seconds: at most one NOTIFY per this long per process
LISTEN_POLL = 1.0  # how often the listening loop looks at rt.stopping
RECONNECT_BASE = 0.5  # first wait after the listening connection failed
RECONNECT_CAP = 30.0


def new_origin(node: str) -> str:
    """This process's name in its payloads: the node, the pid and a random part (a pid is reused)."""
    return f"{node}/{os.getpid()}/{secrets.token_hex(4)}"


def wake_payload(origin: str, names: Iterable[str]) -> str:
    return f"{origin}:{','.join(sorted(names))}"


def parse_payload(payload: str) -> tuple[str, list[str]]:
    """(origin, relayed names) of a payload; unknown names are dropped (default deny)."""
    origin, _, names = payload.rpartition(":")
    return origin, [name for name in names.split(",") if name in RELAYED]


def notify_now(store: Store, origin: str, names: Iterable[str]) -> bool:
    """One NOTIFY for ``names`` now, from a process with no relay (``gatewayd send``); False when it failed (logged, dropped)."""
    wanted = sorted(set(names) & RELAYED)
    if not wanted or store.postgres is None:
        return False
    try:
        store.notify(CHANNEL, wake_payload(origin, wanted))
    except StoreError as exc:
        log.debug("wake_notify_failed", names=wanted, error=str(exc))
        return False
    return True


class WakePublisher:
    """``Runtime.relay_wake`` on PostgreSQL: coalesced NOTIFYs on a thread of their own. Called on the event loop."""

    def __init__(self, store: Store, origin: str, *, coalesce: float = COALESCE,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.origin = origin
        self.coalesce = coalesce
        self.notified = 0  # NOTIFYs that went out (tests count them)
        self._monotonic = monotonic
        self._pending: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._sending = False
        self._last = -math.inf
        self._closed = False
        # One thread: a NOTIFY waiting for a database that is away (up to the
        # pool's timeout) holds back the next one, not the store's threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wake-notify")

    def __call__(self, name: str) -> None:
        if self._closed or name not in RELAYED:
            return
        self._pending.add(name)
        self._schedule()

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _schedule(self) -> None:
        if self._timer is not None or self._sending or not self._pending or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a wake outside the daemon): the polls cover it
            self._pending.clear()
            return
        delay = max(0.0, self._last + self.coalesce - self._monotonic())
        self._timer = loop.call_later(delay, self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._closed:
            return
        names, self._pending = self._pending, set()
        self._last = self._monotonic()
        self._sending = True
        try:
            future = loop.run_in_executor(self._executor, self.store.notify, CHANNEL, wake_payload(self.origin, names))
        except RuntimeError:  # the executor is shut down: stopping
            self._sending = False
            return
        future.add_done_callback(self._sent)

    def _sent(self, future: asyncio.Future[None] | Future[None]) -> None:
        self._sending = False
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            log.debug("wake_notify_failed", error=str(exc))
        else:
            self.notified += 1
        self._schedule()


class WakeRelay(Worker):
    """Service "wakeups" (PostgreSQL only): publishes this process's wakes and LISTENs for the others'."""

    name = "wakeups"

    def __init__(self, rt: Runtime, *, origin: str = "", coalesce: float = COALESCE) -> None:
        settings = rt.store.postgres
        if settings is None:
            raise ValueError("the wake relay needs the PostgreSQL store")
        self.rt = rt
        self.settings: PostgresSettings = settings
        self.origin = origin or new_origin(rt.config.storage.node_name)
        self.publisher = WakePublisher(rt.store, self.origin, coalesce=coalesce)
        self.heard = 0  # notifications from other processes (tests count them)
        self.connections = 0  # successful LISTENs, reconnections included

    async def start(self) -> None:
        self.rt.relay_wake = self.publisher

    async def stop(self) -> None:
        if self.rt.relay_wake is self.publisher:
            self.rt.relay_wake = None
        self.publisher.close()

    async def run(self) -> None:
        rt = self.rt
        failures = 0
        while not rt.stopping.is_set():
            try:
                await self._listen()
                return  # stopping
            except psycopg.Error as exc:
                failures += 1
                wait = backoff_delay(failures, base=RECONNECT_BASE, cap=RECONNECT_CAP)
                # The first of a run of failures is worth a line; the polls carry on meanwhile.
                (log.warning if failures == 1 else log.debug)(
                    "wake_relay_disconnected", error=" ".join(str(exc).split()), retry_in=round(wait, 1))
                if await rt.sleep(wait):
                    return

    async def _listen(self) -> None:
        rt = self.rt
        kwargs = connection_kwargs(self.settings)
        kwargs["application_name"] = f"{self.settings.application_name} wake relay"
        conn = await psycopg.AsyncConnection.connect(self.settings.url, **kwargs)
        async with conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            self.connections += 1
            log.info("wake_relay_listening", channel=CHANNEL, reconnected=self.connections > 1)
            if self.connections > 1:
                # Notified while not listening: lost; look once now instead of at the next poll.
                for name in sorted(RELAYED):
                    rt.wake_here(name)
            while not rt.stopping.is_set():
                async for note in conn.notifies(timeout=LISTEN_POLL):
                    self._heard(note.payload)

    def _heard(self, payload: str) -> None:
        origin, names = parse_payload(payload)
        if origin == self.origin or not origin:
            return
        self.heard += 1
        for name in names:
            self.rt.wake_here(name)
        log.debug("wake_relayed", names=names, origin=origin)


__all__ = ["CHANNEL", "COALESCE", "RELAYED", "WakePublisher", "WakeRelay", "new_origin", "notify_now", "parse_payload", "wake_payload"]
