"""Password hashes for ``[[smtp.users]]``: salted scrypt from hashlib.

Format: ``$scrypt$n=16384,r=8,p=1$<salt b64>$<hash b64>``, so the cost can be
raised later while old hashes still verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

_N, _R, _P, _LEN = 2**14, 8, 1, 32


def hash_password(password: str, *, n: int = _N, r: int = _R, p: int = _P) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=_LEN)
    return f"$scrypt$n={n},r={r},p={p}${_b64(salt)}${_b64(digest)}"


def _b64(data: bytes) -> str:
    """Unpadded base64, the form of the salt and hash in a ``$scrypt$`` string."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    """(n, r, p, salt, hash) of a well-formed hash; ValueError otherwise."""
    if not isinstance(encoded, str):
        raise ValueError("not a string")
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "scrypt":
        raise ValueError("not a $scrypt$ hash")
    _, _, params, salt_b64, hash_b64 = parts
    try:
        kv = dict(item.split("=", 1) for item in params.split(","))
        n, r, p = int(kv["n"]), int(kv["r"]), int(kv["p"])
    except (ValueError, KeyError):
        raise ValueError("bad parameters") from None
    if set(kv) != {"n", "r", "p"}:
        raise ValueError("bad parameters")
    # A power of two, and bounded: a hostile or mistyped hash must not pin the CPU.
    if n < 2 or n & (n - 1) or n > 2**20 or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise ValueError("parameters out of range")
    try:
        salt = base64.b64decode(salt_b64 + "=" * (-len(salt_b64) % 4), validate=True)
        expected = base64.b64decode(hash_b64 + "=" * (-len(hash_b64) % 4), validate=True)
    except ValueError:
        raise ValueError("bad base64") from None
    if not salt or not expected:
        raise ValueError("empty salt or hash")
    return n, r, p, salt, expected


def is_password_hash(encoded: str) -> bool:
    """True for a hash ``verify_password`` can check (used by the config loader)."""
    try:
        _parse(encoded)
    except ValueError:
        return False
    return True


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check; a malformed hash never matches."""
    try:
        n, r, p, salt, expected = _parse(encoded)
        digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=256 * 1024 * 1024)
    except (ValueError, MemoryError, UnicodeEncodeError):
        return False
    return hmac.compare_digest(digest, expected)
