"""``/healthz`` and ``/metrics`` on ``[http].listen`` (aiohttp, loopback by default)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from gatewayd.logs import get_logger
from gatewayd.metrics import CONTENT_TYPE_LATEST
from gatewayd.store import JOB_STATES

log = get_logger(__name__)


class HttpServer:
    """Service "http": health for load balancers and monitoring, Prometheus metrics."""

    name = "http"

    def __init__(self, rt: Any) -> None:
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
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, listen.host, listen.port, reuse_address=True)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1] if sockets else listen.port
        self.rt.health.listener("http", True)
        log.info("http_listening", address=f"{listen.host}:{self.port}")

    async def run(self) -> None:
        await self.rt.stopping.wait()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _store_facts(self) -> tuple[bool, dict[str, int], tuple[int, float | None]]:
        store = self.rt.store

        def facts() -> tuple[dict[str, int], tuple[int, float | None]]:
            return store.job_counts(), store.outbox_stats()

        try:
            counts, outbox = await asyncio.wait_for(store.run(facts), timeout=5)
            return True, counts, outbox
        except Exception as exc:  # the store not answering is exactly what we report
            log.warning("health_store_check_failed", error=str(exc))
            return False, {}, (0, None)

    def _poll_interval(self) -> float:
        cfg = self.rt.config
        intervals = [cfg.provider.status_poll_interval]
        if cfg.inbound.enabled:
            intervals.append(cfg.inbound.poll_interval)
        return max(intervals)

    async def healthz(self, request: web.Request) -> web.Response:
        store_ok, counts, (depth, oldest) = await self._store_facts()
        queues = {
            "jobs": {state: counts.get(state, 0) for state in JOB_STATES if counts.get(state)},
            "outbox": {"pending": depth, "oldest_age": None if oldest is None else round(oldest, 1)},
        }
        healthy, body = self.rt.health.check(store_ok=store_ok, provider=self.rt.provider, poll_interval=self._poll_interval(), queues=queues)
        return web.Response(status=200 if healthy else 503, text=json.dumps(body, indent=1) + "\n", content_type="application/json")

    async def metrics(self, request: web.Request) -> web.Response:
        store_ok, counts, (depth, oldest) = await self._store_facts()
        m = self.rt.metrics
        if store_ok:
            for state in JOB_STATES:
                m.jobs.labels(state).set(counts.get(state, 0))
            m.outbox_depth.set(depth)
            m.outbox_oldest.set(oldest or 0)
        body = m.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
