"""``gatewayd cancel ID`` and ``gatewayd retry ID`` (docs/operations.md; docs/reports.md, Cancel and retry from the command line).

They work on the state directory while the daemon runs; the logic and its
rules (which states allow cancel and retry, compare-and-set against the
daemon, what a retry reopens) are shared with the web console and described
once, in gatewayd/jobcontrol.py.

Exit 0 with the new state on stdout; exit 1 with the reason on stderr when
the job's status does not allow the action or the provider refuses it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from gatewayd import jobcontrol
from gatewayd.commands.common import EXIT_OK, CommandError, load, open_store
from gatewayd.commands.terminal import safe_text
from gatewayd.config import Config
from gatewayd.jobcontrol import ControlRefused, ProviderFactory
from gatewayd.logs import setup_logging
from gatewayd.provider.client import ProviderClient
from gatewayd.store import Store


def _quiet_logging(config: Config) -> None:
    # stdout carries the answer only: without this, structlog's default
    # configuration prints every debug event (provider requests) there.
    setup_logging("debug" if config.log.level == "debug" else "warning", config.log.format, stream=sys.stderr)


def _run(args: argparse.Namespace, action) -> int:
    """Open the store and a provider client from the configuration, run ``action``, print its answer."""
    config = load(args)
    _quiet_logging(config)
    store = open_store(config)
    try:
        # The answer quotes the job's reason, which may hold provider text: escaped.
        print(safe_text(asyncio.run(action(store, args.id, lambda: ProviderClient.from_config(config.provider)))))
    finally:
        store.close()
    return EXIT_OK


def cancel(args: argparse.Namespace) -> int:
    return _run(args, cancel_job)


def retry(args: argparse.Namespace) -> int:
    return _run(args, retry_job)


async def cancel_job(store: Store, job_id: int, provider_factory: ProviderFactory) -> str:
    """Cancel one job (gatewayd/jobcontrol.py); returns the line to print. Raises CommandError when refused."""
    try:
        return await jobcontrol.cancel_job(store, job_id, provider_factory)
    except ControlRefused as exc:
        raise CommandError(str(exc)) from None


async def retry_job(store: Store, job_id: int, provider_factory: ProviderFactory) -> str:
    """Retry one failed job (gatewayd/jobcontrol.py); returns the line to print. Raises CommandError when refused."""
    try:
        return await jobcontrol.retry_job(store, job_id, provider_factory)
    except ControlRefused as exc:
        raise CommandError(str(exc)) from None


__all__ = ["cancel", "cancel_job", "retry", "retry_job"]
