#!/usr/bin/env python3
"""Figure (a): intake, full path, 20 concurrent sessions, PDF attachments.

For each attachment size (the smallest real PDF, 100 KB, 1 MB) the same
message file is sent with Postfix's own load generator, ``smtp-source -s 20
-m N -F FILE`` (a new connection per message), to:

* a private Postfix 3.7 on loopback accepting into its (fsynced) queue and
  discarding (the reference, measured in this run);
* ``gatewayd run`` as shipped, twice: with ``smtp.processes = 1`` (the
  default before issue 19) and with the default ``smtp.processes = "auto"``
  (one listener process per core, at most 4). The targets are judged on the
  default.

Every message must be answered 250 and stored as a job (gatewayd's full
path: parse, sender policy, document build, document fsync + SQLite commit).
The provider simulator answers fax POSTs with 429 so the sender holds: the
figure is intake, not uploads. Then at 100 KB the bench's asyncio client (20
sessions) times each message from the end of DATA to the reply (p50/p99),
against Postfix and gatewayd alike.

Those runs send attachments alone (``cover_page = "never"``). Real mail has
a body, and the default ``cover_page = "auto"`` turns it into a cover page
(issue 19), so a last section sends a 100 KB PDF with a one-line body
("Please fax the attached document.") to gatewayd with the default
configuration (``processes = "auto"``, cover pages, ``log.level =
"info"``), and with one process besides, beside Postfix with the same
message.

Targets (issue 19), with the default configuration: >= 1.0x Postfix msgs/s
at 100 KB (with and without a body), >= 0.8x at 1 MB, p99 end of DATA -> 250
under 50 ms at 100 KB, and CPU per message at 100 KB (all gatewayd processes,
from /proc) under 2.0 ms without a cover page and under 4 ms with one. Prints MET/MISSED; exits non-zero only when
something does not work (a refused message, a tool missing).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gatewayd.config import auto_processes  # noqa: E402

from _common import (  # noqa: E402
    BenchError,
    Gatewayd,
    Postfix,
    Simulator,
    fax_message,
    fmt_ms,
    hold_provider,
    machine,
    pdf_of_size,
    percentile,
    run_clients,
    smtp_source,
    summarize_replies,
    verdict,
    workdir,
    write_lf_message,
)

SIZES = [("smallest PDF", 0), ("100 KB", 100_000), ("1 MB", 1_000_000)]
COUNTS = {0: 1500, 100_000: 1000, 1_000_000: 300}
WARMUP = 40  # messages sent to each server before the timed run (first-use costs, caches)
SESSIONS = 20
PROCESSES = auto_processes()  # what "auto", the default, starts here
VARIANTS = [
    ("gatewayd, 1 process", {"smtp": {"processes": 1}}),
    (f"gatewayd, default (auto: {PROCESSES})", {}),
]
GATEWAYD = VARIANTS[-1][0]  # the one the targets are judged on
BODY = "Please fax the attached document."
# The shipped defaults (gatewayd/config.py) where the bench's base configuration differs.
DEFAULTS = {"documents": {"cover_page": "auto"}, "log": {"level": "info", "format": "json"}}
DEFAULT_VARIANTS = [
    ("gatewayd, defaults but 1 process", {**DEFAULTS, "smtp": {"processes": 1}}),
    (f"gatewayd, defaults (auto: {PROCESSES}, cover)", DEFAULTS),
]


def wait_jobs(gw: Gatewayd, expected: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    n = gw.jobs()
    while n < expected and time.monotonic() < deadline:
        time.sleep(0.2)
        n = gw.jobs()
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply message counts (e.g. 0.25 for a quick look)")
    parser.add_argument("--latency-messages", type=int, default=300)
    args = parser.parse_args(argv)

    print("== (a) intake throughput: smtp-source -s 20, PDF attachments ==")
    print(f"machine: {machine()}")
    rows: list[tuple[str, int, str, float, int]] = []
    cpu_ms: dict[tuple[int, str], float] = {}  # CPU per message of gatewayd, all its processes
    with workdir("intake") as root, Simulator() as sim:
        hold_provider(sim)
        for label, size in SIZES:
            pdf = pdf_of_size(size, seed=size + 1)
            raw = fax_message(pdf)
            msg_file = write_lf_message(raw, root / f"msg-{size}.eml")
            count = max(20, int(COUNTS[size] * args.scale))
            print(f"\n-- {label}: PDF {len(pdf):,} bytes, message {len(raw):,} bytes, {count} messages --")
            with Postfix() as pf:
                smtp_source(pf.port, msg_file, sessions=SESSIONS, messages=WARMUP)
                elapsed = smtp_source(pf.port, msg_file, sessions=SESSIONS, messages=count)
            ref = count / elapsed
            print(f"  Postfix 3.7 (queue, fsync, discard): {ref:8.1f} msgs/s  ({count} in {elapsed:.2f} s)")
            rows.append((label, size, "postfix", ref, count))
            for number, (name, overrides) in enumerate(VARIANTS):
                with Gatewayd(root / f"gw-{size}-{number}", sim.base_url, overrides=overrides) as gw:
                    smtp_source(gw.port, msg_file, sessions=SESSIONS, messages=WARMUP)
                    cpu = gw.cpu_seconds()
                    elapsed = smtp_source(gw.port, msg_file, sessions=SESSIONS, messages=count)
                    cpu = gw.cpu_seconds() - cpu
                    stored = wait_jobs(gw, count + WARMUP)
                if stored != count + WARMUP:
                    raise BenchError(f"{name}: {count + WARMUP} messages answered 250 but {stored} jobs stored")
                rate = count / elapsed
                cpu_ms[(size, name)] = 1000 * cpu / count
                print(f"  {name:36s}: {rate:8.1f} msgs/s  ({count} in {elapsed:.2f} s, {rate / ref:.2f}x Postfix; "
                      f"CPU {cpu_ms[(size, name)]:.2f} ms a message, all processes; {stored} jobs stored with the warm-up)")
                rows.append((label, size, name, rate, count))

        print("\n-- 100 KB: end of DATA -> reply, bench asyncio client, 20 sessions --")
        raw = fax_message(pdf_of_size(100_000, seed=100_001))
        n = max(40, int(args.latency_messages * args.scale))
        p99s: dict[str, float] = {}
        with Postfix() as pf:
            asyncio.run(run_clients(pf.port, raw, sessions=SESSIONS, messages=WARMUP))
            results, elapsed = asyncio.run(run_clients(pf.port, raw, sessions=SESSIONS, messages=n))
        _report_latency("Postfix 3.7", results, elapsed, p99s)
        for number, (name, overrides) in enumerate(VARIANTS):
            with Gatewayd(root / f"gw-lat-{number}", sim.base_url, overrides=overrides) as gw:
                asyncio.run(run_clients(gw.port, raw, sessions=SESSIONS, messages=WARMUP))
                results, elapsed = asyncio.run(run_clients(gw.port, raw, sessions=SESSIONS, messages=n))
            _report_latency(name, results, elapsed, p99s)

        print(f"\n-- the default configuration: 100 KB PDF and a one-line body ({BODY!r}), a cover page each --")
        raw = fax_message(pdf_of_size(100_000, seed=100_001), body=BODY)
        msg_file = write_lf_message(raw, root / "msg-body.eml")
        count = max(20, int(COUNTS[100_000] * args.scale))
        with Postfix() as pf:
            smtp_source(pf.port, msg_file, sessions=SESSIONS, messages=WARMUP)
            elapsed = smtp_source(pf.port, msg_file, sessions=SESSIONS, messages=count)
            asyncio.run(run_clients(pf.port, raw, sessions=SESSIONS, messages=WARMUP))
            results, lat_elapsed = asyncio.run(run_clients(pf.port, raw, sessions=SESSIONS, messages=n))
        ref_body = count / elapsed
        print(f"  Postfix 3.7 (queue, fsync, discard): {ref_body:8.1f} msgs/s  ({count} in {elapsed:.2f} s)")
        _report_latency("Postfix 3.7", results, lat_elapsed, p99s)
        for number, (name, overrides) in enumerate(DEFAULT_VARIANTS):
            with Gatewayd(root / f"gw-body-{number}", sim.base_url, overrides=overrides) as gw:
                smtp_source(gw.port, msg_file, sessions=SESSIONS, messages=WARMUP)
                cpu = gw.cpu_seconds()
                elapsed = smtp_source(gw.port, msg_file, sessions=SESSIONS, messages=count)
                cpu = gw.cpu_seconds() - cpu
                stored = wait_jobs(gw, count + WARMUP)
                asyncio.run(run_clients(gw.port, raw, sessions=SESSIONS, messages=WARMUP))
                results, lat_elapsed = asyncio.run(run_clients(gw.port, raw, sessions=SESSIONS, messages=n))
            if stored != count + WARMUP:
                raise BenchError(f"{name}: {count + WARMUP} messages answered 250 but {stored} jobs stored")
            rate = count / elapsed
            cpu_ms[(-1, name)] = 1000 * cpu / count
            print(f"  {name:36s}: {rate:8.1f} msgs/s  ({count} in {elapsed:.2f} s, {rate / ref_body:.2f}x Postfix; "
                  f"CPU {cpu_ms[(-1, name)]:.2f} ms a message, all processes)")
            rows.append(("100 KB with a body", 100_000, name, rate, count))
            _report_latency(name, results, lat_elapsed, p99s)

    print("\n-- targets --")
    ref = {size: rate for _, size, who, rate, _ in rows if who == "postfix"}
    r100 = next(rate for _, size, who, rate, _ in rows if who == GATEWAYD and size == 100_000)
    r1m = next(rate for _, size, who, rate, _ in rows if who == GATEWAYD and size == 1_000_000)
    print(f"  {GATEWAYD}: 100 KB {r100 / ref[100_000]:.2f}x Postfix (target >= 1.0x) {verdict(r100 >= ref[100_000])}; "
          f"1 MB {r1m / ref[1_000_000]:.2f}x (target >= 0.8x) {verdict(r1m >= 0.8 * ref[1_000_000])}; "
          f"p99 end of DATA -> 250 at 100 KB {fmt_ms(p99s[GATEWAYD])} (target < 50 ms) {verdict(p99s[GATEWAYD] < 0.050)}")
    default = DEFAULT_VARIANTS[-1][0]
    r_def = next(rate for _, _, who, rate, _ in rows if who == default)
    print(f"  {default}, 100 KB with a body: {r_def / ref_body:.2f}x Postfix (target >= 1.0x) {verdict(r_def >= ref_body)}; "
          f"p99 end of DATA -> 250 {fmt_ms(p99s[default])} (target < 50 ms) {verdict(p99s[default] < 0.050)}")
    no_cover, cover = cpu_ms[(100_000, GATEWAYD)], cpu_ms[(-1, default)]
    print(f"  CPU per message at 100 KB, all processes: {no_cover:.2f} ms without a cover (target < 2.0 ms) "
          f"{verdict(no_cover < 2.0)}; {cover:.2f} ms with one (target < 4 ms) {verdict(cover < 4.0)}")
    return 0


def _report_latency(name: str, results: list, elapsed: float, p99s: dict[str, float]) -> None:
    replies = summarize_replies(results)
    if set(replies) != {"250"}:
        raise BenchError(f"{name}: replies {replies}")
    lat = [r.latency for r in results]
    p99s[name] = percentile(lat, 99)
    print(f"  {name:36s}: p50 {fmt_ms(percentile(lat, 50))}, p99 {fmt_ms(p99s[name])}, max {fmt_ms(max(lat))}; "
          f"{len(results) / elapsed:.1f} msgs/s with this client")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(1)
