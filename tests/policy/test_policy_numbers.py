"""NumberPolicy and split_recipient: what a recipient local part turns into."""

from __future__ import annotations

import pytest

from gatewayd.config import NumbersConfig
from gatewayd.email_to_fax.errors import DestinationNotAllowed, NotAFaxNumber, RelayDenied
from gatewayd.email_to_fax.policy import Destination, NumberPolicy, split_recipient

RU = NumbersConfig()  # the defaults: RU, no allow/deny, premium blocked, digits


def policy(**overrides) -> NumberPolicy:
    return NumberPolicy(NumbersConfig(**overrides))


# ------------------------------------------------------------ split_recipient


@pytest.mark.parametrize(
    "address, local",
    [
        ("+7-812-309-26-31@fax.example.com", "+7-812-309-26-31"),
        ("+7-812-309-26-31@Fax.Example.COM", "+7-812-309-26-31"),
        ("<1234@fax.example.com>", "1234"),
        ("  88123092631@fax.example.com ", "88123092631"),
        ("1234@fax2.example.org", "1234"),  # the second configured domain
        ("@fax.example.com", ""),  # empty local part: NumberPolicy refuses it
    ],
)
def test_split_recipient_ours(address: str, local: str) -> None:
    assert split_recipient(address, ["fax.example.com", "fax2.example.org"]) == local


def test_split_recipient_configured_domain_case_does_not_matter() -> None:
    assert split_recipient("1234@fax.example.com", ("FAX.Example.com",)) == "1234"


@pytest.mark.parametrize(
    "address",
    [
        "1234@example.com",  # the parent domain is not a fax domain
        "1234@sub.fax.example.com",  # nor is a subdomain
        "1234@fax.example.com.evil.org",
        "1234@notfax.example.com",
        "1234@[127.0.0.1]",
        "1234@",
        "1234",  # no @ at all
        "",
        "<>",
    ],
)
def test_split_recipient_refuses_foreign_domains(address: str) -> None:
    with pytest.raises(RelayDenied) as info:
        split_recipient(address, ["fax.example.com"])
    assert info.value.reply == "550 5.7.1 relaying denied"


def test_split_recipient_keeps_odd_local_part_for_the_number_policy() -> None:
    local = split_recipient("a@b@fax.example.com", ["fax.example.com"])
    assert local == "a@b"
    with pytest.raises(NotAFaxNumber) as info:
        NumberPolicy(RU).check(local, "a@b@fax.example.com")
    assert info.value.reply == "553 5.1.3 <a@b@fax.example.com>: not a fax number"


# ------------------------------------------------------------------- syntax


@pytest.mark.parametrize(
    "local",
    [
        "+7-812-309-26-31",
        "+78123092631",
        "88123092631",  # RU trunk prefix 8
        "8.812.309.26.31",
        "8-812-309-26-31",
        "78123092631",  # country code without "+": phonenumbers reads the 7
        "8123092631",  # RU without trunk prefix: accepted (see docs/security.md)
    ],
)
def test_russian_forms_normalise_to_e164(local: str) -> None:
    assert NumberPolicy(RU).check(local) == Destination("+78123092631", "78123092631", internal=False)


@pytest.mark.parametrize(
    "local, e164",
    [
        ("+49.30.1234567", "+49301234567"),
        ("+49-30-1234567", "+49301234567"),
        ("81049301234567", "+49301234567"),  # RU international prefix 810
        ("+375-17-123-45-67", "+375171234567"),
        ("+44.20.7946.0000", "+442079460000"),
        ("+79161234567", "+79161234567"),  # mobile
        ("88002000600", "+78002000600"),  # toll-free is not blocked
    ],
)
def test_international_numbers(local: str, e164: str) -> None:
    dest = NumberPolicy(RU).check(local)
    assert dest.number == e164
    assert dest.dst_num == e164[1:]
    assert not dest.internal


def test_default_region_decides_national_numbers() -> None:
    de = policy(default_region="DE")
    assert de.check("030-1234567").number == "+49301234567"
    assert de.check("0033140000000").number == "+33140000000"  # DE international prefix 00
    # The same digits read in RU are not a number at all.
    with pytest.raises(NotAFaxNumber):
        NumberPolicy(RU).check("030-1234567")


