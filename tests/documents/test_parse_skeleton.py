"""parse_message's fast path (large base64 bodies decoded from their slices of
the raw message, the feed parser given only a skeleton) against the plain
parse of the whole message: the same ParsedMessage, or the same refusal,
for the hostile corpus and for generated MIME trees built to confuse a
quick look at the structure (boundaries inside bodies, prefixes of other
boundaries, folded and duplicated headers, bare CRs, non-ASCII, nested and
unterminated multiparts, message/rfc822 around base64 parts)."""

from __future__ import annotations

import base64
import contextlib
import random
from collections.abc import Iterator

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.email_to_fax import parse, skeleton
from gatewayd.email_to_fax.errors import IntakeRefused


@contextlib.contextmanager
def fast_path(enabled: bool) -> Iterator[None]:
    """Enabled: every base64 body, however short, is taken from its slice.
    Disabled: the quick look never offers a body, so the plain parse runs."""
    saved = skeleton.SLICE_MIN, skeleton.find_regions
    try:
        if enabled:
            skeleton.SLICE_MIN = 1
        else:
            skeleton.find_regions = lambda raw, **kw: []  # type: ignore[assignment]
        yield
    finally:
        skeleton.SLICE_MIN, skeleton.find_regions = saved


def outcome(raw: bytes, *, fast: bool) -> tuple[str, object]:
    with fast_path(fast):
        try:
            return "parsed", parse.parse_message(raw)
        except IntakeRefused as exc:
            return "refused", exc.reply


def used_fast_path(raw: bytes) -> bool:
    with fast_path(True):
        try:
            return bool(parse._feed(raw, max_parts=100, max_depth=10)[2])
        except Exception:  # noqa: BLE001 - refused by the parser: not taken
            return False


def assert_same(raw: bytes) -> None:
    assert outcome(raw, fast=True) == outcome(raw, fast=False), raw[:3000]


def test_hostile_corpus_parses_the_same_both_ways(corpus) -> None:  # type: ignore[no-untyped-def]
    taken = 0
    for case in corpus:
        assert_same(case.raw)
        taken += used_fast_path(case.raw)
    assert taken >= 15, f"the fast path was taken for only {taken} corpus cases"


