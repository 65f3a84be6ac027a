"""Free space on the state directory's file system, against ``storage.min_free``.

Below it, intake answers ``452 4.3.1 insufficient system storage`` before it
writes anything (docs/smtp.md, Replies) and ``/healthz`` names the problem
(docs/operations.md, Health), instead of failing later half-way through a
document or a commit. The function that reads the free space is a
collaborator on the ``Runtime`` (``Runtime.free_space``), so tests can make a
disk look full without filling one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FreeSpace", "LowStorage", "disk_free", "low_storage"]

FreeSpace = Callable[[Path], int]


def disk_free(path: Path) -> int:
    """Bytes an unprivileged process may still write on ``path``'s file system."""
    st = os.statvfs(path)
    return int(st.f_bavail * st.f_frsize)


@dataclass(frozen=True)
class LowStorage:
    """Free space below ``storage.min_free``, in words for logs, /healthz and the command line."""

    free: int
    min_free: int
    path: Path

    def __str__(self) -> str:
        return f"only {_size(self.free)} free in {self.path} (storage.min_free is {_size(self.min_free)})"


def low_storage(path: Path, min_free: int, free_space: FreeSpace = disk_free) -> LowStorage | None:
    """A ``LowStorage`` when ``path`` has less than ``min_free`` bytes free; None otherwise or when the check is off (0).

    A file system that cannot be asked (``statvfs`` fails) is not called full:
    the writes themselves will say what is wrong.
    """
    if min_free <= 0:
        return None
    try:
        free = free_space(path)
    except OSError:
        return None
    return LowStorage(free, min_free, path) if free < min_free else None


def _size(n: int) -> str:
    for unit, size in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if n >= size:
            return f"{n / size:.1f}{unit}".replace(".0" + unit, unit)
    return f"{n}B"
