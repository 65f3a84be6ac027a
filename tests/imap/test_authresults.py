"""Authentication-Results parsing (RFC 8601) and the sender verdict built on it."""

from __future__ import annotations

import pytest

from gatewayd.email_to_fax.authresults import (
    AuthResultsSyntaxError,
    authserv_id_of,
    domains_aligned,
    parse_authentication_results,
    verify_sender,
)

ID = "mx.example.com"
FROM = "alice@example.com"


def verdict(*headers: str, from_addr: str | None = FROM, trusted: str = ID):
    return verify_sender(list(headers), trusted, from_addr)


# ------------------------------------------------------------------ parser


def test_parse_rfc_example_with_version_comments_and_properties() -> None:
    value = (
        "example.com 1; (a comment (nested) here) spf=pass (good) smtp.mailfrom=example.net;"
        ' dkim/1=pass reason="good signature" header.i=@mail-router.example.net;'
        " dkim=fail header.i=@newyork.example.com"
    )
    ar = parse_authentication_results(value)
    assert ar.authserv_id == "example.com" and ar.version == 1
    assert [(r.method, r.result) for r in ar.results] == [("spf", "pass"), ("dkim", "pass"), ("dkim", "fail")]
    assert ar.results[0].values("smtp", "mailfrom") == ("example.net",)
    assert ar.results[1].reason == "good signature"
    assert ar.results[1].values("header", "i") == ("@mail-router.example.net",)


def test_parse_none_and_case_folding() -> None:
    ar = parse_authentication_results("Example.ORG; none")
    assert ar.authserv_id == "Example.ORG" and ar.results == ()
    ar = parse_authentication_results("mx; DKIM=PASS Header.D=Example.COM")
    assert (ar.results[0].method, ar.results[0].result) == ("dkim", "pass")
    assert ar.results[0].values("header", "d") == ("Example.COM",)


def test_parse_gmail_style_folded_header_with_base64_fragment() -> None:
    value = (
        "mx.google.com;\r\n       dkim=pass header.i=@example.com header.s=20230601 header.b=Ab/cd+e=;\r\n"
        "       spf=pass (google.com: domain of bob@example.com designates 192.0.2.1 as permitted sender)"
        " smtp.mailfrom=bob@example.com;\r\n       dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=example.com"
    )
    ar = parse_authentication_results(value)
    assert [r.method for r in ar.results] == ["dkim", "spf", "dmarc"]
    assert ar.results[0].values("header", "b") == ("Ab/cd+e=",)


def test_parse_quoted_values_and_trailing_semicolon() -> None:
    ar = parse_authentication_results('mx; spf=pass smtp.mailfrom="odd;local"@example.com;')
    assert ar.results[0].values("smtp", "mailfrom") == ("odd;local@example.com",)
    ar = parse_authentication_results('"quoted.id"; dmarc=pass header.from=example.com')
    assert ar.authserv_id == "quoted.id"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "; dmarc=pass",
        "mx",  # no results at all
        "mx; dmarc",  # no "="
        "mx; dmarc=",  # no result
        "mx; =pass",
        "mx; dmarc=pass header.from",  # property without value
        "mx; dmarc=pass (unterminated comment",
        'mx; dmarc=pass header.from="unterminated',
        "mx dmarc=pass",  # missing ";"
        "mx; none; dmarc=pass",  # none with results
        "mx; dm.arc=pass",  # method is a keyword
        "mx; dmarc=pass header.from=example.com <x>",
        "mx; dmarc=pa\x00ss",
    ],
)
def test_parse_malformed(value: str) -> None:
    with pytest.raises(AuthResultsSyntaxError):
        parse_authentication_results(value)


def test_authserv_id_of() -> None:
    assert authserv_id_of("mx.example.com; dmarc=pass") == "mx.example.com"
    assert authserv_id_of("  (c) mx.example.com 1 ; none") == "mx.example.com"
    # Microsoft 365 writes no authserv-id: no id, never trusted.
    assert authserv_id_of("spf=pass (sender IP is 192.0.2.1) smtp.mailfrom=example.com; dmarc=pass action=none header.from=example.com") is None
    assert authserv_id_of("(unterminated") is None
    assert authserv_id_of("") is None


# --------------------------------------------------------------- alignment


@pytest.mark.parametrize(
    ("a", "b", "aligned"),
    [
        ("example.com", "example.com", True),
        ("EXAMPLE.com.", "example.COM", True),
        ("bounce@mail.example.com", "example.com", True),  # subdomain
        ("example.com", "sub.example.com", True),  # parent
        ("@example.com", "example.com", True),
        ("a.example.com", "b.example.com", False),  # siblings: not without a suffix list
        ("example.com", "badexample.com", False),
        ("example.com.evil.test", "example.com", False),
        ("com", "example.com", False),  # a bare TLD aligns with nothing
        ("", "example.com", False),
    ],
)
def test_domains_aligned(a: str, b: str, aligned: bool) -> None:
    assert domains_aligned(a, b) is aligned


