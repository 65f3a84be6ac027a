"""Helpers of the lease tests (gatewayd/leadership.py): a service that records who runs it, a store that can be made to fail or hang, and a lease holder in its own process.

``python -m support.leases STATE_DIR NODE TTL NAME...`` (with GATEWAYD_TEST_DATABASE_URL and
GATEWAYD_TEST_DATABASE_PASSWORD for PostgreSQL) holds the leases NAME... with ``Leadership`` over a
real ``Store``, prints ``running NAME`` when a service starts, and runs until killed: the node
that dies without releasing anything.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gatewayd.leadership import Leadership
from gatewayd.store import Store, StoreError, Taken

T = TypeVar("T")


@dataclass
class Running:
    """Who runs which service now, over every node of a test (one event loop)."""

    now: dict[str, list[str]] = field(default_factory=dict)  # service -> nodes running it
    most: dict[str, int] = field(default_factory=dict)  # service -> most nodes seen running it at once
    starts: list[tuple[str, str]] = field(default_factory=list)  # (service, node) in order
    ends: list[tuple[str, str, str]] = field(default_factory=list)  # (service, node, "returned" | "cancelled" | "crashed")

    def runs(self, name: str, node: str) -> bool:
        return node in self.now.get(name, [])


class SpyService:
    """A worker that records when it runs, until stopping or cancelled (or ``crash`` is set)."""

    def __init__(self, name: str, node: str, running: Running, stopping: asyncio.Event) -> None:
        self.name = name
        self.node = node
        self.running = running
        self.stopping = stopping
        self.crash = asyncio.Event()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def run(self) -> None:
        r = self.running
        r.now.setdefault(self.name, []).append(self.node)
        r.most[self.name] = max(r.most.get(self.name, 0), len(r.now[self.name]))
        r.starts.append((self.name, self.node))
        how = "returned"
        try:
            stop = asyncio.ensure_future(self.stopping.wait())
            crash = asyncio.ensure_future(self.crash.wait())
            try:
                await asyncio.wait({stop, crash}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                crash.cancel()
            if self.crash.is_set():
                how = "crashed"
                raise RuntimeError("the spy crashed")
        except asyncio.CancelledError:
            how = "cancelled"
            raise
        finally:
            r.now[self.name].remove(self.node)
            r.ends.append((self.name, self.node, how))


class FlakyStore:
    """A real ``Store``'s lease calls, which a test can make fail (``fail``) or hang (``hang``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.fail = False
        self.hang = False

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.hang:
            await asyncio.Event().wait()  # a store that never answers
        return await self.store.run(fn, *args, **kwargs)

    def take_lease(self, name: str, holder: str, ttl: float, now: float | None = None) -> Taken:
        if self.fail:
            raise StoreError("the database is down (test)")
        return self.store.take_lease(name, holder, ttl, now)

    def release_lease(self, name: str, holder: str) -> bool:
        if self.fail:
            raise StoreError("the database is down (test)")
        return self.store.release_lease(name, holder)


def open_store(state_dir: str) -> Store:
    url = os.environ.get("GATEWAYD_TEST_DATABASE_URL", "")
    if url:
        return Store(state_dir, database_url=url, database_password=os.environ.get("GATEWAYD_TEST_DATABASE_PASSWORD"))
    return Store(state_dir)


async def _hold(state_dir: str, node: str, ttl: float, names: list[str]) -> None:
    store = open_store(state_dir)
    stopping = asyncio.Event()
    running = Running()
    leadership = Leadership(store, node, stopping, ttl=ttl)

    class Announcing(SpyService):
        async def run(self) -> None:
            print(f"running {self.name}", flush=True)
            await super().run()

    await asyncio.gather(*(leadership.lead(Announcing(name, node, running, stopping)).run() for name in names))


if __name__ == "__main__":
    state, node_name, seconds, *leases = sys.argv[1:]
    asyncio.run(_hold(state, node_name, float(seconds), leases))
