"""SenderPolicy: who may send (SPEC section 4), with which extension and limits."""

from __future__ import annotations

import pytest

from gatewayd.config import SmtpUser, load_config_data
from gatewayd.email_to_fax.errors import AuthenticationRequired, SenderNotAuthorised
from gatewayd.email_to_fax.policy import Authorisation, SenderPolicy, is_bounce_address

FAKE_HASH = "$scrypt$n=16384,r=8,p=1$c2FsdA$aGFzaA"  # never verified by the policy

TRUSTED_IP = "127.0.0.1"
UNTRUSTED_IP = "203.0.113.5"
RULE_SENDER = "alice@example.com"
STRANGER = "stranger@other.example.org"

OK = "ok"
E530 = AuthenticationRequired
E550 = SenderNotAuthorised

# Every combination of auth mode x client x AUTH x rule, written out rather
# than computed, so the table is the specification under test.
#  auth,       trusted, user,      rule,  expected
MATRIX = [
    ("required", True, "scanner", True, OK),
    ("required", True, "scanner", False, OK),
    ("required", True, None, True, E530),
    ("required", True, None, False, E530),
    ("required", False, "scanner", True, OK),
    ("required", False, "scanner", False, OK),
    ("required", False, None, True, E530),
    ("required", False, None, False, E530),
    ("optional", True, "scanner", True, OK),
    ("optional", True, "scanner", False, OK),
    ("optional", True, None, True, OK),
    ("optional", True, None, False, E550),
    ("optional", False, "scanner", True, OK),
    ("optional", False, "scanner", False, OK),
    ("optional", False, None, True, E530),  # may AUTH and try again
    ("optional", False, None, False, E530),
    # "off": no AUTH at all; a user name (which the listener should never
    # produce) is ignored, so only trusted networks with a rule may send.
    ("off", True, "scanner", True, OK),
    ("off", True, "scanner", False, E550),
    ("off", True, None, True, OK),
    ("off", True, None, False, E550),
    ("off", False, "scanner", True, E550),
    ("off", False, "scanner", False, E550),
    ("off", False, None, True, E550),
    ("off", False, None, False, E550),
]

REPLIES = {
    E530: "530 5.7.0 authentication required",
    E550: "550 5.7.1 sender not authorised",
}


@pytest.mark.parametrize("auth, trusted, user, has_rule, expected", MATRIX)
def test_authorisation_matrix(make_config, rules, auth, trusted, user, has_rule, expected) -> None:
    config = make_config(
        auth=auth,
        users=[SmtpUser("scanner", FAKE_HASH)],
        senders=rules({"match": ["*@example.com"], "extension": 201, "max_pages": 20, "max_per_hour": 10}),
    )
    policy = SenderPolicy(config)
    kwargs = dict(
        envelope_sender=RULE_SENDER if has_rule else STRANGER,
        user=user,
        client_ip=TRUSTED_IP if trusted else UNTRUSTED_IP,
    )
    if expected is OK:
        got = policy.authorise_smtp(**kwargs)
        assert got.report_to == kwargs["envelope_sender"]
        effective_user = user if auth != "off" else None
        assert got.user == effective_user
        if has_rule:
            assert got.rule is config.senders[0]
            assert (got.extension, got.max_pages) == (201, 20)
        else:
            assert got.rule is None
            assert (got.extension, got.max_pages) == (101, 100)
    else:
        with pytest.raises(expected) as info:
            policy.authorise_smtp(**kwargs)
        assert info.value.reply == REPLIES[expected]


def test_matrix_covers_every_combination() -> None:
    combos = {(a, t, u, r) for a, t, u, r, _ in MATRIX}
    assert len(combos) == len(MATRIX) == 3 * 2 * 2 * 2


# ------------------------------------------------- extension and max_pages


def test_user_extension_wins_over_rule_but_rule_limits_apply(make_config, rules) -> None:
    config = make_config(
        users=[SmtpUser("scanner", FAKE_HASH, extension=301)],
        senders=rules({"match": ["*@example.com"], "extension": 201, "max_pages": 20, "max_per_hour": 5}),
    )
    got = SenderPolicy(config).authorise_smtp(envelope_sender="bob@example.com", user="scanner", client_ip=UNTRUSTED_IP)
    assert got == Authorisation(extension=301, max_pages=20, rule=config.senders[0], user="scanner", report_to="bob@example.com")


