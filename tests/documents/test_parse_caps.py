"""The caps that keep one message from stalling the daemon (issue 14, item 3;
gatewayd/email_to_fax/limits.py), and the HTML pre-pass that keeps the HTML
parser linear, checked without a clock: what is refused, what is kept."""

from __future__ import annotations

import html.parser

import pytest

from gatewayd.email_to_fax.bodytext import html_to_text
from gatewayd.email_to_fax.errors import MessageTooComplex
from gatewayd.email_to_fax.limits import MAX_ADDRESSES, MAX_ENCODED_WORDS, MAX_HEADER_CHARS
from gatewayd.email_to_fax.parse import parse_message


def _msg(*headers: str, body: str = "hello") -> bytes:
    head = ["From: alice@example.com", "Message-ID: <m@example.com>", *headers]
    return ("\r\n".join(head) + "\r\n\r\n" + body + "\r\n").encode()


def test_html_with_stray_angle_brackets_keeps_its_text() -> None:
    markup = ("<html><head><style><!-- p {} --></style></head><body>"
              "<!--[if !mso]><!-->Hello <b>world</b><!--<![endif]-->"
              "<p>1 < 2 and x<y</p><p>&lt;tag&gt;</p><!DOCTYPE x></body>")
    assert html_to_text(markup) == "Hello world\n\n1 < 2 and x<y\n\n<tag>"
    assert html_to_text("<a<a<b>bold</b>") == "<a<abold"
    assert html_to_text("text <!-- never closed <b>hidden</b>") == "text"


@pytest.mark.parametrize("markup", ["<a" * 5000, "<a " * 5000, "<a x=1" * 2000, "<!-- a>" * 2000, "</a" * 5000, "<?" * 5000])
def test_the_html_parser_never_rescans_an_unclosed_tag(markup: str, monkeypatch) -> None:
    # Each "<" that opens no complete construct made the parser try it
    # over the rest of the input (an incomplete result, -1): thousands of
    # tries. After the pre-pass none is left to try.
    incomplete = 0
    real = html.parser.HTMLParser.parse_starttag

    def counting(self: html.parser.HTMLParser, i: int) -> int:
        nonlocal incomplete
        k = real(self, i)
        incomplete += k < 0
        return k

    monkeypatch.setattr(html.parser.HTMLParser, "parse_starttag", counting)
    html_to_text(markup)
    assert incomplete == 0


@pytest.mark.parametrize("header", [
    "To: " + ", ".join(f"u{i}@example.com" for i in range(MAX_ADDRESSES + 1)),
    "Subject: " + " ".join(["=?utf-8?q?a?="] * (MAX_ENCODED_WORDS + 1)),
    "Subject: " + "x" * (MAX_HEADER_CHARS + 1),
    "Cc: " + "(" * 40 + ")" * 40 + " a@example.com",
    "X-Long: y\r\n" + "".join(f"X-Filler-{i}: {'z' * 1000}\r\n" for i in range(110)).rstrip("\r\n"),
])
def test_over_a_cap_is_too_complex(header: str) -> None:
    with pytest.raises(MessageTooComplex) as info:
        parse_message(_msg(header))
    assert info.value.reply == "554 5.6.0 malformed message: too complex"


def test_within_the_caps_is_read() -> None:
    to = ", ".join(f"u{i}@example.com" for i in range(MAX_ADDRESSES))
    subject = " ".join(["=?utf-8?q?a?="] * MAX_ENCODED_WORDS)
    parsed = parse_message(_msg(f"To: {to}", f"Subject: {subject}", "Received: " + "r" * 20_000))
    assert len(parsed.header_addresses["To"]) == MAX_ADDRESSES
    assert parsed.subject == "a" * MAX_ENCODED_WORDS
