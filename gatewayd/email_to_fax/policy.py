"""Who may send a fax, to which numbers, and how often (docs/security.md).

Everything here is default deny: a recipient is refused unless it is a number
the policy allows, a sender is refused unless an SMTP account or a
``[[senders]]`` rule vouches for it, and a rule's hourly budget is counted
from the durable store so a restart does not reset it. Each refusal is an
``IntakeRefused`` carrying the exact SMTP reply, so the SMTP listener, the
IMAP intake and ``gatewayd send`` refuse the same things with the same words.

Nothing here does I/O except ``RateLimiter.check`` (one SQLite read); the
policy objects are immutable and are rebuilt from the new ``Config`` on
SIGHUP, so a reload can never leave half-applied state behind.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType, shortnumberinfo
from phonenumbers.phonemetadata import PhoneMetadata

from gatewayd.config import Config, NumbersConfig, SenderRule, SmtpUser, contact_number
from gatewayd.email_to_fax.errors import (
    AuthenticationRequired,
    DestinationNotAllowed,
    IntakeRefused,
    NotAFaxNumber,
    RateLimitReached,
    RelayDenied,
    SenderNotAuthorised,
    ServiceNumberRefused,
)
from gatewayd.store import Store

__all__ = [
    "Authorisation",
    "Destination",
    "NumberPolicy",
    "RateLimiter",
    "SenderPolicy",
    "is_bounce_address",
    "recipient_key",
    "split_recipient",
]

# Digits with an optional leading "+", groups separated by a single "-" or
# ".". ASCII only: \d would also accept Arabic-Indic or full-width digits,
# which no administrator expects to reach the dial string. Separators at the
# ends or doubled ("7--812", "+.7") are refused rather than guessed at.
_LOCAL_PART_RE = re.compile(r"\+?[0-9]+(?:[-.][0-9]+)*", re.ASCII)
_SEPARATORS = str.maketrans("", "", "-.")
# RFC 5321's limit on a local part; it also bounds the work for the regex
# and phonenumbers. The number's own length is phonenumbers' business: its
# metadata knows each country's lengths (some German numbers exceed
# E.164's 15 digits and are still real).
_MAX_LOCAL_PART = 64

# Number types a fax to which costs the caller more than a normal call, the
# classic toll-fraud targets. UAN, VoIP, personal and satellite-ish mobile
# numbers are ordinary tariffs in most plans and are left to allow/deny.
_COSTLY_TYPES = frozenset({PhoneNumberType.PREMIUM_RATE, PhoneNumberType.SHARED_COST})

# Emergency numbers refused whatever default_region says: a caller abroad, a
# provider PBX in another country, or a phone that maps them (most GSM
# phones dial 112 and 911 anywhere) may still reach an emergency service.
_EMERGENCY_EVERYWHERE = frozenset({"112", "911"})

# Local parts that must never receive automatic mail (RFC 3834 and common
# sense): a report to them would be a bounce to a bounce.
_BOUNCE_LOCAL_PARTS = frozenset({"mailer-daemon", "postmaster"})


# ------------------------------------------------------------------ numbers


@dataclass(frozen=True)
class Destination:
    """One recipient that passed the number policy."""

    number: str  # shown to people: E.164 "+78123092631", or the internal number "1234"
    dst_num: str  # sent to the provider, per numbers.dial_format
    internal: bool
    name: str = ""  # a contact's name, for this recipient's cover page
    address: str = ""  # the recipient address it came from, lowercased ("" from the CLI)


def _bare(address: str) -> str:
    """An envelope address without surrounding blanks or one pair of <>."""
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return text


def recipient_key(address: str) -> str:
    """An envelope address as header addresses are compared: bare, lowercased."""
    return _bare(address).lower()


def split_recipient(address: str, domains: Sequence[str]) -> str:
    """The local part of ``number@<one of our fax domains>``.

    ``'+7-812-309-26-31@Fax.Example.com'`` -> ``'+7-812-309-26-31'``. The
    domain is compared case-insensitively and exactly: a subdomain of a fax
    domain is somebody else's, and accepting it would make us an open relay
    for whatever the provider can dial. Raises ``RelayDenied`` when the
    domain is not ours or there is no ``@``. The local part is returned as
    is (it may be empty); ``NumberPolicy.check`` decides whether it is a
    number.
    """
    bare = _bare(address)
    local, at, domain = bare.rpartition("@")
    if not at:
        raise RelayDenied()
    ours = {d.strip().lower() for d in domains}
    if domain.lower() not in ours:
        raise RelayDenied()
    return local


class NumberPolicy:
    """Turns the local part of a recipient into a ``Destination`` or refuses it.

    Order of decisions (the first that applies wins):

    1. Syntax: digits with an optional leading ``+`` and single ``-``/``.``
       separators between digits; otherwise ``NotAFaxNumber`` (553).
    2. ``numbers.internal`` (full match on the local part without
       separators, the ``+`` kept, so ``+1234`` is never internal): an
       internal extension, sent as written without separators. Internal
       numbers are not public numbers, so the E.164 allow/deny prefixes and
       premium blocking do not apply to them -- unless the same digits are
       also a valid public number for ``default_region``; then that public
       reading must pass the whole policy below, so a too-wide ``internal``
       pattern can never become a way around toll-fraud protection.
       Emergency numbers (112 and 911 everywhere, and ``default_region``'s
       own), valid short service numbers and premium short numbers of
       ``default_region``, and digits that start a trunk or international
       call (its national prefix, its international prefix, or ``0``) are
       refused with ``ServiceNumberRefused`` (550): a PBX hands digits it
       does not know to the public network (docs/security.md, "Hardening").
    3. Otherwise phonenumbers parses it (``+`` means international, else as
       dialled in ``default_region``: trunk prefix ``8`` and IDD ``810`` in
       RU, ``0``/``00`` in DE...) and it must be a valid number, else 553.
    4. Deny prefixes (win over allow), then the allow list when not empty,
       then premium-rate/shared-cost blocking: ``DestinationNotAllowed``
       (550) naming the E.164 number.
    """

    def __init__(self, numbers: NumbersConfig) -> None:
        self._region = numbers.default_region.upper()
        self._allow = tuple(numbers.allow)
        self._deny = tuple(numbers.deny)
        self._block_premium = numbers.block_premium
        self._dial_format = numbers.dial_format
        self._internal = re.compile(numbers.internal) if numbers.internal else None
        if self._dial_format not in ("digits", "e164", "national"):
            # The config loader refuses this already; a Config built in code
            # must not silently send numbers in some other format.
            raise ValueError(f"unknown numbers.dial_format {self._dial_format!r}")

    def check(self, local_part: str, address: str | None = None) -> Destination:
        """The destination for ``local_part``; ``address`` only names it in a 553."""
        shown = address if address is not None else local_part
        if len(local_part) > _MAX_LOCAL_PART or not _LOCAL_PART_RE.fullmatch(local_part):
            raise NotAFaxNumber(shown)
        compact = local_part.translate(_SEPARATORS)

        if self._internal is not None and self._internal.fullmatch(compact):
            public = self._parse(compact)
            if public is not None:
                self._enforce(public)
            if self._is_service_number(compact, public is not None):
                raise ServiceNumberRefused(compact)
            return Destination(number=compact, dst_num=compact, internal=True)

        parsed = self._parse(compact)
        if parsed is None:
            raise NotAFaxNumber(shown)
        self._enforce(parsed)
        e164 = phonenumbers.format_number(parsed, PhoneNumberFormat.E164)
        return Destination(number=e164, dst_num=self._dial_string(parsed, e164), internal=False)

    def _is_service_number(self, digits: str, public: bool) -> bool:
        """Whether internal-looking ``digits`` would reach an emergency or service number, or start a public call."""
        region = self._region
        if digits in _EMERGENCY_EVERYWHERE:
            return True
        if phonenumbers.is_emergency_number(digits, region) or shortnumberinfo.connects_to_emergency_number(digits, region):
            return True
        try:
            short = phonenumbers.parse(digits, region)
        except phonenumbers.NumberParseException:
            short = None
        if short is not None and (
            shortnumberinfo.is_valid_short_number_for_region(short, region)
            or shortnumberinfo.expected_cost_for_region(short, region) == shortnumberinfo.ShortNumberCost.PREMIUM_RATE
        ):
            return True
        if public:
            return False  # a complete public number: it passed _enforce above
        # The start of a public call that is not a complete number ("8800",
        # "810" in RU, "0900" in DE): what the network makes of it is unknown.
        metadata = PhoneMetadata.metadata_for_region(region)
        if digits.startswith("0"):
            return True
        if metadata is not None:
            if metadata.national_prefix and digits.startswith(metadata.national_prefix):
                return True
            if metadata.international_prefix and re.match(metadata.international_prefix, digits):
                return True
        return False

    def _parse(self, compact: str) -> phonenumbers.PhoneNumber | None:
        """A valid public number, or None."""
        try:
            parsed = phonenumbers.parse(compact, self._region)
        except phonenumbers.NumberParseException:
            return None
        return parsed if phonenumbers.is_valid_number(parsed) else None

    def _enforce(self, parsed: phonenumbers.PhoneNumber) -> None:
        e164 = phonenumbers.format_number(parsed, PhoneNumberFormat.E164)
        # Deny first: it is the administrator's explicit "never", and an
        # allow of "+7" must not reopen a deny of "+7809".
        if any(e164.startswith(prefix) for prefix in self._deny):
            raise DestinationNotAllowed(e164)
        if self._allow and not any(e164.startswith(prefix) for prefix in self._allow):
            raise DestinationNotAllowed(e164)
        if self._block_premium and phonenumbers.number_type(parsed) in _COSTLY_TYPES:
            raise DestinationNotAllowed(e164)

    def _dial_string(self, parsed: phonenumbers.PhoneNumber, e164: str) -> str:
        if self._dial_format == "e164":
            return e164
        if self._dial_format == "digits":
            return e164[1:]
        # "national": the digits a telephone in default_region dials. For a
        # number in that region this is the national format with its trunk
        # prefix (RU "8 (812) 309-26-31" -> "88123092631"); for any other
        # number it is the region's international form ("8~10 49 30 ..." ->
        # "81049301234567" from RU, "0049..." from DE). A foreign number in
        # its own national format would dial a different, local number.
        formatted = phonenumbers.format_out_of_country_calling_number(parsed, self._region)
        return "".join(c for c in formatted if c.isdigit() and c.isascii())


def contact_problems(config: Config) -> list[str]:
    """``contacts[i].number: reason`` for each contact whose number the
    number policy refuses (docs/smtp.md, Contacts).

    The configuration checks a contact's syntax; whether its number may be
    dialled is this module's question, asked by ``check-config``, at start
    and on reload. A contact refused here would be refused at RCPT as well.
    """
    policy = NumberPolicy(config.numbers)
    problems = []
    for contact in config.contacts:
        try:
            policy.check(contact_number(contact.number), contact.number)
        except IntakeRefused as exc:
            problems.append(f"{contact.where or 'contacts'}.number: {exc.text}")
    return problems


# ------------------------------------------------------------------ senders


@dataclass(frozen=True)
class Authorisation:
    """Why a sender may fax, and with which extension and limits."""

    extension: int  # provider extension to send from
    max_pages: int  # min(rule.max_pages, documents.max_pages), or documents.max_pages
    rule: SenderRule | None  # the matched [[senders]] rule (hourly limit); None for an account without one
    user: str | None  # authenticated SMTP account name, if any
    report_to: str  # envelope sender (From: for IMAP); "" when it is a bounce address
    # The authenticated account (its own hourly limit); ``user`` names it, so
    # it takes no part in comparisons.
    account: SmtpUser | None = field(default=None, compare=False)

    @property
    def hourly_limits(self) -> tuple[SenderRule | SmtpUser, ...]:
        """What counts this sender's jobs per hour: the rule's and the account's ``max_per_hour``, each on its own."""
        return tuple(x for x in (self.rule, self.account) if x is not None and x.max_per_hour)


