"""Credential lookup: the files a ``*_file`` key or a certificate key names, and the one-line secrets in them.

Relative names are looked up in $CREDENTIALS_DIRECTORY first (systemd
LoadCredential=, docs/deployment.md), then next to the configuration file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

# The credential ID prefix of the unit's LoadCredential=gatewayd:/etc/gatewayd/credentials
# (a whole directory: systemd names each file's credential gatewayd_<file name>).
CREDENTIAL_PREFIX = "gatewayd_"

# Records a problem: (key path, reason), the loader's ``problem``.
Problem = Callable[[str, str], None]


def find_file(env: Mapping[str, str], base_dir: Path, problem: Problem, path: str, name: str) -> str | None:
    """Resolve a file name as described in ``_Section.file``; records a
    problem and returns None when it is missing or unreadable."""
    if any(c in name for c in "\r\n\0"):
        problem(path, "control characters are not allowed")
        return None
    p = Path(name)
    candidates: list[Path] = []
    if p.is_absolute():
        candidates.append(p)
    else:
        creds = env.get("CREDENTIALS_DIRECTORY")
        if creds:
            candidates.append(Path(creds) / p)
            # The unit loads /etc/gatewayd/credentials as a whole:
            # gatewayd_<name> is the same file (docs/deployment.md).
            if len(p.parts) == 1:
                candidates.append(Path(creds) / f"{CREDENTIAL_PREFIX}{p}")
        candidates.append(base_dir / p)
        # Where the systemd unit's LoadCredential= sources live: lets the
        # CLI, run from a shell, find the same secrets as the service.
        candidates.append(base_dir / "credentials" / p)
    for candidate in candidates:
        if candidate.is_file():
            if not os.access(candidate, os.R_OK):
                problem(path, f"cannot read {candidate}: permission denied")
                return None
            return str(candidate.absolute())
    where = " or ".join(dict.fromkeys(str(c.parent) for c in candidates))
    problem(path, f"file not found: {name}" + ("" if p.is_absolute() else f" (looked in {where})"))
    return None


def read_secret(env: Mapping[str, str], base_dir: Path, problem: Problem, path: str, name: str) -> str:
    found = find_file(env, base_dir, problem, path, name)
    if found is None:
        return ""
    try:
        text = Path(found).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        problem(path, f"{found} is not UTF-8 text")
        return ""
    except OSError as exc:
        problem(path, f"cannot read {found}: {exc.strerror}")
        return ""
    # One trailing newline (echo, editors) is not part of the secret.
    secret = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    if not secret:
        problem(path, f"{found} is empty")
    elif any(c in secret for c in "\r\n\0"):
        problem(path, f"{found} holds more than one line")
        return ""
    return secret
