"""The account the test servers that refuse root (PostgreSQL, Dovecot's non-root mode) run as."""

from __future__ import annotations

import os
import pwd


def unprivileged_account(needs: str) -> pwd.struct_passwd:
    """``nobody`` when the tests run as root (as in CI), else the current user; ``needs`` says who asks, for the error."""
    if os.getuid() == 0:
        return pwd.getpwnam("nobody")
    try:
        return pwd.getpwuid(os.getuid())
    except KeyError:
        raise AssertionError(f"uid {os.getuid()} has no passwd entry: {needs} needs a user name") from None
