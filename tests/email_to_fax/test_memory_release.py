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


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_freed_heap_memory_goes_back_to_the_os() -> None:
    # 64 KiB blocks come from the heap (below glibc's mmap threshold); a small
    # block allocated after them pins the top of the heap, so freeing them
    # does not shrink the heap by itself: only malloc_trim hands it back.
    size = 96 << 20
    blocks = [bytearray(64 << 10) for _ in range(size // (64 << 10))]
    for b in blocks:
        b[::4096] = b"x" * len(b[::4096])  # touch every page: resident
    pin = bytearray(2000)
    del blocks
    before = resident_bytes()
    assert release_free_memory() is True  # Debian's glibc has malloc_trim
    after = resident_bytes()
    # Generous: at least half of what was freed is gone from the resident set.
    assert before - after > size // 2, f"resident {before >> 20} MiB -> {after >> 20} MiB after release"
    del pin


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


def test_a_parsed_message_leaves_no_reference_cycle_behind() -> None:
    # Whatever parse_message builds must go as soon as the last reference
    # does: a reference cycle holding the raw message and the decoded
    # attachments waits for the cyclic GC, and 20 messages of 10 MB at once
    # then peaked at ~550 MiB instead of ~170 (docs/performance.md, (b)).
    import gc

    from gatewayd.email_to_fax.parse import parse_message

    raw = good_message([("a.pdf", "application/pdf", make_pdf(2))], body="Please fax the attached document.")
    parse_message(raw)  # imports and per-process caches made before counting
    gc.collect()
    gc.disable()
    try:
        parsed = parse_message(raw)
        assert parsed.attachments
        del parsed
        assert gc.collect() == 0
    finally:
        gc.enable()
