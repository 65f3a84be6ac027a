"""Hostile input: what each pathological message costs a running gatewayd (docs/security.md).

Starts the provider simulator (held: nothing is faxed) and ``gatewayd run``
as a subprocess on loopback, then sends each input of tests/support/stall_vectors.py
over SMTP. For each it prints the reply, the daemon's CPU time for it (user +
system from /proc/<pid>/stat, read before the DATA and after the reply), the
time from the end of DATA to the reply, and how long another, already open
SMTP session waited at most for its NOOP replies meanwhile (it sends one
after another for the whole transaction: that it is answered at all shows
the daemon kept serving; the wait bounds how long one message held the event
loop).

    .venv/bin/python bench/bench_hostile.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import (  # noqa: E402
    RCPT,
    SENDER,
    BenchError,
    Gatewayd,
    Simulator,
    _reply,
    dot_stuff,
    fmt_ms,
    hold_provider,
    machine,
    workdir,
)
from support.stall_vectors import message, vectors  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid``: the first field of
    /proc/<pid>/task/*/schedstat (nanoseconds); utime + stime of
    /proc/<pid>/stat (clock ticks) where schedstat is missing."""
    total = 0
    tasks = list(Path(f"/proc/{pid}/task").glob("*/schedstat"))
    for path in tasks:
        try:
            total += int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    if tasks and total:
        return total / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


async def _session(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _reply(reader, 30)
    writer.write(b"EHLO bench.localdomain\r\n")
    await _reply(reader, 30)
    return reader, writer


async def measure(port: int, pid: int, raw: bytes) -> tuple[str, float, float, float, int]:
    """(reply, CPU s, end of DATA -> reply s, other session's longest wait s, NOOPs answered)."""
    hostile_r, hostile_w = await _session(port)
    other_r, other_w = await _session(port)
    for line in (f"MAIL FROM:<{SENDER}>\r\n", f"RCPT TO:<{RCPT}>\r\n", "DATA\r\n"):
        hostile_w.write(line.encode())
        reply = await _reply(hostile_r, 30)
        if not reply.startswith(("250", "354")):
            raise BenchError(f"{line.strip()}: {reply}")
    stuffed = dot_stuff(raw)
    before = cpu_seconds(pid)

    async def transaction() -> tuple[str, float]:
        hostile_w.write(stuffed)
        await hostile_w.drain()
        end_of_data = time.perf_counter()
        reply = await _reply(hostile_r, 300)
        return reply, time.perf_counter() - end_of_data

    task = asyncio.create_task(transaction())
    waits: list[float] = []
    while not task.done():
        start = time.perf_counter()
        other_w.write(b"NOOP\r\n")
        answer = await _reply(other_r, 300)
        if not answer.startswith("250"):
            raise BenchError(f"NOOP on the other session: {answer}")
        waits.append(time.perf_counter() - start)
        await asyncio.sleep(0.002)
    reply, wall = await task
    cpu = cpu_seconds(pid) - before
    for w in (hostile_w, other_w):
        w.write(b"QUIT\r\n")
        w.close()
    return reply, cpu, wall, max(waits, default=0.0), len(waits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.parse_args(argv)
    print("== hostile input: one message each over SMTP, another session answered meanwhile ==")
    print(f"machine: {machine()}")
    cases = [("ordinary fax (baseline)", message, "250")] + vectors()
    rows = []
    with workdir("hostile") as root, Simulator() as sim:
        hold_provider(sim)
        with Gatewayd(root / "gw", sim.base_url, overrides={"documents": {"cover_page": "auto"}}) as gw:
            assert gw.proc is not None
            # Warm up: first-use costs (imports, caches) are not the input's.
            asyncio.run(measure(gw.port, gw.proc.pid, message()))
            for name, build, expected in cases:
                raw = build()
                reply, cpu, wall, other_wait, answered = asyncio.run(measure(gw.port, gw.proc.pid, raw))
                if not reply.startswith(expected):
                    raise BenchError(f"{name}: expected {expected!r}, got {reply!r}")
                rows.append((name, len(raw), reply, cpu, wall, other_wait, answered))
    print()
    print("| input | size | reply | daemon CPU | end of DATA -> reply | other session: longest wait (NOOPs answered) |")
    print("|---|---:|---|---:|---:|---:|")
    for name, size, reply, cpu, wall, other_wait, answered in rows:
        print(f"| {name} | {size / 1024:,.0f} KiB | `{reply}` | {fmt_ms(cpu)} | {fmt_ms(wall)} | {fmt_ms(other_wait)} ({answered}) |")
    print("\nDaemon CPU: all its threads, /proc/<pid>/task/*/schedstat, from before DATA to after the reply.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
