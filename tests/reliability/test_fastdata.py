"""gatewayd.email_to_fax.fastdata: the chunked DATA reader against a
line-by-line reference reader (RFC 5321 section 4.5.2), with the network's
chunk boundaries falling everywhere, pipelined commands after the dot, size
limits, bare LFs, spooling and spool failures."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.email_to_fax.fastdata import DataBody, IntakeGate, read_data, unstuff

AIOSMTPD_LIMIT = 1001  # aiosmtpd's StreamReader limit (line_length_limit)
PIPELINED = b"QUIT\r\n"


# ---------------------------------------------------------------- references


def stuff(message: bytes) -> bytes:
    """Reference encoder (what a client sends): a dot at a line start doubled, then CRLF.CRLF.

    ``message`` ends with CRLF or is empty (a DATA body always does)."""
    assert message == b"" or message.endswith(b"\r\n")
    return (b"\r\n" + message).replace(b"\r\n.", b"\r\n..")[2:] + b".\r\n"


def reference_read(wire: bytes) -> tuple[bytes, bytes, bool]:
    """Line-by-line reader: (un-stuffed content, bytes after the terminator, bare LF seen).

    Lines end with CRLF only; a line that is exactly "." ends the data; any
    other line starting with "." loses that dot."""
    out: list[bytes] = []
    pos = 0
    bare = False
    while True:
        end = wire.find(b"\r\n", pos)
        assert end != -1, "no terminator in the wire bytes"
        line = wire[pos:end]
        pos = end + 2
        if line == b".":
            return b"".join(out), wire[pos:], bare
        if line.startswith(b"."):
            line = line[1:]
        if b"\n" in line:
            bare = True
        out.append(line + b"\r\n")


def normalized(content: bytes) -> bytes:
    """The reference content with every bare LF read as CRLF (smtp.bare_lf = "normalize")."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", content)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


async def run_reader(chunks: list[bytes], *, reader_limit: int = AIOSMTPD_LIMIT, eof: bool = False, **kw) -> tuple[DataBody, bytes]:
    """Feed ``chunks`` into a StreamReader one event-loop turn apart; read DATA; return (body, unread)."""
    reader = asyncio.StreamReader(limit=reader_limit)

    async def producer() -> None:
        for chunk in chunks:
            reader.feed_data(chunk)
            await asyncio.sleep(0)
        if eof:
            reader.feed_eof()

    task = asyncio.create_task(producer())
    try:
        body = await asyncio.wait_for(read_data(reader, **kw), timeout=10)
    finally:
        await task
    if not eof:
        reader.feed_eof()
    rest = await reader.read()
    assert reader._limit == reader_limit  # restored after DATA
    return body, rest


def content(body: DataBody) -> bytes:
    data = body.read()
    body.close()
    return data


# -------------------------------------------------------------- round trips

_line_bytes = st.binary(max_size=12).map(lambda b: bytes(b".\r\na\x00\xff"[x % 6] for x in b))
messages = st.lists(_line_bytes, max_size=30).map(lambda lines: b"".join(line.replace(b"\r\n", b"\r") + b"\r\n" for line in lines))
# Raw wire bytes no encoder made: unstuffed dots, bare CR/LF, dots everywhere.
raw_wire = st.binary(max_size=300).map(lambda b: bytes(b".\r\nx"[x % 4] for x in b))
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=messages, cut=cuts, chunk_limit=st.sampled_from([8, 9, 16, 64, 65536]), reader_limit=st.sampled_from([8, 64, AIOSMTPD_LIMIT]))
async def test_round_trip_against_the_reference_encoder(message: bytes, cut: list[int], chunk_limit: int, reader_limit: int) -> None:
    wire = stuff(message) + PIPELINED
    body, rest = await run_reader(chunked(wire, cut), reader_limit=reader_limit, chunk_limit=chunk_limit)
    assert rest == PIPELINED  # nothing read past the terminator
    assert not body.too_big and body.error is None
    assert body.size == len(message)
    assert body.bare_lf == (message.count(b"\n") != message.count(b"\r\n"))
    assert content(body) == message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=raw_wire, cut=cuts, chunk_limit=st.sampled_from([8, 13, 32, 65536]))
async def test_arbitrary_wire_bytes_match_the_line_reader(prefix: bytes, cut: list[int], chunk_limit: int) -> None:
    # Whatever precedes it, the data ends at the first CRLF "." CRLF (or "." CRLF at the start).
    wire = prefix + b"\r\n.\r\n" + PIPELINED
    expected, expected_rest, expected_bare = reference_read(wire)
    body, rest = await run_reader(chunked(wire, cut), chunk_limit=chunk_limit)
    assert rest == expected_rest
    assert body.size == len(expected)
    assert body.bare_lf == expected_bare
    assert content(body) == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=raw_wire, cut=cuts, chunk_limit=st.sampled_from([8, 13, 32, 65536]))
