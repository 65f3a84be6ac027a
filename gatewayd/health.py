"""What /healthz reports: the store, the listeners and the provider's reachability."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Health:
    """Facts the components record; ``check`` turns them into a verdict."""

    clock: Callable[[], float] = time.monotonic
    listeners: dict[str, bool] = field(default_factory=dict)
    polls: dict[str, float] = field(default_factory=dict)  # name -> monotonic time of the last good poll

    def listener(self, name: str, up: bool) -> None:
        self.listeners[name] = up

    def polled(self, name: str) -> None:
        self.polls[name] = self.clock()

    def check(self, *, store_ok: bool, provider: Any, poll_interval: float, queues: dict[str, Any] | None = None) -> tuple[bool, dict[str, Any]]:
        """(healthy, JSON body). The provider counts as down when its last call
        failed and no call succeeded for three poll intervals."""
        now = self.clock()
        problems: list[str] = []
        if not store_ok:
            problems.append("store not answering")
        for name, up in sorted(self.listeners.items()):
            if not up:
                problems.append(f"listener {name} down")
        last_ok = getattr(provider, "last_success_at", None)
        last_err_at = getattr(provider, "last_error_at", None)
        last_err = getattr(provider, "last_error", None)
        grace = 3 * poll_interval
        provider_ok = True
        if last_err_at is not None and (last_ok is None or last_ok < last_err_at):
            since = last_ok if last_ok is not None else last_err_at
            if now - since > grace:
                provider_ok = False
                problems.append(f"provider unreachable for {int(now - since)}s: {last_err}")
        body: dict[str, Any] = {
            "status": "ok" if not problems else "unhealthy",
            "problems": problems,
            "store": "ok" if store_ok else "down",
            "listeners": self.listeners,
            "provider": {
                "ok": provider_ok,
                "last_success_age": None if last_ok is None else round(now - last_ok, 1),
                "last_error": last_err,
                "last_error_age": None if last_err_at is None else round(now - last_err_at, 1),
            },
            "last_poll_age": {k: round(now - v, 1) for k, v in sorted(self.polls.items())},
        }
        if queues is not None:
            body["queues"] = queues
        return (not problems), body
