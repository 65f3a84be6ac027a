"""Where each millisecond of intake goes: ``gatewayd run`` sampled by py-spy under ``smtp-source``.

Starts the provider simulator (holding uploads) and ``gatewayd run`` with
the shipped defaults where the bench's base configuration differs
(``cover_page = "auto"``, ``log.level = "info"``), attaches ``py-spy
record --gil --subprocesses`` (samples of the thread holding the GIL, in
every listener process) for one ``smtp-source -s 20`` run of 100 KB
messages with a one-line body (``--no-body`` for none), and sorts every
sample into what it was doing by the frames on its stack. Prints each
share and its milliseconds per message (samples ÷ rate ÷ messages), beside
the CPU time of all processes from /proc. Not product code; needs py-spy
(``.venv/bin/pip install py-spy``) and, as root or with ptrace allowed, the
right to attach. Figures in docs/performance.md.

    .venv/bin/python bench/experiments/where_time_goes.py [--messages 2000] [--processes N] [--no-body]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (  # noqa: E402
    Gatewayd,
    Simulator,
    fax_message,
    hold_provider,
    machine,
    pdf_of_size,
    smtp_source,
    workdir,
    write_lf_message,
)

RATE = 250  # samples a second
BODY = "Please fax the attached document."

# (what, frames that mark it): the first rule any frame of a stack matches, checked in this order.
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("cover page", ("render_cover", "cover_direct", "cover.py", "fpdf/")),
    ("SMTP commands and replies (aiosmtpd, policy hooks)", ("_getaddr",)),  # MAIL/RCPT addresses, not the message
    ("logging (one line per message)", ("structlog", "logs.py", "logging/", "json/encoder")),
    ("parse: header fields (email's header parser)", ("header_fetch_parse", "email/_header_value_parser",
                                                      "email/headerregistry")),
    ("parse: feed parser, MIME walk, base64", ("parse_message", "email/feedparser", "email/message", "parse.py",
                                               "skeleton.py", "rawheaders.py", "email/_policybase", "email/policy")),
    ("the attachment (checked with pikepdf, kept as it is)", ("pikepdf", "documents/")),
    ("store (documents, jobs, commit)", ("store/", "sqlite3")),
    ("per-client limits and the processes' channel", ("throttle.py", "smtp_processes.py")),
    ("DATA reader", ("fastdata", "readuntil")),
    ("new session (accept, aiosmtpd's set-up, greeting)", ("connection_made", "_accept_connection", "FaxSMTP.__init__",
                                                           "SMTP.__init__", "_admitted")),
    ("SMTP commands and replies (aiosmtpd, policy hooks)", ("aiosmtpd", "email_to_fax/smtp.py", "policy.py", "intake.py")),
    ("event loop, transports", ("asyncio/", "selectors.py")),
]


def classify(stack: str) -> str:
    frames = stack.split(";")
    for what, marks in RULES:
        if any(mark in frame for frame in frames for mark in marks):
            return what
    return "other (not attributed)"


def cpu_seconds(pid: int) -> float:
    pids = [pid]
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        pids += [int(c) for c in children.read_text().split()]
    ticks = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--processes", default="", help='smtp.processes (default: the configuration\'s own, "auto")')
    ap.add_argument("--no-body", action="store_true", help="attachment only: no cover page")
    ap.add_argument("--keep", default="", help="copy py-spy's collapsed stacks to this file")
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    print(f"machine: {machine()}")
    overrides: dict = {"documents": {"cover_page": "auto"}, "log": {"level": "info", "format": "json"}}
    if args.processes:
        overrides["smtp"] = {"processes": int(args.processes) if args.processes.isdigit() else args.processes}
    with workdir("where") as root, Simulator() as sim:
        hold_provider(sim)
        raw = fax_message(pdf_of_size(100_000, seed=100_001), body="" if args.no_body else BODY)
        message = write_lf_message(raw, root / "m.eml")
        with Gatewayd(root / "gw", sim.base_url, overrides=overrides) as gw:
            assert gw.proc is not None
            smtp_source(gw.port, message, sessions=20, messages=100)  # warm-up: first covers, caches
            out = root / "stacks.txt"
            record = subprocess.Popen([spy, "record", "--gil", "--subprocesses", "--nonblocking", "-r", str(RATE),
                                       "-f", "raw", "-o", str(out), "--pid", str(gw.proc.pid)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(2.0)  # py-spy attached
            cpu0 = cpu_seconds(gw.proc.pid)
            elapsed = smtp_source(gw.port, message, sessions=20, messages=args.messages)
            cpu1 = cpu_seconds(gw.proc.pid)
            time.sleep(0.5)
            record.send_signal(2)
            _, err = record.communicate(timeout=60)
            if not out.exists():
                print(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
                return 1
        if args.keep:
            shutil.copy(out, args.keep)
        shares: collections.Counter[str] = collections.Counter()
        for line in out.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                # Idle loops (waiting in select with the GIL released) are not sampled with --gil.
                shares[classify(stack)] += int(count)
    total = sum(shares.values())
    cpu_ms = 1000 * (cpu1 - cpu0) / args.messages
    gil_ms = 1000 * total / RATE / args.messages
    print(f"{args.messages} messages in {elapsed:.2f} s ({args.messages / elapsed:.1f} msgs/s); CPU of all processes "
          f"{cpu_ms:.2f} ms per message; with the GIL held (sampled, incl. the 2 s before and 0.5 s after): "
          f"{gil_ms:.2f} ms per message")
    print(f"{'share':>6}  {'ms/msg':>6}  what")
    for what, n in shares.most_common():
        print(f"{100 * n / total:5.1f}%  {1000 * n / RATE / args.messages:6.3f}  {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
