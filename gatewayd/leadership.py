"""Leader leases: a service that must run on one node at a time runs only while this node holds its lease.

docs/deployment.md, "Several nodes". The tracker, the reporter, the outbox,
the inbound poller (with its provider deletes), the IMAP intake, the
purger and the office converter each have one lease row, named after the
service (gatewayd/store/leases.py), so they may spread over the nodes.
``Leased`` wraps such a service:

* standby: it tries to take the lease every ``ttl / 3`` seconds;
* holding: the service's ``run()`` runs as a task, and the lease is renewed
  every ``ttl / 3``; a failed renewal (store error) is retried sooner;
* lost: when another node has the lease, or no renewal succeeded before
  this node's hold runs out by its own monotonic clock (less a guard of
  ``ttl / 10``, so it stops before another node may start), the service's
  task is cancelled and the wrapper goes back to standby. Cancelling is
  safe: these services already survive a crash or kill at any point, each
  step is one commit (docs/architecture.md, Durability rules);
* a clean stop (or a crash of the service) releases the lease, so another
  node takes over at its next attempt instead of after expiry.

On SQLite there is one node (or several daemons on one machine, as the
tests run them) and the same code runs: the lease is taken at once.

What holding means on a node that froze (SIGSTOP, a long GC or swap
storm): when it runs again, its monotonic clock has moved on, so the next
look at the lease finds the hold over and cancels the service; a step the
service was already in may finish first. The work these services do is
idempotent or compare-and-set in the store (a report is queued once, an
email marked sent once), and submissions to the provider are not leased
here but claimed per job by the sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from gatewayd.logs import get_logger
from gatewayd.runtime import Service
from gatewayd.store import Taken

__all__ = ["DEFAULT_LEASE", "LeaseStore", "Leased", "Leadership", "NodeName", "NodeNameInUse", "Tenure", "node_token"]

log = get_logger(__name__)

T = TypeVar("T")

DEFAULT_LEASE = 30.0  # seconds: storage.lease's default (docs/configuration.md)
CANCEL_GRACE = 5.0  # seconds a cancelled service may take to unwind before it is left behind (logged)


class LeaseStore(Protocol):
    """What leases need of the store (gatewayd/store/leases.py), run off the loop through ``run``."""

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    def take_lease(self, name: str, holder: str, ttl: float, now: float | None = None) -> Taken: ...

    def release_lease(self, name: str, holder: str) -> bool: ...


@dataclass
class Tenure:
    """How long this node's hold on one lease lasts, by its own monotonic clock.

    A renewal asked at ``asked`` gives the lease until the store's ``now + ttl``;
    the store's ``now`` is later than ``asked``, so ``asked + ttl`` is a safe
    end, and the node stops ``guard`` seconds before it.
    """

    ttl: float
    until: float = float("-inf")

    @property
    def guard(self) -> float:
        return self.ttl / 10

    @property
    def renew_every(self) -> float:
        return self.ttl / 3

    @property
    def retry_every(self) -> float:
        """After a failed renewal: sooner than ``renew_every``, so a short store hiccup costs nothing."""
        return self.ttl / 10

    def renewed(self, asked: float) -> None:
        self.until = asked + self.ttl - self.guard

    def left(self, now: float) -> float:
        """Seconds of the hold left (<= 0: over)."""
        return self.until - now

    def next_check(self, now: float, *, failing: bool) -> float:
        """Seconds until the next renewal attempt (never past the end of the hold)."""
        return max(0.0, min(self.retry_every if failing else self.renew_every, self.left(now)))


class Leadership:
    """This node's leases: wraps each service that must run on one node at a time.

    ``on_change(name, held)`` is told each change (the daemon sets the
    ``gatewayd_lease_held`` gauge from it and clears a standby service's
    health entries); ``held`` maps each lease to whether this node has it now.
    """

    def __init__(
        self,
        store: LeaseStore,
        node: str,
        stopping: asyncio.Event,
        *,
        ttl: float = DEFAULT_LEASE,
        monotonic: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.store = store
        self.node = node
        self.stopping = stopping
        self.ttl = ttl
        self.monotonic = monotonic
        self.on_change = on_change
        self.held: dict[str, bool] = {}
        self._tenures: dict[str, Tenure] = {}  # each lease's last hold on this node

    def fence(self, name: str) -> bool:
        """False when this node held ``name`` and its hold has run out by its own monotonic clock.

        A leased service asks right before a step with an effect outside the
        store (the outbox, before each email): after a freeze the clock has
        moved on, and this says no before the lease loop has even noticed
        (docs/deployment.md, Several nodes). A service not run under a lease
        (``name`` never held here) is not fenced."""
        tenure = self._tenures.get(name)
        return tenure is None or tenure.left(self.monotonic()) > 0

    def lead(self, service: Service) -> Leased:
        """``service`` under the lease named after it."""
        return Leased(service, self)

    def _changed(self, name: str, held: bool) -> None:
        if self.held.get(name) == held:
            return
        self.held[name] = held
        if self.on_change is not None:
            try:
                self.on_change(name, held)
            except Exception:  # a metrics or health hook must not stop the lease loop
                log.exception("lease_hook_failed", lease=name)


class Leased:
    """A service that runs only while this node holds its lease (see the module docstring)."""

    def __init__(self, service: Service, leadership: Leadership) -> None:
        self.service = service
        self.name = service.name
        self.leadership = leadership
        self._holder_seen = ""  # the other node last seen holding it (logged once per change)

    async def start(self) -> None:
        await self.service.start()

    async def stop(self) -> None:
        await self.service.stop()

    async def run(self) -> None:
        lead = self.leadership
        while not lead.stopping.is_set():
            tenure = Tenure(lead.ttl)
            if not await self._take(tenure):
                lead._changed(self.name, False)
                if await self._sleep(tenure.renew_every):
                    return
                continue
            lead._changed(self.name, True)
            ended = False
            try:
                ended = await self._hold(tenure)
            finally:
                lead._changed(self.name, False)
                await self._release()
            if ended and not lead.stopping.is_set():
                return  # the service's run() returned by itself: the supervisor restarts this wrapper

    # ------------------------------------------------------------ steps

    async def _take(self, tenure: Tenure) -> bool:
        lead = self.leadership
        asked = lead.monotonic()
        try:
            taken = await asyncio.wait_for(
                lead.store.run(lead.store.take_lease, self.name, lead.node, lead.ttl), timeout=tenure.renew_every
            )
        except Exception as exc:  # any failure to confirm the lease means not holding it
            log.warning("lease_take_failed", lease=self.name, node=lead.node, error=f"{type(exc).__name__}: {exc}")
            return False
        if not taken.held:
            holder = taken.lease.holder if taken.lease is not None else ""
            if holder != self._holder_seen:
                self._holder_seen = holder
                log.info("lease_held_elsewhere", lease=self.name, node=lead.node, holder=holder,
                         until=taken.lease.expires_at if taken.lease is not None else None)
            return False
        self._holder_seen = ""
        tenure.renewed(asked)
        log.info("lease_taken", lease=self.name, node=lead.node, ttl=lead.ttl, taken_over_from=taken.previous or None,
                 until=taken.lease.expires_at if taken.lease is not None else None)
        return True

    async def _hold(self, tenure: Tenure) -> bool:
        """Run the service while the lease is renewed; True when the service ended by itself, False when the lease was lost."""
        lead = self.leadership
        lead._tenures[self.name] = tenure
        task: asyncio.Task[None] = asyncio.create_task(self._run_service(), name=f"{self.name}-leased")
        failing = False
        try:
            while True:
                wait = tenure.next_check(lead.monotonic(), failing=failing)
                done, _ = await asyncio.wait({task}, timeout=wait)
                if task in done:
                    task.result()  # a crash goes to the supervisor (the lease is released first)
                    return True
                now = lead.monotonic()
                if tenure.left(now) <= 0:
                    log.warning("lease_lost", lease=self.name, node=lead.node, reason="not renewed in time (store not answering)")
                    return False
                renewed = await self._renew(tenure, now)
                if renewed is False:
                    return False
                failing = renewed is None
        finally:
            tenure.until = float("-inf")  # the fence closes with the hold
            if not task.done():
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=CANCEL_GRACE)
                if task not in done:
                    log.error("leased_service_not_stopped", lease=self.name, node=lead.node, grace=CANCEL_GRACE)

    async def _run_service(self) -> None:
        await self.service.run()

    async def _renew(self, tenure: Tenure, asked: float) -> bool | None:
        """True: renewed; False: another node has it; None: the store did not answer (try again soon)."""
        lead = self.leadership
        try:
            taken = await asyncio.wait_for(
                lead.store.run(lead.store.take_lease, self.name, lead.node, lead.ttl), timeout=max(0.001, tenure.left(asked))
            )
        except Exception as exc:
            log.warning("lease_renew_failed", lease=self.name, node=lead.node, error=f"{type(exc).__name__}: {exc}",
                        seconds_left=round(max(0.0, tenure.left(lead.monotonic())), 1))
            return None
        if not taken.held:
            holder = taken.lease.holder if taken.lease is not None else ""
            log.warning("lease_lost", lease=self.name, node=lead.node, reason="taken by another node", holder=holder)
            return False
        tenure.renewed(asked)
        return True

    async def _release(self) -> None:
        lead = self.leadership
        try:
            released = await asyncio.wait_for(lead.store.run(lead.store.release_lease, self.name, lead.node), timeout=lead.ttl / 3)
        except Exception as exc:  # it expires by itself
            log.warning("lease_release_failed", lease=self.name, node=lead.node, error=f"{type(exc).__name__}: {exc}")
            return
        if released:
            log.info("lease_released", lease=self.name, node=lead.node)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.leadership.stopping.wait(), timeout=seconds)
        return self.leadership.stopping.is_set()


class NodeNameInUse(Exception):
    """Another running gatewayd has this node's ``storage.node_name``."""


