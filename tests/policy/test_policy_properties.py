"""Property tests: NumberPolicy.check on arbitrary input only accepts or refuses.

Any other exception would reach the SMTP listener as an internal error (a
451 that makes the client retry a hopeless recipient forever).
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.config import NumbersConfig
from gatewayd.email_to_fax.errors import DestinationNotAllowed, NotAFaxNumber, RelayDenied, ServiceNumberRefused
from gatewayd.email_to_fax.policy import Destination, NumberPolicy, split_recipient

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

configs = st.builds(
    NumbersConfig,
    default_region=st.sampled_from(["RU", "DE", "GB", "US", "FR", "BY", "KZ", "NU"]),
    allow=st.sampled_from([(), ("+7",), ("+7", "+375"), ("+4",)]),
    deny=st.sampled_from([(), ("+7809",), ("+44", "+1")]),
    block_premium=st.booleans(),
    dial_format=st.sampled_from(["digits", "e164", "national"]),
    internal=st.sampled_from([r"^[0-9]{2,5}$", "", r"[0-9]{3,11}", r"^\+?9[0-9]*$"]),
)

# Strings that look like numbers, so most examples get past the syntax check
# and exercise phonenumbers and the policy, not just the regex.
numberish = st.text(alphabet="0123456789+-.", min_size=0, max_size=24)
plausible = st.builds(
    lambda plus, groups, sep: ("+" if plus else "") + sep.join(groups),
    st.booleans(),
    st.lists(st.text(alphabet="0123456789", min_size=1, max_size=4), min_size=1, max_size=6),
    st.sampled_from(["", "-", "."]),
)
anything = st.one_of(st.text(max_size=40), numberish, plausible)


def _check(config: NumbersConfig, local: str) -> Destination | None:
    try:
        return NumberPolicy(config).check(local, f"{local}@fax.example.com")
    except (NotAFaxNumber, DestinationNotAllowed, ServiceNumberRefused):
        return None


@SETTINGS
@given(config=configs, local=anything)
def test_check_only_accepts_or_refuses(config: NumbersConfig, local: str) -> None:
    dest = _check(config, local)
    if dest is None:
        return
    assert dest.number and dest.dst_num
    if dest.internal:
        assert dest.number == dest.dst_num == local.replace("-", "").replace(".", "")
    else:
        # phonenumbers accepts some national numbers longer than E.164's 15
        # digits (German DIDs); the local part is capped at 64 characters.
        assert re.fullmatch(r"\+[1-9][0-9]{1,19}", dest.number)
        if config.dial_format == "e164":
            assert dest.dst_num == dest.number
        elif config.dial_format == "digits":
            assert dest.dst_num == dest.number[1:]
        else:
            assert dest.dst_num.isdigit() and dest.dst_num.isascii()
        # What was accepted passes the policy again in E.164 form, unchanged,
        # unless the E.164 form itself is an internal number (+9... pattern).
        again = _check(config, dest.number)
        assert again is not None
        if not again.internal:
            assert again == dest


@SETTINGS
@given(config=configs, local=anything)
def test_refused_destinations_name_an_e164_number(config: NumbersConfig, local: str) -> None:
    try:
        NumberPolicy(config).check(local)
    except DestinationNotAllowed as exc:
        assert re.fullmatch(r"\+[1-9][0-9]{1,19}", exc.number)
        assert exc.reply == f"550 5.7.1 {exc.number}: destination not allowed"
    except NotAFaxNumber as exc:
        assert exc.reply.startswith("553 5.1.3 <")
    except ServiceNumberRefused as exc:
        assert exc.number.isdigit() and exc.reply == f"550 5.7.1 {exc.number}: emergency and service numbers are never faxed"


@SETTINGS
@given(local=numberish)
def test_deny_always_wins(local: str) -> None:
    dest = _check(NumbersConfig(block_premium=False, internal=""), local)
    if dest is None:
        return
    # Denying a prefix of the number while also allowing it refuses it.
    cc = dest.number[:3]
    strict = NumbersConfig(block_premium=False, internal="", allow=(cc,), deny=(cc,))
    assert _check(strict, local) is None


@SETTINGS
@given(address=st.text(max_size=60))
def test_split_recipient_only_relays_for_our_domain(address: str) -> None:
    try:
        local = split_recipient(address, ["fax.example.com"])
    except RelayDenied:
        return
    assert address.strip().strip("<>").strip().lower().endswith("@fax.example.com")
    assert local + "@" in address
