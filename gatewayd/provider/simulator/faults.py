"""Injected faults of the provider simulator: what a fault is, which request it hits, and dropping a connection (docs/provider.md, Faults)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from aiohttp import web

__all__ = ["Fault", "drop_connection", "take_fault"]


@dataclass
class Fault:
    """One injected fault: applies to the next ``count`` matching requests
    (``count=None``: until removed). ``path`` is an fnmatch pattern on the path
    without /api/ver1.0 (``/oauth/token`` for the token endpoint)."""

    path: str = "*"
    method: str | None = None
    count: int | None = 1
    status: int | None = None  # answer this status with a JSON error body
    message: str | None = None
    latency: float = 0.0  # real seconds to wait before processing (client timeouts)
    answer_latency: float = 0.0  # process the request, then wait this long before answering
    drop: bool = False  # close the connection without processing or answering
    commit_then_drop: bool = False  # process the request, then close without answering
    rate_limit_reset: float | None = None  # answer 429 with this X-RateLimit-Reset
    id: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        if self.method and self.method.upper() != method.upper():
            return False
        return fnmatch.fnmatchcase(path, self.path)


def take_fault(faults: list[Fault], method: str, path: str) -> Fault | None:
    """The first fault matching the request, its count used up by one."""
    for fault in faults:
        if fault.matches(method, path):
            if fault.count is not None:
                fault.count -= 1
            return fault
    return None


def drop_connection(request: web.Request) -> None:
    # Close the socket without an answer: the client sees the connection end.
    if request.transport is not None:
        request.transport.close()
