"""Attachments are decoded with pybase64 (SIMD) instead of binascii.

It must be at least as strict as ``binascii.a2b_base64(strict_mode=True)``,
the decoder it replaced, on every input the parser hands it (white space
already removed): never accept what that refuses, decode to the same bytes
whenever both accept. It is stricter in one way, found by these tests:
binascii's strict mode still accepts a stray ``=`` after a complete group
("AAAA="), which RFC 4648 does not allow; pybase64 refuses it, so such an
attachment is refused as "invalid base64" instead of being guessed at."""

from __future__ import annotations

import base64
import binascii

import pybase64
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.email_to_fax.errors import MalformedMessage
from gatewayd.email_to_fax.parse import parse_message

ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def strict_reference(data: bytes) -> bytes | None:
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        return None


def pybase64_decode(data: bytes) -> bytes | None:
    try:
        return pybase64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def assert_at_least_as_strict(data: bytes) -> None:
    ours, reference = pybase64_decode(data), strict_reference(data)
    if ours is not None:
        assert ours == reference, data
    elif reference is not None:
        # Only binascii accepts: the input must be a non-canonical encoding.
        assert base64.b64encode(reference) != data, data


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=64))
def test_same_verdict_on_arbitrary_bytes(data: bytes) -> None:
    assert_at_least_as_strict(data)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(list(ALPHABET)), max_size=64).map(bytes))
def test_same_verdict_on_base64_alphabet_soup(data: bytes) -> None:
    # Mostly near-misses: padding in the middle, too much or too little of it.
    assert_at_least_as_strict(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3000), st.integers(min_value=0, max_value=4), st.data())
def test_same_verdict_on_damaged_encodings(payload: bytes, cuts: int, data: st.DataObject) -> None:
    encoded = bytearray(base64.b64encode(payload))
    for _ in range(cuts):
        if not encoded:
            break
        at = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
        action = data.draw(st.sampled_from(["drop", "junk", "pad"]))
        if action == "drop":
            del encoded[at]
        elif action == "junk":
            encoded[at] = data.draw(st.sampled_from(list(b"*-_.!\x00\xff")))
        else:
            encoded.insert(at, ord("="))
    assert_at_least_as_strict(bytes(encoded))


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_every_canonical_encoding_decodes_to_its_bytes(payload: bytes) -> None:
    assert pybase64_decode(base64.b64encode(payload)) == payload


def test_a_stray_pad_after_a_complete_group_is_refused() -> None:
    assert strict_reference(b"AAAA=") is not None  # the old decoder guessed
    assert pybase64_decode(b"AAAA=") is None


def test_large_attachment_decodes_exactly() -> None:
    payload = bytes(range(256)) * 4000  # 1 MB
    assert pybase64_decode(base64.b64encode(payload)) == payload


def _message(body: bytes) -> bytes:
    return (b"From: a@example.com\r\nTo: 1@fax.example.com\r\nSubject: x\r\nMessage-ID: <b@x>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: application/pdf; name=a.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + body + b"\r\n")


def test_parser_refuses_junk_in_base64() -> None:
    good = base64.encodebytes(b"%PDF-1.4\n" + bytes(300)).replace(b"\n", b"\r\n")
    bad = good[:40] + b"*" + good[41:]
    with pytest.raises(MalformedMessage, match="invalid base64"):
        parse_message(_message(bad))
