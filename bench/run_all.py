#!/usr/bin/env python3
"""`make bench`: every figure of docs/performance.md, one script each, then the
targets of all of them together. Exits non-zero only when a script failed
(an error, not a missed target: those print MISSED)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["bench_documents.py", "bench_provider_economy.py", "bench_purge.py", "bench_memory.py", "bench_intake.py", "bench_office.py", "bench_nodes.py"]


def main() -> int:
    failed: list[str] = []
    summary: list[str] = []
    for name in SCRIPTS:
        print(f"\n######## {name}", flush=True)
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, str(HERE / name)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        in_targets = False
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("-- targets --"):
                in_targets = True
            elif in_targets and line.strip():
                summary.append(f"({name}) {line.strip()}")
        code = proc.wait()
        print(f"######## {name}: exit {code} in {time.monotonic() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    print("\n================ targets ================")
    for line in summary:
        print(line)
    if failed:
        print(f"FAILED (errors, not targets): {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
