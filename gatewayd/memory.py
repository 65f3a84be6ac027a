"""Give memory freed by a large message back to the operating system, and keep start-up objects out of the collector's way.

glibc keeps freed heap memory for reuse. After a burst of 10 MB faxes a
process stayed ~80 MiB above its idle size for good (docs/performance.md,
figure (b)); ``malloc_trim(0)`` hands it back, in a few milliseconds when
there is much to give and microseconds otherwise. Where there is no
``malloc_trim`` (musl, macOS) this does nothing.

What a process loads at start (modules, fonts, the configuration, its
services: ~110,000 objects) lives as long as the process, yet every full
run of the cyclic garbage collector walks it again: 30-50 ms each, a pause
for every session of that process. ``freeze_startup_objects`` moves them out
of its view once the process is ready (docs/performance.md, "Issue 19,
session 5": the longest pause 40-50 → 16-35 ms, 3% less CPU per message).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["RELEASE_EVERY", "TRIM_AFTER_BYTES", "freeze_startup_objects", "release_free_memory", "release_periodically"]

# Messages at least this large are followed by a trim (the DATA reader's
# spool threshold: smaller ones leave little behind).
TRIM_AFTER_BYTES = 2 << 20
RELEASE_EVERY = 60.0  # seconds between the periodic trims of every process


def _find_malloc_trim() -> Callable[[int], Any] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()  # looked up once; never changes


def release_free_memory() -> bool:
    """Return free heap memory to the OS; False where the C library cannot.

    Releases the GIL (ctypes) but blocks its caller: call it from a thread.
    """
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


def freeze_startup_objects() -> None:
    """Leave every object made so far out of the garbage collector's runs (``gc.freeze``).

    Call once, when the process is ready: an object made before then that
    later becomes garbage in a cycle is never collected (objects without
    cycles are freed as before), so what start-up makes must be meant to
    last; per-message objects come later and are collected as usual."""
    gc.freeze()


async def release_periodically(sleep: Callable[[float], Awaitable[bool]]) -> None:
    """Every ``RELEASE_EVERY`` seconds until ``sleep`` says stop (``Runtime.sleep``),
    hand memory freed since (uploads, downloads, large emails) back to the OS:
    microseconds when there is none, a few milliseconds after a burst. Every
    process runs it: the main one and each SMTP listener process."""
    while not await sleep(RELEASE_EVERY):
        release_free_memory()
