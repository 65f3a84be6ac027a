"""Who is logged in to the web console and what they may see (docs/web.md, Accounts).

Accounts are the ``[[smtp.users]]`` accounts with their password hashes.
An admin sees and acts on everything; a user sees the jobs sent under the
account or from its envelope sender (the account name, when it is an email
address), and the received faxes of the numbers and extensions in its
``inbound`` key. Every lookup by id goes through these scopes on the server,
so another account's job or fax is simply not found (404).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gatewayd.config import Config, SmtpUser, is_email_address
from gatewayd.passwords import verify_password
from gatewayd.store.web import JobFilter, ReceivedFilter

__all__ = ["Account", "LoginThrottle", "find_account", "check_login"]

# A well-formed hash of a random password: a login for an unknown account
# costs the same scrypt as a real one, so timing does not tell names apart.
_DUMMY_HASH = "$scrypt$n=16384,r=8,p=1$XFExquMrS7vbzdUxW40XiA$t9wd0lhpeb47ff0HA5fHvVyGDfX9ZBWEaCVolWSppjo"


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    inbound: tuple[str, ...]

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    @property
    def jobs(self) -> JobFilter:
        if self.admin:
            return JobFilter(everything=True)
        senders = (self.name.lower(),) if is_email_address(self.name) else ()
        return JobFilter(account=self.name, senders=senders)

    @property
    def received(self) -> ReceivedFilter:
        return ReceivedFilter(everything=True) if self.admin else ReceivedFilter(targets=self.inbound)


def _account(user: SmtpUser) -> Account:
    return Account(user.name, user.role, user.inbound)


def find_account(config: Config, name: str) -> Account | None:
    """The account as the running configuration has it now (a reload may remove or demote it)."""
    for user in config.smtp.users:
        if user.name == name:
            return _account(user)
    return None


def check_login(config: Config, name: str, password: str) -> Account | None:
    """The account when the password matches; None otherwise (constant work either way)."""
    user = next((u for u in config.smtp.users if u.name == name), None)
    ok = verify_password(password, user.password_hash if user else _DUMMY_HASH)
    return _account(user) if (user is not None and ok) else None


@dataclass
class LoginThrottle:
    """Failed logins counted per client address and per account name.

    After ``limit`` failures within ``window`` seconds, that address (or
    account) is refused until the window has passed since its last failure.
    Kept in the console's memory: a restart forgives, which is fine for a
    limit on guessing speed (docs/web.md, Security).
    """

    limit: int = 5
    window: float = 900.0
    clock: Callable[[], float] = time.monotonic
    _fails: dict[str, list[float]] = field(default_factory=dict)

    def _recent(self, key: str) -> list[float]:
        now = self.clock()
        recent = [t for t in self._fails.get(key, []) if now - t < self.window]
        if recent:
            self._fails[key] = recent
        else:
            self._fails.pop(key, None)
        return recent

    def blocked_for(self, address: str, account: str) -> float:
        """Seconds until a login may be tried again (0: now)."""
        waits = [0.0]
        for key in (f"addr:{address}", f"user:{account}"):
            recent = self._recent(key)
            if len(recent) >= self.limit:
                waits.append(self.window - (self.clock() - recent[-1]))
        return max(waits)

    def failed(self, address: str, account: str) -> None:
        now = self.clock()
        if len(self._fails) > 10000:  # a flood of names: forget the oldest rather than grow
            for key in list(self._fails)[:5000]:
                del self._fails[key]
        for key in (f"addr:{address}", f"user:{account}"):
            self._fails.setdefault(key, []).append(now)

    def succeeded(self, address: str, account: str) -> None:
        self._fails.pop(f"addr:{address}", None)
        self._fails.pop(f"user:{account}", None)
