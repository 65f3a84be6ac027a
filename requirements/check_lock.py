"""Check that requirements/lock.txt pins every dependency of pyproject.toml.

`make venv` runs this before it installs from the lock, so a dependency added
to pyproject.toml (or a floor raised) without refreshing the lock is a clear
error rather than an install that silently lacks it. How to refresh the lock:
docs/development.md. Standard library only (it runs before the venv exists);
with ``packaging`` importable it also checks each pinned version against the
pyproject specifier.
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "lock.txt"
EXTRAS = ("test",)  # the extras the lock is compiled with (docs/development.md)
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.MULTILINE)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse(spec: str) -> tuple[str, Callable[[str], bool] | None]:
    """(normalised name, does-this-version-fit) of a requirement; the check only with ``packaging``."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec)
        return _norm(match.group() if match else spec), None
    req = Requirement(spec)
    return _norm(req.name), lambda version: req.specifier.contains(version, prereleases=True)


def problems(pyproject: str, lock: str) -> list[str]:
    """What is wrong between ``pyproject`` (TOML text) and ``lock`` (pip-compile output); [] when the lock fits."""
    project = tomllib.loads(pyproject)["project"]
    wanted = list(project.get("dependencies", []))
    for extra in EXTRAS:
        wanted += project.get("optional-dependencies", {}).get(extra, [])
    pins = {_norm(m.group(1)): m.group(2) for m in _PIN.finditer(lock)}
    if "--hash=sha256:" not in lock:
        return ["the lock has no hashes (make it with --generate-hashes)"]
    out = []
    for spec in wanted:
        name, fits = _parse(spec)
        if name not in pins:
            out.append(f"{spec}: not in the lock")
        elif fits is not None and not fits(pins[name]):
            out.append(f"{spec}: the lock pins {pins[name]}")
    return out


def main() -> int:
    found = problems((ROOT / "pyproject.toml").read_text(), LOCK.read_text() if LOCK.exists() else "")
    for problem in found:
        print(f"requirements/lock.txt: {problem}", file=sys.stderr)
    if found:
        print("pyproject.toml changed without a lock refresh: see docs/development.md (Dependencies)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