def node_token(state_dir: Path) -> str:
    """This node's own token, kept in its state directory: a restart of the same
    node (same state directory) is itself, a second machine with the same
    ``node_name`` is not."""
    path = state_dir / "node-token"
    with contextlib.suppress(FileNotFoundError):
        token = path.read_text(encoding="ascii").strip()
        if token:
            return token
    token = secrets.token_hex(8)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # the store makes it too; a test may build services first
    tmp = path.with_name(f".node-token-{os.getpid()}")
    tmp.write_text(token + "\n", encoding="ascii")
    os.replace(tmp, path)
    return path.read_text(encoding="ascii").strip()  # another process may have won the rename: its token


class NodeName:
    """Service "node": holds the lease ``node:<node_name>`` for this process's lifetime.

    Two nodes with the same name would both believe they hold every lease
    named for that node (each worker's, each extension's): one fax sent by
    both. At start this takes the name's own lease, with a holder made of the
    name and the token in this node's state directory; if another holder
    keeps it past one lease period, the start fails with ``NodeNameInUse``
    (docs/deployment.md, Several nodes). A restart of the same node finds its
    own holder and goes on at once.
    """

    name = "node"

    def __init__(self, store: LeaseStore, node: str, token: str, stopping: asyncio.Event, *, ttl: float = DEFAULT_LEASE) -> None:
        self.store = store
        self.node = node
        self.holder = f"{node}#{token}"
        self.lease = f"node:{node}"
        self.stopping = stopping
        self.ttl = ttl

    async def start(self) -> None:
        deadline = time.monotonic() + self.ttl + self.ttl / 3
        seen = ""
        while True:
            taken = await self.store.run(self.store.take_lease, self.lease, self.holder, self.ttl)
            if taken.held:
                return
            holder = taken.lease.holder if taken.lease is not None else ""
            if holder != seen:
                seen = holder
                log.warning("node_name_held", node=self.node, holder=holder, hint="waiting one lease period for it to expire")
            if time.monotonic() >= deadline:
                raise NodeNameInUse(
                    f"storage.node_name {self.node!r} is in use by another running gatewayd ({holder}): give each node its own name"
                )
            await asyncio.sleep(self.ttl / 6)

    async def run(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=self.ttl / 3)
            if self.stopping.is_set():
                return
            try:
                taken = await self.store.run(self.store.take_lease, self.lease, self.holder, self.ttl)
            except Exception as exc:  # the store is away: the other leases say so too
                log.warning("node_name_renew_failed", node=self.node, error=f"{type(exc).__name__}: {exc}")
                continue
            if not taken.held:
                log.error("node_name_in_use", node=self.node, holder=taken.lease.holder if taken.lease is not None else "",
                          hint="another gatewayd took this node's name while this one could not renew it: give each node its own name")

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.store.run(self.store.release_lease, self.lease, self.holder)
