"""The hostile corpus, run through parse_message and build_document.

The SMTP-level tests run the same cases through the listener; here each
case must produce the reply prefix it names when parsed and built as the
listener would (cover page "auto", A4, 100 pages, 10 MB).
"""

from __future__ import annotations

import pytest

from gatewayd.documents.builder import build_document
from gatewayd.documents.cover import CoverPage, wants_cover
from gatewayd.email_to_fax.errors import IntakeRefused
from gatewayd.email_to_fax.parse import office_as_unsupported, parse_message
from support.corpus import ACCEPTED, CorpusCase


def reply_for(raw: bytes) -> str:
    try:
        # As the listener does where LibreOffice is off (tests/office runs it on).
        msg = office_as_unsupported(parse_message(raw))
        cover = None
        if wants_cover("auto", msg.body_text):
            cover = CoverPage(msg.from_addr or "", "+78123092631", msg.date or "", msg.subject, msg.body_text)
        doc = build_document(msg.attachments, cover=cover, page_size="A4", max_pages=100, unsupported=msg.unsupported)
    except IntakeRefused as exc:
        return exc.reply
    assert doc.pages >= 1
    return f"{ACCEPTED}1"


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")  # our limit comes first
def test_every_case_gets_its_reply(corpus: list[CorpusCase]) -> None:
    wrong = {}
    refused = 0
    for case in corpus:
        reply = reply_for(case.raw)
        refused += not reply.startswith(ACCEPTED)
        if not reply.startswith(case.expected_reply_prefix):
            wrong[case.name] = (reply, case.expected_reply_prefix)
    assert not wrong
    # The parser and builder refused many different hostile messages, not a handful.
    assert refused >= 30 and len(corpus) - refused >= 1
