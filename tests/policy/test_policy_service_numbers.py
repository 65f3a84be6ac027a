"""Emergency and short service numbers are never faxed, even when they match
``numbers.internal`` (issue 14, item 6; docs/security.md, "Hardening";
docs/smtp.md, Replies)."""

from __future__ import annotations

import pytest

from gatewayd.config import NumbersConfig
from gatewayd.email_to_fax.errors import ServiceNumberRefused
from gatewayd.email_to_fax.policy import Destination, NumberPolicy


def policy(**overrides) -> NumberPolicy:
    return NumberPolicy(NumbersConfig(**overrides))


# What the default internal = "^[0-9]{2,5}$" let out as written with RU.
@pytest.mark.parametrize("local", ["112", "911", "01", "02", "03", "04", "101", "102", "103", "104", "0900", "8800", "810", "8-10", "1-1-2"])
def test_default_internal_pattern_refuses_emergency_and_service_numbers_ru(local: str) -> None:
    with pytest.raises(ServiceNumberRefused) as info:
        policy().check(local)
    compact = local.replace("-", "")
    assert info.value.reply == f"550 5.7.1 {compact}: emergency and service numbers are never faxed"


@pytest.mark.parametrize("region, local", [
    ("DE", "110"), ("DE", "116117"), ("DE", "0800"), ("DE", "00"), ("GB", "999"), ("GB", "101"),
    ("US", "911"), ("US", "011"), ("US", "112"), ("FR", "112"), ("FR", "911"), ("JP", "911"), ("JP", "112"),
])
def test_other_regions_refuse_their_own_emergency_service_and_trunk_numbers(region: str, local: str) -> None:
    with pytest.raises(ServiceNumberRefused):
        policy(default_region=region, internal=r"^[0-9]{2,6}$").check(local)


@pytest.mark.parametrize("region", ["RU", "DE", "GB", "US", "FR", "JP", "BY", "KZ"])
@pytest.mark.parametrize("local", ["112", "911"])
def test_112_and_911_everywhere_even_with_a_wide_pattern(region: str, local: str) -> None:
    with pytest.raises(ServiceNumberRefused):
        policy(default_region=region, internal=r"^[0-9]{2,11}$").check(local)


@pytest.mark.parametrize("local", ["12", "20", "555", "1234", "4321", "99999", "12-34"])
def test_ordinary_extensions_still_go_out_as_written(local: str) -> None:
    number = local.replace("-", "")
    assert policy().check(local) == Destination(number, number, internal=True)


def test_a_wide_internal_pattern_still_lets_a_public_number_through_the_full_policy() -> None:
    # 8 812 309-26-31 is a valid RU number: its public reading was checked, not refused as a trunk prefix.
    assert policy(internal=r"^[0-9]{2,11}$").check("88123092631").internal
