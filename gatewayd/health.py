"""What /healthz reports: the store, the listeners and the provider's reachability.

Healthy (200) when all of these hold (docs/operations.md, Health):

* the store answers (a query on its thread, within a deadline); on
  PostgreSQL the problem names the database (``store: database
  postgresql://gatewayd@db.example.com/gatewayd not answering``, never a
  password): intake answers 451 meanwhile (docs/operations.md, Database outage);
* every listener that registered itself is up (``smtp``, ``http``, and the
  ``imap`` mailbox when enabled);
* the provider's last call succeeded, or its last success (or, if it never
  succeeded, the daemon's start) is younger than three poll intervals, so
  one failed poll does not flap the verdict;
* no provider path has answered 404 or 405 on ``PATH_ALARM_AFTER`` calls
  in a row (a wrong path, most likely an inferred one: docs/provider.md,
  Checking a new account); the daemon keeps using the other paths;
* the daemon is not shutting down;
* the state directory's file system has at least ``storage.min_free`` free
  (gatewayd/diskspace.py; below it intake answers 452).

Otherwise 503, with the same JSON body whose ``problems`` name each failing
part, e.g. ``provider: no successful call for 95s (last error: ...)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

#: Consecutive 404/405 answers on one provider path that make it "failing":
#: one may be a fax deleted meanwhile, several in a row are a wrong path.
PATH_ALARM_AFTER = 3


class ProviderFacts(Protocol):
    """What the provider client records of its calls (on ``Health.clock``'s monotonic clock)."""

    last_success_at: float | None
    last_error: str | None
    last_error_at: float | None
    failing_paths: dict[str, tuple[int, int]]  # path key -> (404 or 405, consecutive count)


@dataclass
class Health:
    """Facts the components record; ``check`` turns them into a verdict."""

    clock: Callable[[], float] = time.monotonic
    listeners: dict[str, bool] = field(default_factory=dict)
    polls: dict[str, float] = field(default_factory=dict)  # name -> monotonic time of the last good poll
    changed: dict[str, float] = field(default_factory=dict)  # listener -> when it last changed state
    started: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def listener(self, name: str, up: bool) -> None:
        if self.listeners.get(name) != up:
            self.changed[name] = self.clock()
        self.listeners[name] = up

    def polled(self, name: str) -> None:
        self.polls[name] = self.clock()

    def forget(self, name: str) -> None:
        """``name`` runs on another node now (gatewayd/leadership.py): its listener and polls are not this node's to report."""
        self.listeners.pop(name, None)
        self.changed.pop(name, None)
        self.polls.pop(name, None)

    def provider_verdict(self, provider: ProviderFacts, poll_interval: float) -> tuple[bool, str | None]:
        """(ok, problem). The provider's ``last_success_at``/``last_error_at``
        are on this object's clock (monotonic)."""
        now = self.clock()
        last_ok = provider.last_success_at
        last_err_at = provider.last_error_at
        last_err = provider.last_error
        if last_err_at is None or (last_ok is not None and last_ok >= last_err_at):
            return True, None  # never failed, or the last call succeeded
        # Never succeeded: count from our own start (the client keeps only
        # its latest failure, which moves with every retry).
        since = last_ok if last_ok is not None else min(self.started, last_err_at)
        if now - since <= 3 * poll_interval:
            return True, None
        if last_ok is None:
            return False, f"provider: unreachable since start ({int(now - since)}s; last error: {last_err})"
        return False, f"provider: no successful call for {int(now - since)}s (last error: {last_err})"

    def check(
        self,
        *,
        store_ok: bool,
        provider: ProviderFacts,
        poll_interval: float,
        queues: dict[str, Any] | None = None,
        stopping: bool = False,
        storage: str | None = None,
        database: str | None = None,
    ) -> tuple[bool, dict[str, Any]]:
        """(healthy, JSON body). ``database``: where a shared database is (redacted), named when it does not answer."""
        now = self.clock()
        problems: list[str] = []
        if stopping:
            problems.append("shutting down")
        if not store_ok:
            problems.append(f"store: database {database} not answering" if database else "store: not answering")
        for name, up in sorted(self.listeners.items()):
            if not up:
                problems.append(f"listener {name}: down")
        if storage:
            problems.append(f"storage: {storage}")
        provider_ok, provider_problem = self.provider_verdict(provider, poll_interval)
        if provider_problem:
            problems.append(provider_problem)
        failing = failing_paths(provider)
        for key, (status, count) in sorted(failing.items()):
            problems.append(
                f"provider path {key}: HTTP {status} on {count} calls in a row "
                "(wrong path? run `gatewayd provider-check`, see [provider.paths])"
            )
        last_ok = provider.last_success_at
        last_err_at = provider.last_error_at
        body: dict[str, Any] = {
            "status": "ok" if not problems else "unhealthy",
            "problems": problems,
            "store": "ok" if store_ok else "down",
            **({"database": database} if database else {}),
            "listeners": {name: "up" if up else "down" for name, up in sorted(self.listeners.items())},
            "provider": {
                "ok": provider_ok,
                "last_success_age": None if last_ok is None else round(now - last_ok, 1),
                "last_error": provider.last_error,
                "last_error_age": None if last_err_at is None else round(now - last_err_at, 1),
                "down_after": round(3 * poll_interval, 1),
                "failing_paths": {k: {"status": st, "count": n} for k, (st, n) in sorted(failing.items())},
            },
            "last_poll_age": {k: round(now - v, 1) for k, v in sorted(self.polls.items())},
            "uptime": round(now - self.started, 1),
        }
        if queues is not None:
            body["queues"] = queues
        return (not problems), body


def failing_paths(provider: ProviderFacts) -> dict[str, tuple[int, int]]:
    """The provider paths that answered 404/405 at least ``PATH_ALARM_AFTER`` times in a row."""
    return {k: v for k, v in provider.failing_paths.items() if v[1] >= PATH_ALARM_AFTER}
