"""Fuzzing the intake path through the real SMTP listener: hypothesis builds
MIME structures (nesting, types, dispositions, transfer encodings, header
anomalies, bare LFs) around attachment bytes (valid documents, truncated and
bit-flipped ones, random bytes). Whatever it sends, the listener answers one
of the SPEC's replies with the SPEC's wording, never 500 and never 451 (the
store is healthy here, so a 451 means an exception escaped into the guard),
and a 250 always comes with a job stored.

Bounded: ~150 examples, no deadline; runs in well under a minute."""

from __future__ import annotations

import asyncio
import base64
import io
import quopri
import re
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.e2f import config_data, load, run_gateway

SPEC_REPLIES = [
    re.compile(r"^250 2\.0\.0 queued as \d+( \d+)*$"),
    re.compile(r"^450 4\.7\.1 rate limit reached, try later$"),
    re.compile(r"^550 5\.7\.1 (relaying denied|sender not authorised|.+: destination not allowed)$"),
    re.compile(r"^552 5\.3\.4 (message too big|fax document too large: .+)$"),
    re.compile(r"^553 5\.1\.3 <.+>: not a fax number$"),
    re.compile(r"^554 5\.6\.0 (no fax document: .+|bare LF line endings not allowed|malformed message: .+|.+: .+)$"),
]
RCPT = "+78123092631@fax.example.com"


# ------------------------------------------------------------------ gateway


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, object]]:
    """The store, intake and SMTP listener in a loop of their own thread (one for all examples)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    config = load(tmp, {**config_data(tmp / "state"), "smtp": {**config_data(tmp / "state")["smtp"], "max_message_size": "3MB"}})
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, object] = {}

    async def serve() -> None:
        async with run_gateway(config) as gw:
            box["gw"] = gw
            started.set()
            stop = asyncio.Event()
            box["stop"] = stop
            await stop.wait()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    assert started.wait(30), "gateway did not start"
    gw = box["gw"]
    try:
        yield gw.port, gw  # type: ignore[attr-defined]
    finally:
        loop.call_soon_threadsafe(box["stop"].set)  # type: ignore[attr-defined]
        thread.join(30)
        loop.close()


def smtp_exchange(port: int, raw: bytes) -> str:
    """One transaction with a blocking socket; the bytes go out exactly as given (dot-stuffed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        f = sock.makefile("rb")

        def reply() -> str:
            while True:
                line = f.readline().decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    raise ConnectionError("closed")
                if len(line) < 4 or line[3] != "-":
                    return line

        reply()
        for cmd in ("EHLO fuzz.test", "MAIL FROM:<alice@example.com>", f"RCPT TO:<{RCPT}>", "DATA"):
            sock.sendall(cmd.encode() + b"\r\n")
            r = reply()
            if not r.startswith(("250", "354")):
                return r
        data = (b"\r\n" + raw).replace(b"\r\n.", b"\r\n..")[2:]
        if not data.endswith(b"\r\n"):
            data += b"\r\n"
        sock.sendall(data + b".\r\n")
        final = reply()
        sock.sendall(b"QUIT\r\n")
        return final


# ---------------------------------------------------------------- documents


def _seed_documents() -> dict[str, bytes]:
    import pikepdf
    from PIL import Image

    docs: dict[str, bytes] = {}
    pdf = pikepdf.new()
    pdf.add_blank_page(page_size=(595, 842))
    buf = io.BytesIO()
    pdf.save(buf)
    docs["pdf"] = buf.getvalue()
    for fmt, mode in (("TIFF", "1"), ("JPEG", "RGB"), ("PNG", "RGBA"), ("GIF", "P"), ("BMP", "RGB"), ("WEBP", "RGB")):
        img = Image.new(mode, (40, 30))
        buf = io.BytesIO()
        img.save(buf, fmt, **({"compression": "group4"} if fmt == "TIFF" else {}))
        docs[fmt.lower()] = buf.getvalue()
    return docs


DOCS = _seed_documents()
TYPES = ["application/pdf", "image/tiff", "image/jpeg", "image/png", "image/gif", "image/bmp", "image/webp",
         "application/octet-stream", "text/plain", "text/html", "application/msword", "message/rfc822"]


@st.composite
def attachment_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["valid", "truncated", "flipped", "random", "empty"]))
    base = DOCS[draw(st.sampled_from(sorted(DOCS)))]
    if kind == "valid":
        return base
    if kind == "truncated":
        return base[: draw(st.integers(0, len(base)))]
    if kind == "flipped":
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if kind == "random":
        return draw(st.binary(max_size=2000))
    return b""


def _encode(data: bytes, cte: str) -> bytes:
    if cte == "base64":
        return base64.encodebytes(data).replace(b"\n", b"\r\n")
    if cte == "quoted-printable":
        return quopri.encodestring(data).replace(b"\n", b"\r\n")
    return data  # 7bit / 8bit / binary / bogus: raw bytes


