"""Per-client-address limits of the SMTP listener: open connections and recent AUTH failures.

A listener that faces a network must not let one address take every
connection slot, nor try passwords (16 MiB of scrypt each) as fast as it
can reconnect (docs/smtp.md, "Limits per client"; docs/security.md,
"Hardening (issue 14, items 5-11)"). Each ``SmtpListener`` owns one
``ClientThrottle``. With ``smtp.processes`` > 1 the main process's is the
one that counts for all: the other listener processes ask it over their
channel (``ClientLimits``; gatewayd/email_to_fax/smtp_processes.py), so a
client gets the same limits however the kernel spreads its connections.
The memory it takes is bounded: at most ``max_tracked`` addresses with
recent failures are remembered, the oldest forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Protocol

__all__ = ["ClientLimits", "ClientThrottle", "LocalClientLimits"]


class ClientThrottle:
    """Counts connections and AUTH failures per client address."""

    def __init__(
        self,
        *,
        max_connections_per_client: int,
        auth_failures_per_client: int,
        auth_failure_window: float,
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = 10_000,
    ) -> None:
        self.max_connections_per_client = max_connections_per_client
        self.auth_failures_per_client = auth_failures_per_client
        self.auth_failure_window = auth_failure_window
        self._clock = clock
        self._max_tracked = max_tracked
        self._connections: dict[str, int] = {}
        # address -> times of its failures inside the window, least recently failed first
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def configure(self, *, max_connections_per_client: int, auth_failures_per_client: int, auth_failure_window: float) -> None:
        """New limits after a reload; what was counted stays."""
        self.max_connections_per_client = max_connections_per_client
        self.auth_failures_per_client = auth_failures_per_client
        self.auth_failure_window = auth_failure_window

    # -- connections

    def opened(self, address: str) -> bool:
        """Count a new connection from ``address``; False (not counted) when it has too many."""
        count = self._connections.get(address, 0)
        if count >= self.max_connections_per_client:
            return False
        self._connections[address] = count + 1
        return True

    def closed(self, address: str) -> None:
        count = self._connections.get(address, 0) - 1
        if count > 0:
            self._connections[address] = count
        else:
            self._connections.pop(address, None)

    # -- AUTH failures

    def _recent(self, address: str) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        horizon = self._clock() - self.auth_failure_window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def auth_blocked(self, address: str) -> bool:
        """True when ``address`` failed ``auth_failures_per_client`` times within the window."""
        times = self._recent(address)
        return times is not None and len(times) >= self.auth_failures_per_client

    def auth_failed(self, address: str) -> None:
        times = self._recent(address)
        if times is None:
            times = self._failures[address] = deque(maxlen=max(1, self.auth_failures_per_client))
        times.append(self._clock())
        self._failures.move_to_end(address)
        while len(self._failures) > self._max_tracked:
            self._failures.popitem(last=False)

    @property
    def tracked(self) -> int:
        """Addresses remembered for their AUTH failures."""
        return len(self._failures)


class ClientLimits(Protocol):
    """What a session asks of the per-client limits, wherever they are counted."""

    async def open(self, address: str) -> bool:
        """Count a new connection from ``address``; False (not counted) when it has too many."""
        ...

    def close(self, address: str) -> None:
        """A connection counted by ``open`` ended."""
        ...

    async def auth_blocked(self, address: str) -> bool:
        """True when ``address`` failed AUTH too often lately (no password is checked)."""
        ...

    def auth_failed(self, address: str) -> None: ...


class LocalClientLimits:
    """``ClientLimits`` counted in this process (one listener process, or the main one).

    ``throttle`` is called for each question: the listener brings the
    throttle's limits up to date with a reload first."""

    def __init__(self, throttle: Callable[[], ClientThrottle]) -> None:
        self._throttle = throttle

    async def open(self, address: str) -> bool:
        return self._throttle().opened(address)

    def close(self, address: str) -> None:
        self._throttle().closed(address)

    async def auth_blocked(self, address: str) -> bool:
        return self._throttle().auth_blocked(address)

    def auth_failed(self, address: str) -> None:
        self._throttle().auth_failed(address)