@pytest.mark.parametrize(
    "local",
    [
        "fax",
        "12a4",
        "sales",
        "+7 812 309 26 31",  # blanks are not separators
        "(812)3092631",
        "",
        "+",
        "++78123092631",
        "+-78123092631",
        "-78123092631",
        "78123092631-",
        "7812..3092631",
        "7812--3092631",
        ".1234",
        "+7_812_309_26_31",
        "\uff18\uff18\uff11\uff12\uff13\uff10\uff19\uff12\uff16\uff13\uff11",  # full-width digits
        "\u0668\u0668\u0661\u0662\u0663\u0660\u0669\u0662\u0666\u0663\u0661",  # Arabic-Indic digits
        "88123092631\n",
        "1234\x00",
        "+7812",  # syntactically fine, too short to be a number
        "+999123456789",  # no such country code
        "1",  # one digit: neither internal nor a number
        "123456",  # six digits: not internal by default, not a RU number
        "+" + "7" * 21,  # too long
        "7" * 30,
        "7-" * 40 + "7",  # over the RFC 5321 local-part length
    ],
)
def test_not_a_fax_number(local: str) -> None:
    address = f"{local}@fax.example.com"
    with pytest.raises(NotAFaxNumber) as info:
        NumberPolicy(RU).check(local, address)
    assert info.value.reply == f"553 5.1.3 <{address}>: not a fax number"
    assert info.value.code == 553


def test_not_a_fax_number_names_the_local_part_without_address() -> None:
    with pytest.raises(NotAFaxNumber) as info:
        NumberPolicy(RU).check("sales")
    assert info.value.reply == "553 5.1.3 <sales>: not a fax number"


# ----------------------------------------------------------------- internal


@pytest.mark.parametrize("local, number", [("1234", "1234"), ("12", "12"), ("12-34", "1234"), ("99.999", "99999")])
def test_internal_numbers_are_sent_as_written(local: str, number: str) -> None:
    for fmt in ("digits", "e164", "national"):
        assert policy(dial_format=fmt).check(local) == Destination(number, number, internal=True)


def test_plus_is_never_internal() -> None:
    # "+1234" means an international number; it is not one, so 553.
    with pytest.raises(NotAFaxNumber):
        NumberPolicy(RU).check("+1234")


def test_internal_numbers_ignore_allow_and_deny_prefixes() -> None:
    strict = policy(allow=("+49",), deny=("+7",))
    assert strict.check("1234") == Destination("1234", "1234", internal=True)


def test_no_internal_pattern_means_no_internal_numbers() -> None:
    with pytest.raises(NotAFaxNumber):
        policy(internal="").check("1234")


def test_wide_internal_pattern_cannot_bypass_toll_fraud_protection() -> None:
    wide = policy(internal=r"^[0-9]{2,11}$")
    # A public premium-rate number that happens to match the internal pattern.
    with pytest.raises(DestinationNotAllowed) as info:
        wide.check("8-809-123-45-67")
    assert info.value.reply == "550 5.7.1 +78091234567: destination not allowed"
    # An ordinary public number matching it still goes out as written...
    assert wide.check("88123092631") == Destination("88123092631", "88123092631", internal=True)
    # ...unless the deny list covers its public reading.
    with pytest.raises(DestinationNotAllowed):
        policy(internal=r"^[0-9]{2,11}$", deny=("+7812",)).check("88123092631")
    # And a real extension is untouched by all this.
    assert wide.check("1234").internal


# ------------------------------------------------------------ allow and deny


def test_deny_wins_over_allow() -> None:
    p = policy(allow=("+7",), deny=("+7812",))
    with pytest.raises(DestinationNotAllowed) as info:
        p.check("+7-812-309-26-31")
    assert info.value.reply == "550 5.7.1 +78123092631: destination not allowed"
    assert info.value.number == "+78123092631"
    assert p.check("+79161234567").number == "+79161234567"


def test_deny_applies_to_the_normalised_number() -> None:
    # Written nationally with a trunk prefix, still caught by an E.164 prefix.
    with pytest.raises(DestinationNotAllowed):
        policy(deny=("+7812",)).check("8.812.309.26.31")