@st.composite
def leaf(draw: st.DrawFn) -> bytes:
    ctype = draw(st.sampled_from(TYPES))
    cte = draw(st.sampled_from(["base64", "base64", "quoted-printable", "7bit", "8bit", "binary", "x-bogus"]))
    headers = [f"Content-Type: {ctype}" + draw(st.sampled_from(["", '; name="scan.pdf"', "; name=../../etc/passwd", "; charset=utf-8"]))]
    disposition = draw(st.sampled_from(["attachment", "inline", None, "attachment; filename=\"a.pdf\"", "attachment; filename*=utf-8''%D1%84.pdf"]))
    if disposition:
        headers.append(f"Content-Disposition: {disposition}")
    if draw(st.booleans()):
        headers.append("Content-ID: <img1@fuzz>")
    headers.append(f"Content-Transfer-Encoding: {cte}")
    if draw(st.integers(0, 9)) == 0:
        headers.append(headers[0])  # a duplicate header
    payload = draw(attachment_bytes()) if not ctype.startswith("text/") else draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    return "\r\n".join(headers).encode() + b"\r\n\r\n" + _encode(payload, cte) + b"\r\n"


def multipart(draw: st.DrawFn, depth: int) -> bytes:
    boundary = f"=_b{depth}_{draw(st.integers(0, 999))}"
    n = draw(st.integers(0, 4))
    parts = [multipart(draw, depth + 1) if depth < 3 and draw(st.integers(0, 4)) == 0 else draw(leaf()) for _ in range(n)]
    subtype = draw(st.sampled_from(["mixed", "alternative", "related", "signed"]))
    head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + p for p in parts)
    closing = b"--" + boundary.encode() + b"--\r\n" if draw(st.integers(0, 5)) else b""  # sometimes unterminated
    return head + b"preamble\r\n" + body + closing


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    top = [b"From: Alice <alice@example.com>", b"To: " + RCPT.encode(), b"Subject: " + draw(st.text(max_size=40)).encode("utf-8", "surrogatepass").replace(b"\r", b"").replace(b"\n", b""),
           b"MIME-Version: 1.0", b"Message-ID: <fuzz@example.com>"]
    if draw(st.integers(0, 9)) == 0:
        top.append(b"Subject: again")  # duplicate single-instance header
    body = multipart(draw, 0) if draw(st.integers(0, 5)) else draw(leaf())
    raw = b"\r\n".join(top) + b"\r\n" + body
    mutation = draw(st.sampled_from(["none"] * 6 + ["bare_lf", "nul", "long_line", "cut"]))
    if mutation == "bare_lf":
        i = draw(st.integers(0, len(raw)))
        raw = raw[:i] + b"\n" + raw[i:]
    elif mutation == "nul":
        i = draw(st.integers(0, len(raw)))
        raw = raw[:i] + b"\0" + raw[i:]
    elif mutation == "long_line":
        raw += b"X-Long: " + b"a" * draw(st.integers(900, 5000)) + b"\r\n"
    elif mutation == "cut":
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(raw=messages())
def test_every_message_ends_in_a_spec_reply(gateway: tuple[int, object], raw: bytes) -> None:
    port, gw = gateway
    jobs_before = len(gw.jobs())  # type: ignore[attr-defined]
    reply = smtp_exchange(port, raw)
    assert any(p.match(reply) for p in SPEC_REPLIES), f"not a SPEC reply: {reply!r}"
    jobs_after = len(gw.jobs())  # type: ignore[attr-defined]
    if reply.startswith("250"):
        assert jobs_after == jobs_before + 1, reply
    else:
        assert jobs_after == jobs_before, reply


# ------------------------------------------------------------ found by fuzzing

NON_ASCII_NAME = (
    b"From: Alice <alice@example.com>\r\nTo: " + RCPT.encode() + b"\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
    b"Message-ID: <fuzz-1@example.com>\r\nContent-Type: application/pdf\r\n"
    b"Content-Disposition: attachment; filename*=utf-8''%D1%81%D1%87%D0%B5%D1%82.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJeLjz9MK\r\n"
)


def test_refusal_naming_a_non_ascii_file_is_a_554_not_a_451(gateway: tuple[int, object]) -> None:
    """A corrupt attachment named "счет.pdf" must get the SPEC's permanent
    ``554 5.6.0 <file name>: <why>``. Found by the fuzz test: the reply line
    carries the name unencoded, aiosmtpd's push() fails to encode it as ASCII,
    and the session answers ``451`` instead, so the client retries the same
    broken message forever."""
    port, _ = gateway
    reply = smtp_exchange(port, NON_ASCII_NAME)
    assert reply.startswith("554 5.6.0 "), reply
    assert reply.isascii(), reply
