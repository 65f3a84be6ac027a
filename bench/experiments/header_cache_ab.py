"""A cache of parsed header fields shared across messages: what it would save, measured honestly.

``parse.py`` parses each header field once per message (``_ParsePolicy``).
A process-wide cache by (name, value) would also skip the fields that
repeat from one message to the next (a sender's From, the attachment's
Content-Type and Content-Transfer-Encoding). Parsing the bench's one
message file over and over makes every field repeat, which overstates it;
so this parses realistic distinct messages (own Message-ID, Date, Subject,
recipient, MIME boundary; one sender; 50 attachment names), each batch
not seen by the cache before, against the same batch size without it.
CPU time in-process (``time.process_time``), median of 5 rounds of 400.
Not product code (it patches ``_ParsePolicy`` for the run); figures in
docs/performance.md, "Issue 19, session 5".

    .venv/bin/python bench/experiments/header_cache_ab.py
"""

from __future__ import annotations

import email.policy
import email.utils
import random
import statistics
import sys
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import pdf_of_size  # noqa: E402

from gatewayd.email_to_fax import parse  # noqa: E402

BATCH = 400
ROUNDS = 5


def message(i: int, pdf: bytes) -> bytes:
    m = EmailMessage(policy=email.policy.SMTP)
    m["From"] = "Alice Example <alice@example.com>"
    m["To"] = f"+7812309{i % 10000:04d}@fax.example.com"
    m["Subject"] = f"Invoice {i}"
    m["Date"] = email.utils.formatdate(1_700_000_000 + i * 37)
    m["Message-ID"] = f"<{random.getrandbits(64):x}.{i}@mail.example.com>"
    m.set_content("Please fax the attached document.")
    m.add_attachment(pdf, maintype="application", subtype="pdf", filename=f"scan{i % 50:04d}.pdf")
    return m.as_bytes()


def main() -> None:
    pdf = pdf_of_size(100_000, seed=100_001)
    messages = [message(i, pdf) for i in range(BATCH * (ROUNDS + 2))]
    plain = parse._ParsePolicy.header_fetch_parse
    shared: dict[tuple[str, str], Any] = {}

    def cached(self: Any, name: str, value: str) -> Any:
        fetched = self._fetched
        key = (name, value)
        header = fetched.get(key)
        if header is None:
            self._budget.charge(name, value)
            header = shared.get(key)
            if header is None:
                header = shared[key] = email.policy.EmailPolicy.header_fetch_parse(self, name, value)
            fetched[key] = header
        return header

    def per_message(batch: list[bytes]) -> float:
        started = time.process_time()
        for raw in batch:
            parse.parse_message(raw, crlf_checked=True)
        return (time.process_time() - started) / len(batch) * 1000

    per_message(messages[:50])  # first use of every code path
    rows: dict[str, list[float]] = {"no shared cache": [], "shared cache, batch not seen before": [],
                                    "shared cache, the same batch again (one message file sent over and over)": []}
    for r in range(ROUNDS):
        batch, fresh = messages[BATCH * r:BATCH * (r + 1)], messages[BATCH * (r + 1):BATCH * (r + 2)]
        parse._ParsePolicy.header_fetch_parse = plain  # type: ignore[method-assign]
        rows["no shared cache"].append(per_message(batch))
        parse._ParsePolicy.header_fetch_parse = cached  # type: ignore[method-assign]
        rows["shared cache, batch not seen before"].append(per_message(fresh))
        rows["shared cache, the same batch again (one message file sent over and over)"].append(per_message(fresh))
    parse._ParsePolicy.header_fetch_parse = plain  # type: ignore[method-assign]
    for what, values in rows.items():
        print(f"{statistics.median(values):6.3f} ms per parse_message  {what}  ({', '.join(f'{v:.3f}' for v in values)})")
    print(f"{len(shared)} fields cached")


if __name__ == "__main__":
    main()
