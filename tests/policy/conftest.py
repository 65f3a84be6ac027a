"""Shared builders for the policy tests: Configs made in code, not from TOML.

Building the dataclasses directly keeps each test's policy visible in the
test itself; one test in test_policy_senders.py goes through the real loader
to prove the two agree.
"""

from __future__ import annotations

import ipaddress
from typing import Sequence

import pytest

from gatewayd.config import (
    Config,
    DocumentsConfig,
    NumbersConfig,
    ProviderConfig,
    SenderRule,
    SmtpConfig,
    SmtpUser,
)

FAKE_HASH = "$scrypt$n=16384,r=8,p=1$c2FsdA$aGFzaA"  # never verified here


def _rules(*specs: dict) -> tuple[SenderRule, ...]:
    """[[senders]] rules with their file position as index, like the loader."""
    out = []
    for i, spec in enumerate(specs):
        spec = dict(spec)
        match = spec.pop("match")
        out.append(SenderRule(match=tuple(match), index=i, **spec))
    return tuple(out)


def _make_config(
    *,
    auth: str = "optional",
    trusted: Sequence[str] = ("127.0.0.1/32", "::1/128"),
    users: Sequence[SmtpUser] = (),
    senders: Sequence[SenderRule] = (),
    provider_extension: int = 101,
    max_pages: int = 100,
    numbers: NumbersConfig | None = None,
) -> Config:
    return Config(
        provider=ProviderConfig(client_id="id", client_secret="secret", extension=provider_extension),
        smtp=SmtpConfig(
            hostname="gw.example.com",
            auth=auth,
            trusted_networks=tuple(ipaddress.ip_network(n) for n in trusted),
            users=tuple(users),
        ),
        senders=tuple(senders),
        numbers=numbers or NumbersConfig(),
        documents=DocumentsConfig(max_pages=max_pages),
    )


class FakeClock:
    """A clock the test moves by hand; shared by the Store and the limiter."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# Test modules are imported with --import-mode=importlib, so they cannot
# import this file; the builders are handed out as fixtures instead.


@pytest.fixture
def make_config():
    return _make_config


@pytest.fixture
def rules():
    return _rules
