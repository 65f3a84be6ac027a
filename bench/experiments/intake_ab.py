"""bench_intake's 100 KB case alone, for comparing two checkouts (or two settings) in one run.

Run it from the root of the checkout to measure, with any venv that has
gatewayd's dependencies: ``cd OTHER && /path/.venv/bin/python
/path/bench/experiments/intake_ab.py``. It uses that checkout's
``bench/_common.py`` and runs that checkout's gatewayd (PYTHONPATH), so
alternating runs (A B A B) compare two versions on one machine under the
same load. Each run: a private Postfix (smtp-source -s 20, then the bench's
asyncio client for p50/p99), then gatewayd for each ``--variants`` entry
("1", "2" or "auto" processes, "default" for the configuration's own, ":asyncio"/":NAME" sets GATEWAYD_EVENT_LOOP for
experiments, "+GATEWAYD_AB_NAME=VALUE" sets an experiment's switch, "@DIR" runs the gatewayd of another checkout DIR, e.g. a
``git worktree`` or ``git archive`` of the commit before a change, so a
before/after of one lever runs interleaved in one run: ``--variants
1@/tmp/before,1,auto@/tmp/before,auto --rounds 3``), with the CPU time of
all its processes from /proc per message; ``--rounds`` repeats the whole
sequence and prints each variant's median.
``--body`` sends a one-line body with the default ``cover_page = "auto"``
(a cover page each); ``--defaults`` also sets ``log.level = "info"`` (JSON),
the shipped default (the bench's base logs warnings only). Not product code; figures in docs/performance.md.
"""
import argparse, asyncio, os, statistics, sys, time
from pathlib import Path
tree = Path.cwd()
sys.path.insert(0, str(tree / "bench"))
import _common
from _common import (Gatewayd, Postfix, Simulator, fax_message, fmt_ms, hold_provider, machine, pdf_of_size,
                     percentile, run_clients, smtp_source, workdir, write_lf_message)

def cpu_ticks(gw):
    """(user, system) CPU seconds of gatewayd and its children (the listener processes)."""
    pids = [gw.proc.pid]
    for ch in Path(f"/proc/{gw.proc.pid}/task").glob("*/children"):
        pids += [int(c) for c in ch.read_text().split()]
    user = system = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(f[11])
            system += int(f[12])
        except OSError:
            pass
    return user / os.sysconf("SC_CLK_TCK"), system / os.sysconf("SC_CLK_TCK")

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--lat", type=int, default=150)
    ap.add_argument("--body", action="store_true", help="message with a body, cover_page default (auto)")
    ap.add_argument("--defaults", action="store_true",
                    help="the shipped configuration where the bench's base differs: cover_page auto, log info (json)")
    ap.add_argument("--variants", default="1,auto")
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    print(f"tree {tree}  {machine()}")
    with workdir("ab") as root, Simulator() as sim:
        hold_provider(sim)
        pdf = pdf_of_size(100_000, seed=100_001)
        raw = fax_message(pdf)
        if a.body:
            raw = raw.replace(b"Content-Transfer-Encoding: 7bit\r\n\r\n\r\n", b"Content-Transfer-Encoding: 7bit\r\n\r\nPlease fax the attached document.\r\n", 1)
            assert b"Please fax" in raw
        f = write_lf_message(raw, root / "m.eml")
        own_repo = _common.REPO
        seen = {}
        for rnd in range(a.rounds):
            print(f" round {rnd + 1}  load {os.getloadavg()[0]:.2f}")
            with Postfix() as pf:
                smtp_source(pf.port, f, sessions=20, messages=40)
                el = smtp_source(pf.port, f, sessions=20, messages=a.count)
                asyncio.run(run_clients(pf.port, raw, sessions=20, messages=40))
                res, _ = asyncio.run(run_clients(pf.port, raw, sessions=20, messages=a.lat))
            ref = a.count / el
            lat = [r.latency for r in res]
            seen.setdefault("postfix", []).append((ref, 1.0, percentile(lat, 99), 0.0, 0.0, 0.0))
            print(f"  postfix            {ref:7.1f} msgs/s   p50 {fmt_ms(percentile(lat,50))} p99 {fmt_ms(percentile(lat,99))}")
            for vv in a.variants.split(","):
                spec, _, other = vv.partition("@")
                spec, *envs = spec.split("+")
                v, _, loop = spec.partition(":")
                if loop:
                    os.environ["GATEWAYD_EVENT_LOOP"] = loop
                for name in list(os.environ):
                    if name.startswith("GATEWAYD_AB_"):
                        del os.environ[name]
                for env in envs:  # "+GATEWAYD_AB_NAME=VALUE": an experiment's switch in the environment of gatewayd
                    name, _, value = env.partition("=")
                    os.environ[name] = value
                _common.REPO = Path(other).resolve() if other else own_repo
                ov = {} if v == "default" else {"smtp": {"processes": int(v) if v.isdigit() else v}}
                if a.body or a.defaults:
                    ov["documents"] = {"cover_page": "auto"}
                if a.defaults:
                    ov["log"] = {"level": "info", "format": "json"}
                with Gatewayd(root / f"gw-{time.monotonic_ns()}", sim.base_url, overrides=ov) as gw:
                    smtp_source(gw.port, f, sessions=20, messages=40)
                    c0 = cpu_ticks(gw)
                    el = smtp_source(gw.port, f, sessions=20, messages=a.count)
                    c1 = cpu_ticks(gw)
                    asyncio.run(run_clients(gw.port, raw, sessions=20, messages=40))
                    res, _ = asyncio.run(run_clients(gw.port, raw, sessions=20, messages=a.lat))
                    jobs = gw.jobs()
                bad = [r.reply for r in res if not r.reply.startswith("250")]
                lat = [r.latency for r in res]
                rate = a.count / el
                user, system = (1000 * (b - a_) / a.count for a_, b in zip(c0, c1))
                cpu = user + system
                seen.setdefault(vv, []).append((rate, rate / ref, percentile(lat, 99), cpu, user, system))
                print(f"  gatewayd {vv:12s} {rate:7.1f} msgs/s ({rate/ref:.2f}x)  p50 {fmt_ms(percentile(lat,50))} p99 {fmt_ms(percentile(lat,99))}"
                      f"  cpu/msg {cpu:.2f} ms (user {user:.2f}, sys {system:.2f})  jobs {jobs} bad {len(bad)} {bad[:2]}")
        _common.REPO = own_repo
        if a.rounds > 1:
            print(" medians")
            for vv, rows in seen.items():
                med = [statistics.median(col) for col in zip(*rows)]
                print(f"  {vv:20s} {med[0]:7.1f} msgs/s ({med[1]:.2f}x)  p99 {fmt_ms(med[2])}  cpu/msg {med[3]:.2f} ms"
                      f" (user {med[4]:.2f}, sys {med[5]:.2f})")
main()