async def test_normalized_bare_lf_matches_the_line_reader(prefix: bytes, cut: list[int], chunk_limit: int) -> None:
    # The same end of data as without normalising (CRLF "." CRLF only); the content's bare LFs become CRLF.
    wire = prefix + b"\r\n.\r\n" + PIPELINED
    expected, expected_rest, expected_bare = reference_read(wire)
    body, rest = await run_reader(chunked(wire, cut), chunk_limit=chunk_limit, normalize_bare_lf=True)
    assert rest == expected_rest
    assert body.bare_lf == expected_bare
    data = content(body)
    assert data == normalized(expected)
    assert body.size == len(data)
    assert data.count(b"\n") == data.count(b"\r\n")  # no bare LF is left


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=messages, cut=cuts, limit=st.integers(min_value=1, max_value=200))
async def test_size_limit_is_exact_and_the_data_is_drained(message: bytes, cut: list[int], limit: int) -> None:
    wire = stuff(message) + PIPELINED
    body, rest = await run_reader(chunked(wire, cut), limit=limit, chunk_limit=16)
    assert rest == PIPELINED  # read to the end even when too big
    assert body.size == len(message)
    assert body.too_big == (len(message) > limit)
    if body.too_big:
        assert not body.stored
        with pytest.raises(ValueError):
            body.read()
    else:
        assert content(body) == message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(message=messages, cut=cuts, threshold=st.integers(min_value=0, max_value=120))
async def test_spooled_bodies_are_the_same_bytes(tmp_path: Path, message: bytes, cut: list[int], threshold: int) -> None:
    wire = stuff(message) + PIPELINED
    body, rest = await run_reader(chunked(wire, cut), spool_threshold=threshold, spool_dir=tmp_path, chunk_limit=16)
    assert rest == PIPELINED
    assert body.spooled == (len(message) > threshold)
    assert await body.aread() == message
    body.close()
    assert os.listdir(tmp_path) == []  # anonymous spool files: nothing to clean after a crash


# ------------------------------------------------------------------ examples


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b".\r\n", b""),  # empty message
        (b"..\r\n.\r\n", b".\r\n"),  # first line stuffed
        (b"...\r\n.\r\n", b"..\r\n"),
        (b".x\r\n.\r\n", b"x\r\n"),  # an unstuffed leading dot is deleted (RFC 5321 4.5.2)
        (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n"),
        (b"a\r\n. \r\n.\r\n", b"a\r\n \r\n"),
        (b"a\r\n.\r\r\n.\r\n", b"a\r\n\r\r\n"),  # ".CR CR LF" is not the terminator
        (b"a\n.\r\n.\r\n", b"a\n.\r\n"),  # a dot after a bare LF is data
        (b"\r\n.\r\n", b"\r\n"),
        (b"\r\r\n.\r\n", b"\r\r\n"),
    ],
)
async def test_examples(wire: bytes, expected: bytes) -> None:
    for size in range(1, len(wire) + 1):  # every chunk size, down to one byte at a time
        pieces = [wire[i:i + size] for i in range(0, len(wire), size)] + [PIPELINED]
        body, rest = await run_reader(pieces, chunk_limit=8, reader_limit=8)
        assert (content(body), rest) == (expected, PIPELINED), size


SMUGGLED = b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<+78123092631@fax.example.com>\r\nDATA\r\nsmuggled\r\n"


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\n.\r\r\n"])
@pytest.mark.parametrize("normalize", [False, True])
async def test_smuggling_never_ends_data(fake_end: bytes, normalize: bool) -> None:
    # SMTP smuggling: a fake end of data must stay inside the message, normalised or not.
    wire = b"Subject: x\r\n\r\nhello" + fake_end + SMUGGLED + b".\r\n" + PIPELINED
    for size in (1, 2, 3, 5, 8, len(wire)):
        pieces = [wire[i:i + size] for i in range(0, len(wire), size)]
        body, rest = await run_reader(pieces, chunk_limit=8, reader_limit=8, normalize_bare_lf=normalize)
        data = content(body)
        assert rest == PIPELINED, (size, rest)
        assert b"smuggled" in data and b"MAIL FROM:<evil@example.com>" in data
        expected, _, _ = reference_read(wire)  # a dot right after CRLF is a stuffing dot, even before a bare LF
        assert data == (normalized(expected) if normalize else expected), size


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b"a\nb\r\n.\r\n", b"a\r\nb\r\n"),
        (b"\n.\r\n.\r\n", b"\r\n.\r\n"),  # a bare LF first: the dot after it is data, kept
        (b"a\r\r\n.\r\n", b"a\r\r\n"),  # a bare CR is left as it is
        (b"a\r\nb\n\n..x\r\n.\r\n", b"a\r\nb\r\n\r\n..x\r\n"),
        (b"a\r\n.\n.\r\n.\r\n", b"a\r\n\r\n.\r\n"),  # the stuffing dot goes, the LF after it becomes CRLF
    ],
)
async def test_normalize_examples(wire: bytes, expected: bytes) -> None:
    for size in range(1, len(wire) + 1):
        pieces = [wire[i:i + size] for i in range(0, len(wire), size)] + [PIPELINED]
        body, rest = await run_reader(pieces, chunk_limit=8, reader_limit=8, normalize_bare_lf=True)
        assert body.size == len(expected)
        assert (content(body), rest) == (expected, PIPELINED), size



