"""Two senders on one store (SQLite and PostgreSQL) against the provider
simulator over HTTP: work shared through extension leases, each job to the
provider once, a dead node's job reconciled by the node that takes its
extension over, a frozen node's POST fenced, and the provider's 429 shared
(docs/provider.md, Several nodes)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from support.corpus import make_pdf
from support.e2f import FAST_SENDER, NUMBER_1, NUMBER_2, SENDER, load, wait_for
from support.gateway import InProcessGateway, in_process

from gatewayd.config import Config
from gatewayd.email_to_fax.sender import HOLD_KEY, LEASE_PREFIX, Sender, SenderTuning
from gatewayd.provider.client import ProviderClient
from gatewayd.store import NewJob, Store

NUMBER_3 = "+4930123456"
# One extension at a time per node, so the other node finds extensions to take.
TUNING = dataclasses.replace(FAST_SENDER, concurrency=1)
POST = "/extension/*/fax/out/"


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """A new Store on the test's one database: each node opens its own."""
    if request.param == "sqlite":
        return lambda: Store(tmp_path / "state")
    pg_url = request.getfixturevalue("pg_url")
    password = request.getfixturevalue("pg_server").password
    count = iter(range(100))
    return lambda: Store(tmp_path / f"node-{next(count)}", database_url=pg_url, database_password=password)


@contextlib.asynccontextmanager
async def node(config: Config, sim: Any, store: Store, name: str, *, tuning: SenderTuning = TUNING,
               monotonic: Callable[[], float] = time.monotonic) -> AsyncIterator[InProcessGateway]:
    """One gateway node running only the sender, as ``name``, on its own Store and provider client."""
    def provider(config: Config, metrics: Any) -> ProviderClient:
        return ProviderClient(sim.base_url, sim.token_url, "demo", "demo", timeout=5.0, on_request=metrics.observe_provider_request)

    def sender(rt: Any) -> Sender:
        return Sender(rt, tuning, node=name, monotonic=monotonic)

    async with in_process(config, only={"sender"}, replace={"sender": sender}, store=store, provider=provider, check=False) as gw:
        yield gw


def enqueue(store: Store, targets: list[tuple[int, str]]) -> list[int]:
    """Queued jobs, one per (extension, number), as `gatewayd send` leaves them."""
    pdf = make_pdf(1)
    sha = store.save_document(pdf)
    jobs = [NewJob(number=n, dst_num=n.lstrip("+"), extension=ext, report_to=SENDER, source="cli") for ext, n in targets]
    return store.enqueue_jobs(sha, 1, len(pdf), jobs)


def dead_node_job(store: Store, extension: int = 122, number: str = NUMBER_1) -> int:
    """A job node "a" claimed (committed ``submitting``, claimed_by "a") before it
    died: its POST may or may not have left, and its lease has run out."""
    [job_id] = enqueue(store, [(extension, number)])
    lease = LEASE_PREFIX + str(extension)
    assert store.take_lease(lease, "a", 30.0).held
    now = time.time()
    assert store.claim_job(job_id, "a", lease, 10.0, reason="submitting to the provider", submitted_at=now,
                           next_attempt_at=now + 3600) == "claimed"
    store.take_lease(lease, "a", 30.0, now=now - 60)  # renewed last a minute ago: expired
    assert not store.holds_lease(lease, "a")
    return job_id


@pytest.fixture
def dead_job(open_store: Callable[[], Store]) -> int:
    """``dead_node_job`` on extension 122, put there through a Store of its own (closed
    again): the node under test opens the database afresh, as after a restart."""
    store = open_store()
    try:
        return dead_node_job(store)
    finally:
        store.close()


def submitted(store: Store, ids: list[int]) -> bool:
    return all(store.get_job(i).state == "submitted" for i in ids)


async def test_two_nodes_share_the_work_and_send_each_job_once(tmp_path: Path, sim_data: dict, sim: Any,
                                                              open_store: Callable[[], Store]) -> None:
    sim.add_extension(124)
    sim.add_latency(0.2, POST, method="POST")  # an upload takes a while: the other node finds work meanwhile
    config = load(tmp_path, sim_data)
    targets = [(ext, n) for ext in (122, 123, 124) for n in (NUMBER_1, NUMBER_2)]
    async with node(config, sim, open_store(), "a") as a, node(config, sim, open_store(), "b") as b:
        ids = enqueue(a.rt.store, targets)
        a.rt.wake("sender")
        b.rt.wake("sender")
        await wait_for(lambda: submitted(a.rt.store, ids), what="every job submitted")
        jobs = [a.rt.store.get_job(i) for i in ids]
        claimers = [a.rt.store.claimed_by(i) for i in ids]
    faxes = sim.sent_faxes()
    assert sim.count_requests("POST", POST) == len(ids) == len(faxes)  # each job once, none twice
    assert sorted(j.provider_id for j in jobs) == sorted(f.id for f in faxes)
    assert set(claimers) == {"a", "b"}  # both nodes did work
    assert sorted((f.extension_id, f.dst_num) for f in faxes) == sorted((e, n[1:]) for e, n in targets)


