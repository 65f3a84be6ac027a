#!/usr/bin/env python3
"""Figure (d): provider economy of following jobs.

N jobs (N = 10, 50, 200) are at the provider, spread over E fax extensions
(E = 2 by default), created there for real with POSTs to the simulator,
whose faxes stay ``ready_to_send`` for the whole run. gatewayd's real
``Tracker`` (with the real ``ProviderClient``) follows them for K poll
intervals, the clock advanced one ``status_poll_interval`` at a time. The
requests come from the simulator's request log, counted only during the
polling. The target: requests per poll interval proportional to the number
of extensions, not to N. Each extension's list is paged by 100, so the bound
printed is ``sum over extensions of (jobs there // 100 + 1)`` list pages.

Also shown: an extension with a long history (1,000 finished faxes before
the N in flight), where the tracker's ``min(jobs, pages)`` rule matters.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys
import tempfile
import time
from collections.abc import Callable  # noqa: F401
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BenchError, machine, verdict  # noqa: E402

POLL_INTERVAL = 20.0
INTERVALS = 10


class Clock:
    def __init__(self, base: "Callable[[], float]" = time.time) -> None:
        self.base = base
        self.offset = 0.0

    def __call__(self) -> float:
        return self.base() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


async def follow(n_jobs: int, extensions: list[int], history: int, intervals: int) -> tuple[float, int, int, dict[str, int]]:
    """(requests per interval, requests, polls, requests by kind)."""
    from gatewayd.config import load_config_data
    from gatewayd.daemon import Runtime
    from gatewayd.email_to_fax.tracker import Tracker
    from gatewayd.health import Health
    from gatewayd.metrics import Metrics
    from gatewayd.provider.client import ProviderClient
    from gatewayd.provider.simulator import run_simulator
    from gatewayd.store import SUBMITTED, SUBMITTING, NewJob, Store
    from _common import smallest_pdf

    pdf = smallest_pdf()
    with tempfile.TemporaryDirectory(prefix="gatewayd-bench-economy-") as tmp:
        async with run_simulator(send_delays=(1e9, 1e9)) as sim:
            for ext in extensions:
                if ext not in sim.extensions:
                    sim.add_extension(ext)
            config = load_config_data({
                "provider": {"base_url": sim.base_url, "token_url": sim.token_url, "client_id": "demo", "client_secret": "demo",
                             "extension": extensions[0], "timeout": "10s", "status_poll_interval": f"{int(POLL_INTERVAL)}s"},
                "smtp": {"listen": "127.0.0.1:2525", "domains": ["fax.example.com"]},
                "senders": [{"match": ["*@example.com"]}],
                "inbound": {"enabled": False},
                "storage": {"state_dir": tmp},
                "http": {"listen": ""},
            }, env={})
            clock = Clock()
            store = Store(tmp, clock=clock)
            client = ProviderClient.from_config(config.provider)
            rt = Runtime(config=config, store=store, provider=client, metrics=Metrics(), health=Health(), clock=clock)
            try:
                sha = store.save_document(pdf)
                for i in range(history):  # finished faxes in the extension's history
                    ext = extensions[i % len(extensions)]
                    fax = await client.send_fax(ext, "74951234567", pdf, "old.pdf")
                    sim.sent[fax.id].status = "sent"
                for i in range(n_jobs):
                    ext = extensions[i % len(extensions)]
                    fax = await client.send_fax(ext, "78123092631", pdf, f"fax-{i}.pdf")
                    (job_id,) = store.enqueue_jobs(sha, 1, len(pdf), [NewJob("+78123092631", "78123092631", ext, "a@example.com", "smtp")])
                    store.transition(job_id, SUBMITTING, "bench")
                    store.transition(job_id, SUBMITTED, "bench", provider_id=fax.id, provider_status=fax.status)
                # The tracker paces polls on a monotonic clock when it takes one.
                mono = Clock(time.monotonic)
                kwargs = {"monotonic": mono} if "monotonic" in inspect.signature(Tracker).parameters else {}
                tracker = Tracker(rt, **kwargs)
                polls = 0
                real_poll = tracker.poll

                async def counted_poll(jobs):  # type: ignore[no-untyped-def]
                    nonlocal polls
                    polls += 1
                    return await real_poll(jobs)

                tracker.poll = counted_poll  # type: ignore[method-assign]
                await tracker.step()  # first poll (token, lists): not counted
                sim.request_log.clear()
                polls = 0
                for _ in range(intervals):
                    clock.advance(POLL_INTERVAL)
                    mono.advance(POLL_INTERVAL)
                    await tracker.step()
                api = [r for r in sim.request_log if not r.path.startswith("/oauth")]
                kinds: dict[str, int] = {}
                for r in api:
                    key = "list" if r.path.endswith("/fax/out/") else "get" if "/fax/out/" in r.path else r.path
                    kinds[key] = kinds.get(key, 0) + 1
                counts = store.job_counts()
                if counts.get(SUBMITTED, 0) != n_jobs:
                    raise BenchError(f"jobs moved unexpectedly: {counts}")
                return len(api) / intervals, len(api), polls, kinds
            finally:
                await client.aclose()
                store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--extensions", type=int, default=2)
    parser.add_argument("--intervals", type=int, default=INTERVALS)
    args = parser.parse_args(argv)
    from gatewayd.logs import setup_logging

    setup_logging("warning", "console")
    extensions = [122, 123, 124, 125, 126, 127][: args.extensions]
    print("== (d) provider economy: requests per poll interval while following N jobs ==")
    print(f"machine: {machine()}")
    print(f"{len(extensions)} fax extensions, status_poll_interval {POLL_INTERVAL:g} s, {args.intervals} intervals, "
          "requests from the simulator's log (token requests excluded)")
    ok = True
    for history in (0, 1000):
        label = "fresh extensions" if not history else f"{history} finished faxes in the extensions' history"
        print(f"\n-- {label} --")
        rates = {}
        for n in (10, 50, 200):
            per_interval, total, polls, kinds = asyncio.run(follow(n, extensions, history, args.intervals))
            per_ext = [n // len(extensions) + (1 if i < n % len(extensions) else 0) for i in range(len(extensions))]
            bound = sum(min(jobs, (jobs + history // len(extensions)) // 100 + 1) for jobs in per_ext)
            rates[n] = per_interval
            print(f"  N = {n:3d}: {per_interval:5.2f} requests per poll interval, {total / max(polls, 1):5.2f} per poll "
                  f"({total} in {args.intervals} intervals, {polls} polls: {kinds}); bound sum(min(jobs, list pages)) = {bound} per poll")
            if total / max(polls, 1) > bound:
                ok = False
        growth = rates[200] / rates[10] if rates[10] else float("inf")
        print(f"  N = 200 costs {growth:.1f}x the requests of N = 10 (20x the jobs)")
        if not history:
            ok = ok and growth <= 2.5
    print("\n-- targets --")
    print(f"  requests per poll interval proportional to extensions (list pages), not to N: {verdict(ok)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(1)
