"""Leader leases (gatewayd/leadership.py): a one-at-a-time service runs on one node at a time,
another node takes over when the holder stops, dies, or loses its store, on SQLite and PostgreSQL.

Two nodes are two ``Leadership`` objects over two ``Store`` objects on one database (one SQLite
file, or one PostgreSQL database), as two daemons are; the services are spies that record who
runs them (support/leases.py). Nothing here asserts a duration: the tests wait for what must
happen, and check the order in which it happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from support.e2f import wait_for
from support.leases import FlakyStore, Running, SpyService
from support.process import PYTHON, clean_env

from gatewayd.leadership import Leadership, Leased, Tenure
from gatewayd.store import Store

TTL = 1.5  # short, so takeovers after expiry happen within the test; the default is 30 s


# ----------------------------------------------------------------- the hold's clock


def test_the_hold_ends_a_guard_before_the_lease_and_renewals_come_every_third() -> None:
    tenure = Tenure(30.0)  # a fake clock: the times are plain numbers
    assert tenure.left(0.0) < 0  # nothing held yet
    tenure.renewed(asked=100.0)
    assert tenure.left(100.0) == pytest.approx(27.0)  # the store's expiry is 130 or later; stop 3 s before
    assert tenure.next_check(100.0, failing=False) == pytest.approx(10.0)
    assert tenure.next_check(100.0, failing=True) == pytest.approx(3.0)  # a failed renewal is tried again sooner
    assert tenure.next_check(125.0, failing=False) == pytest.approx(2.0)  # never past the end of the hold
    assert tenure.next_check(128.0, failing=False) == 0.0 and tenure.left(128.0) < 0


# ----------------------------------------------------------------- nodes


class Node:
    """One node: its store, its stop signal, its leadership and its leased spies."""

    def __init__(self, name: str, store: Store, running: Running, leases: tuple[str, ...]) -> None:
        self.name = name
        self.store = store
        self.flaky = FlakyStore(store)
        self.stopping = asyncio.Event()
        self.changes: list[tuple[str, bool]] = []
        self.leadership = Leadership(self.flaky, name, self.stopping, ttl=TTL, on_change=lambda n, held: self.changes.append((n, held)))
        self.spies = {lease: SpyService(lease, name, running, self.stopping) for lease in leases}
        self.leased = [self.leadership.lead(spy) for spy in self.spies.values()]
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(leased.run()) for leased in self.leased]

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 10)
        self.store.close()


StoreFactory = Callable[[str], Store]


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Stores of several nodes on one database (SQLite: one state dir; PostgreSQL: one database, a state dir each)."""
    if request.param == "sqlite":
        yield lambda node: Store(tmp_path / "state")
    else:
        pg_url = request.getfixturevalue("pg_url")
        password = request.getfixturevalue("pg_server").password
        yield lambda node: Store(tmp_path / node, database_url=pg_url, database_password=password)


@contextlib.asynccontextmanager
async def nodes(make_store: StoreFactory, *names: str, leases: tuple[str, ...] = ("tracker", "outbox")) -> AsyncIterator[tuple[Running, list[Node]]]:
    running = Running()
    made = [Node(name, make_store(name), running, leases) for name in names]
    try:
        yield running, made
    finally:
        for node in made:
            if node.tasks:
                with contextlib.suppress(Exception):
                    await node.stop()


def holders(store: Store) -> dict[str, str]:
    return {lease.name: lease.holder for lease in store.leases()}


async def test_one_node_runs_each_service_and_the_other_takes_over_when_it_stops(make_store: StoreFactory) -> None:
    async with nodes(make_store, "gw-a", "gw-b") as (running, (a, b)):
        a.start()
        await wait_for(lambda: running.runs("tracker", "gw-a") and running.runs("outbox", "gw-a"), what="gw-a runs both")
        b.start()
        # gw-b tries every TTL/3: let it try several times while gw-a holds both
        await wait_for(lambda: ("tracker", False) in b.changes and ("outbox", False) in b.changes, what="gw-b on standby")
        await asyncio.sleep(TTL)
        assert running.now == {"tracker": ["gw-a"], "outbox": ["gw-a"]}
        assert holders(b.store) == {"tracker": "gw-a", "outbox": "gw-a"}
        assert a.leadership.held == {"tracker": True, "outbox": True} and b.leadership.held == {"tracker": False, "outbox": False}

        await a.stop()  # a clean stop releases: gw-b takes over at its next attempt
        assert ("tracker", "gw-a", "returned") in running.ends
        await wait_for(lambda: running.runs("tracker", "gw-b") and running.runs("outbox", "gw-b"), what="gw-b took over")
        assert holders(b.store) == {"tracker": "gw-b", "outbox": "gw-b"}
        assert running.most == {"tracker": 1, "outbox": 1}  # never two at once
        assert a.changes[-2:] in ([("tracker", False), ("outbox", False)], [("outbox", False), ("tracker", False)])
    # gw-b's clean stop released both
    check = make_store("gw-check")
    try:
        assert check.leases() == []
    finally:
        check.close()


