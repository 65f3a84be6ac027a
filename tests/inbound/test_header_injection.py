"""A provider caller id written as an encoded word (issue 14, item 4) does not
add a header to the received-fax email: simulator -> poller -> relay -> sink."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from support.inbound import by_uuid

CALLER = "=?utf-8?q?Invoice=0D=0ABcc:_victim@evil.example?="


async def test_caller_id_encoded_word_injects_no_header(sim, sink, make_harness, faxes) -> None:
    when = datetime.now(sim.tz).replace(microsecond=0) - timedelta(minutes=3)
    uuid = sim.inject_received(122, faxes["pdf"].data, caller_id=CALLER, destination="78123092631", when=when)
    h = await make_harness()
    await h.cycle()
    [mail] = by_uuid(sink.messages)[uuid]
    raw = mail.data
    block = raw.split(b"\r\n\r\n", 1)[0]
    assert not re.search(rb"(?im)^bcc[ \t]*:", block), block.decode()
    assert mail.message["Bcc"] is None
    assert sorted(mail.rcpt_tos) == sorted(set(mail.rcpt_tos))
    assert "victim@evil.example" not in mail.rcpt_tos
    assert "Invoice" in mail.message["X-Fax-Caller-ID"] and "\n" not in mail.message["X-Fax-Caller-ID"]
    assert "Invoice" in mail.message["Subject"] and "=?" not in mail.message["Subject"]