# ----------------------------------------------------------------- verdict


def test_dmarc_pass() -> None:
    v = verdict(f"{ID}; dmarc=pass (p=reject dis=none) header.from=example.com")
    assert v.passed and v.method == "dmarc"


def test_dmarc_pass_for_another_from_domain_does_not_count() -> None:
    assert not verdict(f"{ID}; dmarc=pass header.from=evil.test").passed


def test_dmarc_pass_without_header_from_does_not_count() -> None:
    # It could be about any domain (issue 14): header.from must name ours.
    assert not verdict(f"{ID}; dmarc=pass").passed


@pytest.mark.parametrize("result", ["fail", "none", "temperror", "permerror", "neutral", "softfail", "policy"])
def test_results_other_than_pass_never_count(result: str) -> None:
    v = verdict(f"{ID}; dmarc={result} header.from=example.com; spf={result} smtp.mailfrom=example.com; "
                f"dkim={result} header.d=example.com")
    assert not v.passed


def test_spf_aligned_and_unaligned() -> None:
    assert verdict(f"{ID}; spf=pass smtp.mailfrom=bounce@example.com").method == "spf"
    assert verdict(f"{ID}; spf=pass smtp.mailfrom=mail.example.com").passed  # domain form, subdomain
    assert not verdict(f"{ID}; spf=pass smtp.mailfrom=bounce@esp.example.net").passed
    # An SPF pass for the HELO name says nothing about the From: domain.
    assert not verdict(f"{ID}; spf=pass smtp.helo=example.com").passed


def test_dkim_header_d_aligned_and_unaligned() -> None:
    assert verdict(f"{ID}; dkim=pass header.d=example.com header.s=sel").method == "dkim"
    assert verdict(f"{ID}; dkim=pass header.d=mail.example.com").passed
    assert not verdict(f"{ID}; dkim=pass header.d=esp.example.net header.i=@esp.example.net").passed
    # header.i only when there is no header.d
    assert verdict(f"{ID}; dkim=pass header.i=@example.com").passed
    assert not verdict(f"{ID}; dkim=pass header.d=esp.example.net header.i=@example.com").passed


def test_one_aligned_pass_among_several_results_is_enough() -> None:
    v = verdict(f"{ID}; dkim=pass header.d=esp.example.net; dkim=pass header.d=example.com; spf=fail smtp.mailfrom=x@example.com; dmarc=fail header.from=example.com")
    assert v.passed and v.method == "dkim"


def test_other_authserv_ids_are_ignored() -> None:
    assert not verdict("evil.test; dmarc=pass header.from=example.com").passed
    # ... also when they sit above the trusted one
    v = verdict("filter.internal; dmarc=pass header.from=example.com", f"{ID}; dmarc=fail header.from=example.com")
    assert not v.passed
    assert verdict("filter.internal; dmarc=fail", f"{ID}; dmarc=pass header.from=example.com").passed


def test_authserv_id_is_compared_case_insensitively() -> None:
    assert verdict("MX.Example.COM; dmarc=pass header.from=example.com").passed


def test_only_the_topmost_trusted_header_is_read() -> None:
    genuine = f"{ID}; dmarc=fail header.from=example.com"
    forged = f"{ID}; dmarc=pass header.from=example.com"
    assert not verdict(genuine, forged).passed
    assert verdict(forged, genuine).passed  # (which is why the MTA must strip forged ones)


def test_malformed_topmost_trusted_header_fails_closed() -> None:
    assert not verdict(f"{ID}; dmarc=pass header.from", f"{ID}; dmarc=pass header.from=example.com").passed


def test_no_header_no_from_no_trusted_id() -> None:
    assert not verdict().passed
    assert not verdict(f"{ID}; dmarc=pass", from_addr=None).passed
    assert not verdict(f"{ID}; dmarc=pass", trusted="").passed
    assert not verdict(f"{ID}; none").passed


def test_microsoft_style_header_without_authserv_id_is_not_trusted() -> None:
    ms = "spf=pass (sender IP is 192.0.2.1) smtp.mailfrom=example.com; dkim=pass (signature was verified) header.d=example.com;dmarc=pass action=none header.from=example.com;compauth=pass reason=100"
    assert not verdict(ms).passed
    assert not verdict(ms, trusted="spf").passed


def test_non_rfc_properties_are_tolerated_but_never_identities() -> None:
    ar = parse_authentication_results(f"{ID}; dmarc=pass action=none header.from=example.com")
    assert ar.results[0].properties == (("header", "from", "example.com"),)


def test_verdict_counts_headers_with_the_trusted_id() -> None:
    assert verdict(f"{ID}; dmarc=pass", "other; none").trusted_headers == 1
    v = verdict(f"{ID}; dmarc=fail header.from=example.com", "other; none", f"{ID}; dmarc=pass header.from=example.com")
    assert v.trusted_headers == 2 and not v.passed
