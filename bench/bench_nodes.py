#!/usr/bin/env python3
"""Several nodes on PostgreSQL beside one node on SQLite (issue 17): intake msgs/s and end-to-end faxes/s.

Four set-ups, one after the other in the same run, on the same machine:

* one ``gatewayd run`` on SQLite (the default store: the reference);
* 1, 2 and 3 ``gatewayd run`` nodes sharing one PostgreSQL database (a
  private PostgreSQL 15 started by the bench, ``fsync`` on, as deployed).

Each node has its own SMTP port, state directory and ``storage.node_name``.

**Intake.** The provider simulator answers every fax POST with 429, so the
senders hold and the figure is intake alone (parse, policy, document, the
commit that makes the 250 true). ``smtp-source`` sends COUNT messages of a
100 KB PDF, 20 sessions in all, split evenly over the nodes, all at once;
msgs/s = COUNT / the wall time of the slowest node's share. Every message
must be stored as a job.

**End to end.** The provider accepts; three sender rules send to three
extensions (the fax sender drains an extension on one node at a time, so
work spreads over nodes by extension). FAXES messages are sent over the
nodes; faxes/s = FAXES / the time from the first message to the last job
*submitted* (the provider holds the fax), and the time until every job is
``sent`` (the provider's delivery and the tracker's poll included) is
printed beside it.

The machine has 2 cores: the nodes, PostgreSQL, the simulator and the load
generator share them, so more nodes cannot add CPU here; what the figures
show is what the shared database costs and that nothing is lost or done
twice. Exits non-zero only when something does not work.

    .venv/bin/python bench/bench_nodes.py [--count 600] [--faxes 150]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # support.postgres: the tests' PostgreSQL starter

import psycopg  # noqa: E402
from _common import (  # noqa: E402
    DOMAIN,
    BenchError,
    Gatewayd,
    Simulator,
    fax_message,
    hold_provider,
    machine,
    pdf_of_size,
    require,
    workdir,
    write_lf_message,
)
from support.postgres import PgServer  # noqa: E402

SESSIONS = 20
EXTENSIONS = (122, 123, 124)
SENDERS = [f"bench{i}@example.com" for i in range(len(EXTENSIONS))]
RCPT_NUMBER = "74951234567"


def node_overrides(state: Path, node: str, url: str, password: str, *, hold: bool) -> dict[str, Any]:
    storage: dict[str, Any] = {"state_dir": str(state), "node_name": node}
    if url:
        storage.update({"database_url": url, "database_password": password})
    return {
        "storage": storage,
        "senders": [{"match": [sender], "extension": ext} for sender, ext in zip(SENDERS, EXTENSIONS, strict=True)],
        "provider": {"extension": EXTENSIONS[0], "status_poll_interval": "1s"},
        # One listener process per node: this bench compares nodes (docs/performance.md), and
        # several nodes on one 2-core machine each with "auto" processes would only contend.
        "smtp": {"processes": 1},
    }


def smtp_source_from(port: int, message_file: Path, sender: str, *, sessions: int, messages: int) -> float:
    """``smtp-source`` with ``sender`` as the envelope sender; the wall time."""
    import subprocess

    tool = require("smtp-source", "postfix")
    args = [tool, "-s", str(sessions), "-m", str(messages), "-F", str(message_file), "-M", "bench.localdomain",
            "-f", sender, "-t", f"{RCPT_NUMBER}@{DOMAIN}", f"127.0.0.1:{port}"]
    started = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise BenchError(f"smtp-source failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
    return time.perf_counter() - started


def count_jobs(nodes: list[Gatewayd], url: str, password: str, state: str | None = None) -> int:
    where = " WHERE state = %s" if state else ""
    params = (state,) if state else ()
    if url:
        with psycopg.connect(url, password=password) as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM jobs{where}", params).fetchone()[0])  # type: ignore[index]
    import sqlite3

    conn2 = sqlite3.connect(f"file:{nodes[0].state_dir / 'gatewayd.sqlite3'}?mode=ro", uri=True)
    try:
        return int(conn2.execute(f"SELECT COUNT(*) FROM jobs{where.replace('%s', '?')}", params).fetchone()[0])
    finally:
        conn2.close()


def submitted_jobs(nodes: list[Gatewayd], url: str, password: str) -> int:
    return sum(count_jobs(nodes, url, password, s) for s in ("submitted", "sending", "sent"))


@contextlib.contextmanager
def cluster(root: Path, sim: Simulator, n: int, url: str, password: str, *, hold: bool) -> Any:
    nodes: list[Gatewayd] = []
    try:
        for i in range(n):
            name = f"node{i + 1}"
            gw = Gatewayd(root / name, sim.base_url, node_overrides(root / name / "state", name, url, password, hold=hold))
            nodes.append(gw.__enter__())
        yield nodes
    finally:
        errors = []
        for gw in nodes:
            try:
                gw.__exit__(None, None, None)
            except BenchError as exc:
                errors.append(str(exc))
        if errors:
            raise BenchError("\n".join(errors))


def spread(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def intake(root: Path, sim: Simulator, n: int, url: str, password: str, message_file: Path, count: int) -> float:
    with cluster(root, sim, n, url, password, hold=True) as nodes:
        # A few messages first: every node's first-use costs out of the timed run.
        with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(lambda gw: smtp_source_from(gw.port, message_file, SENDERS[0], sessions=2, messages=10), nodes))
        before = count_jobs(nodes, url, password)
        shares = spread(count, n)
        sessions = spread(SESSIONS, n)
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(lambda a: smtp_source_from(a[0].port, message_file, SENDERS[0], sessions=a[1], messages=a[2]),
                          zip(nodes, sessions, shares, strict=True)))
        elapsed = time.perf_counter() - started
        stored = count_jobs(nodes, url, password) - before
        if stored != count:
            raise BenchError(f"{n} node(s): {count} messages sent, {stored} jobs stored")
        return count / elapsed


def end_to_end(root: Path, sim: Simulator, n: int, url: str, password: str, message_files: list[Path], faxes: int) -> tuple[float, float]:
    with cluster(root, sim, n, url, password, hold=False) as nodes:
        shares = spread(faxes, n)
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
            # Node i sends with sender rule i % 3: all three extensions busy whatever n.
            jobs = []
            for i, (gw, share) in enumerate(zip(nodes, shares, strict=True)):
                per_ext = spread(share, len(SENDERS))
                for k, m in enumerate(per_ext):
                    if m:
                        jobs.append(pool.submit(smtp_source_from, gw.port, message_files[k], SENDERS[(i + k) % len(SENDERS)],
                                                sessions=2, messages=m))
            for j in jobs:
                j.result()
        deadline = started + 600
        submitted_at = sent_at = 0.0
        while time.perf_counter() < deadline:
            if not submitted_at and submitted_jobs(nodes, url, password) >= faxes:
                submitted_at = time.perf_counter()
            if count_jobs(nodes, url, password, "sent") >= faxes:
                sent_at = time.perf_counter()
                break
            time.sleep(0.1)
        if not sent_at:
            raise BenchError(f"{n} node(s): not every job sent within 600 s")
        at_provider = len(sim.control("GET", "sent"))
        if at_provider != faxes:
            raise BenchError(f"{n} node(s): {faxes} jobs, {at_provider} faxes at the provider (must be exactly one each)")
        return faxes / (submitted_at - started), faxes / (sent_at - started)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=600, help="intake: messages per set-up")
    ap.add_argument("--faxes", type=int, default=150, help="end to end: faxes per set-up")
    ap.add_argument("--nodes", default="1,2,3", help="PostgreSQL node counts")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.nodes.split(",")]
    print(machine())
    pdf = pdf_of_size(100_000)
    with workdir("gatewayd-bench-nodes-") as root:
        message_file = write_lf_message(fax_message(pdf, to=f"{RCPT_NUMBER}@{DOMAIN}"), root / "msg.eml")
        message_files = [write_lf_message(fax_message(pdf, to=f"{RCPT_NUMBER}@{DOMAIN}", sender=s), root / f"msg{k}.eml")
                         for k, s in enumerate(SENDERS)]
        pg = PgServer.create(durable=True)
        try:
            pg.start()
            rows: list[tuple[str, float, float, float]] = []
            setups = [("SQLite, 1 node", 1, False)] + [(f"PostgreSQL, {n} node{'s' if n > 1 else ''}", n, True) for n in counts]
            for label, n, on_pg in setups:
                url = pg.url(pg.create_database("bench")) if on_pg else ""
                with Simulator() as sim:
                    hold_provider(sim)
                    rate = intake(root / f"in-{label[:2]}-{n}", sim, n, url, pg.password, message_file, args.count)
                url = pg.url(pg.create_database("bench")) if on_pg else ""
                with Simulator() as sim:
                    for ext in EXTENSIONS[1:]:
                        sim.control("POST", "extensions", {"id": ext})
                    submit_rate, sent_rate = end_to_end(root / f"e2e-{label[:2]}-{n}", sim, n, url, pg.password, message_files, args.faxes)
                rows.append((label, rate, submit_rate, sent_rate))
                print(f"  {label:<24} intake {rate:7.1f} msgs/s   submitted {submit_rate:6.1f} faxes/s   sent {sent_rate:6.1f} faxes/s", flush=True)
        finally:
            pg.stop("fast")
            pg.remove()
    base = rows[0]
    print(f"\nintake 100 KB PDF, {SESSIONS} sessions in all; end to end {args.faxes} faxes over {len(EXTENSIONS)} extensions")
    print(f"{'set-up':<26}{'intake msgs/s':>15}{'vs SQLite':>11}{'submitted faxes/s':>19}{'sent faxes/s':>14}")
    for label, rate, sub, sent in rows:
        print(f"{label:<26}{rate:>15.1f}{rate / base[1]:>10.2f}x{sub:>19.1f}{sent:>14.1f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(1)