async def test_a_node_whose_store_fails_stops_the_service_before_its_lease_expires(make_store: StoreFactory) -> None:
    async with nodes(make_store, "gw-a", "gw-b", leases=("tracker",)) as (running, (a, b)):
        a.start()
        await wait_for(lambda: running.runs("tracker", "gw-a"), what="gw-a runs the tracker")
        b.start()
        await wait_for(lambda: ("tracker", False) in b.changes, what="gw-b on standby")
        a.flaky.fail = True  # gw-a can neither renew nor release
        await wait_for(lambda: running.runs("tracker", "gw-b"), timeout=10 * TTL, what="gw-b took over after the expiry")
        # gw-a cancelled its tracker before gw-b started one
        assert ("tracker", "gw-a", "cancelled") in running.ends
        assert running.starts == [("tracker", "gw-a"), ("tracker", "gw-b")] and running.most == {"tracker": 1}
        a.flaky.fail = False
        await asyncio.sleep(TTL)  # gw-a's store is back: it stays on standby while gw-b renews
        assert running.now == {"tracker": ["gw-b"]}


async def test_a_store_that_hangs_ends_the_hold_on_the_nodes_own_clock(make_store: StoreFactory) -> None:
    async with nodes(make_store, "gw-a", leases=("tracker",)) as (running, (a,)):
        a.start()
        await wait_for(lambda: running.runs("tracker", "gw-a"), what="gw-a runs the tracker")
        a.flaky.hang = True
        await wait_for(lambda: ("tracker", "gw-a", "cancelled") in running.ends, timeout=10 * TTL, what="the hold ended")
        assert a.changes == [("tracker", True), ("tracker", False)]
        a.flaky.hang = False
        await wait_for(lambda: running.runs("tracker", "gw-a"), timeout=10 * TTL, what="taken again once the store answers")


async def test_a_crashed_service_releases_its_lease_and_the_crash_reaches_the_supervisor(make_store: StoreFactory) -> None:
    async with nodes(make_store, "gw-a", leases=("tracker",)) as (running, (a,)):
        [leased] = a.leased
        task = asyncio.create_task(leased.run())
        await wait_for(lambda: running.runs("tracker", "gw-a"), what="gw-a runs the tracker")
        assert holders(a.store) == {"tracker": "gw-a"}
        a.spies["tracker"].crash.set()
        with pytest.raises(RuntimeError, match="the spy crashed"):
            await asyncio.wait_for(task, 10)
        assert holders(a.store) == {}  # released: another node need not wait for the expiry
        a.store.close()


def test_leased_services_keep_their_name() -> None:
    spy = SpyService("inbound", "gw-a", Running(), asyncio.Event())
    leased = Leadership(FlakyStore.__new__(FlakyStore), "gw-a", asyncio.Event()).lead(spy)
    assert isinstance(leased, Leased) and leased.name == "inbound" and leased.service is spy


# ----------------------------------------------------------------- a node killed


def holder_process(state_dir: Path, node: str, env: dict[str, str], *names: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PYTHON, "-m", "support.leases", str(state_dir), node, str(TTL), *names],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


async def test_a_killed_holder_is_taken_over_after_its_lease_expires(make_store: StoreFactory, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """SIGKILL: nothing is released; the other node waits for the expiry, then runs the service."""
    env = clean_env(PYTHONPATH=f"{Path(__file__).resolve().parents[1]}{os.pathsep}{clean_env()['PYTHONPATH']}")
    if "pg_url" in request.fixturenames:
        env["GATEWAYD_TEST_DATABASE_URL"] = request.getfixturevalue("pg_url")
        env["GATEWAYD_TEST_DATABASE_PASSWORD"] = request.getfixturevalue("pg_server").password
        state_dir = tmp_path / "gw-a"
    else:
        state_dir = tmp_path / "state"
    proc = holder_process(state_dir, "gw-a", env, "tracker")
    try:
        assert proc.stdout is not None
        stdout = proc.stdout

        def announced() -> None:
            for line in stdout:  # its log lines, then ours
                if line.strip() == "running tracker":
                    return
            raise AssertionError("the holder ended without running the tracker")

        await asyncio.wait_for(asyncio.to_thread(announced), 60)
        async with nodes(make_store, "gw-b", leases=("tracker",)) as (running, (b,)):
            b.start()
            await wait_for(lambda: ("tracker", False) in b.changes, what="gw-b on standby")
            assert holders(b.store) == {"tracker": "gw-a"} and not running.runs("tracker", "gw-b")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            await wait_for(lambda: running.runs("tracker", "gw-b"), timeout=10 * TTL, what="gw-b took over after the expiry")
            assert holders(b.store) == {"tracker": "gw-b"}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)




# ----------------------------------------------------------------- the fence


async def test_the_fence_closes_once_the_nodes_own_clock_has_passed_the_hold(tmp_path: Path) -> None:
    """After a freeze the monotonic clock has jumped: ``fence`` (what a leased service asks
    before an email goes out) says no at once, before the lease loop has looked at the store."""
    store = Store(tmp_path / "state")
    clock = [1000.0]
    stopping = asyncio.Event()
    leadership = Leadership(store, "a", stopping, ttl=TTL, monotonic=lambda: clock[0])
    running = Running()
    leased = leadership.lead(SpyService("outbox", "a", running, stopping))
    assert leadership.fence("outbox")  # never held here: not run under a lease, not fenced
    task = asyncio.create_task(leased.run())
    try:
        await wait_for(lambda: running.runs("outbox", "a"), what="the lease taken")
        assert leadership.fence("outbox")
        clock[0] += TTL  # frozen for a lease period: the loop has not run since
        assert not leadership.fence("outbox")
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)
        store.close()
