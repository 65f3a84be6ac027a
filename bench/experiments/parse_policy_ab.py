"""parse_message on the bench's 100 KB message with a body, and the feed of its skeleton plus the header reads the parse makes, with gatewayd's policy, email.policy.default and compat32.

Run from the root of a checkout: ``.venv/bin/python bench/experiments/parse_policy_ab.py``
(docs/performance.md, Issue 19, continued: lever 2). Not product code.
"""
import sys, time, statistics, email.policy
sys.path.insert(0, "bench")
from _common import fax_message, pdf_of_size
from email.feedparser import BytesFeedParser
from gatewayd.email_to_fax import parse as P
raw = fax_message(pdf_of_size(100_000, seed=100_001))
raw = raw.replace(b"Content-Transfer-Encoding: 7bit\r\n\r\n\r\n", b"Content-Transfer-Encoding: 7bit\r\n\r\nPlease fax the attached document.\r\n", 1)
def med(fn, n=300):
    ts = []
    for _ in range(n):
        t = time.process_time(); fn(); ts.append(time.process_time() - t)
    return statistics.median(ts) * 1000
def skel():
    regions = P.skeleton.find_regions(raw, max_parts=100, max_depth=10)
    pieces, pos = [], 0
    for i, (s, e) in enumerate(regions):
        pieces += [raw[pos:s], b"gatewayd-body-x-%d" % i]; pos = e
    pieces.append(raw[pos:]); return b"".join(pieces)
sk = skel()
HEAD = ("from", "to", "subject", "date", "message-id", "content-type", "content-disposition", "content-transfer-encoding")
def feed(policy):
    p = BytesFeedParser(policy=policy); p.feed(sk); m = p.close()
    for part in m.walk():
        for h in HEAD: part.get(h)
        part.get_content_type(); part.get_filename(); part.get_content_charset()
for rnd in range(3):
    print("round", rnd,
          "parse_message %.3f ms" % med(lambda: P.parse_message(raw, crlf_checked=True)),
          "| feed+headers: ours(EmailPolicy cached) %.3f" % med(lambda: feed(P._ParsePolicy())),
          "default %.3f" % med(lambda: feed(email.policy.default)),
          "compat32 %.3f ms" % med(lambda: feed(email.policy.compat32)))
