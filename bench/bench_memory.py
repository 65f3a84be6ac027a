#!/usr/bin/env python3
"""Figure (b): memory with 20 clients each sending a ~10 MB attachment at once.

20 asyncio clients (truly concurrent: each writes its whole body without
waiting for the others, unlike smtp-source which writes bodies blocking)
open their sessions, reach ``354`` together, then all send a message whose
PDF attachment is 9.8 MB (the largest that still fits the provider's
10,000,000-byte limit after conversion, so every message goes the full path
to a stored job; ~13.4 MB on the wire in base64). The daemon's peak RSS is
``VmHWM`` from /proc/PID/status of the ``gatewayd run`` subprocess (its RSS
before the load is shown too); with ``smtp.processes = "auto"`` it is the sum
of every process's own peak (an upper bound of the peak of the sum, which is
also shown, sampled every 5 ms). The target is judged on the upper bound. Every client must get ``250`` and 20 jobs must
be stored. Run with one process and with the default ``processes = "auto"``.

Target: peak RSS under 400 MiB, every message answered correctly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gatewayd.config import auto_processes  # noqa: E402

from _common import (  # noqa: E402
    RCPT,
    SENDER,
    BenchError,
    Gatewayd,
    Simulator,
    _reply,
    dot_stuff,
    fax_message,
    hold_provider,
    machine,
    pdf_of_size,
    verdict,
    workdir,
)

CLIENTS = 20
PDF_BYTES = 9_800_000
TARGET_MIB = 400


async def concurrent_send(port: int, stuffed: bytes, clients: int, timeout: float = 300.0) -> list[str]:
    """All sessions reach 354, then every body is written at the same moment."""
    ready = 0
    go = asyncio.Event()

    async def client() -> str:
        nonlocal ready
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await _reply(reader, timeout)
            for line in (b"EHLO bench.localdomain\r\n", f"MAIL FROM:<{SENDER}>\r\n".encode(), f"RCPT TO:<{RCPT}>\r\n".encode(), b"DATA\r\n"):
                writer.write(line)
                reply = await _reply(reader, timeout)
                if not reply.startswith(("250", "354")):
                    return reply
            ready += 1
            if ready == clients:
                go.set()
            await asyncio.wait_for(go.wait(), timeout)
            writer.write(stuffed)
            await writer.drain()
            reply = await _reply(reader, timeout)
            writer.write(b"QUIT\r\n")
            return reply
        except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
            return f"client error: {type(exc).__name__}: {exc}"
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)

    return list(await asyncio.gather(*(client() for _ in range(clients))))


def measure(root: Path, sim: Simulator, stuffed: bytes, clients: int, overrides: dict) -> tuple[int, int, float, list[str], int, int, int, int]:
    with Gatewayd(root / f"gw-{len(overrides)}", sim.base_url, overrides=overrides) as gw:
        time.sleep(1.0)
        idle = gw.tree_kib("VmRSS")
        sampled = [idle]
        done = threading.Event()

        def sample() -> None:  # the peak of the sum, as well as the sum of the peaks
            while not done.wait(0.005):
                with contextlib.suppress(OSError, ValueError):
                    sampled.append(gw.tree_kib("VmRSS"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        try:
            replies = asyncio.run(concurrent_send(gw.port, stuffed, clients))
        finally:
            done.set()
            sampler.join()
        elapsed = time.perf_counter() - started
        hwm = gw.tree_kib("VmHWM")
        jobs = gw.jobs()
        processes = len(gw.pids())
        time.sleep(2.0)
        after = gw.tree_kib("VmRSS")  # what a long-running daemon keeps after the burst
    return idle, hwm, elapsed, replies, jobs, processes, max(sampled), after


VARIANTS = [("1 process", {"smtp": {"processes": 1}}), (f'processes = "auto" (the default: {auto_processes()})', {})]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=CLIENTS)
    args = parser.parse_args(argv)
    print("== (b) memory: 20 concurrent clients, ~10 MB PDF each ==")
    print(f"machine: {machine()}")
    pdf = pdf_of_size(PDF_BYTES, seed=7)
    raw = fax_message(pdf)
    stuffed = dot_stuff(raw)
    print(f"attachment {len(pdf):,} bytes, message {len(raw):,} bytes on the wire, {args.clients} clients at once")
    failed = False
    verdicts = []
    with workdir("memory") as root, Simulator() as sim:
        hold_provider(sim)
        for name, overrides in VARIANTS:
            idle, hwm, elapsed, replies, jobs, processes, sampled, after = measure(root, sim, stuffed, args.clients, overrides)
            codes = sorted({r[:3] for r in replies})
            ok = all(r.startswith("250 2.0.0 queued as ") for r in replies) and jobs == args.clients
            what = "VmHWM" if processes == 1 else f"sum of the VmHWM of its {processes} processes, an upper bound"
            print(f"  gatewayd, {name}: peak RSS ({what}) {hwm / 1024:7.1f} MiB (idle {idle / 1024:.1f} MiB, "
                  f"{(hwm - idle) / 1024 / args.clients:.1f} MiB per message), {elapsed:.1f} s, replies {codes}, {jobs} jobs stored")
            print(f"    RSS summed over the processes, sampled every 5 ms: highest {sampled / 1024:.1f} MiB; "
                  f"2 s after the burst {after / 1024:.1f} MiB (idle before it {idle / 1024:.1f} MiB)")
            if not ok:
                bad = [r for r in replies if not r.startswith("250")]
                print(f"    NOT ANSWERED CORRECTLY: {bad[:3]}")
                failed = True
            verdicts.append(f"  gatewayd, {name}: peak RSS {hwm / 1024:.1f} MiB (target < {TARGET_MIB} MiB) "
                            f"{verdict(hwm / 1024 < TARGET_MIB)}; every message answered 250 and stored: {verdict(ok)}")
    print("\n-- targets --")
    print("\n".join(verdicts))
    if failed:
        raise BenchError("some messages were not answered 250 / not stored")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(1)
