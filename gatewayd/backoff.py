"""Retry delays: the one exponential backoff every worker uses.

Each caller keeps its own base, cap and jitter band (an outbox retry and a
reconnect to the IMAP server want different ones); the formula is shared so
it is written, and tested, once.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    low: float = 0.5,
    high: float = 1.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before try number ``attempt`` (1 = the first retry).

    ``base * 2 ** (attempt - 1)``, at most ``cap``, scaled by a random factor
    between ``low`` and ``high`` so that many waiting clients do not retry in
    step (``low=0, high=1`` is "full jitter").
    """
    if base < 0 or cap < 0 or not 0 <= low <= high:
        raise ValueError("backoff: base and cap must be >= 0 and 0 <= low <= high")
    exponent = min(max(0, attempt - 1), 64)  # 2**64 * base is past any cap
    return min(cap, base * 2**exponent) * (low + (high - low) * rng())
