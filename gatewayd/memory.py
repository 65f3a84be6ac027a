"""Give memory freed by a large message back to the operating system.

glibc keeps freed heap memory for reuse. After a burst of 10 MB faxes a
process stayed ~80 MiB above its idle size for good (docs/performance.md,
figure (b)); ``malloc_trim(0)`` hands it back, in a few milliseconds when
there is much to give and microseconds otherwise. Where there is no
``malloc_trim`` (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Any

__all__ = ["TRIM_AFTER_BYTES", "release_free_memory"]

# Messages at least this large are followed by a trim (the DATA reader's
# spool threshold: smaller ones leave little behind).
TRIM_AFTER_BYTES = 2 << 20


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