def is_bounce_address(address: str) -> bool:
    """True for addresses that must never get a report.

    The null sender (``""`` or ``"<>"``) and ``MAILER-DAEMON@...`` /
    ``postmaster@...`` (case-insensitive, with or without a domain): a report
    there would answer a bounce with a bounce, the start of a mail loop.
    """
    bare = _bare(address)
    if not bare:
        return True
    local = bare.rpartition("@")[0] if "@" in bare else bare
    return local.strip('"').lower() in _BOUNCE_LOCAL_PARTS


def _usable_address(address: str) -> str:
    """The lowercased bare address, or "" when no rule may ever match it."""
    bare = _bare(address).lower()
    # A pattern like "*" matches anything, including "" and garbage; an
    # address with blanks or control characters is not one a rule meant.
    if not bare or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in bare):
        return ""
    return bare


class SenderPolicy:
    """Decides whether a sender may fax (docs/security.md, Sender authorisation); default deny."""

    def __init__(self, config: Config) -> None:
        self._auth = config.smtp.auth
        self._networks = tuple(config.smtp.trusted_networks)
        self._users: dict[str, SmtpUser] = {u.name: u for u in config.smtp.users}
        self._rules = tuple(config.senders)
        # Patterns are lowercased by the config loader; again here so a
        # Config built in code behaves the same.
        self._patterns = tuple(tuple(p.lower() for p in rule.match) for rule in self._rules)
        self._default_extension = config.provider.extension
        self._max_pages = config.documents.max_pages

    def is_trusted(self, client_ip: str) -> bool:
        """Whether the client address is in ``smtp.trusted_networks``.

        An IPv4 client on a dual-stack socket shows up as ``::ffff:a.b.c.d``;
        it is checked as the IPv4 address it is (and as written, in case the
        administrator listed the mapped form). Anything unparsable is
        untrusted.
        """
        text = str(client_ip).strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            return False
        candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [addr]
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            candidates.append(addr.ipv4_mapped)
        return any(a in net for a in candidates for net in self._networks if a.version == net.version)

    def match_rule(self, address: str) -> SenderRule | None:
        """The first ``[[senders]]`` rule with a pattern matching the bare address.

        Shell-style patterns on the lowercased address (fnmatchcase, so the
        result never depends on the OS). The empty address matches nothing.
        """
        bare = _usable_address(address)
        if not bare:
            return None
        for rule, patterns in zip(self._rules, self._patterns, strict=True):
            if any(fnmatch.fnmatchcase(bare, p) for p in patterns):
                return rule
        return None

    def authorise_smtp(self, *, envelope_sender: str, user: str | None, client_ip: str) -> Authorisation:
        """Authorise an SMTP transaction, or raise the refusal to send.

        (a) An authenticated ``[[smtp.users]]`` account may send with any
            envelope sender, including ``<>`` (then no report is sent). Its
            extension wins; the rule its envelope sender matches (if any)
            supplies the extension otherwise, and the page and hourly limits.
        (b) Without AUTH: ``auth`` is not "required", the client is in
            ``trusted_networks`` and the envelope sender matches a rule.
            Bounce addresses (``<>``, MAILER-DAEMON, postmaster) never match
            here: a bounce carries someone else's attachments.

        Refusals: no AUTH where it is needed (auth "required", or "optional"
        from an untrusted client, who can AUTH and try again) -> 530;
        everything else -> 550 sender not authorised.
        """
        sender = _bare(envelope_sender)
        if user is not None and self._auth != "off":
            account = self._users.get(user)
            if account is None:
                # The account was removed by a reload while the session was
                # open: the administrator revoked it.
                raise SenderNotAuthorised()
            rule = self.match_rule(sender)
            extension = account.extension or (rule.extension if rule else None) or self._default_extension
            return self._grant(extension, rule, user=user, sender=sender, account=account)

        if self._auth == "required":
            raise AuthenticationRequired()
        if not self.is_trusted(client_ip):
            if self._auth == "optional":
                raise AuthenticationRequired()
            raise SenderNotAuthorised()
        rule = None if is_bounce_address(sender) else self.match_rule(sender)
        if rule is None:
            raise SenderNotAuthorised()
        return self._grant(rule.extension or self._default_extension, rule, user=None, sender=sender)

    def authorise_mailbox(self, from_addr: str) -> Authorisation | None:
        """Authorise a message from the IMAP mailbox by its ``From:`` address.

        Only the rule match; the caller checks Authentication-Results first
        (a ``From:`` that matches but fails that check is a stranger). None
        when not authorised: no rule, a bounce address, or no extension.
        """
        sender = _bare(from_addr)
        if is_bounce_address(sender):
            return None
        rule = self.match_rule(sender)
        if rule is None:
            return None
        try:
            return self._grant(rule.extension or self._default_extension, rule, user=None, sender=sender)
        except SenderNotAuthorised:
            return None

    def _grant(self, extension: int | None, rule: SenderRule | None, *, user: str | None, sender: str, account: SmtpUser | None = None) -> Authorisation:
        # Extension 0 means "not set" everywhere in the config; sending from
        # it would be a provider error per job, so refuse up front.
        if not extension:
            raise SenderNotAuthorised()
        max_pages = self._max_pages
        if rule is not None and rule.max_pages:
            max_pages = min(rule.max_pages, max_pages)
        report_to = "" if is_bounce_address(sender) else sender
        return Authorisation(extension=extension, max_pages=max_pages, rule=rule, user=user, report_to=report_to, account=account)


