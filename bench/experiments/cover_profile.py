"""render_cover and build_parts CPU time for the bench's 100 KB PDF with a one-line Latin body; with an argument, a cProfile of 200 covers.

Run from the root of a checkout: ``.venv/bin/python bench/experiments/cover_profile.py [profile]``
(docs/performance.md, Issue 19, continued: lever 1). Not product code.
"""
import sys, time, cProfile, pstats, statistics
sys.path.insert(0, "bench")
from gatewayd.documents import cover as c
from gatewayd.documents.builder import build_parts
from _common import pdf_of_size
from dataclasses import dataclass
@dataclass
class P:
    filename: str; kind: str; data: bytes
pdf = pdf_of_size(100_000, seed=100_001)
att = [P("a.pdf", "pdf", pdf)]
page = c.CoverPage(sender="Alice <alice@example.com>", recipient="+7 812 309-26-31",
                   date="Mon, 1 Jan 2024 12:00:00 +0000", subject="Invoice 42", body="Please fax the attached document.")
for _ in range(5): build_parts(att, covers=[page])
def t(fn, n=60):
    ts=[]
    for _ in range(n):
        a=time.process_time(); fn(); ts.append(time.process_time()-a)
    return statistics.median(ts)*1000
print("render_cover  %.2f ms" % t(lambda: c.render_cover(page, attachment_pages=3)))
print("build_parts   %.2f ms" % t(lambda: build_parts(att, covers=[page])))
print("build_parts nocover %.2f ms" % t(lambda: build_parts(att, covers=[])))
if len(sys.argv) > 1:
    pr = cProfile.Profile(); pr.enable()
    for _ in range(200): c.render_cover(page, attachment_pages=3)
    pr.disable()
    st = pstats.Stats(pr); st.sort_stats("cumulative").print_stats(45)
    st.sort_stats("tottime").print_stats(30)