def test_a_large_attachment_takes_the_fast_path_with_the_default_threshold() -> None:
    pdf = b"%PDF-1.4\n" + random.Random(1).randbytes(20_000)
    raw = (b"From: a@example.com\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n'
           b"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(pdf).replace(b"\n", b"\r\n") + b"--b--\r\n")
    assert parse._feed(raw, max_parts=100, max_depth=10)[2], "not taken"
    msg = parse.parse_message(raw)
    assert msg.attachments[0].data == pdf and msg.body_text == "hello"
    assert_same(raw)


# ---------------------------------------------------------------- generated

BOUNDARIES = ["b", "b1", "=_b", "b--", "x y"]


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def odd(draw: st.DrawFn, chaos: bool, one_in: int) -> bool:
    """An anomaly here? Never in a clean message (which must take the fast path)."""
    return chaos and draw(st.integers(0, one_in - 1)) == 0


@st.composite
def body_bytes(draw: st.DrawFn, chaos: bool) -> bytes:
    data = b64(draw(st.binary(min_size=0, max_size=600)))
    if not odd(draw, chaos, 2):
        return data
    mutation = draw(st.sampled_from(["boundary_line", "dash", "bare_cr", "non_ascii", "blank", "junk", "no_crlf"]))
    i = draw(st.integers(0, len(data)))
    if mutation == "boundary_line":
        data = data[:i] + b"\r\n--" + draw(st.sampled_from(BOUNDARIES)).encode() + draw(st.sampled_from([b"", b"--", b" ", b"x"])) + b"\r\n" + data[i:]
    elif mutation == "dash":
        data = data[:i] + b"-" + data[i:]
    elif mutation == "bare_cr":
        data = data[:i] + b"\r" + data[i:]
    elif mutation == "non_ascii":
        data = data[:i] + bytes([draw(st.integers(0x80, 0xFF))]) + data[i:]
    elif mutation == "blank":
        data = data[:i] + b"\r\n\r\n" + data[i:]
    elif mutation == "junk":
        data = data[:i] + b"!*" + data[i:]
    elif mutation == "no_crlf":
        data = data.rstrip(b"\r\n")
    return data


@st.composite
def leaf(draw: st.DrawFn, chaos: bool) -> bytes:
    types = ["application/pdf", "application/octet-stream", "image/png", "text/plain", "TEXT/HTML"]
    ctype = draw(st.sampled_from(types + ["text/plain; charset=cp500", "message/rfc822"] if chaos else types))
    headers = [draw(st.sampled_from(["Content-Type", "content-type", "CONTENT-TYPE"])) + ": " + ctype]
    cte = draw(st.sampled_from(["base64", "base64", "BASE64", " base64 ", "7bit", "quoted-printable"] if chaos else ["base64", "BASE64"]))
    names = ["Content-Transfer-Encoding:", "content-transfer-encoding:\r\n"]
    headers.append(draw(st.sampled_from(names + ["Content-Transfer-Encoding :"] if chaos else names)) + " " + cte)
    if draw(st.booleans()):
        headers.append("Content-Disposition: attachment; filename=a.pdf")
    if odd(draw, chaos, 6):
        headers.append(headers[draw(st.integers(0, len(headers) - 1))])  # duplicate
    if odd(draw, chaos, 6):
        headers.insert(draw(st.integers(0, len(headers))), "not a header line")
    head = "\r\n".join(headers).encode()
    separator = draw(st.sampled_from([b"\r\n", b"\r\n \r\n\r\n"])) if odd(draw, chaos, 5) else b"\r\n\r\n"
    if odd(draw, chaos, 8):
        return b"\r\n" + draw(body_bytes(chaos))  # no headers at all
    return head + separator + draw(body_bytes(chaos))


def multipart(draw: st.DrawFn, depth: int, chaos: bool) -> bytes:
    boundary = draw(st.sampled_from(BOUNDARIES + ["b\t"] if chaos else BOUNDARIES))
    quoted = not chaos or draw(st.booleans())
    param = f'"{boundary}"' if quoted else boundary
    heads = [f"Content-Type: multipart/mixed; boundary={param}", f"Content-Type: multipart/mixed;\r\n boundary={param}",
             f"Content-Type: Multipart/Alternative; BOUNDARY={param}; x=y"]
    head = draw(st.sampled_from(heads + [f"Content-Type: multipart/mixed; boundary*={param}"] if chaos else heads)).encode()
    parts = [multipart(draw, depth + 1, chaos) if depth < 2 and draw(st.integers(0, 3)) == 0 else draw(leaf(chaos))
             for _ in range(draw(st.integers(0, 3)))]
    if depth < 2 and odd(draw, chaos, 6):
        parts.append(b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\nMIME-Version: 1.0\r\n" + multipart(draw, depth + 1, chaos))
    delimiter = b"--" + boundary.encode()
    out = head + b"\r\n\r\n" + draw(st.sampled_from([b"", b"preamble\r\n", b"--not-it\r\n"]))
    for part in parts:
        out += delimiter + draw(st.sampled_from([b"", b"", b" ", b"\t "])) + b"\r\n" + part
        if not out.endswith(b"\r\n"):
            out += b"\r\n"
    if not odd(draw, chaos, 5):
        out += delimiter + b"--" + draw(st.sampled_from([b"", b" "])) + b"\r\n" + draw(st.sampled_from([b"", b"epilogue\r\n"]))
    return out


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    chaos = draw(st.booleans())
    top = b"From: Alice <alice@example.com>\r\nTo: 1@fax.example.com\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
    body = multipart(draw, 0, chaos) if draw(st.integers(0, 4)) else draw(leaf(chaos))
    return top + body


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=messages())
def test_generated_messages_parse_the_same_both_ways(raw: bytes) -> None:
    assert_same(raw)
