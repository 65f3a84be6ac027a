"""After the last large message of a burst, the listener gives the memory its
buffers used back to the OS (``gatewayd.memory.release_free_memory``), so a
long-running daemon does not keep its peak size after a burst of large faxes."""

from __future__ import annotations

import os
from io import BytesIO
from pathlib import Path

import pikepdf
from support.corpus import good_message, make_pdf
from support.e2f import RawSMTP, load, run_gateway

from gatewayd.email_to_fax import smtp as smtp_module
from gatewayd.memory import TRIM_AFTER_BYTES, release_free_memory


def large_pdf(padding: int) -> bytes:
    """A valid one-page PDF made large by an unused stream of random bytes."""
    pdf = pikepdf.Pdf.open(BytesIO(make_pdf(1)))
    pdf.Root.Padding = pdf.make_stream(os.urandom(padding))
    out = BytesIO()
    pdf.save(out)
    return out.getvalue()


def test_the_c_library_can_release_memory() -> None:
    # Debian's glibc has malloc_trim; without it the daemon would keep its peak.
    assert release_free_memory() is True


async def test_released_after_a_large_message_not_after_a_small_one(tmp_path: Path, data: dict, monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(smtp_module, "release_free_memory", lambda: calls.append(1) or True)
    async with run_gateway(load(tmp_path, data)) as gw:
        client = await RawSMTP.connect(gw.port)
        try:
            _, _, reply = await client.send(good_message([("a.pdf", "application/pdf", make_pdf(1))]))
            assert reply.startswith("250 "), reply
            assert calls == []
            big = good_message([("b.pdf", "application/pdf", large_pdf(TRIM_AFTER_BYTES))])
            assert len(big) > TRIM_AFTER_BYTES
            _, _, reply = await client.send(big)
            assert reply.startswith("250 "), reply
            assert calls == [1]
        finally:
            await client.close()
