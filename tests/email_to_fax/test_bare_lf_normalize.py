"""smtp.bare_lf = "normalize" over a real socket: LF-only messages (old
scanners, ``smtplib.sendmail(msg.as_bytes())``) are faxed, and a fake end of
data (LF . LF, CRLF . LF, LF . CRLF) never ends DATA, so no second
transaction can be smuggled in."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.corpus import good_message, make_pdf
from support.e2f import DOMAIN, NUMBER_1, NUMBER_2, SENDER, RawSMTP, load, merge, run_gateway

PDF = make_pdf(1, text="Scanned")


async def test_lf_only_message_is_faxed(tmp_path: Path, data: dict) -> None:
    raw = good_message([("scan.pdf", "application/pdf", PDF)], subject="Scan")
    async with run_gateway(load(tmp_path, merge(data, {"smtp": {"bare_lf": "normalize"}}))) as gw:
        c = await RawSMTP.connect(gw.port)
        for variant in (raw.replace(b"\r\n", b"\n"), raw.replace(b"Subject: Scan\r\n", b"Subject: Scan\n", 1)):
            _, _, reply = await c.send(variant)
            assert reply.startswith("250 2.0.0 queued as"), reply
        await c.close()
        jobs = gw.jobs()
        assert len(jobs) == 2 and all(j.pages == 1 and j.subject == "Scan" for j in jobs)


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r\n.\n", b"\n.\r\n"])
async def test_a_fake_end_of_data_smuggles_nothing(tmp_path: Path, data: dict, fake_end: bytes) -> None:
    smuggled = (f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{NUMBER_2}@{DOMAIN}>\r\nDATA\r\n").encode() + good_message(
        [("evil.pdf", "application/pdf", PDF)], subject="Smuggled")
    async with run_gateway(load(tmp_path, merge(data, {"smtp": {"bare_lf": "normalize"}}))) as gw:
        c = await RawSMTP.connect(gw.port)
        assert await c.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 sender ok"
        assert await c.cmd(f"RCPT TO:<{NUMBER_1}@{DOMAIN}>") == "250 2.1.5 recipient ok"
        assert (await c.cmd("DATA")).startswith("354")
        first = good_message([("a.pdf", "application/pdf", PDF)], subject="First").rstrip(b"\r\n")
        c.writer.write(first + fake_end + smuggled + b"\r\n.\r\n")
        await c.writer.drain()
        reply = await c.reply()
        # One transaction, to the one recipient given: the smuggled commands were message text.
        assert reply.startswith("250 2.0.0 queued as"), reply
        assert await c.cmd("NOOP") == "250 OK"  # the next reply is to the next command: nothing was left over
        await c.close()
        assert [j.number for j in gw.jobs()] == [NUMBER_1]
        assert all(j.subject == "First" for j in gw.jobs())