# --------------------------------------------------------------- hourly limits


class RateLimiter:
    """``max_per_hour`` of a ``[[senders]]`` rule or an ``[[smtp.users]]`` account over a sliding hour.

    The count comes from the ``sender_usage`` rows the store writes in the
    same commit as the jobs, so a restart or reload does not reset it and a
    refused message does not use it up. Synchronous (one SQLite read):
    callers run it through ``store.run``. Check and enqueue are separate
    steps, so two sessions racing for the last slot may overshoot by a few
    jobs; a limit is a brake on abuse, not an accounting system.
    """

    WINDOW = 3600.0

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def check_all(self, authorisation: Authorisation, new_jobs: int = 1) -> None:
        """``check`` every hourly limit of ``authorisation`` (rule and account)."""
        for limited in authorisation.hourly_limits:
            self.check(limited, new_jobs)

    def check(self, rule: SenderRule | SmtpUser | None, new_jobs: int = 1) -> None:
        """Raise ``RateLimitReached`` (450) if ``new_jobs`` more would exceed the limit."""
        if rule is None or not rule.max_per_hour:
            return
        used = self._store.usage_since(rule.key, self._clock() - self.WINDOW)
        if used + max(new_jobs, 0) > rule.max_per_hour:
            raise RateLimitReached()
