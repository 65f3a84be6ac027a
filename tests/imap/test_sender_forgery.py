"""Forged sender trust (issue 14, item 2): Authentication-Results are read from
the raw header bytes, dmarc=pass must name the From: domain, and a From: that
parses with defects or to more than one address is nobody's.

Unit tests on the raw-header identity and the verdict, and the same vectors
through a real Dovecot mailbox."""

from __future__ import annotations

import re

from support.imap import TRUSTED_ID, Dovecot, fax_message, run_imap, wait_for

from gatewayd.email_to_fax.authresults import verify_sender
from gatewayd.email_to_fax import imap as imap_module
from gatewayd.email_to_fax.imap import _Identity

# The envelope sender the attacker chose, as a verifying MTA copies it into
# its own header: decoded per RFC 2047 it reads "x; dmarc=pass h.x=@evil.example".
FORGED_MAILFROM = "=?us-ascii?q?x=3B_dmarc=3Dpass_h=2Ex=3D?=@evil.example"
# The same, but the injected statement also names the From: domain.
FORGED_MAILFROM_ALIGNED = "=?us-ascii?q?x=3B_dmarc=3Dpass_header=2Efrom=3Dexample=2Ecom_h=2Ex=3D?=@evil.example"


def _header(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _forged_results(mailfrom: str) -> str:
    return f"{TRUSTED_ID}; spf=fail smtp.mailfrom={mailfrom}; dmarc=fail (p=reject) header.from=example.com"


def _judge(block: bytes):
    ident = _Identity.from_header(block)
    return ident, verify_sender(ident.authentication_results, TRUSTED_ID, ident.from_addr)


def test_encoded_words_in_the_trusted_header_are_not_decoded() -> None:
    for mailfrom in (FORGED_MAILFROM, FORGED_MAILFROM_ALIGNED):
        ident, verdict = _judge(_header(
            f"Authentication-Results: {_forged_results(mailfrom)}",
            "From: alice@example.com", "Subject: x",
        ))
        assert ident.from_addr == "alice@example.com"
        assert "=?us-ascii?q?" in ident.authentication_results[0]  # as the MTA wrote it
        assert not verdict.passed, verdict


def test_a_genuine_pass_still_passes_from_the_raw_header() -> None:
    ident, verdict = _judge(_header(
        f"Authentication-Results: {TRUSTED_ID};\r\n\tspf=pass smtp.mailfrom=bounce@example.com;\r\n"
        "\tdmarc=pass (p=reject) header.from=example.com",
        "From: Alice <alice@example.com>",
    ))
    assert verdict.passed and verdict.method in ("dmarc", "spf"), verdict


def test_dmarc_pass_without_header_from_is_not_a_pass() -> None:
    verdict = verify_sender([f"{TRUSTED_ID}; dmarc=pass"], TRUSTED_ID, "alice@example.com")
    assert not verdict.passed
    verdict = verify_sender([f"{TRUSTED_ID}; dmarc=pass (p=none) header.from=evil.example"], TRUSTED_ID, "alice@example.com")
    assert not verdict.passed
    verdict = verify_sender([f"{TRUSTED_ID}; dmarc=pass header.from=Example.COM"], TRUSTED_ID, "alice@example.com")
    assert verdict.passed


def test_a_from_with_a_comment_trick_or_several_addresses_is_nobody() -> None:
    results = f"Authentication-Results: {TRUSTED_ID}; dmarc=pass header.from=example.com"
    for from_line in (
        "From: alice@example.com (x) <y@evil.example>",
        "From: alice@example.com, y@evil.example",
        "From: alice@example.com <y@evil.example>",
        "From: Team: alice@example.com;",
        "From: <alice@example.com",
    ):
        ident, verdict = _judge(_header(results, from_line))
        assert ident.from_addr is None, from_line
        assert not verdict.passed
    for from_line in ("From: Alice <alice@example.com>", 'From: "Smith, A." <alice@example.com>',
                      "From: =?utf-8?q?Al=C3=AFce?= <alice@example.com>", "From: alice@example.com (Alice)"):
        ident, _ = _judge(_header(results, from_line))
        assert ident.from_addr == "alice@example.com", from_line


def _raw_with(results: str, from_line: str, subject: str) -> bytes:
    """A fax message with exactly these raw header lines on top (no re-encoding)."""
    base = fax_message(authentication_results=[], subject=subject)
    base = re.sub(rb"(?m)^From: .*\r\n", b"", base, count=1)
    return f"Authentication-Results: {results}\r\n{from_line}\r\n".encode() + base


async def test_forged_results_and_from_tricks_through_dovecot(dovecot: Dovecot, make_config, monkeypatch) -> None:
    # Strangers are judged from the raw header block: their messages are never parsed.
    parsed: list[bytes] = []
    real_parse = imap_module.parse_message

    def counting_parse(raw: bytes, **kw):
        parsed.append(raw)
        return real_parse(raw, **kw)

    monkeypatch.setattr(imap_module, "parse_message", counting_parse)
    hostile = [
        _raw_with(_forged_results(FORGED_MAILFROM), "From: alice@example.com", "forged mailfrom"),
        _raw_with(_forged_results(FORGED_MAILFROM_ALIGNED), "From: alice@example.com", "forged aligned"),
        _raw_with(f"{TRUSTED_ID}; dmarc=pass", "From: alice@example.com", "no header.from"),
        _raw_with(f"{TRUSTED_ID}; dmarc=pass header.from=example.com",
                  "From: alice@example.com (x) <y@evil.example>", "comment trick"),
    ]
    genuine = _raw_with(f"{TRUSTED_ID}; dmarc=pass header.from=example.com", "From: alice@example.com", "genuine")
    async with run_imap(make_config(idle=True)) as gw:
        await wait_for(lambda: gw.rt.health.listeners.get("imap"), what="the IMAP login")
        for raw in hostile:
            await dovecot.append(raw)
        await dovecot.append(genuine)

        async def done() -> bool:
            return await dovecot.counts("INBOX", "Processed", "Failed") == (0, 1, len(hostile))

        await wait_for(done, timeout=15, interval=0.1, what="all messages handled")
        jobs = gw.jobs()
        assert [j.subject for j in jobs] == ["genuine"]
        assert gw.store.list_mail() == []  # strangers get no reply
        assert parsed == [genuine]
