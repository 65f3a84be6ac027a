"""FaxSMTP construction (aiosmtpd's per-session set-up) in one process: with FaxSMTP/_Decisions.__dir__ and with the full dir().

Run from the root of a checkout: ``.venv/bin/python bench/experiments/session_setup_ab.py``
(docs/performance.md, Issue 19, continued: lever 3). Not product code.
"""
import asyncio, time, statistics, types
from gatewayd.email_to_fax import smtp as S
async def main():
    loop = asyncio.get_running_loop()
    lst = types.SimpleNamespace(sessions=set())
    lst.decisions = S._Decisions(lst)
    kw = dict(hostname="gw", ident="ESMTP gatewayd", loop=loop, data_size_limit=1 << 20, auth_require_tls=True)
    def med(n=3000):
        ts = []
        for _ in range(n):
            t = time.process_time(); S.FaxSMTP(lst, **kw); ts.append(time.process_time() - t)
        lst.sessions.clear()
        return statistics.median(ts) * 1e6
    has = "__dir__" in S.FaxSMTP.__dict__
    for rnd in range(3):
        row = []
        if has:
            d1, d2 = S.FaxSMTP.__dict__["__dir__"], S._Decisions.__dict__["__dir__"]
            row.append(("with __dir__", med()))
            del S.FaxSMTP.__dir__, S._Decisions.__dir__
            row.append(("full dir()", med()))
            S.FaxSMTP.__dir__, S._Decisions.__dir__ = d1, d2
        else:
            row.append(("full dir()", med()))
        print(" ".join(f"{k} {v:.0f} us" for k, v in row))
asyncio.run(main())