def test_allow_list_restricts_destinations() -> None:
    p = policy(allow=("+7", "+375"))
    assert p.check("+375171234567").number == "+375171234567"
    assert p.check("88123092631").number == "+78123092631"
    # "+7" is a shared country code: Kazakhstan is inside it too.
    assert p.check("+77012345678").number == "+77012345678"
    with pytest.raises(DestinationNotAllowed) as info:
        p.check("+49-30-1234567")
    assert info.value.reply == "550 5.7.1 +49301234567: destination not allowed"


def test_empty_allow_list_allows_everything_not_denied() -> None:
    assert NumberPolicy(RU).check("+49301234567").number == "+49301234567"


# ---------------------------------------------------- premium and shared cost


@pytest.mark.parametrize(
    "local, e164",
    [
        ("8-809-123-45-67", "+78091234567"),  # RU premium rate
        ("+7.809.123.45.67", "+78091234567"),
        ("+44-909-879-0000", "+449098790000"),  # GB premium rate 09xx
        ("+44.901.234.5678", "+449012345678"),
        ("+44-843-123-4567", "+448431234567"),  # GB 084x: classed premium by libphonenumber
        ("+1-900-234-5678", "+19002345678"),  # US premium rate
        ("+979-123456789", "+979123456789"),  # international premium rate service
        ("+49-180-1-234567", "+491801234567"),  # DE shared cost
        ("+33-884-012-345", "+33884012345"),  # FR shared cost
        ("+808-1234-5678", "+80812345678"),  # international shared cost service
    ],
)
def test_premium_and_shared_cost_blocked(local: str, e164: str) -> None:
    with pytest.raises(DestinationNotAllowed) as info:
        NumberPolicy(RU).check(local)
    assert info.value.reply == f"550 5.7.1 {e164}: destination not allowed"
    # The same number passes when the administrator turns blocking off.
    assert policy(block_premium=False).check(local).number == e164


def test_premium_blocked_even_when_allowed_by_prefix() -> None:
    with pytest.raises(DestinationNotAllowed):
        policy(allow=("+7",)).check("88091234567")


def test_other_costly_looking_types_are_left_to_allow_and_deny() -> None:
    p = NumberPolicy(RU)
    assert p.check("+44-345-600-0000").number == "+443456000000"  # GB UAN 03xx: ordinary rate
    assert p.check("+881-612-345678").number == "+881612345678"  # satellite: see docs, use allow/deny
    with pytest.raises(DestinationNotAllowed):
        policy(deny=("+881",)).check("+881-612-345678")


# -------------------------------------------------------------- dial_format


def test_dial_format_digits() -> None:
    assert policy(dial_format="digits").check("8-812-309-26-31").dst_num == "78123092631"


def test_dial_format_e164() -> None:
    dest = policy(dial_format="e164").check("8-812-309-26-31")
    assert dest == Destination("+78123092631", "+78123092631", internal=False)


def test_dial_format_national_domestic_uses_trunk_prefix() -> None:
    assert policy(dial_format="national").check("+7-812-309-26-31").dst_num == "88123092631"
    assert policy(dial_format="national", default_region="DE").check("+49-30-1234567").dst_num == "0301234567"
    assert policy(dial_format="national", default_region="GB").check("+44-20-7946-0000").dst_num == "02079460000"


def test_dial_format_national_foreign_uses_the_regions_international_prefix() -> None:
    # A foreign number in its own national format would dial a local number.
    assert policy(dial_format="national").check("+49-30-1234567").dst_num == "81049301234567"
    assert policy(dial_format="national", default_region="DE").check("+33-1-40-00-00-00").dst_num == "0033140000000"
    assert policy(dial_format="national", default_region="US").check("+33-1-40-00-00-00").dst_num == "01133140000000"


def test_dial_format_national_shared_country_code_dials_nationally() -> None:
    # RU and KZ share +7 and dial each other with the trunk prefix.
    assert policy(dial_format="national").check("+7-701-234-56-78").dst_num == "87012345678"


def test_unknown_dial_format_in_code_is_refused() -> None:
    with pytest.raises(ValueError):
        policy(dial_format="pulse")
