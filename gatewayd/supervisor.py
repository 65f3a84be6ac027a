"""Keeps services' ``run()`` loops going: a crashed one is logged and
restarted with backoff, and never takes the daemon down."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from gatewayd.backoff import backoff_delay
from gatewayd.logs import get_logger
from gatewayd.store import StoreError

log = get_logger(__name__)


class Supervisor:
    """Runs services' ``run()`` as tasks; restarts a crashed one with backoff.

    ``on_restart(name)`` is called for each restart (the daemon counts them
    in ``gatewayd_service_restarts_total``).
    """

    def __init__(
        self,
        stopping: asyncio.Event,
        *,
        min_backoff: float = 1.0,
        max_backoff: float = 60.0,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        self.stopping = stopping
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.on_restart = on_restart
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.restarts: dict[str, int] = {}

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        self.tasks[name] = asyncio.create_task(self._keep_running(name, factory), name=name)

    async def _keep_running(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        attempt = 0  # restarts since the service last ran fine for a long while
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                await factory()
                if self.stopping.is_set():
                    return
                log.warning("service_returned", service=name)
            except asyncio.CancelledError:
                raise
            except StoreError as exc:
                # The database away (docs/operations.md, Database outage): one
                # line, no traceback; the restart below is the back-off.
                log.error("service_store_unavailable", service=name, error=str(exc))
            except Exception:
                if self.stopping.is_set():
                    log.exception("service_failed_while_stopping", service=name)
                    return
                log.exception("service_crashed", service=name)
            self.restarts[name] = self.restarts.get(name, 0) + 1
            if self.on_restart is not None:
                with contextlib.suppress(Exception):
                    self.on_restart(name)
            if time.monotonic() - started > 5 * self.max_backoff:
                attempt = 0  # it ran fine for a long while
            attempt += 1
            delay = backoff_delay(attempt, base=self.min_backoff, cap=self.max_backoff, low=0.5, high=1.0)
            log.info("service_restart_scheduled", service=name, delay=round(delay, 2), restarts=self.restarts[name])
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=delay)

    async def wait_stopped(self, timeout: float) -> None:
        if not self.tasks:
            return
        done, pending = await asyncio.wait(self.tasks.values(), timeout=timeout)
        for task in pending:
            log.warning("service_cancelled_at_stop", service=task.get_name())
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
