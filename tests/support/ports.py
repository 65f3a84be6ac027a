"""Ports for the programs a test cannot hand a bound socket to.

gatewayd in the test's loop binds 127.0.0.1:0 and the test reads the bound
port back (support/gateway.py); nothing here is needed for it. A separate
program (Dovecot, Postfix, `gatewayd run` and `gatewayd simulator` as
subprocesses, whose config loader refuses port 0) needs a number before it
starts. ``free_port`` asks the kernel for one and lets it go: between that
and the program's bind, another process (an xdist worker, say) can take it.
So callers start the program through ``retry_on_port_clash``, which picks a
new port and tries again when the start fails because the port was taken.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

ATTEMPTS = 5


def free_port() -> int:
    """A port free right now on 127.0.0.1 (see the module docstring for the race)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PortClash(Exception):
    """The program could not bind its port: another process took it first."""


def retry_on_port_clash(start: Callable[[int], T], attempts: int = ATTEMPTS) -> T:
    """``start(port)`` with a fresh free port, again when it raises PortClash."""
    for attempt in range(attempts):
        try:
            return start(free_port())
        except PortClash:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


async def aretry_on_port_clash(start: Callable[[int], Awaitable[T]], attempts: int = ATTEMPTS) -> T:
    """The async form of ``retry_on_port_clash``."""
    for attempt in range(attempts):
        try:
            return await start(free_port())
        except PortClash:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