async def test_a_dead_nodes_job_is_reconciled_by_the_taker_then_sent_once(tmp_path: Path, sim_data: dict, sim: Any,
                                                                         open_store: Callable[[], Store], dead_job: int) -> None:
    config = load(tmp_path, sim_data)
    async with node(config, sim, open_store(), "b") as b:
        await wait_for(lambda: submitted(b.rt.store, [dead_job]), what="the job sent by b")
        events = [e.reason for e in b.rt.store.job_events(dead_job)]
        claimer = b.rt.store.claimed_by(dead_job)
    assert sim.count_requests("POST", POST) == 1
    # Looked at the provider's list (twice) before the one POST: never blindly.
    assert sim.count_requests("GET", POST) >= 2
    assert "provider has no record of the submission" in events
    assert claimer == "b"


async def test_a_fax_the_dead_node_sent_is_adopted_not_resent(tmp_path: Path, sim_data: dict, sim: Any,
                                                              open_store: Callable[[], Store], dead_job: int) -> None:
    config = load(tmp_path, sim_data)
    # Node a's POST reached the provider before it died.
    async with ProviderClient(sim.base_url, sim.token_url, "demo", "demo") as client:
        created = await client.send_fax(122, NUMBER_1[1:], make_pdf(1))
    async with node(config, sim, open_store(), "b") as b:
        await wait_for(lambda: submitted(b.rt.store, [dead_job]), what="the job adopted by b")
        job = b.rt.store.get_job(dead_job)
    assert job.provider_id == created.id
    assert sim.count_requests("POST", POST) == 1


async def test_a_live_nodes_submitting_job_is_left_to_it(tmp_path: Path, sim_data: dict, sim: Any,
                                                        open_store: Callable[[], Store]) -> None:
    """A starting node does not reconcile another live node's jobs; a job on another extension goes on."""
    config = load(tmp_path, sim_data)
    store = open_store()
    job_id = dead_node_job(store)
    assert store.take_lease(LEASE_PREFIX + "122", "a", 30.0).held  # node a is alive after all
    store.close()
    async with node(config, sim, open_store(), "b") as b:
        [other] = enqueue(b.rt.store, [(123, NUMBER_2)])
        b.rt.wake("sender")
        await wait_for(lambda: submitted(b.rt.store, [other]), what="b's own job")
        job = b.rt.store.get_job(job_id)
    assert job.state == "submitting" and job.next_attempt_at is not None and job.next_attempt_at > time.time() + 600
    assert sim.count_requests("GET", POST) == 0  # a's job was never looked at
    assert [f.extension_id for f in sim.sent_faxes()] == [123]


async def test_a_node_frozen_between_claim_and_post_does_not_post(tmp_path: Path, sim_data: dict, sim: Any) -> None:
    config = load(tmp_path, sim_data)
    frozen = [0.0]

    def monotonic() -> float:
        return time.monotonic() + frozen[0]

    async with node(config, sim, Store(tmp_path / "state"), "a", monotonic=monotonic) as a:
        real = a.rt.provider

        class Freezing:
            """The provider client, but the node "freezes" for a whole lease right after its claim."""

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            async def send_fax(self, *args: Any, **kw: Any) -> Any:
                frozen[0] += TUNING.lease
                return await real.send_fax(*args, **kw)

        a.rt.provider = Freezing()  # type: ignore[assignment]
        [job_id] = enqueue(a.rt.store, [(122, NUMBER_1)])
        a.rt.wake("sender")
        await wait_for(lambda: a.rt.store.get_job(job_id).state == "submitting", what="the claim")
        await wait_for(lambda: not a.rt.store.leases(), what="the extension released")
        job = a.rt.store.get_job(job_id)
        claimer = a.rt.store.claimed_by(job_id)
        a.rt.provider = real
    assert sim.count_requests("POST", POST) == 0  # fenced: nothing sent
    assert job.state == "submitting" and claimer == "a"  # left for reconciliation