def test_user_without_extension_takes_the_rules(make_config, rules) -> None:
    config = make_config(users=[SmtpUser("scanner", FAKE_HASH)], senders=rules({"match": ["*@example.com"], "extension": 201}))
    got = SenderPolicy(config).authorise_smtp(envelope_sender="bob@example.com", user="scanner", client_ip=UNTRUSTED_IP)
    assert (got.extension, got.max_pages, got.rule) == (201, 100, config.senders[0])


def test_user_without_extension_or_rule_takes_the_providers(make_config, rules) -> None:
    config = make_config(users=[SmtpUser("scanner", FAKE_HASH)], senders=rules({"match": ["*@example.com"], "extension": 201}))
    got = SenderPolicy(config).authorise_smtp(envelope_sender="bob@elsewhere.org", user="scanner", client_ip=UNTRUSTED_IP)
    assert (got.extension, got.max_pages, got.rule) == (101, 100, None)


def test_rule_without_extension_takes_the_providers(make_config, rules) -> None:
    config = make_config(senders=rules({"match": ["*@example.com"], "max_pages": 7}))
    got = SenderPolicy(config).authorise_smtp(envelope_sender="bob@example.com", user=None, client_ip=TRUSTED_IP)
    assert (got.extension, got.max_pages) == (101, 7)


def test_max_pages_is_the_smaller_of_rule_and_documents(make_config, rules) -> None:
    config = make_config(max_pages=30, senders=rules({"match": ["big@example.com"], "max_pages": 500}, {"match": ["small@example.com"], "max_pages": 3}))
    policy = SenderPolicy(config)
    assert policy.authorise_smtp(envelope_sender="big@example.com", user=None, client_ip=TRUSTED_IP).max_pages == 30
    assert policy.authorise_smtp(envelope_sender="small@example.com", user=None, client_ip=TRUSTED_IP).max_pages == 3


def test_no_extension_anywhere_is_refused(make_config, rules) -> None:
    config = make_config(
        provider_extension=0,
        users=[SmtpUser("scanner", FAKE_HASH)],
        senders=rules({"match": ["*@example.com"]}),
    )
    policy = SenderPolicy(config)
    with pytest.raises(SenderNotAuthorised):
        policy.authorise_smtp(envelope_sender="bob@example.com", user=None, client_ip=TRUSTED_IP)
    with pytest.raises(SenderNotAuthorised):
        policy.authorise_smtp(envelope_sender="bob@example.com", user="scanner", client_ip=TRUSTED_IP)
    assert policy.authorise_mailbox("bob@example.com") is None


def test_first_matching_rule_wins(make_config, rules) -> None:
    config = make_config(senders=rules({"match": ["boss@example.com"], "extension": 1}, {"match": ["*@example.com"], "extension": 2}))
    policy = SenderPolicy(config)
    assert policy.match_rule("boss@example.com") is config.senders[0]
    assert policy.match_rule("minion@example.com") is config.senders[1]
    assert policy.authorise_smtp(envelope_sender="Boss@Example.com", user=None, client_ip=TRUSTED_IP).extension == 1


# ------------------------------------------------------------- rule matching


@pytest.mark.parametrize(
    "address, matches",
    [
        ("alice@example.com", True),
        ("ALICE@EXAMPLE.COM", True),
        ("<Alice@Example.com>", True),
        ("alice@sub.example.com", False),  # "*@example.com" is not its subdomains
        ("alice@example.com.evil.org", False),
        ("alice@notexample.com", False),
        ("", False),
        ("<>", False),
        ("alice @example.com", False),
        ("alice@example.com\r\nRCPT", False),
    ],
)
def test_match_rule_patterns(make_config, rules, address, matches) -> None:
    policy = SenderPolicy(make_config(senders=rules({"match": ["*@example.com"]})))
    assert (policy.match_rule(address) is not None) is matches


