"""An SMTP listener process (``smtp.processes`` > 1): the entry point the
main process starts as ``python -m gatewayd.email_to_fax.smtp_worker``.

It takes its sockets and configuration from the main process over the
control channel (gatewayd/email_to_fax/smtp_processes.py describes both
sides), runs the same ``SmtpListener`` and ``Intake`` as the main process,
asks it the per-client limits, and reports back "wake the sender" and its
SMTP reply counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys

from gatewayd.email_to_fax.intake import Intake
from gatewayd.email_to_fax.smtp import SmtpListener
from gatewayd.email_to_fax.smtp_processes import REPORT_EVERY, RemoteClientLimits, frame, receive
from gatewayd.health import Health
from gatewayd.logs import bind_context, get_logger, setup_logging
from gatewayd.memory import freeze_startup_objects, release_periodically
from gatewayd.metrics import Metrics
from gatewayd.runtime import NoProvider, Runtime, store_from_config

log = get_logger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the main process dies (Linux), even before the channel says so."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before prctl took effect
        sys.exit(0)


async def _worker_main(control_fd: int) -> int:
    loop = asyncio.get_running_loop()
    channel = socket.socket(fileno=control_fd)
    reader, writer = await asyncio.open_unix_connection(sock=channel)
    kind, start = await receive(reader)
    if kind != "start":
        return 2
    index = int(start["index"])
    config = start["config"]
    setup_logging(config.log.level, config.log.format)
    sockets = [socket.socket(fileno=fd) for fd, _host, _port in start["sockets"]]

    class WorkerRuntime(Runtime):
        def wake(self, name: str) -> None:
            if not writer.is_closing():  # the main process gone: its sender will look at start
                writer.write(frame(("wake", name)))

    with bind_context(smtp_process=index):
        try:
            store = store_from_config(config)
        except Exception as exc:  # told to the main process, which fails its start
            writer.write(frame(("failed", f"store: {exc}")))
            await writer.drain()
            return 1
        # A listener process never calls the provider (the main process's sender does).
        rt = WorkerRuntime(config=config, store=store, provider=NoProvider(), metrics=Metrics(), health=Health())
        loop.add_signal_handler(signal.SIGTERM, rt.stopping.set)
        # Ctrl-C reaches the whole process group: the main process stops us
        # (with SIGTERM) when it stops, not before. It also sends every reload.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        limits = RemoteClientLimits(writer)
        listener = SmtpListener(rt, Intake(rt, office=bool(start.get("office"))), tuning=start["tuning"], sockets=sockets,
                                limits=limits)
        try:
            await listener.start()
        except Exception as exc:
            writer.write(frame(("failed", f"{type(exc).__name__}: {exc}")))
            await writer.drain()
            store.close()
            return 1
        writer.write(frame(("ready", os.getpid())))
        log.info("smtp_process_ready", pid=os.getpid())
        freeze_startup_objects()  # gatewayd/memory.py

        async def from_main() -> None:
            try:
                while True:
                    kind, *rest = await receive(reader)
                    if kind in ("client_open", "auth_blocked"):
                        limits.answer(rest[0], rest[1])
                    elif kind == "config":
                        rt.config = rest[0]
                        setup_logging(rt.config.log.level, rt.config.log.format)
                        for hook in rt.reload_hooks:
                            hook(rt.config)
            except EOFError:
                log.info("smtp_process_parent_gone")
            rt.stopping.set()

        sent: dict[str, float] = {}

        def send_counts() -> None:
            nonlocal sent
            if writer.is_closing():
                return
            counts = _reply_counts(rt.metrics)
            delta = {code: n - sent.get(code, 0) for code, n in counts.items() if n > sent.get(code, 0)}
            # Nothing new is still news: the main process kills a worker it
            # has not heard from for a while (its event loop is stuck).
            writer.write(frame(("replies", delta)))
            sent = counts

        async def report() -> None:
            while not await rt.sleep(REPORT_EVERY):
                send_counts()

        listening = asyncio.create_task(from_main())
        reporting = asyncio.create_task(report())
        releasing = asyncio.create_task(release_periodically(rt.sleep))  # as the main process does
        await rt.stopping.wait()
        await listener.stop()
        listening.cancel()
        reporting.cancel()
        releasing.cancel()
        send_counts()  # what was answered during the stop grace (421s, late 250s) too
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.drain(), timeout=1.0)
        writer.close()
        store.close()
        log.info("smtp_process_stopped")
    return 0


def _reply_counts(metrics: Metrics) -> dict[str, float]:
    counts: dict[str, float] = {}
    for family in metrics.smtp_replies.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                counts[str(sample.labels.get("code", ""))] = sample.value
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="an SMTP listener process of gatewayd (started by `gatewayd run`)")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    return asyncio.run(_worker_main(args.control_fd))


if __name__ == "__main__":
    sys.exit(main())