async def test_a_node_that_lost_the_extension_while_reconciling_changes_nothing(tmp_path: Path, sim_data: dict, sim: Any,
                                                                               open_store: Callable[[], Store], dead_job: int) -> None:
    config = load(tmp_path, sim_data)
    async with node(config, sim, open_store(), "b") as b:
        real, lease = b.rt.provider, LEASE_PREFIX + "122"

        class Freezing:
            """The provider client, but node b "freezes" while it reads the provider's list: c takes the extension."""

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            async def list_sent_faxes(self, *args: Any, **kw: Any) -> Any:
                b.rt.store.take_lease(lease, "b", 30.0, now=time.time() - 60)
                assert b.rt.store.take_lease(lease, "c", 30.0).previous == "b"
                return await real.list_sent_faxes(*args, **kw)

        b.rt.provider = Freezing()  # type: ignore[assignment]
        b.rt.wake("sender")
        await wait_for(lambda: sim.count_requests("GET", POST) >= 1, what="b's look at the list")
        await wait_for(lambda: b.rt.store.leases()[0].holder == "c", what="c holding the extension")
        await wait_for(lambda: "sender-122" not in {t.get_name() for t in asyncio.all_tasks()}, what="b's drain over")
        job = b.rt.store.get_job(dead_job)
        b.rt.provider = real
    # Left as node a claimed it, for c to reconcile: b neither noted a miss nor requeued.
    assert job.state == "submitting" and job.reason == "submitting to the provider"
    assert sim.count_requests("POST", POST) == 0


async def test_a_429_seen_by_one_node_holds_the_other(tmp_path: Path, sim_data: dict, sim: Any,
                                                     open_store: Callable[[], Store]) -> None:
    config = load(tmp_path, sim_data)
    sim.rate_limit_next(2, path=POST)
    async with node(config, sim, open_store(), "a") as a:
        first = enqueue(a.rt.store, [(122, NUMBER_1)])
        a.rt.wake("sender")
        await wait_for(lambda: a.rt.store.get_job(first[0]).reason.startswith("provider rate limit"), what="the 429")
        hold = float(a.rt.store.get_meta(HOLD_KEY) or 0)
    assert hold > 0
    async with node(config, sim, open_store(), "b") as b:
        second = enqueue(b.rt.store, [(123, NUMBER_2)])
        b.rt.wake("sender")
        await wait_for(lambda: submitted(b.rt.store, first + second), what="both sent by b")
    posts = [r for r in sim.request_log if r.method == "POST" and r.path.endswith("/fax/out/")]
    assert [r.status for r in posts][0] == 429 and len(posts) == 3
    wall = sim.clock.wall() - sim.clock.now()  # simulator clock -> wall clock
    # b's provider client never saw the 429: the hold in the store kept it waiting.
    assert all(r.time + wall >= hold - 0.05 for r in posts[1:]), (hold, [r.time + wall for r in posts])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_claim_needs_the_lease(tmp_path: Path, request: pytest.FixtureRequest, backend: str) -> None:
    if backend == "sqlite":
        store = Store(tmp_path / "state")
    else:
        store = Store(tmp_path / "state", database_url=request.getfixturevalue("pg_url"),
                      database_password=request.getfixturevalue("pg_server").password)
    try:
        [job_id] = enqueue(store, [(122, NUMBER_3)])
        lease, now = LEASE_PREFIX + "122", time.time()
        claim = dict(reason="submitting", submitted_at=now, next_attempt_at=now + 60)
        assert store.claim_job(job_id, "a", lease, 10.0, **claim) == "lease"  # nobody holds it
        assert store.take_lease(lease, "b", 30.0).held
        assert store.claim_job(job_id, "a", lease, 10.0, **claim) == "lease"  # another node does
        assert store.take_lease(lease, "a", 30.0, now=now - 25).held is False
        store.release_lease(lease, "b")
        assert store.take_lease(lease, "a", 15.0).held
        assert store.claim_job(job_id, "a", lease, 20.0, **claim) == "lease"  # not for long enough
        assert store.claim_job(job_id, "a", lease, 10.0, **claim) == "claimed"
        assert store.claim_job(job_id, "a", lease, 10.0, **claim) == "moved"  # once only
        job = store.get_job(job_id)
        assert job.state == "submitting" and store.claimed_by(job_id) == "a"
    finally:
        store.close()
