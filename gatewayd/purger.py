"""The "purge" service: every ``retention.interval`` a purge round and the incremental vacuum.

The purge itself (what goes when, in small steps) is
gatewayd/store/retention.py; docs/operations.md, "Retention and privacy",
describes it for administrators. This service only times the rounds, counts
what went (``gatewayd_purged_rows``) and logs one line per round that purged
anything. ``retention.*`` is read at each round, so a reload applies at the
next one; ``retention.interval = "0"`` leaves purging to ``gatewayd purge``.
After each round the web console's cached previews of documents that are
gone go too (``prune_previews``; docs/web.md).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from gatewayd.config import INBOUND_WINDOW_SLACK, Config
from gatewayd.logs import get_logger
from gatewayd.runtime import Runtime
from gatewayd.store import Store, StoreError
from gatewayd.store.retention import PurgeResult, RetentionPolicy, purge

log = get_logger(__name__)

FIRST_ROUND_DELAY = 60.0  # after start: the queues first, then the clean-up
IDLE_RECHECK = 600.0  # interval "0": look again this often whether a reload turned it on


class PreviewCache(Protocol):
    """The console's preview cache (gatewayd/documents/preview.py, ``Previews``)."""

    def prune(self, keep: set[str]) -> int: ...


async def prune_previews(store: Store, previews: PreviewCache) -> int:
    """Remove the previews whose document is gone (a purged job document, a received fax whose email body went)."""
    keep = await store.run(store.preview_keys)
    removed = await asyncio.to_thread(previews.prune, keep)
    if removed:
        log.info("previews_pruned", removed=removed)
    return removed


class Purger:
    """Service "purge"."""

    name = "purge"

    def __init__(self, rt: Runtime, *, first_delay: float = FIRST_ROUND_DELAY, previews: PreviewCache | None = None) -> None:
        self.rt = rt
        self.first_delay = first_delay
        self.previews = previews
        self.rounds = 0  # completed rounds (tests wait on it)
        self.last: PurgeResult | None = None

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def run(self) -> None:
        if await self.rt.nap("purge", self.first_delay):
            return
        while not self.rt.stopping.is_set():
            interval = self.rt.config.retention.interval
            if interval > 0:
                await self.round()
            if await self.rt.nap("purge", interval if interval > 0 else IDLE_RECHECK):
                return

    async def round(self) -> PurgeResult | None:
        """One purge round now; a store error is logged and the next round tries again."""
        rt = self.rt
        policy = retention_policy(rt.config)
        try:
            result = await purge(rt.store, policy, rt.clock(), stopping=rt.stopping)
        except StoreError as exc:
            log.error("purge_failed", error=str(exc))
            return None
        for kind, tally in result.tallies.items():
            if tally.rows:
                rt.metrics.purged.labels(kind).inc(tally.rows)
        rt.metrics.purge_seconds.set(result.seconds)
        with_rows = {k: t.rows for k, t in result.tallies.items() if t.rows}
        if with_rows or result.vacuumed_pages:
            log.info(
                "purge_round", purged=with_rows, bytes=sum(t.bytes for t in result.tallies.values()),
                vacuumed_pages=result.vacuumed_pages, seconds=round(result.seconds, 3),
                longest_step_ms=round(result.longest_step * 1000, 1),
            )
        if self.previews is not None:
            try:
                await prune_previews(rt.store, self.previews)
            except (StoreError, OSError) as exc:
                log.error("preview_prune_failed", error=str(exc))
        try:
            size = await asyncio.to_thread(rt.store.documents_size)
        except StoreError as exc:
            log.error("document_size_failed", error=str(exc))
        else:
            rt.metrics.document_bytes.set(size)
        self.rounds += 1
        self.last = result
        return result


def retention_policy(config: Config) -> RetentionPolicy:
    """``[retention]`` in seconds, and how far back the fax-to-email poller's window reaches (docs/operations.md, Retention and privacy)."""
    r = config.retention
    return RetentionPolicy(r.documents, r.mail, r.jobs, r.received, 2 * config.inbound.poll_interval + INBOUND_WINDOW_SLACK)
