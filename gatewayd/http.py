"""``/healthz`` and ``/metrics`` on ``[http].listen`` (aiohttp, loopback by default).

Both read the store on its own thread (never on the event loop) with a
deadline: a store that does not answer makes ``/healthz`` say so instead of
hanging the prober. docs/operations.md explains the body and every metric.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gatewayd.config import Config
from gatewayd.diskspace import LowStorage
from gatewayd.jobstates import ACTIVE_STATES, JOB_STATES
from gatewayd.logs import get_logger
from gatewayd.metrics import CONTENT_TYPE_LATEST
from gatewayd.provider.paths import PATHS
from gatewayd.runtime import Runtime
from gatewayd.store import Store, StoreError
from gatewayd.store.retention import StorageFacts

log = get_logger(__name__)

STORE_DEADLINE = 3.0  # seconds the store may take to answer a probe


@dataclass
class StoreFacts:
    ok: bool
    jobs: dict[str, int] = field(default_factory=dict)
    oldest_job_age: dict[str, float] = field(default_factory=dict)  # active state -> seconds
    outbox_depth: int = 0
    outbox_oldest: float | None = None
    held_inbound: int | None = None
    storage: StorageFacts | None = None


def read_store_facts(store: Store, now: float) -> StoreFacts:
    """Runs on the store's thread."""
    jobs = store.job_counts()
    depth, oldest = store.outbox_stats()
    ages: dict[str, float] = {}
    for job in store.jobs_in_states(ACTIVE_STATES):
        ages[job.state] = max(ages.get(job.state, 0.0), now - job.created_at)
    held = store.count_received("no_recipient")
    try:
        storage = store.storage_facts()
    except StoreError:
        if store.dialect == "sqlite":
            raise
        storage = None  # the database file's size is SQLite's fact; PostgreSQL answered the queries above
    return StoreFacts(True, jobs, ages, depth, oldest, held, storage)


def poll_interval(config: Config) -> float:
    """The longest provider poll interval: the provider is judged against three of it."""
    intervals = [config.provider.status_poll_interval]
    if config.inbound.enabled:
        intervals.append(config.inbound.poll_interval)
    return max(intervals)


async def gather_health(rt: Runtime) -> tuple[bool, dict[str, Any], StoreFacts]:
    """Read the store (with a deadline), judge health, refresh the gauges."""
    store = rt.store
    try:
        facts = await asyncio.wait_for(store.run(read_store_facts, store, rt.clock()), timeout=STORE_DEADLINE)
    except Exception as exc:  # the store not answering is exactly what we report
        log.warning("health_store_check_failed", error=f"{type(exc).__name__}: {exc}")
        facts = StoreFacts(False)
    queues = None
    if facts.ok:
        queues = {
            "jobs": {state: n for state, n in sorted(facts.jobs.items()) if n},
            "oldest_job_age": {state: round(age, 1) for state, age in sorted(facts.oldest_job_age.items())},
            "outbox": {"pending": facts.outbox_depth, "oldest_age": None if facts.outbox_oldest is None else round(facts.outbox_oldest, 1)},
            "inbound_held": facts.held_inbound,
        }
    interval = poll_interval(rt.config)
    low: LowStorage | None = rt.low_storage()
    healthy, body = rt.health.check(
        store_ok=facts.ok, provider=rt.provider, poll_interval=interval, queues=queues, stopping=rt.stopping.is_set(),
        storage=str(low) if low is not None else None, database=store.where if store.dialect == "postgresql" else None,
    )
    m = rt.metrics
    if facts.ok:
        for state in JOB_STATES:
            m.jobs.labels(state).set(facts.jobs.get(state, 0))
        for state in ACTIVE_STATES:
            m.jobs_oldest.labels(state).set(facts.oldest_job_age.get(state, 0.0))
        m.outbox_depth.set(facts.outbox_depth)
        m.outbox_oldest.set(facts.outbox_oldest or 0)
        if facts.held_inbound is not None:
            m.inbound_held.set(facts.held_inbound)
        if facts.storage is not None:
            m.store_file_bytes.set(facts.storage.file_bytes)
            for state in ("pending", "sent", "failed"):
                m.outbox_emails.labels(state).set(facts.storage.outbox.get(state, 0))
    try:
        m.storage_free_bytes.set(rt.free_space(rt.config.state_dir))
    except OSError:
        pass
    m.healthy.set(1 if healthy else 0)
    m.provider_up.set(1 if body["provider"]["ok"] else 0)
    failing = body["provider"]["failing_paths"]
    for key in {*PATHS, *failing}:
        m.provider_path_failing.labels(key).set(1 if key in failing else 0)
    remaining = rt.provider.rate_limit_remaining
    if isinstance(remaining, int):
        m.provider_quota_remaining.set(remaining)
    return healthy, body, facts


class HttpServer:
    """Service "http": health for load balancers and monitoring, Prometheus metrics."""

    name = "http"

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def start(self) -> None:
        listen = self.rt.config.http.listen
        if listen is None:
            raise ValueError("http.listen is empty: the daemon runs no status server then")
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, listen.host, listen.port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            self.rt.health.listener("http", False)
            await self._runner.cleanup()
            self._runner = None
            raise
        bound = self._runner.addresses  # port 0 in the config resolved
        self.port = int(bound[0][1]) if bound else listen.port
        self.rt.health.listener("http", True)
        log.info("http_listening", address=f"{listen.host}:{self.port}")

    async def run(self) -> None:
        await self.rt.stopping.wait()

    async def stop(self) -> None:
        self.rt.health.listener("http", False)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def healthz(self, request: web.Request) -> web.Response:
        healthy, body, _ = await gather_health(self.rt)
        return web.Response(
            status=200 if healthy else 503,
            text=json.dumps(body, indent=1) + "\n",
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def metrics(self, request: web.Request) -> web.Response:
        await gather_health(self.rt)
        try:
            # A directory walk (or, on PostgreSQL, one query): in a thread, neither on the loop nor on the store's thread.
            size = await asyncio.wait_for(asyncio.to_thread(self.rt.store.documents_size), timeout=STORE_DEADLINE)
        except Exception as exc:
            log.warning("metrics_document_bytes_failed", error=f"{type(exc).__name__}: {exc}")
        else:
            self.rt.metrics.document_bytes.set(size)
        body = self.rt.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})