async def test_bare_lf_is_reported_across_chunk_boundaries() -> None:
    body, _ = await run_reader([b"abc\r", b"\ndef\r\n.\r\n"])
    assert not body.bare_lf
    body, _ = await run_reader([b"abc\n", b"\r\n.\r\n"])
    assert body.bare_lf
    body, _ = await run_reader([b"abc\r\n", b"\ndef\r\n.\r\n"])
    assert body.bare_lf


async def test_big_message_in_big_pieces_with_the_aiosmtpd_reader_limit() -> None:
    line = b"A" * 76 + b"\r\n"
    message = b"Subject: big\r\n\r\n" + b"".join(b"." + line if i % 97 == 0 else line for i in range(140_000))
    wire = stuff(message)
    pieces = [wire[i:i + 65536] for i in range(0, len(wire), 65536)]
    activity = 0

    def seen() -> None:
        nonlocal activity
        activity += 1

    body, rest = await run_reader(pieces + [PIPELINED], on_activity=seen)
    assert rest == PIPELINED and content(body) == message
    # The reader limit is raised for DATA: ~256 KiB pieces, not one per KB.
    assert activity < len(wire) // 100_000 + 50


async def test_client_gone_mid_data_raises_connection_reset() -> None:
    for chunks in ([b"abc\r\n"], [b""], [b"abc\r\n."], [b"abc\r\n.\r"], [b"x" * 5000]):
        with pytest.raises(ConnectionResetError):
            await run_reader(chunks, eof=True)


async def test_too_big_stops_storing_early(tmp_path: Path) -> None:
    # 2 MB with a 100 KB limit: the spool never grows past the limit.
    message = b"".join(b"%07d" % i + b"x" * 91 + b"\r\n" for i in range(20_000))
    wire = stuff(message)
    body, rest = await run_reader([wire[i:i + 50_000] for i in range(0, len(wire), 50_000)] + [PIPELINED],
                                  limit=100_000, spool_threshold=10_000, spool_dir=tmp_path)
    assert body.too_big and body.size == len(message) and rest == PIPELINED and not body.stored


async def test_spool_that_cannot_be_written_is_an_error_not_a_crash(tmp_path: Path) -> None:
    message = b"line\r\n" * 10_000
    body, rest = await run_reader([stuff(message), PIPELINED], spool_threshold=1000, spool_dir=tmp_path / "missing")
    assert isinstance(body.error, OSError) and not body.stored and not body.too_big
    assert body.size == len(message) and rest == PIPELINED


def test_unstuff_reference() -> None:
    assert unstuff(b"..a\r\n..\r\nb.\r\n") == b".a\r\n.\r\nb.\r\n"


# ------------------------------------------------------------------ the gate


async def test_gate_bounds_bytes_in_flight_and_lets_a_huge_one_through_alone() -> None:
    gate = IntakeGate(100)
    peak = 0
    order: list[str] = []

    async def job(name: str, size: int, hold: float) -> None:
        nonlocal peak
        async with gate.hold(size):
            order.append(name)
            peak = max(peak, gate.in_use)
            await asyncio.sleep(hold)

    await asyncio.gather(job("a", 60, 0.05), job("b", 60, 0.01), job("huge", 500, 0.01), job("c", 10, 0.01))
    assert order == ["a", "b", "huge", "c"]  # FIFO: "c" does not overtake the waiting ones
    assert gate.in_use == 0
    assert peak == 500  # the huge one alone; otherwise within the budget


async def test_gate_cancelled_waiter_gives_nothing_away() -> None:
    gate = IntakeGate(10)
    async with gate.hold(10):
        waiter = asyncio.create_task(gate.hold(5).__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert gate.in_use == 0 and not gate._waiters
    async with gate.hold(10):
        assert gate.in_use == 10
