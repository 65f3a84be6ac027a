"""Header injection through encoded words (issue 14, item 4): text from a
received email or the provider never becomes a header line of ours, however
it is encoded, on any Python version (gatewayd/mail/compose.py)."""

from __future__ import annotations

import re
from email import message_from_bytes, policy

import pytest
from support.reports import ADMIN, SENDER, finished_job

from gatewayd.email_to_fax.parse import parse_message
from gatewayd.mail.compose import new_message, safe_header_text, to_bytes

# Decoded once (by the email package when the value is set) this is
# "Invoice\r\nBcc: victim@evil.example".
ONCE = "=?utf-8?q?Invoice=0D=0ABcc:_victim@evil.example?="
# Decoded once (by our own parse of the received Subject: the job's subject
# as stored) this is ONCE.
TWICE = "=?us-ascii?q?=3D=3Futf-8=3Fq=3FInvoice=3D0D=3D0ABcc=3A=5Fvictim=40evil=2Eexample=3F=3D?="


def header_lines(raw: bytes) -> list[str]:
    """The field names of the top-level header block, in order."""
    block = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return [line.split(":", 1)[0] for line in block.split("\r\n") if line and line[0] not in " \t"]


def assert_no_injection(raw: bytes) -> None:
    names = [n.lower() for n in header_lines(raw)]
    assert "bcc" not in names, raw[:600]
    assert not re.search(rb"(?im)^bcc:", raw), raw[:600]
    assert b"\r\nBcc" not in raw and b"\nBcc" not in raw
    msg = message_from_bytes(raw, policy=policy.default)
    assert msg["Bcc"] is None


def test_safe_header_text_decodes_then_strips_and_leaves_no_encoded_word() -> None:
    for value in (ONCE, TWICE, f"a {ONCE} b", "=?utf-8?b?SW52b2ljZQ0KQmNjOiB2aWN0aW1AZXZpbC5leGFtcGxl?="):
        text = safe_header_text(value)
        assert "\r" not in text and "\n" not in text
        assert "=?" not in text, text
    assert safe_header_text("=?utf-8?q?Gr=C3=BC=C3=9Fe?=") == "Grüße"
    assert safe_header_text("Plain subject") == "Plain subject"


@pytest.mark.parametrize("value", [ONCE, TWICE, "x\r\nBcc: victim@evil.example", "=?utf-8?q?a=0ABcc:_v@e.x?= =?utf-8?q?=0D?="])
def test_no_header_of_ours_can_be_injected(value: str) -> None:
    msg = new_message(mail_from="gw@example.com", to=["a@example.com"], subject=f"Fax from {value}",
                      in_reply_to=value, extra_headers=[("X-Fax-Caller-ID", value)])
    msg.set_content("body")
    raw = to_bytes(msg)
    assert_no_injection(raw)
    assert header_lines(raw)[:3] == ["From", "To", "Subject"]


async def test_double_encoded_subject_in_status_report_and_admin_copy(offline) -> None:
    # The subject as the intake stores it: our parse of the received
    # Subject: decodes it once.
    received = (f"From: {SENDER}\r\nTo: fax@example.com\r\nSubject: {TWICE}\r\n"
                "Message-ID: <m1@example.com>\r\n\r\nhello\r\n").encode()
    subject = parse_message(received).subject
    assert "=?" in subject  # still an encoded word: the attack survives one decode
    gw = offline(reports="all")
    await finished_job(gw, "failed", subject=subject, reason="the provider could not deliver the fax after 1 attempt")
    assert await gw.reporter.report_due() == 1
    rows = gw.store.list_mail()
    assert sorted(r.recipients for r in rows) == [(ADMIN,), (SENDER,)]  # the report and the admin copy
    for row in rows:
        assert_no_injection(row.message)
        msg = message_from_bytes(row.message, policy=policy.default)
        assert "Invoice" in msg["Subject"]