def test_match_rule_shell_patterns(make_config, rules) -> None:
    policy = SenderPolicy(make_config(senders=rules({"match": ["scan?@*.example.com", "[ab]*@example.org", "Fax@Example.NET"]})))
    assert policy.match_rule("scan1@office.example.com")
    assert not policy.match_rule("scan12@office.example.com")
    assert policy.match_rule("bob@example.org")
    assert not policy.match_rule("carol@example.org")
    assert policy.match_rule("fax@example.net")  # pattern lowercased even when built in code


def test_catch_all_pattern_still_needs_an_address(make_config, rules) -> None:
    policy = SenderPolicy(make_config(senders=rules({"match": ["*"]})))
    assert policy.match_rule("anyone@anywhere.example") is not None
    assert policy.match_rule("") is None
    with pytest.raises(SenderNotAuthorised):
        policy.authorise_smtp(envelope_sender="<>", user=None, client_ip=TRUSTED_IP)


def test_no_rules_means_nobody_without_auth(make_config) -> None:
    policy = SenderPolicy(make_config())
    with pytest.raises(SenderNotAuthorised):
        policy.authorise_smtp(envelope_sender="root@localhost", user=None, client_ip=TRUSTED_IP)


def test_loaded_config_agrees(tmp_path) -> None:
    config = load_config_data(
        {
            "provider": {"client_id": "id", "client_secret": "s", "extension": 101},
            "smtp": {"hostname": "gw.example.com", "trusted_networks": ["10.0.0.0/8"]},
            "senders": [
                {"match": ["Boss@Example.COM"], "extension": 5},
                {"match": ["*@Example.com"], "max_per_hour": 3},
            ],
            "storage": {"state_dir": str(tmp_path)},
        },
        env={},
    )
    policy = SenderPolicy(config)
    rule = policy.match_rule("someone@EXAMPLE.com")
    assert rule is not None and rule.key == "senders[1]" and rule.max_per_hour == 3
    got = policy.authorise_smtp(envelope_sender="boss@example.com", user=None, client_ip="::ffff:10.1.2.3")
    assert (got.extension, got.rule.key) == (5, "senders[0]")


# ------------------------------------------------------- null and bounce senders


def test_null_sender_from_trusted_network_is_refused(make_config, rules) -> None:
    policy = SenderPolicy(make_config(senders=rules({"match": ["*@example.com"]})))
    for sender in ("", "<>"):
        with pytest.raises(SenderNotAuthorised):
            policy.authorise_smtp(envelope_sender=sender, user=None, client_ip=TRUSTED_IP)


def test_null_sender_with_auth_is_allowed_without_reports(make_config, rules) -> None:
    config = make_config(users=[SmtpUser("scanner", FAKE_HASH)], senders=rules({"match": ["*@example.com"]}))
    got = SenderPolicy(config).authorise_smtp(envelope_sender="<>", user="scanner", client_ip=UNTRUSTED_IP)
    assert got == Authorisation(extension=101, max_pages=100, rule=None, user="scanner", report_to="")


def test_bounce_addresses_are_not_authorised_by_rules(make_config, rules) -> None:
    # A bounce carries someone else's message and attachments: never fax it.
    config = make_config(users=[SmtpUser("scanner", FAKE_HASH)], senders=rules({"match": ["*@example.com"], "max_per_hour": 2}))
    policy = SenderPolicy(config)
    for sender in ("MAILER-DAEMON@example.com", "postmaster@example.com"):
        with pytest.raises(SenderNotAuthorised):
            policy.authorise_smtp(envelope_sender=sender, user=None, client_ip=TRUSTED_IP)
        assert policy.authorise_mailbox(sender) is None
        # Authenticated: allowed, the rule's limits still apply, no report.
        got = policy.authorise_smtp(envelope_sender=sender, user="scanner", client_ip=UNTRUSTED_IP)
        assert got.report_to == "" and got.rule is config.senders[0]


def test_report_to_keeps_the_senders_spelling(make_config, rules) -> None:
    policy = SenderPolicy(make_config(senders=rules({"match": ["*@example.com"]})))
    got = policy.authorise_smtp(envelope_sender="<Alice.Smith@Example.com>", user=None, client_ip=TRUSTED_IP)
    assert got.report_to == "Alice.Smith@Example.com"


