"""render_cover's CPU time, two ways of writing the same cover alternating in one process.

Run from the root of a checkout:

* ``.venv/bin/python bench/experiments/cover_ab.py``: fpdf2's own writer
  against cover_writer's (docs/performance.md, Issue 19, lever 4);
* ``.venv/bin/python bench/experiments/cover_ab.py direct``: quick covers
  drawn by fpdf2 (with cover_writer) against written by cover_direct
  (docs/performance.md, Issue 19, session 5).
"""

import statistics
import sys
import time
from unittest import mock

from fpdf.output import OutputProducer

from gatewayd.documents import cover as c


def writers() -> None:
    cases = (("Latin-1", "Invoice 42", "Please find the invoice attached.\nRegards, Alice"),
             ("Cyrillic", "Счёт № 42", "Прошу оплатить счёт до пятницы.\nС уважением, Иван"),
             ("CJK", "請求書 42", "請求書を添付します。\n안녕하세요"))
    new = c._COVER_FONT.writer()
    res: dict[tuple[str, str], list[float]] = {}
    for _ in range(6):
        for name, w in (("before", OutputProducer), ("after", new)):
            c._COVER_FONT._writer = w
            for label, subject, body in cases:
                page = c.CoverPage(sender="Alice <alice@example.com>", recipient="+7 812 309-26-31",
                                   date="Mon, 1 Jan 2024 12:00:00 +0000", subject=subject, body=body)
                c.render_cover(page, attachment_pages=3)
                ts = []
                for _ in range(15):
                    t = time.process_time()
                    c.render_cover(page, attachment_pages=3)
                    ts.append(time.process_time() - t)
                res.setdefault((label, name), []).append(statistics.median(ts))
    for (label, name), v in res.items():
        print(f"{label:9} {name:7} median of rounds {statistics.median(v)*1000:6.2f} ms  best {min(v)*1000:6.2f} ms")


def direct(rounds: int = 7, per_round: int = 40) -> None:
    look = c.CoverLook(organisation="ACME Ltd", phone="+1 555 0100",
                       notice="CONFIDENTIAL: meant for the person named above only. If you received it in error, call us.")
    base = dict(sender="Alice <alice@example.com>", recipient="+7 812 309-26-31", date="Mon, 1 Jan 2024 12:00:00 +0000")
    cases = (
        ("one line (the bench's)", c.CoverPage(subject="Invoice 42", body="Please fax the attached document.", **base)),
        ("Latin, 3 lines", c.CoverPage(subject="Invoice 42", body="Please find the invoice attached.\nRegards,\nAlice", **base)),
        ("Cyrillic, 2 lines", c.CoverPage(subject="Счёт № 42", body="Прошу оплатить счёт до пятницы.\nС уважением, Иван", **base)),
        ("letterhead + notice", c.CoverPage(subject="Invoice 42", body="Please fax the attached document.", look=look, **base)),
        ("1,900 characters", c.CoverPage(subject="Contract", body=("Please find attached the signed contract. " * 9 + "\n\n") * 5, **base)),
        ("two pages", c.CoverPage(subject="Lines", body="A short line.\n" * 140, **base)),
    )
    fpdf2 = mock.patch.object(c._COVER_FONT, "direct_font", lambda text: None)
    for _, page in cases:
        c.render_cover(page, attachment_pages=3)  # subsets made and parsed, direct fonts made
        assert c.is_quick(page)
    res: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for name in ("fpdf2", "direct"):
            if name == "fpdf2":
                fpdf2.start()
            try:
                for label, page in cases:
                    ts = []
                    for _ in range(per_round):
                        t = time.process_time()
                        c.render_cover(page, attachment_pages=3)
                        ts.append(time.process_time() - t)
                    res.setdefault((label, name), []).append(statistics.median(ts))
            finally:
                if name == "fpdf2":
                    fpdf2.stop()
    print(f"render_cover, CPU time (time.process_time), median of {rounds} alternating rounds' medians of {per_round}")
    print(f"{'cover':24} {'fpdf2':>9} {'direct':>9}  size fpdf2 / direct")
    for label, page in cases:
        with fpdf2:
            old = c.render_cover(page, attachment_pages=3)
        new = c.render_cover(page, attachment_pages=3)
        a, b = (statistics.median(res[(label, n)]) * 1000 for n in ("fpdf2", "direct"))
        print(f"{label:24} {a:6.3f} ms {b:6.3f} ms  {len(old) / 1024:.1f} / {len(new) / 1024:.1f} KB")


if __name__ == "__main__":
    direct() if sys.argv[1:] == ["direct"] else writers()
