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
    b64 = lambda b: base64.b64encode(b).decode("ascii").rstrip("=")  # noqa: E731
    return f"$scrypt$n={n},r={r},p={p}${b64(salt)}${b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check; a malformed hash never matches."""
    try:
        _, scheme, params, salt_b64, hash_b64 = encoded.split("$")
        if scheme != "scrypt":
            return False
        kv = dict(item.split("=", 1) for item in params.split(","))
        n, r, p = int(kv["n"]), int(kv["r"]), int(kv["p"])
        salt = base64.b64decode(salt_b64 + "=" * (-len(salt_b64) % 4))
        expected = base64.b64decode(hash_b64 + "=" * (-len(hash_b64) % 4))
        if n > 2**20 or r > 32 or p > 16:  # refuse hashes that would pin the CPU
            return False
        digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=256 * 1024 * 1024)
    except (ValueError, KeyError):
        return False
    return hmac.compare_digest(digest, expected)
