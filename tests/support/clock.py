"""A wall clock the tests move forward (the outbox's backoff, retention ages) instead of sleeping."""

from __future__ import annotations

import time


class OffsetClock:
    """``time.time()`` plus the jumps a test added with ``advance``."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
