"""render_cover's CPU time with fpdf2's own writer against cover_writer's, alternating in one process.

Run from the root of a checkout: ``.venv/bin/python bench/experiments/cover_ab.py``
(docs/performance.md, Issue 19, lever 4).
"""

import time, statistics
from fpdf.output import OutputProducer
from gatewayd.documents import cover as c
cases = (("Latin-1", "Invoice 42", "Please find the invoice attached.\nRegards, Alice"),
         ("Cyrillic", "Счёт № 42", "Прошу оплатить счёт до пятницы.\nС уважением, Иван"),
         ("CJK", "請求書 42", "請求書を添付します。\n안녕하세요"))
new = c._COVER_FONT.writer()
res = {}
for rnd in range(6):
    for name, w in (("before", OutputProducer), ("after", new)):
        c._COVER_FONT._writer = w
        for label, subject, body in cases:
            page = c.CoverPage(sender="Alice <alice@example.com>", recipient="+7 812 309-26-31",
                               date="Mon, 1 Jan 2024 12:00:00 +0000", subject=subject, body=body)
            c.render_cover(page, attachment_pages=3)
            ts = []
            for _ in range(15):
                t = time.process_time(); c.render_cover(page, attachment_pages=3); ts.append(time.process_time() - t)
            res.setdefault((label, name), []).append(statistics.median(ts))
for (label, name), v in res.items():
    print(f"{label:9} {name:7} median of rounds {statistics.median(v)*1000:6.2f} ms  best {min(v)*1000:6.2f} ms")