def test_unknown_account_is_refused(make_config, rules) -> None:
    # E.g. the account was removed by a SIGHUP reload while the session was open.
    policy = SenderPolicy(make_config(users=[SmtpUser("scanner", FAKE_HASH)], senders=rules({"match": ["*@example.com"]})))
    with pytest.raises(SenderNotAuthorised):
        policy.authorise_smtp(envelope_sender="alice@example.com", user="ghost", client_ip=TRUSTED_IP)


@pytest.mark.parametrize(
    "address, bounce",
    [
        ("", True),
        ("<>", True),
        (" <> ", True),
        ("MAILER-DAEMON@example.com", True),
        ("mailer-daemon@mx.example.org", True),
        ("Postmaster@Example.com", True),
        ("<postmaster@example.com>", True),
        ("postmaster", True),
        ("MAILER-DAEMON", True),
        ("alice@example.com", False),
        ("postmaster-bot@example.com", False),
        ("daemon@example.com", False),
        ("mailer-daemon.not@example.com", False),
        ("alice@postmaster.example.com", False),
    ],
)
def test_is_bounce_address(address: str, bounce: bool) -> None:
    assert is_bounce_address(address) is bounce


# ------------------------------------------------------------------- mailbox


def test_authorise_mailbox(make_config, rules) -> None:
    config = make_config(senders=rules({"match": ["*@example.com"], "extension": 201, "max_pages": 9}))
    policy = SenderPolicy(config)
    got = policy.authorise_mailbox("Alice@Example.com")
    assert got == Authorisation(extension=201, max_pages=9, rule=config.senders[0], user=None, report_to="Alice@Example.com")
    assert policy.authorise_mailbox("stranger@other.example.org") is None
    assert policy.authorise_mailbox("") is None


# ---------------------------------------------------------------- networks


@pytest.mark.parametrize(
    "networks, client, trusted",
    [
        (("127.0.0.1/32", "::1/128"), "127.0.0.1", True),
        (("127.0.0.1/32", "::1/128"), "::1", True),
        (("127.0.0.1/32", "::1/128"), "[::1]", True),
        (("127.0.0.1/32", "::1/128"), "::ffff:127.0.0.1", True),  # IPv4-mapped
        (("127.0.0.1/32", "::1/128"), "::FFFF:7F00:1", True),  # the same, hex spelling
        (("127.0.0.1/32", "::1/128"), "::ffff:127.0.0.2", False),
        (("127.0.0.1/32", "::1/128"), "127.0.0.2", False),
        (("127.0.0.1/32", "::1/128"), "::2", False),
        (("10.0.0.0/8",), "::ffff:10.20.30.40", True),
        (("10.0.0.0/8",), "11.0.0.1", False),
        (("::ffff:0:0/96",), "::ffff:192.0.2.1", True),  # admin listed the mapped form
        (("2001:db8::/32",), "2001:db8::25", True),
        (("2001:db8::/32",), "2001:db9::25", False),
        (("fe80::/10",), "fe80::1%eth0", True),
        (("127.0.0.1/32",), "", False),
        (("127.0.0.1/32",), "localhost", False),
        (("127.0.0.1/32",), "127.0.0.1:2525", False),
        (("0.0.0.0/0",), "::1", False),  # an IPv4 "everything" does not cover IPv6
        ((), "127.0.0.1", False),
    ],
)
def test_is_trusted(make_config, networks, client, trusted) -> None:
    assert SenderPolicy(make_config(trusted=networks)).is_trusted(client) is trusted


def test_ipv4_mapped_client_relays_like_ipv4(make_config, rules) -> None:
    policy = SenderPolicy(make_config(senders=rules({"match": ["*@example.com"]})))
    got = policy.authorise_smtp(envelope_sender="alice@example.com", user=None, client_ip="::ffff:127.0.0.1")
    assert got.extension == 101
    with pytest.raises(AuthenticationRequired):
        policy.authorise_smtp(envelope_sender="alice@example.com", user=None, client_ip="::ffff:198.51.100.7")
